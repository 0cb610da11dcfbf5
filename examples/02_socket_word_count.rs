//! Course program: the network word count over a TCP socket, per batch (Spark Streaming's
//! `NetworkWordCount`) and as a running total (`updateStateByKey`), with the DataFrame API. The
//! SQL twins are `sql/02_socket_word_count.sql` and `sql/02_socket_word_count_running.sql`.
//!
//! ```sh
//! nc -lk 9999 < data/words/words.txt                                       # terminal 1
//! cargo run --example 02_socket_word_count -- localhost 9999             # terminal 2: per 10 s
//! cargo run --example 02_socket_word_count -- localhost 9999 --running   # or: totals so far
//! ```
//! Type more lines into `nc -lk 9999` to see them counted; Ctrl-C stops.
//!
//! A DStream batch of 10 seconds is a processing-time window here, `window(now(), "10 seconds")`:
//! each line falls in the window of the batch that read it, and append mode prints each window
//! once, when the clock has passed its end. The running total is a plain aggregation in complete
//! mode: the engine keeps the counts, as `updateStateByKey` kept them.

use tidewater::datafusion::common::ScalarValue;
use tidewater::datafusion::functions::expr_fn::now;
use tidewater::datafusion::functions_aggregate::expr_fn::count;
use tidewater::datafusion::functions_nested::expr_fn::string_to_array;
use tidewater::datafusion::prelude::{col, lit};
use tidewater::{OutputMode, StreamingDataFrame, StreamingSession};

/// The lines a line server (such as `nc -lk 9999`) sends, one row each in column `value`.
pub(crate) async fn socket_lines(
    session: &StreamingSession,
    host: &str,
    port: u16,
) -> tidewater::Result<StreamingDataFrame> {
    session
        .read_stream()
        .format("socket")
        .option("host", host)
        .option("port", port)
        .start()
        .await
}

/// One row per word (`lines.flatMap(lambda line: line.split(" "))`), empty words left out.
pub(crate) fn words(lines: StreamingDataFrame) -> tidewater::Result<StreamingDataFrame> {
    lines
        .select(vec![
            string_to_array(col("value"), lit(" "), lit(ScalarValue::Utf8(None))).alias("word"),
        ])?
        .transform(|df| df.unnest_columns(&["word"]))?
        .filter(col("word").not_eq(lit("")))
}

/// How often each word came in each 10-second batch: columns `batch` (`{start, end}`), `word`, `n`.
pub(crate) fn counts_per_batch(words: StreamingDataFrame) -> tidewater::Result<StreamingDataFrame> {
    words.aggregate(
        vec![tidewater::window(now(), "10 seconds").alias("batch"), col("word")],
        vec![count(lit(1)).alias("n")],
    )
}

/// How often each word came so far, sorted by word: columns `word`, `n` (complete mode).
pub(crate) fn running_counts(words: StreamingDataFrame) -> tidewater::Result<StreamingDataFrame> {
    words
        .aggregate(vec![col("word")], vec![count(lit(1)).alias("n")])?
        .transform(|df| df.sort(vec![col("word").sort(true, false)]))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "localhost".to_string());
    let port: u16 = args.next().as_deref().unwrap_or("9999").parse()?;
    let running = args.any(|a| a == "--running");

    let session = StreamingSession::new();
    let words = words(socket_lines(&session, &host, port).await?)?;
    let (counts, mode) = match running {
        true => (running_counts(words)?, OutputMode::Complete),
        false => (counts_per_batch(words)?, OutputMode::Append),
    };
    let query = counts
        .write_stream()
        .format("console")
        .option("truncate", false)
        .option("num_rows", 100)
        .output_mode(mode)
        .start()
        .await?;

    tokio::select! {
        ended = query.await_termination(None) => { ended?; }
        _ = tokio::signal::ctrl_c() => query.stop().await?,
    }
    Ok(())
}
