//! The rate source: `rows_per_second` rows of `(timestamp, value)`, for demos and benchmarks.
//!
//! Row `i` has `value = i` and `timestamp = start + i / rows_per_second`, so any offset range can
//! be generated again identically; the offset is the number of rows due so far. Time is read from
//! `tokio::time`, so tests can pause and advance it. Each query has its own clock; a query
//! restarted from its checkpoint goes on from its committed offset, its clock starting again there.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Int64Array, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::memory::MemoryStream as DfMemoryStream;

use super::{Offset, ReadLimit, Source, count, project_schema};
use crate::error::{Error, Result};

/// Rows generated per output record batch.
const ROWS_PER_RECORD_BATCH: u64 = 8192;

/// Generates `rows_per_second` rows per second of wall time, starting when it is created.
#[derive(Debug)]
pub struct RateSource {
    rows_per_second: u64,
    schema: SchemaRef,
    /// When row 0 is due, in the clock that paces the rows.
    started: tokio::time::Instant,
    /// Row `base`'s event time, microseconds since the epoch.
    start_micros: i64,
    /// The offset the clock started at: the committed one of a restarted query, else 0.
    base: std::sync::OnceLock<u64>,
}

impl RateSource {
    /// A rate source emitting `rows_per_second` rows each second (at least 1).
    pub fn new(rows_per_second: u64) -> Self {
        let schema = Arc::new(Schema::new(vec![
            Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, None), false),
            Field::new("value", DataType::Int64, false),
        ]));
        RateSource {
            rows_per_second: rows_per_second.max(1),
            schema,
            started: tokio::time::Instant::now(),
            start_micros: chrono::Utc::now().timestamp_micros(),
            base: std::sync::OnceLock::new(),
        }
    }

    fn base(&self) -> u64 {
        self.base.get().copied().unwrap_or(0)
    }

    fn rows_due(&self) -> u64 {
        let elapsed = self.started.elapsed();
        self.base() + (elapsed.as_micros() * self.rows_per_second as u128 / 1_000_000) as u64
    }

    fn batch(&self, from: u64, to: u64) -> Result<RecordBatch> {
        let values: Vec<i64> = (from..to).map(|v| v as i64).collect();
        let micros_per_row = 1_000_000f64 / self.rows_per_second as f64;
        let times: Vec<i64> = values
            .iter()
            .map(|v| self.start_micros + ((*v - self.base() as i64) as f64 * micros_per_row) as i64)
            .collect();
        RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(TimestampMicrosecondArray::from(times)),
                Arc::new(Int64Array::from(values)),
            ],
        )
        .map_err(|e| Error::Internal(format!("rate source: {e}")))
    }
}

#[async_trait]
impl Source for RateSource {
    /// Each query has its own clock.
    fn for_query(self: Arc<Self>) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(RateSource::new(self.rows_per_second)))
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn description(&self) -> String {
        format!("RateSource[rowsPerSecond={}]", self.rows_per_second)
    }

    async fn latest_offset(&self, start: Option<&Offset>, limit: ReadLimit) -> Result<Option<Offset>> {
        if let Some(start) = start {
            self.base.get_or_init(|| start.as_u64().unwrap_or(0));
        }
        let mut due = self.rows_due();
        if let ReadLimit::UpTo(cap) = &limit {
            due = due.min(count(Some(cap), "rate source")? as u64);
        }
        Ok(Some(Offset::from_u64(due.max(count(start, "rate source")? as u64))))
    }

    async fn read(
        &self,
        start: Option<&Offset>,
        end: &Offset,
        projection: Option<&[usize]>,
    ) -> Result<SendableRecordBatchStream> {
        let (from, to) = (
            count(start, "rate source")? as u64,
            count(Some(end), "rate source")? as u64,
        );
        let mut batches = Vec::new();
        let mut at = from;
        while at < to {
            let next = (at + ROWS_PER_RECORD_BATCH).min(to);
            batches.push(self.batch(at, next)?);
            at = next;
        }
        let schema = project_schema(&self.schema, projection)?;
        Ok(Box::pin(DfMemoryStream::try_new(
            batches,
            schema,
            projection.map(|p| p.to_vec()),
        )?))
    }
}
