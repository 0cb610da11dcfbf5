//! Sinks on their own: the console sink's layout and options, the memory sink's replay rule.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tidewater::arrow::array::{Int32Array, RecordBatch, StringArray};
use tidewater::arrow::datatypes::{DataType, Field, Schema};
use tidewater::datafusion::physical_plan::memory::MemoryStream as Rows;
use tidewater::{ConsoleSink, MemorySink, OutputMode, Sink};

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn batch(n: i32) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let ids: Vec<i32> = (0..n).collect();
    let texts: Vec<String> = ids
        .iter()
        .map(|i| format!("a rather long piece of text number {i}"))
        .collect();
    RecordBatch::try_new(
        schema,
        vec![Arc::new(Int32Array::from(ids)), Arc::new(StringArray::from(texts))],
    )
    .unwrap()
}

fn rows(b: RecordBatch) -> tidewater::datafusion::execution::SendableRecordBatchStream {
    Box::pin(Rows::try_new(vec![b.clone()], b.schema(), None).unwrap())
}

#[tokio::test]
async fn console_prints_a_header_a_table_and_honours_num_rows_and_truncate() {
    let out = Captured::default();
    let sink = ConsoleSink::with_writer(2, true, Box::new(out.clone()));
    assert_eq!(sink.add_batch(7, OutputMode::Append, rows(batch(3))).await.unwrap(), 3);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("Batch: 7"), "{text}");
    assert!(text.contains("| a rather long pie... |"), "{text}");
    assert!(!text.contains("number 2"), "{text}");
    assert!(text.contains("only showing top 2 of 3 rows"), "{text}");

    let out = Captured::default();
    let sink = ConsoleSink::with_writer(20, false, Box::new(out.clone()));
    sink.add_batch(0, OutputMode::Append, rows(batch(3))).await.unwrap();
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("a rather long piece of text number 2"), "{text}");
    assert!(!text.contains("only showing"), "{text}");
}

/// A batch without rows still shows its columns, also when the stream gives no batch at all (an
/// empty complete-mode result after `ORDER BY ... LIMIT`).
#[tokio::test]
async fn console_shows_the_columns_of_a_batch_without_rows() {
    let out = Captured::default();
    let sink = ConsoleSink::with_writer(20, true, Box::new(out.clone()));
    let schema = batch(0).schema();
    let nothing = Box::pin(Rows::try_new(vec![], schema, None).unwrap());
    assert_eq!(sink.add_batch(3, OutputMode::Complete, nothing).await.unwrap(), 0);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("| id | text |"), "{text}");
}

#[tokio::test]
async fn memory_sink_appends_replaces_and_skips_replayed_batches() {
    let sink = MemorySink::new("t", batch(0).schema());
    sink.add_batch(0, OutputMode::Append, rows(batch(2))).await.unwrap();
    sink.add_batch(1, OutputMode::Append, rows(batch(3))).await.unwrap();
    assert_eq!(sink.batches().iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    // A replay of batch 1 (same id) must not add its rows again.
    assert_eq!(sink.add_batch(1, OutputMode::Append, rows(batch(3))).await.unwrap(), 0);
    assert_eq!(sink.batches().iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    // Complete mode replaces the whole table.
    sink.add_batch(2, OutputMode::Complete, rows(batch(1))).await.unwrap();
    assert_eq!(sink.batches().iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}

#[test]
fn memory_stream_refuses_batches_of_another_shape() {
    let stream = tidewater::MemoryStream::new(batch(0).schema());
    let other = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
        vec![Arc::new(tidewater::arrow::array::Int64Array::from(vec![1]))],
    )
    .unwrap();
    let message = stream.add_batch(other).unwrap_err().to_string();
    assert!(message.contains("do not match"), "{message}");
    assert!(stream.is_empty());
}
