//! The micro-batch loop of one query.
//!
//! Per batch: ask each source for its latest offset (within the trigger's read limit); if nothing
//! is new, wait; otherwise read each scan's rows between the committed and the new offsets, bind
//! them into the incremental plan, run it, hand the result to the sink under the batch id, and
//! only then take the new offsets as committed. The loop owns offsets and batch ids; nothing else
//! moves them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionState;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{collect, execute_stream};
use futures::StreamExt;
use tokio::time::Instant;
use tracing::Instrument;

use super::progress::{SinkProgress, SourceProgress, StateOperatorProgress, StreamingQueryProgress, rate};
use super::{Outcome, QueryShared, Trigger};
use crate::error::{Error, Result};
use crate::operator::OperatorMetrics;
use crate::planner::IncrementalPlan;
use crate::sink::{OutputMode, Sink};
use crate::source::{Offset, ReadLimit, Source};

/// How long the default trigger waits before looking for new input again when there was none.
/// Short enough to feel immediate, long enough that an idle query costs nothing measurable.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Everything one running query needs.
pub(crate) struct Driver {
    pub(crate) shared: Arc<QueryShared>,
    pub(crate) plan: IncrementalPlan,
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) output_mode: OutputMode,
    pub(crate) trigger: Trigger,
    /// Shards of the stateful operator's state.
    pub(crate) state_partitions: usize,
    pub(crate) state: SessionState,
}

/// A distinct source of the plan and how far it has been committed.
struct SourceCursor {
    source: Arc<dyn Source>,
    committed: Option<Offset>,
    /// The end offset for `available_now`, fixed when the query starts.
    cap: Option<Offset>,
    /// The watermark delay in nanoseconds, when the stream declares a watermark.
    delay: Option<i64>,
    /// The largest event time read so far, in nanoseconds (`i64::MIN` before any).
    max_event_time: Arc<AtomicI64>,
    /// After this long without new rows the source no longer holds the watermark back.
    idle_timeout: Option<Duration>,
    /// When the source last had new rows.
    last_data: Instant,
}

impl SourceCursor {
    fn idle(&self) -> bool {
        self.idle_timeout.is_some_and(|t| self.last_data.elapsed() > t)
    }
}

/// The event-time watermarks, in nanoseconds since the epoch.
#[derive(Debug, Default, Clone, Copy)]
struct Watermarks {
    /// The watermark the previous batch ran with: rows of windows closed by it are late.
    previous: Option<i64>,
    /// The watermark for the next batch, computed after the last one; it closes windows.
    current: Option<i64>,
}

impl Watermarks {
    /// Moves on after a batch: `max(event time) - delay`, the minimum over watermarked sources
    /// that have seen rows, never going back.
    fn advance(&mut self, cursors: &[SourceCursor]) {
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

impl Driver {
    /// Runs the loop to its end and records how it ended.
    pub(crate) async fn run(self) {
        let shared = self.shared.clone();
        let span = tracing::info_span!("query", name = %shared.label(), id = %shared.id);
        let result = self.run_loop().instrument(span).await;
        let outcome = match result {
            Ok(()) => {
                shared.set_status("Stopped", false, false);
                Outcome::Finished
            }
            Err(e) => {
                tracing::error!(query = %shared.label(), error = %e, "query failed");
                shared.set_status(&format!("Terminated with exception: {e}"), false, false);
                Outcome::Failed(Arc::new(e))
            }
        };
        shared.outcome.send_replace(Some(outcome));
    }

    async fn run_loop(self) -> Result<()> {
        // One cursor per distinct source; a source scanned twice (a self-union) is read twice.
        let mut cursors: Vec<SourceCursor> = Vec::new();
        let mut scan_cursor = Vec::new();
        for scan in self.plan.scans() {
            let index = match cursors.iter().position(|c| Arc::ptr_eq(&c.source, &scan.source)) {
                Some(i) => i,
                None => {
                    cursors.push(SourceCursor {
                        source: scan.source.clone(),
                        committed: None,
                        cap: None,
                        delay: None,
                        max_event_time: Arc::new(AtomicI64::new(i64::MIN)),
                        idle_timeout: scan.idle_timeout,
                        last_data: Instant::now(),
                    });
                    cursors.len() - 1
                }
            };
            if let Some((watermark, _)) = &scan.watermark {
                cursors[index].delay = Some(watermark.delay.as_nanos() as i64);
            }
            scan_cursor.push(index);
        }
        let mut operator = self.plan.new_operator(self.state_partitions)?;
        let event_time = self.plan.aggregate().is_some_and(|a| a.has_event_time());
        let mut watermarks = Watermarks::default();
        if self.trigger == Trigger::AvailableNow {
            for cursor in &mut cursors {
                cursor.cap = cursor.source.latest_offset(None, ReadLimit::All).await?;
            }
        }

        let mut batch_id: u64 = 0;
        let mut previous_trigger: Option<Instant> = None;
        loop {
            if *self.shared.stop.borrow() {
                return Ok(());
            }
            let trigger_start = Instant::now();
            let batch_time = chrono::Utc::now();
            self.shared.checks.send_modify(|c| c.0 += 1);
            let check = *self.shared.checks.borrow();
            self.shared.set_status("Getting offsets from sources", false, true);

            let mut ends = Vec::with_capacity(cursors.len());
            for cursor in &cursors {
                let limit = match (&self.trigger, &cursor.cap) {
                    (Trigger::Once, _) => ReadLimit::All,
                    (Trigger::AvailableNow, Some(cap)) => ReadLimit::UpTo(cap.clone()),
                    (Trigger::AvailableNow, None) => ReadLimit::UpTo(Offset::from_u64(0)),
                    _ => ReadLimit::Default,
                };
                ends.push(cursor.source.latest_offset(cursor.committed.as_ref(), limit).await?);
            }
            let latest_offset_ms = trigger_start.elapsed().as_millis() as u64;
            let has_data = cursors.iter().zip(&ends).any(|(c, e)| e.is_some() && *e != c.committed);
            // A batch without new rows still runs when the watermark has moved, so that windows it
            // closes are emitted and evicted.
            let watermark_moved = event_time && watermarks.current != watermarks.previous && batch_id > 0;

            if !has_data && !watermark_moved {
                self.shared.checks.send_modify(|c| c.1 = check.0);
                if matches!(self.trigger, Trigger::Once | Trigger::AvailableNow) {
                    return Ok(());
                }
                self.shared.set_status("Waiting for data to arrive", false, false);
                let wait = match self.trigger {
                    Trigger::ProcessingTime(interval) => interval.saturating_sub(trigger_start.elapsed()),
                    _ => IDLE_POLL,
                };
                self.wait(wait, true).await;
                continue;
            }

            self.shared.set_status("Processing new data", has_data, true);
            let span = tracing::info_span!("batch", batch_id);
            let counters: Vec<Arc<AtomicU64>> = cursors.iter().map(|_| Arc::default()).collect();
            let mut operator_metrics = None;
            let (get_batch_ms, add_batch_ms, output_rows) = async {
                let read_start = Instant::now();
                let mut inputs = Vec::with_capacity(scan_cursor.len());
                for (scan, &c) in self.plan.scans().iter().zip(&scan_cursor) {
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
                let get_batch_ms = read_start.elapsed().as_millis() as u64;
                let add_start = Instant::now();
                let bound = self.plan.bind(&self.state, batch_time, inputs).await?;
                let output = match (operator.as_mut(), self.plan.aggregate()) {
                    (Some(operator), Some(aggregate)) => {
                        let partial = collect(bound, self.state.task_ctx()).await?;
                        let (emitted, metrics) =
                            operator.process(&partial, self.output_mode, watermarks.previous, watermarks.current)?;
                        operator_metrics = Some(metrics);
                        execute_stream(aggregate.bind_post(emitted)?, self.state.task_ctx())?
                    }
                    _ => execute_stream(bound, self.state.task_ctx())?,
                };
                let rows = self.sink.add_batch(batch_id, self.output_mode, output).await?;
                tracing::debug!(rows, "batch written");
                Ok::<_, Error>((get_batch_ms, add_start.elapsed().as_millis() as u64, rows))
            }
            .instrument(span)
            .await
            .map_err(|e| Error::Query {
                query: self.shared.label(),
                batch_id,
                error: Box::new(e),
            })?;

            // The sink has the batch: its end offsets are now the committed ones.
            let starts: Vec<Option<Offset>> = cursors.iter().map(|c| c.committed.clone()).collect();
            for (cursor, end) in cursors.iter_mut().zip(&ends) {
                if end.is_some() && *end != cursor.committed {
                    cursor.committed = end.clone();
                    cursor.last_data = Instant::now();
                }
            }
            let batch_watermark = watermarks.current;
            watermarks.advance(&cursors);
            self.record_progress(Report {
                batch_id,
                watermark: batch_watermark,
                operator: operator_metrics,
                trigger_start,
                previous_trigger,
                latest_offset_ms,
                get_batch_ms,
                add_batch_ms,
                output_rows,
                cursors: &cursors,
                starts,
                counters: &counters,
            });
            previous_trigger = Some(trigger_start);
            batch_id += 1;

            match self.trigger {
                Trigger::Once => return Ok(()),
                Trigger::ProcessingTime(interval) => {
                    self.shared.set_status("Waiting for next trigger", false, false);
                    self.wait(interval.saturating_sub(trigger_start.elapsed()), false).await;
                }
                _ => {}
            }
        }
    }

    /// Sleeps for `wait`, or less when the query is stopped (or, if `wakeable`, woken).
    async fn wait(&self, wait: Duration, wakeable: bool) {
        let mut stop = self.shared.stop.subscribe();
        let woken = async {
            if wakeable {
                self.shared.wake.notified().await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => {}
            _ = woken => {}
        }
    }

    fn record_progress(&self, r: Report<'_>) {
        let duration = r.trigger_start.elapsed();
        let since_previous = r.previous_trigger.map(|p| r.trigger_start.duration_since(p) + duration);
        let input_rows: u64 = r.counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let sources = r
            .cursors
            .iter()
            .zip(&r.starts)
            .zip(r.counters)
            .map(|((cursor, start), counter)| {
                let rows = counter.load(Ordering::Relaxed);
                SourceProgress {
                    description: cursor.source.description(),
                    start_offset: start.as_ref().map(|o| o.0.clone()),
                    end_offset: cursor.committed.as_ref().map(|o| o.0.clone()),
                    num_input_rows: rows,
                    input_rows_per_second: since_previous.map_or(0.0, |d| rate(rows, d.as_secs_f64())),
                    processed_rows_per_second: rate(rows, duration.as_secs_f64()),
                    metrics: cursor.source.metrics(),
                }
            })
            .collect();
        let progress = StreamingQueryProgress {
            id: self.shared.id.clone(),
            run_id: self.shared.run_id.clone(),
            name: self.shared.name.clone(),
            timestamp: (chrono::Utc::now() - chrono::Duration::from_std(duration).unwrap_or_default())
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            batch_id: r.batch_id,
            batch_duration: duration.as_millis() as u64,
            num_input_rows: input_rows,
            input_rows_per_second: since_previous.map_or(0.0, |d| rate(input_rows, d.as_secs_f64())),
            processed_rows_per_second: rate(input_rows, duration.as_secs_f64()),
            duration_ms: [
                ("latestOffset", r.latest_offset_ms),
                ("getBatch", r.get_batch_ms),
                ("addBatch", r.add_batch_ms),
                ("triggerExecution", duration.as_millis() as u64),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            event_time: r
                .watermark
                .map(|w| ("watermark".to_string(), iso_time(w)))
                .into_iter()
                .collect(),
            state_operators: r
                .operator
                .map(|m| StateOperatorProgress {
                    operator_name: "stateStoreSave".to_string(),
                    num_rows_total: m.rows_total,
                    num_rows_updated: m.rows_updated,
                    num_rows_removed: m.rows_removed,
                    memory_used_bytes: m.memory_bytes,
                    num_rows_dropped_by_watermark: m.dropped_by_watermark,
                    custom_metrics: [("numRowsWithNullEventTime".to_string(), m.null_event_time)].into(),
                })
                .into_iter()
                .collect(),
            sources,
            sink: SinkProgress {
                description: self.sink.description(),
                num_output_rows: r.output_rows,
            },
        };
        tracing::info!(
            batch_id = progress.batch_id,
            rows = progress.num_input_rows,
            duration_ms = progress.batch_duration,
            "batch committed"
        );
        self.shared.push_progress(progress);
    }
}

/// The facts of one batch that its progress report is made of.
struct Report<'a> {
    batch_id: u64,
    /// The watermark the batch ran with.
    watermark: Option<i64>,
    operator: Option<OperatorMetrics>,
    trigger_start: Instant,
    previous_trigger: Option<Instant>,
    latest_offset_ms: u64,
    get_batch_ms: u64,
    add_batch_ms: u64,
    output_rows: u64,
    cursors: &'a [SourceCursor],
    starts: Vec<Option<Offset>>,
    counters: &'a [Arc<AtomicU64>],
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
        .inspect(move |batch| {
            if let Ok(batch) = batch {
                counter.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                if let Some((column, max)) = &event_time
                    && let Ok(nanos) = crate::operator::aggregate::to_nanos(batch.column(*column))
                    && let Some(latest) = datafusion::arrow::compute::max(&nanos)
                {
                    max.fetch_max(latest, Ordering::Relaxed);
                }
            }
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

/// Nanoseconds since the epoch as ISO 8601 UTC, the way progress reports show times.
fn iso_time(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// No rows, for a source that has never had input while another source of the query has.
fn empty_stream(source: &dyn Source, projection: Option<&[usize]>) -> Result<SendableRecordBatchStream> {
    let schema = crate::source::project_schema(&source.schema(), projection)?;
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::empty(),
    )))
}
