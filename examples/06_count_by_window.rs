//! Course program: how many lines came in the last 30 seconds, every 10 seconds (lab 10, step 6:
//! `lines.countByWindow(30, 10)` over a socket), with the DataFrame API. The SQL twin is
//! `sql/06_count_by_window.sql`.
//!
//! ```sh
//! cat data/rsvps/*.json | nc -lk 9999                               # terminal 1
//! cargo run --example 06_count_by_window -- localhost 9999        # terminal 2; Ctrl-C stops
//! ```
//!
//! Every line counts in the three 30-second windows, sliding every 10 seconds, around the moment
//! it was read (processing time). Append mode prints each window once, when the clock has passed
//! its end: every 10 seconds, the count of the 30 seconds before. A window without lines has no
//! row (a DStream would print 0).

use tidewater::datafusion::functions::expr_fn::now;
use tidewater::datafusion::functions_aggregate::expr_fn::count;
use tidewater::datafusion::prelude::lit;
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

/// Lines per 30-second window sliding every 10 seconds: `last_30_seconds` (`{start, end}`),
/// `lines`. Use append mode.
pub(crate) fn count_by_window(lines: StreamingDataFrame) -> tidewater::Result<StreamingDataFrame> {
    lines.aggregate(
        vec![tidewater::sliding_window(now(), "30 seconds", "10 seconds").alias("last_30_seconds")],
        vec![count(lit(1)).alias("lines")],
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "localhost".to_string());
    let port: u16 = args.next().as_deref().unwrap_or("9999").parse()?;

    let session = StreamingSession::new();
    let query = count_by_window(socket_lines(&session, &host, port).await?)?
        .write_stream()
        .format("console")
        .option("truncate", false)
        .output_mode(OutputMode::Append)
        .start()
        .await?;

    tokio::select! {
        ended = query.await_termination(None) => { ended?; }
        _ = tokio::signal::ctrl_c() => query.stop().await?,
    }
    Ok(())
}
