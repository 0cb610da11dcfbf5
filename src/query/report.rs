//! A batch's progress report (Spark's `StreamingQueryProgress`), made from what the batch did.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use super::Trigger;
use super::cursor::SourceCursor;
use super::driver::Driver;
use super::progress::{SinkProgress, SourceProgress, StateOperatorProgress, StreamingQueryProgress, rate};
use crate::operator::OperatorMetrics;
use crate::source::Offset;

/// The facts of one batch that its progress report is made of.
pub(super) struct Report<'a> {
    pub(super) batch_id: u64,
    /// The watermark the batch ran with.
    pub(super) watermark: Option<i64>,
    /// Each stateful operator's name and metrics, in chain order.
    pub(super) operators: Vec<(&'static str, OperatorMetrics)>,
    pub(super) trigger_start: Instant,
    pub(super) previous_trigger: Option<Instant>,
    pub(super) latest_offset_ms: u64,
    pub(super) get_batch_ms: u64,
    pub(super) add_batch_ms: u64,
    /// Time the batch waited for its offsets entry.
    pub(super) wal_commit_ms: u64,
    pub(super) output_rows: u64,
    pub(super) cursors: &'a [SourceCursor],
    pub(super) starts: Vec<Option<Offset>>,
    pub(super) counters: &'a [Arc<AtomicU64>],
}

impl Driver {
    /// Records batch `r`'s progress report, for `recent_progress()`, listeners and the log.
    pub(super) fn record_progress(&self, r: Report<'_>) {
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

/// Nanoseconds since the epoch as ISO 8601 UTC, the way progress reports show times.
fn iso_time(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
