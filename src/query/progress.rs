//! Progress reports, with the JSON field names of Spark's `StreamingQueryProgress`, so dashboards
//! and habits carry over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one batch did. Serializes with Spark's field names (`batchId`, `numInputRows`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamingQueryProgress {
    /// The query's id, stable across restarts from the same checkpoint.
    pub id: String,
    /// This run's id: new at every start.
    pub run_id: String,
    /// The query's name, if it has one.
    pub name: Option<String>,
    /// When the batch's trigger fired, ISO 8601 UTC.
    pub timestamp: String,
    /// The batch id.
    pub batch_id: u64,
    /// Wall time of the whole batch, in milliseconds.
    pub batch_duration: u64,
    /// Rows read from all sources in this batch.
    pub num_input_rows: u64,
    /// Input rows per second of wall time since the previous batch started.
    pub input_rows_per_second: f64,
    /// Input rows per second of this batch's processing time.
    pub processed_rows_per_second: f64,
    /// Time per phase, in milliseconds: `latestOffset`, `getBatch`, `addBatch`, `walCommit` (the
    /// time the batch waited for its offsets entry, which is written while the batch runs), and
    /// `triggerExecution` (all of it).
    pub duration_ms: BTreeMap<String, u64>,
    /// Event-time statistics, such as the current `watermark`, as ISO 8601 strings.
    pub event_time: BTreeMap<String, String>,
    /// One entry per stateful operator (none for a stateless query).
    pub state_operators: Vec<StateOperatorProgress>,
    /// One entry per source.
    pub sources: Vec<SourceProgress>,
    /// The sink.
    pub sink: SinkProgress,
}

/// What one stateful operator holds and did in a batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateOperatorProgress {
    /// The operator, e.g. `stateStoreSave`.
    pub operator_name: String,
    /// Rows (groups) held in state after the batch.
    pub num_rows_total: u64,
    /// Rows changed by the batch.
    pub num_rows_updated: u64,
    /// Rows evicted by the batch.
    pub num_rows_removed: u64,
    /// Memory held by the state.
    pub memory_used_bytes: u64,
    /// Input rows too late for the watermark, dropped and counted.
    pub num_rows_dropped_by_watermark: u64,
    /// Further counters, e.g. `numRowsWithNullEventTime` (rows skipped for lack of event time).
    pub custom_metrics: BTreeMap<String, u64>,
}

/// What one source delivered in a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    /// The source, e.g. `FilesSource[data/events]`.
    pub description: String,
    /// Offset before the batch (`null` for the first batch).
    pub start_offset: Option<serde_json::Value>,
    /// Offset the batch read up to.
    pub end_offset: Option<serde_json::Value>,
    /// How far the input of this run goes, where the run ends (Spark's `latestOffset`): for
    /// `available_now`, the offset it stops at; for `once`, its batch's end; `None` otherwise.
    #[serde(default)]
    pub latest_offset: Option<serde_json::Value>,
    /// Rows read from this source.
    pub num_input_rows: u64,
    /// Rows per second of wall time since the previous batch started.
    pub input_rows_per_second: f64,
    /// Rows per second of this batch's processing time.
    pub processed_rows_per_second: f64,
    /// Source counters, e.g. `numMalformedRecords`, cumulative for this run.
    pub metrics: BTreeMap<String, String>,
}

/// What the sink wrote in a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkProgress {
    /// The sink, e.g. `MemorySink[words]`.
    pub description: String,
    /// Rows written in this batch.
    pub num_output_rows: u64,
}

/// Rows per second, 0 when no time passed.
pub(crate) fn rate(rows: u64, seconds: f64) -> f64 {
    if seconds > 0.0 { rows as f64 / seconds } else { 0.0 }
}
