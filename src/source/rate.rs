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
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use super::{Built, Offset, ReadLimit, Source, SourceConnector, SourceRequest, count, project_schema};
use crate::error::{Error, Result};

/// Rows generated per output record batch.
const ROWS_PER_RECORD_BATCH: u64 = 8192;

/// The most rows one trigger reads (16 MB of rows): a rate faster than the query keeps up with
/// makes it fall behind, as in Spark, instead of making every batch larger than the last.
const MAX_ROWS_PER_TRIGGER: u64 = 1_000_000;

/// The `rate` connector.
pub(crate) const CONNECTOR: SourceConnector = SourceConnector {
    name: "rate",
    options: &["rows_per_second"],
    build,
};

/// The fastest rate source: past this a demo source would only measure the generator.
const MAX_ROWS_PER_SECOND: usize = 1_000_000_000;

fn build(request: &SourceRequest<'_>) -> Result<Built> {
    let options = request.options;
    if request.schema.is_some() {
        return Err(options.error("the rate source has fixed columns (timestamp, value): leave out the column list"));
    }
    let rows_per_second = options.positive("rows_per_second", MAX_ROWS_PER_SECOND)?.unwrap_or(1) as u64;
    Ok((Arc::new(RateSource::new(rows_per_second)), None))
}

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
        let due = elapsed.as_micros().saturating_mul(u128::from(self.rows_per_second)) / 1_000_000;
        self.base().saturating_add(u64::try_from(due).unwrap_or(u64::MAX))
    }

    /// What generating rows needs, detached from the clock.
    fn generator(&self) -> Generator {
        Generator {
            schema: self.schema.clone(),
            rows_per_second: self.rows_per_second,
            base: self.base(),
            start_micros: self.start_micros,
        }
    }
}

/// Makes rows `from..to` the same way every time.
#[derive(Debug, Clone)]
struct Generator {
    schema: SchemaRef,
    rows_per_second: u64,
    base: u64,
    start_micros: i64,
}

impl Generator {
    /// Rows `from..to` (one record batch).
    fn batch(&self, from: u64, to: u64) -> Result<RecordBatch> {
        let out_of_range = || Error::OutOfRange(format!("rate source: row {to} has no representable timestamp"));
        let mut values = Vec::with_capacity(usize::try_from(to.saturating_sub(from)).unwrap_or(0));
        let mut times = Vec::with_capacity(values.capacity());
        for v in from..to {
            // Row `v` is due `(v - base) / rows_per_second` seconds after the clock started.
            let since = (i128::from(v) - i128::from(self.base)) * 1_000_000 / i128::from(self.rows_per_second);
            let time = i64::try_from(i128::from(self.start_micros) + since).map_err(|_| out_of_range())?;
            values.push(i64::try_from(v).map_err(|_| out_of_range())?);
            times.push(time);
        }
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

    /// The rate may change across restarts: it only paces the rows.
    fn identity(&self) -> String {
        "RateSource".to_string()
    }

    async fn latest_offset(&self, start: Option<&Offset>, limit: ReadLimit) -> Result<Option<Offset>> {
        if let Some(start) = start {
            self.base.get_or_init(|| start.as_u64().unwrap_or(0));
        }
        let from = count(start, "rate source")? as u64;
        // A fast rate falls behind rather than growing its batches without bound.
        let mut due = self.rows_due().min(from.saturating_add(MAX_ROWS_PER_TRIGGER));
        if let ReadLimit::UpTo(cap) = &limit {
            due = due.min(count(Some(cap), "rate source")? as u64);
        }
        Ok(Some(Offset::from_u64(due.max(from))))
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
        // Generated one record batch at a time as the query pulls them, so a long range (a
        // replay after a long stop) never sits in memory whole.
        let generator = self.generator();
        let chunks = (from..to)
            .step_by(ROWS_PER_RECORD_BATCH as usize)
            .map(move |at| generator.batch(at, at.saturating_add(ROWS_PER_RECORD_BATCH).min(to)));
        let schema = project_schema(&self.schema, projection)?;
        let projection = projection.map(<[usize]>::to_vec);
        let batches = futures::stream::iter(chunks).map(move |batch| {
            let batch = batch.map_err(Error::into_datafusion)?;
            match &projection {
                Some(p) => Ok(batch.project(p)?),
                None => Ok(batch),
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}
