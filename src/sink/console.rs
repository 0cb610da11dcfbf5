//! The console sink: prints each batch as a table under a `Batch: N` header, like Spark's.

use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::execution::SendableRecordBatchStream;
use futures::TryStreamExt;

use super::{OutputMode, Sink, SinkConnector, SinkRequest, SinkSpec};
use crate::error::{Error, Result};
use crate::options::Options;

/// The `console` connector.
pub(crate) const CONNECTOR: SinkConnector = SinkConnector {
    name: "console",
    options: &["num_rows", "truncate"],
    parse,
};

/// The most rows a console sink prints per batch.
const MAX_ROWS: usize = 1_000_000;

fn parse(options: &Options) -> Result<Arc<dyn SinkSpec>> {
    Ok(Arc::new(ConsoleSpec {
        num_rows: options.positive("num_rows", MAX_ROWS)?.unwrap_or(20),
        truncate: options.boolean("truncate")?.unwrap_or(true),
    }))
}

#[derive(Debug)]
struct ConsoleSpec {
    num_rows: usize,
    truncate: bool,
}

#[async_trait]
impl SinkSpec for ConsoleSpec {
    async fn build(&self, _request: SinkRequest<'_>) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(ConsoleSink::new(self.num_rows, self.truncate)))
    }
}

/// Cells longer than this are cut when `truncate` is on (Spark cuts at 20 characters).
const TRUNCATE_AT: usize = 20;

/// Prints every batch to standard output (or another writer).
pub struct ConsoleSink {
    num_rows: usize,
    truncate: bool,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for ConsoleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSink")
            .field("num_rows", &self.num_rows)
            .field("truncate", &self.truncate)
            .finish()
    }
}

impl ConsoleSink {
    /// Prints at most `num_rows` rows per batch to standard output, cutting long cells when
    /// `truncate` is set.
    pub fn new(num_rows: usize, truncate: bool) -> Self {
        Self::with_writer(num_rows, truncate, Box::new(std::io::stdout()))
    }

    /// Like [`ConsoleSink::new`], printing to `out`.
    pub fn with_writer(num_rows: usize, truncate: bool, out: Box<dyn Write + Send>) -> Self {
        ConsoleSink {
            num_rows,
            truncate,
            out: Arc::new(Mutex::new(out)),
        }
    }
}

#[async_trait]
impl Sink for ConsoleSink {
    fn description(&self) -> String {
        "ConsoleSink".to_string()
    }

    async fn add_batch(&self, batch_id: u64, _mode: OutputMode, data: SendableRecordBatchStream) -> Result<u64> {
        let schema = data.schema();
        let batches: Vec<RecordBatch> = data.try_collect().await.map_err(Error::from_datafusion)?;
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        let mut shown = Vec::new();
        let mut left = self.num_rows;
        for batch in &batches {
            if left == 0 {
                break;
            }
            let take = batch.num_rows().min(left);
            left -= take;
            let batch = batch.slice(0, take);
            shown.push(if self.truncate { truncate_cells(&batch)? } else { batch });
        }
        let table = if shown.is_empty() {
            // Still show the columns of a batch without rows (or a stream that gave no batch).
            pretty_format_batches(&[RecordBatch::new_empty(schema)])
        } else {
            pretty_format_batches(&shown)
        }
        .map_err(|e| Error::Internal(format!("formatting batch: {e}")))?;
        let mut text = format!(
            "-------------------------------------------\nBatch: {batch_id}\n-------------------------------------------\n{table}\n"
        );
        if total > self.num_rows {
            text.push_str(&format!("only showing top {} of {total} rows\n", self.num_rows));
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| Error::Io {
                context: "writing to the console".to_string(),
                error: e,
            })?;
        Ok(total as u64)
    }
}

/// Renders every column as text, cutting cells longer than [`TRUNCATE_AT`] characters.
fn truncate_cells(batch: &RecordBatch) -> Result<RecordBatch> {
    let options = datafusion::arrow::util::display::FormatOptions::default().with_null("NULL");
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if matches!(
            field.data_type(),
            DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::Float32
                | DataType::Float64
                | DataType::Boolean
        ) {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
            continue;
        }
        let text = match field.data_type() {
            DataType::Utf8 => column.clone(),
            _ => {
                let formatter = datafusion::arrow::util::display::ArrayFormatter::try_new(column.as_ref(), &options)
                    .map_err(|e| Error::Internal(format!("formatting column: {e}")))?;
                let values: Vec<Option<String>> = (0..column.len())
                    .map(|i| column.is_valid(i).then(|| formatter.value(i).to_string()))
                    .collect();
                Arc::new(StringArray::from(values)) as ArrayRef
            }
        };
        let text = cast(&text, &DataType::Utf8).map_err(|e| Error::Internal(format!("formatting column: {e}")))?;
        let strings = text
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| Error::Internal("formatting column: not a string array".to_string()))?;
        let cut: StringArray = strings
            .iter()
            .map(|v| {
                v.map(|s| {
                    if s.chars().count() > TRUNCATE_AT {
                        format!("{}...", s.chars().take(TRUNCATE_AT - 3).collect::<String>())
                    } else {
                        s.to_string()
                    }
                })
            })
            .collect();
        fields.push(Field::new(field.name(), DataType::Utf8, true));
        columns.push(Arc::new(cut));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::Internal(format!("formatting batch: {e}")))
}
