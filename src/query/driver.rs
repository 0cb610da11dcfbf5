//! The micro-batch loop of one query.
//!
//! Per batch: ask each source for its latest offset (within the trigger's read limit); if nothing
//! is new, wait; otherwise log the batch (its end offsets, watermarks and timestamp) in the
//! checkpoint's offsets log, read each scan's rows between the committed and the new offsets, bind
//! them into the incremental plan, run it, hand the result to the sink under the batch id while the
//! state's new version is written, and only then commit the batch in the commits log. The loop owns
//! offsets, batch ids and the checkpoint; nothing else moves them.
//!
//! A query that restarts from its checkpoint first restores its sources' logs and its state, and
//! re-runs a batch that was logged but never committed exactly as logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionState;
use datafusion::physical_plan::execute_stream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use tokio::time::Instant;
use tracing::Instrument;

use super::progress::{SinkProgress, SourceProgress, StateOperatorProgress, StreamingQueryProgress, rate};
use super::stages::Operators;
use super::{Outcome, QueryShared, Trigger};
use crate::checkpoint::{CLEAN_EVERY, Checkpoint, CommitEntry, OffsetEntry, Recovery};
use crate::error::{Error, Result};
use crate::operator::OperatorMetrics;
use crate::planner::IncrementalPlan;
use crate::sink::{OutputMode, Sink};
use crate::source::{Offset, ReadLimit, Source};
use crate::state::StateStore;
use crate::state::store::SnapshotJob;

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
    pub(crate) checkpoint: Checkpoint,
    /// Where the checkpoint says to start.
    pub(crate) recovery: Recovery,
    pub(crate) retention: Retention,
}

/// How much of the checkpoint is kept, and how often the state is snapshotted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    /// At least this many batches between state snapshots (`state_snapshot_interval`).
    pub(crate) snapshot_interval: u64,
    /// The last this many batches can always be recovered (`min_batches_to_retain`).
    pub(crate) min_batches: u64,
}

/// A checkpoint write running in the background.
type Background = tokio::task::JoinHandle<Result<()>>;

/// Waits for a background checkpoint write, if there is one.
async fn finish(write: Option<Background>) -> Result<()> {
    match write {
        Some(task) => task
            .await
            .map_err(|e| Error::Internal(format!("checkpoint write: {e}")))?,
        None => Ok(()),
    }
}

/// Waits for a batch's offsets entry to be written and returns how long it took: the batch's
/// `walCommit` time, as Spark calls the writing of its offsets log. The entry is written while the
/// batch is read and processed, so this is only the part the batch had to wait for.
async fn wait_for_offsets(write: Option<Background>) -> Result<Duration> {
    let start = Instant::now();
    finish(write).await?;
    Ok(start.elapsed())
}

/// After batch `batch_id` committed: old checkpoint entries go and the state snapshots taken
/// are written, both in the background.
fn clean_up(
    checkpoint: &Checkpoint,
    stores: Vec<(Arc<StateStore>, Option<Vec<SnapshotJob>>)>,
    retention: Retention,
    batch_id: u64,
) {
    let oldest_kept = (batch_id + 1).saturating_sub(retention.min_batches);
    for (store, snapshot) in stores {
        store.maintain(batch_id, oldest_kept, snapshot);
    }
    if batch_id.is_multiple_of(CLEAN_EVERY) && oldest_kept > 0 {
        let checkpoint = checkpoint.clone();
        tokio::spawn(async move {
            if let Err(e) = checkpoint.clean_logs(oldest_kept).await {
                tracing::warn!(error = %e, "could not delete old checkpoint entries");
            }
        });
    }
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
        // One cursor per distinct source, in the order the checkpoint lists their offsets; a
        // source scanned twice (a self-union) is read twice.
        let mut cursors: Vec<SourceCursor> = self
            .plan
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
        for scan in self.plan.scans() {
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
        let mut operators = Operators::new(
            &self.plan,
            self.state_partitions,
            &self.checkpoint,
            self.retention.snapshot_interval,
        )?;
        let event_time = self.plan.operators().iter().any(|s| s.plan.has_event_time());
        // Windows over processing time close at the batch's time: the watermark is the clock.
        let processing_time = self.plan.operators().iter().any(|s| s.plan.has_processing_time());

        self.shared.set_status("Restoring from the checkpoint", false, true);
        let (mut watermarks, mut batch_id, mut replay) = self.recover(&mut cursors, &mut operators).await?;
        for (i, cursor) in cursors.iter().enumerate() {
            let log = self
                .checkpoint
                .source_dir(i)
                .map(|dir| Arc::new(dir) as Arc<dyn crate::source::SourceLog>);
            cursor.source.start(log).await?;
        }
        if self.trigger == Trigger::AvailableNow {
            for cursor in &mut cursors {
                cursor.cap = cursor.source.latest_offset(None, ReadLimit::All).await?;
            }
        }

        let mut previous_trigger: Option<Instant> = None;
        let mut pending_commit: Option<Background> = None;
        let result = async {
            loop {
                if *self.shared.stop.borrow() {
                    return Ok(());
                }
                let trigger_start = Instant::now();
                self.shared.checks.send_modify(|c| c.0 += 1);
                let check = *self.shared.checks.borrow();
                self.shared.set_status("Getting offsets from sources", false, true);

                let replaying = replay.is_some();
                let mut logging: Option<Background> = None;
                let mut changes = Vec::new();
                let (ends, batch_time) = match replay.take() {
                    // A batch logged but never committed runs again exactly as logged.
                    Some(entry) => {
                        tracing::info!(batch_id, "re-running a batch that was not committed before the restart");
                        let time =
                            chrono::DateTime::from_timestamp_millis(entry.batch_timestamp_ms).ok_or_else(|| {
                                Error::Internal(format!("batch timestamp {} out of range", entry.batch_timestamp_ms))
                            })?;
                        (entry.offsets, time)
                    }
                    None => {
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
                        let has_data = cursors.iter().zip(&ends).any(|(c, e)| e.is_some() && *e != c.committed);
                        // A batch without new rows still runs when the watermark has moved, so that
                        // windows it closes are emitted and evicted.
                        let watermark_moved = event_time && watermarks.current != watermarks.previous && batch_id > 0;
                        // Over processing time, time itself closes windows: a batch runs once the
                        // clock passes the end of one, to emit it in append mode.
                        let window_due = processing_time
                            && self.output_mode == OutputMode::Append
                            && operators
                                .next_close()
                                .is_some_and(|end| end <= crate::time::now_nanos());
                        if !has_data && !watermark_moved && !window_due {
                            if matches!(self.trigger, Trigger::Once | Trigger::AvailableNow) {
                                self.shared.checks.send_modify(|c| c.1 = check.0);
                                return Ok(());
                            }
                            let trouble: Vec<String> = cursors.iter().filter_map(|c| c.source.status()).collect();
                            let message = match trouble.is_empty() {
                                true => "Waiting for data to arrive".to_string(),
                                false => format!("Waiting for data to arrive ({})", trouble.join("; ")),
                            };
                            // The status first: whoever `process_all_available` wakes sees it.
                            self.shared.set_status(&message, false, false);
                            self.shared.checks.send_modify(|c| c.1 = check.0);
                            let wait = match self.trigger {
                                Trigger::ProcessingTime(interval) => interval.saturating_sub(trigger_start.elapsed()),
                                _ => IDLE_POLL,
                            };
                            self.wait(wait, true).await;
                            continue;
                        }
                        // Log the batch before its output reaches the sink: the sources' own logs,
                        // then the offsets. The writes run while the batch is read and processed.
                        let now = chrono::Utc::now();
                        let batch_time = chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
                        if processing_time {
                            // The batch's rows all have its time: windows ending by then are whole.
                            watermarks.current = batch_time.timestamp_nanos_opt();
                        }
                        let entry = OffsetEntry {
                            batch_id,
                            batch_timestamp_ms: batch_time.timestamp_millis(),
                            late_watermark: watermarks.previous,
                            watermark: watermarks.current,
                            offsets: ends.clone(),
                        };
                        let sources: Vec<_> = cursors
                            .iter()
                            .zip(&ends)
                            .enumerate()
                            .filter_map(|(i, (cursor, end))| {
                                let end = end.as_ref().filter(|e| Some(*e) != cursor.committed.as_ref())?;
                                let log = self.checkpoint.source_dir(i)?;
                                Some((cursor.source.clone(), log, cursor.committed.clone(), end.clone()))
                            })
                            .collect();
                        let checkpoint = self.checkpoint.clone();
                        let previous = pending_commit.take();
                        logging = Some(tokio::spawn(async move {
                            // The previous batch's commit lands first: the logs never have a gap.
                            finish(previous).await?;
                            for (source, log, start, end) in sources {
                                source.persist(&log, batch_id, start.as_ref(), &end).await?;
                            }
                            checkpoint.write_offsets(&entry).await
                        }));
                        (ends, batch_time)
                    }
                };
                let latest_offset_ms = trigger_start.elapsed().as_millis() as u64;
                let has_data = cursors.iter().zip(&ends).any(|(c, e)| e.is_some() && *e != c.committed);

                self.shared.set_status("Processing new data", has_data, true);
                let span = tracing::info_span!("batch", batch_id);
                let counters: Vec<Arc<AtomicU64>> = cursors.iter().map(|_| Arc::default()).collect();
                let mut operator_metrics = Vec::new();
                let (get_batch_ms, add_batch_ms, wal_commit_ms, output_rows) = async {
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
                    let batch = operators
                        .run(
                            &self.plan,
                            &self.state,
                            batch_time,
                            inputs,
                            (watermarks.previous, watermarks.current),
                        )
                        .await?;
                    operator_metrics = batch.metrics;
                    let output = execute_stream(batch.plan, self.state.task_ctx())?;
                    let wal_commit = wait_for_offsets(logging.take()).await?;
                    // The state's changes are written after the batch, with its commit.
                    changes = operators.changes(batch_id)?;
                    let rows = self
                        .sink
                        .add_batch_replacing(batch_id, self.output_mode, output, batch.replaced)
                        .await?;
                    tracing::debug!(rows, "batch written");
                    let add_batch = add_start.elapsed().saturating_sub(wal_commit);
                    Ok::<_, Error>((
                        get_batch_ms,
                        add_batch.as_millis() as u64,
                        wal_commit.as_millis() as u64,
                        rows,
                    ))
                }
                .instrument(span)
                .await
                .map_err(|e| Error::Query {
                    query: self.shared.label(),
                    batch_id,
                    error: Box::new(e),
                })?;

                // The sink has the batch and the state is durable: commit it.
                let starts: Vec<Option<Offset>> = cursors.iter().map(|c| c.committed.clone()).collect();
                for (cursor, end) in cursors.iter_mut().zip(&ends) {
                    if end.is_some() && *end != cursor.committed {
                        cursor.committed = end.clone();
                        cursor.last_data = Instant::now();
                    }
                }
                let batch_watermark = watermarks.current;
                watermarks.advance(&cursors);
                let commit = CommitEntry {
                    batch_id,
                    max_event_times: cursors
                        .iter()
                        .map(|c| Some(c.max_event_time.load(Ordering::Relaxed)).filter(|t| *t != i64::MIN))
                        .collect(),
                    next_watermark: watermarks.current,
                };
                // State version N and the commit are written while the next batch runs; the next
                // batch's offsets entry waits for them, so the logs never have a gap.
                let (checkpoint, retention) = (self.checkpoint.clone(), self.retention);
                let consumed: Vec<_> = cursors
                    .iter()
                    .filter_map(|c| Some((c.source.clone(), c.committed.clone()?)))
                    .collect();
                pending_commit = Some(tokio::spawn(async move {
                    let mut snapshots = Vec::with_capacity(changes.len());
                    for (store, files, snapshot) in changes {
                        store.write(batch_id, files).await?;
                        snapshots.push((store, snapshot));
                    }
                    checkpoint.write_commit(&commit).await?;
                    // Committed: the sources may let go of what the batch read.
                    for (source, end) in consumed {
                        source.commit(&end).await?;
                    }
                    clean_up(&checkpoint, snapshots, retention, batch_id);
                    Ok(())
                }));
                self.record_progress(Report {
                    batch_id,
                    watermark: batch_watermark,
                    operators: operator_metrics,
                    trigger_start,
                    previous_trigger,
                    latest_offset_ms,
                    get_batch_ms,
                    add_batch_ms,
                    wal_commit_ms,
                    output_rows,
                    cursors: &cursors,
                    starts,
                    counters: &counters,
                });
                previous_trigger = Some(trigger_start);
                batch_id += 1;

                match self.trigger {
                    // After a replayed batch, `once` still runs its one batch of new input.
                    Trigger::Once if !replaying => return Ok(()),
                    Trigger::ProcessingTime(interval) => {
                        self.shared.set_status("Waiting for next trigger", false, false);
                        self.wait(interval.saturating_sub(trigger_start.elapsed()), false).await;
                    }
                    _ => {}
                }
            }
        }
        .await;
        let committed = finish(pending_commit.take()).await;
        for store in operators.stores() {
            store.finish().await;
        }
        for cursor in &cursors {
            cursor.source.stop().await;
        }
        result.and(committed)
    }

    /// Puts the query where its checkpoint says: the sources' logs, the committed offsets, event
    /// times and watermarks, and the state of the last committed batch. Returns the watermarks, the
    /// next batch id, and the batch to run again if one was logged but never committed.
    async fn recover(
        &self,
        cursors: &mut [SourceCursor],
        operators: &mut Operators,
    ) -> Result<(Watermarks, u64, Option<OffsetEntry>)> {
        let logged = match &self.recovery {
            Recovery::Fresh => None,
            Recovery::Resume { last, .. } => Some(&last.offsets),
            Recovery::Replay { batch, .. } => Some(&batch.offsets),
        };
        for (i, cursor) in cursors.iter().enumerate() {
            if let Some(log) = self.checkpoint.source_dir(i) {
                let end = logged.and_then(|ends| ends.get(i)).and_then(Option::as_ref);
                cursor.source.restore(&log, end).await?;
            }
        }
        let (watermarks, next, replay, committed) = match &self.recovery {
            Recovery::Fresh => return Ok((Watermarks::default(), 0, None)),
            Recovery::Resume { last, commit } => (
                Watermarks {
                    previous: last.watermark,
                    current: commit.next_watermark,
                },
                last.batch_id + 1,
                None,
                Some((last, commit)),
            ),
            Recovery::Replay { batch, previous } => (
                Watermarks {
                    previous: batch.late_watermark,
                    current: batch.watermark,
                },
                batch.batch_id,
                Some(batch.clone()),
                previous.as_ref().map(|(o, c)| (o, c)),
            ),
        };
        if let Some((offsets, commit)) = committed {
            for ((cursor, offset), max) in cursors.iter_mut().zip(&offsets.offsets).zip(&commit.max_event_times) {
                cursor.committed = offset.clone();
                cursor.max_event_time.store(max.unwrap_or(i64::MIN), Ordering::Relaxed);
            }
            operators.restore(offsets.batch_id).await?;
            tracing::info!(batch_id = offsets.batch_id, checkpoint = %self.checkpoint.location(), "restored from checkpoint");
        }
        Ok((watermarks, next, replay))
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
                    latest_offset: match self.trigger {
                        Trigger::AvailableNow => cursor.cap.as_ref(),
                        Trigger::Once => cursor.committed.as_ref(),
                        Trigger::Default | Trigger::ProcessingTime(_) => None,
                    }
                    .map(|o| o.0.clone()),
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
                ("walCommit", r.wal_commit_ms),
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
                .operators
                .iter()
                .map(|(name, m)| StateOperatorProgress {
                    operator_name: name.to_string(),
                    num_rows_total: m.rows_total,
                    num_rows_updated: m.rows_updated,
                    num_rows_removed: m.rows_removed,
                    memory_used_bytes: m.memory_bytes,
                    num_rows_dropped_by_watermark: m.dropped_by_watermark,
                    custom_metrics: [("numRowsWithNullEventTime".to_string(), m.null_event_time)].into(),
                })
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
    /// Each stateful operator's name and metrics, in chain order.
    operators: Vec<(&'static str, OperatorMetrics)>,
    trigger_start: Instant,
    previous_trigger: Option<Instant>,
    latest_offset_ms: u64,
    get_batch_ms: u64,
    add_batch_ms: u64,
    /// Time the batch waited for its offsets entry.
    wal_commit_ms: u64,
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
