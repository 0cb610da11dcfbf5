//! Running streaming queries: the handle users hold, and the micro-batch loop behind it.
//!
//! This is the one module with tasks and time. Each query runs as one tokio task ([`driver`]) that
//! owns the offsets: it asks every source how far input goes, reads the new rows, runs the bound
//! batch plan, hands the result to the sink, and only then moves its offsets on. The
//! [`StreamingQuery`] handle watches that task: status, progress, stop, and waiting for the end.

mod cursor;
pub(crate) mod driver;
pub(crate) mod progress;
mod report;
pub(crate) mod stages;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::error::{Error, Result};
pub use progress::{SinkProgress, SourceProgress, StateOperatorProgress, StreamingQueryProgress};

/// Progress reports kept per query ([`StreamingQuery::recent_progress`]), like Spark's default.
const RECENT_PROGRESS_KEPT: usize = 100;

/// When the next batch starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Trigger {
    /// As soon as the previous batch is done and new input is there.
    #[default]
    Default,
    /// Every interval (a batch that takes longer is followed at once by the next).
    ProcessingTime(Duration),
    /// One batch with everything available at start, ignoring per-trigger limits, then stop.
    Once,
    /// Everything available at start, in as many batches as the per-trigger limits allow, then stop.
    AvailableNow,
}

/// What a query is doing right now (Spark's `StreamingQueryStatus`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamingQueryStatus {
    /// A human description, e.g. `Waiting for data to arrive`.
    pub message: String,
    /// Whether the last check found new input.
    pub is_data_available: bool,
    /// Whether a batch is running.
    pub is_trigger_active: bool,
}

/// A handle to a running (or finished) streaming query. Cloning gives another handle to the same
/// query.
#[derive(Clone, Debug)]
pub struct StreamingQuery {
    shared: Arc<QueryShared>,
}

/// What the driver task and the handles share.
#[derive(Debug)]
pub(crate) struct QueryShared {
    pub(crate) id: String,
    pub(crate) run_id: String,
    pub(crate) name: Option<String>,
    /// The incremental plan, as text.
    pub(crate) plan: String,
    pub(crate) status: Mutex<StreamingQueryStatus>,
    /// The newest [`RECENT_PROGRESS_KEPT`] progress reports, oldest first.
    pub(crate) progress: Mutex<VecDeque<StreamingQueryProgress>>,
    /// Input rows of every batch so far, also those whose reports were let go.
    pub(crate) input_rows: std::sync::atomic::AtomicU64,
    /// Set once to ask the driver to stop after the batch in flight.
    pub(crate) stop: watch::Sender<bool>,
    /// Wakes the driver from its wait for new input.
    pub(crate) wake: Notify,
    /// `(checks started, last check that found no new input)`; see [`StreamingQuery::process_all_available`].
    pub(crate) checks: watch::Sender<(u64, u64)>,
    /// `None` while running; then how it ended.
    pub(crate) outcome: watch::Sender<Option<Outcome>>,
}

/// How a query ended.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    Finished,
    Failed(Arc<Error>),
}

impl QueryShared {
    pub(crate) fn new(id: String, name: Option<String>, plan: String) -> Self {
        QueryShared {
            id,
            plan,
            run_id: uuid::Uuid::new_v4().to_string(),
            name,
            status: Mutex::new(StreamingQueryStatus {
                message: "Initializing sources".to_string(),
                is_data_available: false,
                is_trigger_active: false,
            }),
            progress: Mutex::default(),
            input_rows: std::sync::atomic::AtomicU64::new(0),
            stop: watch::Sender::new(false),
            wake: Notify::new(),
            checks: watch::Sender::new((0, 0)),
            outcome: watch::Sender::new(None),
        }
    }

    pub(crate) fn set_status(&self, message: &str, data: bool, active: bool) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = StreamingQueryStatus {
            message: message.to_string(),
            is_data_available: data,
            is_trigger_active: active,
        };
    }

    pub(crate) fn push_progress(&self, progress: StreamingQueryProgress) {
        self.input_rows
            .fetch_add(progress.num_input_rows, std::sync::atomic::Ordering::Relaxed);
        let mut recent = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_PROGRESS_KEPT {
            recent.pop_front();
        }
        recent.push_back(progress);
    }

    /// A label for logs and errors: the name, or the id.
    pub(crate) fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.id.clone())
    }
}

impl StreamingQuery {
    pub(crate) fn new(shared: Arc<QueryShared>) -> Self {
        StreamingQuery { shared }
    }

    /// Input rows of every batch the query has run in this process.
    pub(crate) fn total_input_rows(&self) -> u64 {
        self.shared.input_rows.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The query's id: stable across restarts from the same checkpoint.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// This run's id, new at every start.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// The name given with `query_name`, if any.
    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// The incremental plan as text: the plan run over each batch's rows and, for an aggregation,
    /// the stateful operator and the plan run over its output (like Spark's `explain()`); once a
    /// batch has run, the state it left (rows and bytes per stateful operator).
    pub fn explain(&self) -> String {
        let mut text = self.shared.plan.clone();
        if let Some(last) = self.last_progress()
            && !last.state_operators.is_empty()
        {
            text.push_str(&format!("== State after batch {} ==\n", last.batch_id));
            for operator in &last.state_operators {
                text.push_str(&format!(
                    "{}: {} rows, {} bytes\n",
                    operator.operator_name, operator.num_rows_total, operator.memory_used_bytes
                ));
            }
        }
        text
    }

    /// What the query is doing right now.
    pub fn status(&self) -> StreamingQueryStatus {
        self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The progress of the most recent batch.
    pub fn last_progress(&self) -> Option<StreamingQueryProgress> {
        self.shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back()
            .cloned()
    }

    /// The progress of recent batches, oldest first (at most 100).
    pub fn recent_progress(&self) -> Vec<StreamingQueryProgress> {
        self.shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// True until the query has finished, failed or been stopped.
    pub fn is_active(&self) -> bool {
        self.shared.outcome.borrow().is_none()
    }

    /// The error that ended the query, if it failed.
    pub fn exception(&self) -> Option<Arc<Error>> {
        match &*self.shared.outcome.borrow() {
            Some(Outcome::Failed(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Waits until the query ends, or at most `timeout`. Returns `true` when it has ended and
    /// `false` on timeout.
    ///
    /// # Errors
    /// The query's own error, when it failed.
    pub async fn await_termination(&self, timeout: Option<Duration>) -> Result<bool> {
        let mut outcome = self.shared.outcome.subscribe();
        let ended = async {
            // The sender lives in `shared`, which we hold, so the channel cannot close.
            let _ = outcome.wait_for(Option::is_some).await;
        };
        match timeout {
            Some(t) => {
                if tokio::time::timeout(t, ended).await.is_err() {
                    return Ok(false);
                }
            }
            None => ended.await,
        }
        match self.exception() {
            Some(e) => Err(Error::Terminated(e)),
            None => Ok(true),
        }
    }

    /// Blocks until every row available at the time of the call has been processed and written to
    /// the sink (or the query ended). Meant for tests, like Spark's `processAllAvailable`.
    ///
    /// # Errors
    /// The query's own error, when it failed.
    pub async fn process_all_available(&self) -> Result<()> {
        let started_before = self.shared.checks.borrow().0;
        self.shared.wake.notify_one();
        let mut checks = self.shared.checks.subscribe();
        let mut outcome = self.shared.outcome.subscribe();
        tokio::select! {
            _ = checks.wait_for(|(_, idle)| *idle > started_before) => {}
            _ = outcome.wait_for(Option::is_some) => {}
        }
        match self.exception() {
            Some(e) => Err(Error::Terminated(e)),
            None => Ok(()),
        }
    }

    /// Stops the query after the batch in flight and waits for it to end.
    ///
    /// # Errors
    /// The query's own error, when it had failed.
    pub async fn stop(&self) -> Result<()> {
        self.shared.stop.send_replace(true);
        self.shared.wake.notify_one();
        self.await_termination(None).await.map(|_| ())
    }
}
