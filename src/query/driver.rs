//! The micro-batch loop of one query.
//!
//! Each batch runs in named steps:
//! - *offsets*: ask each source for its latest offset (within the trigger's read limit); if
//!   nothing is new (and no watermark or clock closes anything), wait; otherwise log the batch
//!   (its end offsets, watermarks and timestamp) in the checkpoint's offsets log;
//! - *read*: each scan's rows between the committed and the new offsets ([`cursor::read`]);
//! - *stateful stage*: the segments and operators of the plan, in chain order, then the post
//!   plan ([`Operators::run`]);
//! - *sink*: the result under the batch id, while the state's changes wait for the commit;
//! - *commit*: state version N, then the commits log, in the background while the next batch runs.
//!
//! The loop owns offsets, batch ids and the checkpoint; nothing else moves them.
//!
//! A query that restarts from its checkpoint first restores its sources' logs and its state, and
//! re-runs a batch that was logged but never committed exactly as logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use datafusion::execution::context::SessionState;
use datafusion::physical_plan::execute_stream;
use futures::FutureExt;
use tokio::time::Instant;
use tracing::Instrument;

use super::cursor::{self, SourceCursor, Watermarks};
use super::report::Report;
use super::stages::{Changes, Operators};
use super::{Outcome, QueryShared, Trigger};
use crate::checkpoint::{CLEAN_EVERY, Checkpoint, CommitEntry, OffsetEntry, Recovery};
use crate::error::{Error, Result};
use crate::operator::OperatorMetrics;
use crate::planner::IncrementalPlan;
use crate::sink::{OutputMode, Sink};
use crate::source::{Offset, ReadLimit};
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

/// What the batch loop carries from one batch to the next.
struct Run {
    cursors: Vec<SourceCursor>,
    /// For each stream scan, the index of its source's cursor.
    scan_cursor: Vec<usize>,
    operators: Operators,
    watermarks: Watermarks,
    /// The id of the next batch.
    batch_id: u64,
    /// A batch logged but never committed before a restart, to run again as logged.
    replay: Option<OffsetEntry>,
    /// The previous batch's commit, being written.
    pending_commit: Option<Background>,
    previous_trigger: Option<Instant>,
    /// Where a processing-time trigger counts its intervals from.
    trigger_origin: Instant,
}

/// What the offsets step found.
enum Next {
    Run(Batch),
    /// Nothing to do yet; the status to show while waiting.
    Wait(String),
    /// Nothing more to do: the trigger runs no more batches.
    Done,
}

/// A batch about to run.
struct Batch {
    /// The end offset of each source.
    ends: Vec<Option<Offset>>,
    /// What `now()` returns in the batch.
    time: chrono::DateTime<chrono::Utc>,
    /// The write of its offsets entry, under way.
    logging: Option<Background>,
    /// It ran before a restart and runs again as logged.
    replaying: bool,
}

/// What a batch did, for its commit and progress report.
struct Ran {
    get_batch_ms: u64,
    add_batch_ms: u64,
    wal_commit_ms: u64,
    output_rows: u64,
    operators: Vec<(&'static str, OperatorMetrics)>,
    changes: Changes,
    /// Rows read per source.
    counters: Vec<Arc<AtomicU64>>,
}

/// The moment from which a processing-time trigger of `interval` counts its intervals: the last
/// multiple of the interval since the epoch, on the wall clock, so that triggers fall on those
/// multiples (as Spark's do: a 1-minute trigger fires on the minute).
fn trigger_origin(interval: Duration) -> Instant {
    let interval_ms = interval.as_millis().max(1);
    let now_ms = u128::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
    let phase = u64::try_from(now_ms % interval_ms).unwrap_or_default();
    let now = Instant::now();
    now.checked_sub(Duration::from_millis(phase)).unwrap_or(now)
}

/// How long until the next trigger after one that started at `start`: the next whole interval
/// since `origin`. A batch that took longer than the interval is followed at once.
fn until_next_trigger(interval: Duration, origin: Instant, start: Instant) -> Duration {
    let interval_ns = interval.as_nanos().max(1);
    let intervals = start.saturating_duration_since(origin).as_nanos() / interval_ns + 1;
    let next = u64::try_from(intervals * interval_ns).map_or(Duration::MAX, Duration::from_nanos);
    (origin + next).saturating_duration_since(Instant::now())
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

impl Driver {
    /// Runs the loop to its end and records how it ended.
    pub(crate) async fn run(self) {
        let shared = self.shared.clone();
        let span = tracing::info_span!("query", name = %shared.label(), id = %shared.id);
        // A panic in the engine fails the query like any error: waiting callers are told, never
        // left waiting for a loop that is gone.
        let result = std::panic::AssertUnwindSafe(self.run_loop().instrument(span))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                Err(Error::Internal(format!("the query's loop panicked: {message}")))
            });
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
        let (mut cursors, scan_cursor) = cursor::cursors(&self.plan)?;
        let mut operators = Operators::new(
            &self.plan,
            self.state_partitions,
            &self.checkpoint,
            self.retention.snapshot_interval,
        )?;
        self.shared.set_status("Restoring from the checkpoint", false, true);
        let (watermarks, batch_id, replay) = self.recover(&mut cursors, &mut operators).await?;
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
        let mut run = Run {
            cursors,
            scan_cursor,
            operators,
            watermarks,
            batch_id,
            replay,
            pending_commit: None,
            previous_trigger: None,
            trigger_origin: match self.trigger {
                Trigger::ProcessingTime(interval) => trigger_origin(interval),
                _ => Instant::now(),
            },
        };
        let result = self.batches(&mut run).await;
        let committed = finish(run.pending_commit.take()).await;
        for store in run.operators.stores() {
            store.finish().await;
        }
        for cursor in &run.cursors {
            cursor.source.stop().await;
        }
        result.and(committed)
    }

    /// Runs batches until the trigger says to stop, each in named steps: offsets (and the
    /// offsets log), read, the stateful stage, the sink, commit.
    async fn batches(&self, run: &mut Run) -> Result<()> {
        loop {
            if *self.shared.stop.borrow() {
                return Ok(());
            }
            let trigger_start = Instant::now();
            self.shared.checks.send_modify(|c| c.0 += 1);
            let check = *self.shared.checks.borrow();
            self.shared.set_status("Getting offsets from sources", false, true);
            let mut batch = match self.offsets(run).await? {
                Next::Run(batch) => batch,
                Next::Done => {
                    self.shared.checks.send_modify(|c| c.1 = check.0);
                    return Ok(());
                }
                Next::Wait(message) => {
                    // The status first: whoever `process_all_available` wakes sees it.
                    self.shared.set_status(&message, false, false);
                    self.shared.checks.send_modify(|c| c.1 = check.0);
                    let wait = match self.trigger {
                        Trigger::ProcessingTime(interval) => {
                            until_next_trigger(interval, run.trigger_origin, trigger_start)
                        }
                        _ => IDLE_POLL,
                    };
                    self.wait(wait, true).await;
                    continue;
                }
            };
            let latest_offset_ms = trigger_start.elapsed().as_millis() as u64;
            let has_data = run
                .cursors
                .iter()
                .zip(&batch.ends)
                .any(|(c, e)| e.is_some() && *e != c.committed);
            self.shared.set_status("Processing new data", has_data, true);
            let span = tracing::info_span!("batch", batch_id = run.batch_id);
            let ran = self
                .process(run, &mut batch)
                .instrument(span)
                .await
                .map_err(|e| Error::Query {
                    query: self.shared.label(),
                    batch_id: run.batch_id,
                    error: Box::new(e),
                })?;
            self.commit(run, &batch, ran, trigger_start, latest_offset_ms);
            match self.trigger {
                // After a replayed batch, `once` still runs its one batch of new input.
                Trigger::Once if !batch.replaying => return Ok(()),
                Trigger::ProcessingTime(interval) => {
                    self.shared.set_status("Waiting for next trigger", false, false);
                    self.wait(until_next_trigger(interval, run.trigger_origin, trigger_start), false)
                        .await;
                }
                _ => {}
            }
        }
    }

    /// The offsets step: the end offsets of the next batch (as logged, for a batch that runs
    /// again), or why there is none. A new batch's offsets entry, after the sources' own logs,
    /// is written in the background while the batch is read and processed.
    async fn offsets(&self, run: &mut Run) -> Result<Next> {
        // A batch logged but never committed runs again exactly as logged.
        if let Some(entry) = run.replay.take() {
            tracing::info!(
                batch_id = run.batch_id,
                "re-running a batch that was not committed before the restart"
            );
            let time = chrono::DateTime::from_timestamp_millis(entry.batch_timestamp_ms)
                .ok_or_else(|| Error::Internal(format!("batch timestamp {} out of range", entry.batch_timestamp_ms)))?;
            return Ok(Next::Run(Batch {
                ends: entry.offsets,
                time,
                logging: None,
                replaying: true,
            }));
        }
        let mut ends = Vec::with_capacity(run.cursors.len());
        for cursor in &run.cursors {
            let limit = match (&self.trigger, &cursor.cap) {
                (Trigger::Once, _) => ReadLimit::All,
                (Trigger::AvailableNow, Some(cap)) => ReadLimit::UpTo(cap.clone()),
                (Trigger::AvailableNow, None) => ReadLimit::UpTo(Offset::from_u64(0)),
                _ => ReadLimit::Default,
            };
            ends.push(cursor.source.latest_offset(cursor.committed.as_ref(), limit).await?);
        }
        let operators = self.plan.operators();
        let has_data = run
            .cursors
            .iter()
            .zip(&ends)
            .any(|(c, e)| e.is_some() && *e != c.committed);
        // A batch without new rows still runs when the watermark has moved, so that windows it
        // closes are emitted and evicted.
        let watermark_moved = operators.iter().any(|s| s.plan.has_event_time())
            && run.watermarks.current != run.watermarks.previous
            && run.batch_id > 0;
        // Windows over processing time close at the batch's time: the watermark is the clock. A
        // batch runs once the clock passes the end of one, to emit it in append mode.
        let processing_time = operators.iter().any(|s| s.plan.has_processing_time());
        let window_due = processing_time
            && self.output_mode == OutputMode::Append
            && run
                .operators
                .next_close()
                .is_some_and(|end| end <= crate::time::now_nanos());
        if !has_data && !watermark_moved && !window_due {
            if matches!(self.trigger, Trigger::Once | Trigger::AvailableNow) {
                return Ok(Next::Done);
            }
            let trouble: Vec<String> = run.cursors.iter().filter_map(|c| c.source.status()).collect();
            return Ok(Next::Wait(match trouble.is_empty() {
                true => "Waiting for data to arrive".to_string(),
                false => format!("Waiting for data to arrive ({})", trouble.join("; ")),
            }));
        }
        let now = chrono::Utc::now();
        let time = chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        if processing_time {
            // The batch's rows all have its time: windows ending by then are whole.
            run.watermarks.current = time.timestamp_nanos_opt();
        }
        // Log the batch before its output reaches the sink: the sources' own logs, then the
        // offsets.
        let entry = OffsetEntry {
            batch_id: run.batch_id,
            batch_timestamp_ms: time.timestamp_millis(),
            late_watermark: run.watermarks.previous,
            watermark: run.watermarks.current,
            offsets: ends.clone(),
        };
        let sources: Vec<_> = run
            .cursors
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
        let previous = run.pending_commit.take();
        let batch_id = run.batch_id;
        let logging = tokio::spawn(async move {
            // The previous batch's commit lands first: the logs never have a gap.
            finish(previous).await?;
            for (source, log, start, end) in sources {
                source.persist(&log, batch_id, start.as_ref(), &end).await?;
            }
            checkpoint.write_offsets(&entry).await
        });
        Ok(Next::Run(Batch {
            ends,
            time,
            logging: Some(logging),
            replaying: false,
        }))
    }

    /// The read, stateful-stage and sink steps of one batch.
    async fn process(&self, run: &mut Run, batch: &mut Batch) -> Result<Ran> {
        let read_start = Instant::now();
        let counters: Vec<Arc<AtomicU64>> = run.cursors.iter().map(|_| Arc::default()).collect();
        let inputs = cursor::read(&self.plan, &run.cursors, &run.scan_cursor, &batch.ends, &counters).await?;
        let get_batch_ms = read_start.elapsed().as_millis() as u64;
        let add_start = Instant::now();
        let watermarks = (run.watermarks.previous, run.watermarks.current);
        let output = run
            .operators
            .run(&self.plan, &self.state, batch.time, inputs, watermarks)
            .await?;
        let rows = execute_stream(output.plan, self.state.task_ctx())?;
        let wal_commit = wait_for_offsets(batch.logging.take()).await?;
        // The state's changes are written after the batch, with its commit.
        let changes = run.operators.changes(run.batch_id)?;
        let output_rows = self
            .sink
            .add_batch_replacing(run.batch_id, self.output_mode, rows, output.replaced)
            .await?;
        tracing::debug!(rows = output_rows, "batch written");
        Ok(Ran {
            get_batch_ms,
            add_batch_ms: add_start.elapsed().saturating_sub(wal_commit).as_millis() as u64,
            wal_commit_ms: wal_commit.as_millis() as u64,
            output_rows,
            operators: output.metrics,
            changes,
            counters,
        })
    }

    /// The commit step: the sink has the batch, so the cursors move on, the watermark advances,
    /// and state version N and the commit are written while the next batch runs (the next
    /// batch's offsets entry waits for them, so the logs never have a gap).
    fn commit(&self, run: &mut Run, batch: &Batch, ran: Ran, trigger_start: Instant, latest_offset_ms: u64) {
        let batch_id = run.batch_id;
        let starts: Vec<Option<Offset>> = run.cursors.iter().map(|c| c.committed.clone()).collect();
        for (cursor, end) in run.cursors.iter_mut().zip(&batch.ends) {
            if end.is_some() && *end != cursor.committed {
                cursor.committed = end.clone();
                cursor.last_data = Instant::now();
            }
        }
        let batch_watermark = run.watermarks.current;
        run.watermarks.advance(&run.cursors);
        let commit = CommitEntry {
            batch_id,
            max_event_times: run
                .cursors
                .iter()
                .map(|c| Some(c.max_event_time.load(Ordering::Relaxed)).filter(|t| *t != i64::MIN))
                .collect(),
            next_watermark: run.watermarks.current,
        };
        let (checkpoint, retention, changes) = (self.checkpoint.clone(), self.retention, ran.changes);
        let consumed: Vec<_> = run
            .cursors
            .iter()
            .filter_map(|c| Some((c.source.clone(), c.committed.clone()?)))
            .collect();
        run.pending_commit = Some(tokio::spawn(async move {
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
            operators: ran.operators,
            trigger_start,
            previous_trigger: run.previous_trigger,
            latest_offset_ms,
            get_batch_ms: ran.get_batch_ms,
            add_batch_ms: ran.add_batch_ms,
            wal_commit_ms: ran.wal_commit_ms,
            output_rows: ran.output_rows,
            cursors: &run.cursors,
            starts,
            counters: &ran.counters,
        });
        run.previous_trigger = Some(trigger_start);
        run.batch_id += 1;
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
}
