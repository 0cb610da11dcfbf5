//! The read side of a running query: one cursor per source (how far it is committed, its event
//! times and watermark delay), the watermarks they give, and the reading of a batch's rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::planner::IncrementalPlan;
use crate::source::{Offset, Source};

/// A distinct source of the plan and how far it has been committed.
pub(super) struct SourceCursor {
    pub(super) source: Arc<dyn Source>,
    pub(super) committed: Option<Offset>,
    /// The end offset for `available_now`, fixed when the query starts.
    pub(super) cap: Option<Offset>,
    /// The watermark delay in nanoseconds, when the stream declares a watermark.
    pub(super) delay: Option<i64>,
    /// The largest event time read so far, in nanoseconds (`i64::MIN` before any).
    pub(super) max_event_time: Arc<AtomicI64>,
    /// After this long without new rows the source no longer holds the watermark back.
    pub(super) idle_timeout: Option<Duration>,
    /// When the source last had new rows.
    pub(super) last_data: Instant,
}

impl SourceCursor {
    pub(super) fn idle(&self) -> bool {
        self.idle_timeout.is_some_and(|t| self.last_data.elapsed() > t)
    }
}

/// The event-time watermarks, in nanoseconds since the epoch.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Watermarks {
    /// The watermark the previous batch ran with: rows of windows closed by it are late.
    pub(super) previous: Option<i64>,
    /// The watermark for the next batch, computed after the last one; it closes windows.
    pub(super) current: Option<i64>,
}

impl Watermarks {
    /// Moves on after a batch: `max(event time) - delay`, the minimum over watermarked sources
    /// that have seen rows, never going back.
    pub(super) fn advance(&mut self, cursors: &[SourceCursor]) {
        self.previous = self.current;
        let candidates = cursors.iter().filter(|c| !c.idle()).filter_map(|c| {
            let delay = c.delay?;
            let max = c.max_event_time.load(Ordering::Relaxed);
            (max != i64::MIN).then(|| max.saturating_sub(delay))
        });
        if let Some(next) = candidates.min() {
            self.current = Some(self.current.map_or(next, |w| w.max(next)));
        }
    }
}

/// One cursor per distinct source of `plan`, in the order the checkpoint lists their offsets, and
/// for each stream scan the index of its source's cursor (a source scanned twice, in a
/// self-union, is read twice).
pub(super) fn cursors(plan: &IncrementalPlan) -> Result<(Vec<SourceCursor>, Vec<usize>)> {
    let mut cursors: Vec<SourceCursor> = plan
        .sources()
        .into_iter()
        .map(|source| SourceCursor {
            source,
            committed: None,
            cap: None,
            delay: None,
            max_event_time: Arc::new(AtomicI64::new(i64::MIN)),
            idle_timeout: None,
            last_data: Instant::now(),
        })
        .collect();
    let mut scan_cursor = Vec::new();
    for scan in plan.scans() {
        let index = cursors
            .iter()
            .position(|c| Arc::ptr_eq(&c.source, &scan.source))
            .ok_or_else(|| Error::Internal("a scan of a source the plan does not list".into()))?;
        let cursor = &mut cursors[index];
        cursor.idle_timeout = cursor.idle_timeout.or(scan.idle_timeout);
        if let Some((watermark, _)) = &scan.watermark {
            // A delay past the whole time range means no row is ever late: saturate.
            cursor.delay = Some(crate::time::duration_nanos(watermark.delay).unwrap_or(i64::MAX));
        }
        scan_cursor.push(index);
    }
    Ok((cursors, scan_cursor))
}

/// The read step: each stream scan's rows between its source's committed offset and `ends`,
/// counted into `counters` (per cursor), with the largest event time kept per source.
pub(super) async fn read(
    plan: &IncrementalPlan,
    cursors: &[SourceCursor],
    scan_cursor: &[usize],
    ends: &[Option<Offset>],
    counters: &[Arc<AtomicU64>],
) -> Result<Vec<SendableRecordBatchStream>> {
    let mut inputs = Vec::with_capacity(scan_cursor.len());
    for (scan, &c) in plan.scans().iter().zip(scan_cursor) {
        let (cursor, end) = (&cursors[c], ends[c].as_ref());
        let stream = match end {
            Some(end) => {
                cursor
                    .source
                    .read(cursor.committed.as_ref(), end, scan.projection.as_deref())
                    .await?
            }
            None => empty_stream(scan.source.as_ref(), scan.projection.as_deref())?,
        };
        let event_time = scan
            .watermark
            .as_ref()
            .map(|(_, column)| (*column, cursor.max_event_time.clone()));
        inputs.push(counted(stream, counters[c].clone(), event_time));
    }
    Ok(inputs)
}

/// Rows per record batch handed to a batch plan: large source batches are sliced (without
/// copying) to this size, so that DataFusion can spread them over its partitions.
const ROWS_PER_RECORD_BATCH: usize = 8192;

/// Counts the rows that pass through `stream` into `counter` and, given an event-time column,
/// keeps the largest event time seen in `max`.
fn counted(
    stream: SendableRecordBatchStream,
    counter: Arc<AtomicU64>,
    event_time: Option<(usize, Arc<AtomicI64>)>,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let counting = stream
        .map(move |batch| {
            let batch = batch?;
            counter.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            if let Some((column, max)) = &event_time {
                // An event time outside the range fails the batch: skipping it would move the
                // watermark on without it.
                let nanos = crate::time::to_nanos(batch.column(*column)).map_err(Error::into_datafusion)?;
                if let Some(latest) = datafusion::arrow::compute::max(&nanos) {
                    max.fetch_max(latest, Ordering::Relaxed);
                }
            }
            Ok(batch)
        })
        .flat_map(|batch| {
            let slices: Vec<_> = match batch {
                Ok(batch) if batch.num_rows() > ROWS_PER_RECORD_BATCH => (0..batch.num_rows())
                    .step_by(ROWS_PER_RECORD_BATCH)
                    .map(|at| Ok(batch.slice(at, ROWS_PER_RECORD_BATCH.min(batch.num_rows() - at))))
                    .collect(),
                other => vec![other],
            };
            futures::stream::iter(slices)
        });
    Box::pin(RecordBatchStreamAdapter::new(schema, counting))
}

/// No rows, for a source that has never had input while another source of the query has.
fn empty_stream(source: &dyn Source, projection: Option<&[usize]>) -> Result<SendableRecordBatchStream> {
    let schema = crate::source::project_schema(&source.schema(), projection)?;
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::empty(),
    )))
}
