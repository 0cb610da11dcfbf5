//! Stateful operators: the parts of a streaming query that remember across batches.
//!
//! An operator takes what the batch's stateless plan produced, merges it into its state, and
//! emits rows according to the output mode and the watermarks. It never reads sources or writes
//! sinks; the driver hands it its input and takes its output. One operator per file.

pub(crate) mod aggregate;

pub(crate) use aggregate::{EventTimeKey, StatefulAggregate};

/// What a stateful operator reports for a batch (Spark's `StateOperatorProgress`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OperatorMetrics {
    pub(crate) rows_total: u64,
    pub(crate) rows_updated: u64,
    pub(crate) rows_removed: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) dropped_by_watermark: u64,
    pub(crate) null_event_time: u64,
}
