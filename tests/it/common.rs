//! Helpers shared by the tests: pushing rows, reading a memory sink, comparing rows as text.

use std::sync::Arc;

use tidewater::arrow::array::RecordBatch;
use tidewater::arrow::util::display::{ArrayFormatter, FormatOptions};
use tidewater::{StatementOutcome, StreamingQuery, StreamingSession};

/// Runs a script that must end with one `INSERT INTO <sink>`, and returns its query.
pub(crate) async fn start(session: &StreamingSession, sql: &str) -> StreamingQuery {
    let outcomes = session.run_script(sql).await.expect("script runs");
    match outcomes.into_iter().last() {
        Some(StatementOutcome::Started(q)) => q,
        other => panic!("the script's last statement did not start a query: {other:?}"),
    }
}

/// Each row as `a|b|c`, NULL for nulls, in batch order.
pub(crate) fn rows(batches: &[RecordBatch]) -> Vec<String> {
    cells(batches).into_iter().map(|row| row.join("|")).collect()
}

/// Each row as its cells' text, NULL for nulls, in batch order.
pub(crate) fn cells(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            out.push(formatters.iter().map(|f| f.value(row).to_string()).collect());
        }
    }
    out
}

/// Rows in sorted order, to compare results whose order does not matter.
pub(crate) fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}

/// The rows of a SQL query, as text.
pub(crate) async fn query_rows(session: &StreamingSession, sql: &str) -> Vec<String> {
    rows(&session.sql(sql).await.unwrap().collect().await.unwrap())
}

/// Pushes rows given as JSON lines into a memory stream (decoded with the stream's schema).
pub(crate) fn push_json(session: &StreamingSession, stream: &str, lines: &[&str]) {
    let stream = session.memory_stream(stream).unwrap();
    let schema = tidewater::Source::schema(&stream);
    let mut decoder = tidewater::arrow::json::ReaderBuilder::new(Arc::clone(&schema))
        .build_decoder()
        .unwrap();
    let text = lines.join("\n");
    decoder.decode(text.as_bytes()).unwrap();
    let batch = decoder
        .flush()
        .unwrap()
        .unwrap_or_else(|| RecordBatch::new_empty(schema));
    stream.add_batch(batch).unwrap();
}

/// Writes a file atomically into `dir`: first under a hidden name, then renamed.
pub(crate) fn drop_file(dir: &std::path::Path, name: &str, content: &[u8]) {
    let staging = dir.join(format!(".{name}.staging"));
    std::fs::write(&staging, content).unwrap();
    std::fs::rename(&staging, dir.join(name)).unwrap();
}

/// The URL in environment variable `var`, or `None` after saying that the test is skipped.
pub(crate) fn env_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            println!("skipped: {var} is not set");
            None
        }
    }
}
