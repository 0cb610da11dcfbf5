//! Course program: the hashtag count of hands-on 3 ("Counting words from Twitter posts"), with
//! the DataFrame API. Tweets arrive on a TCP socket, one per line; every batch prints the 10 most
//! used hashtags of the last 60 seconds, a window sliding every 10 seconds. The SQL twin is
//! `sql/03_top_hashtags.sql`.
//!
//! ```sh
//! nc -lk 9999 < data/tweets/tweets.txt                          # terminal 1
//! cargo run --example 03_top_hashtags -- localhost 9999       # terminal 2; Ctrl-C stops
//! ```
//!
//! Each tweet counts in the six 60-second windows, sliding every 10 seconds, around the moment it
//! was read (processing time, as DStream's `reduceByKeyAndWindow(add, None, 60, 10)`). The
//! window ending next is the last 60 seconds; complete mode keeps every window, the filter keeps
//! that one and sort and limit its top 10.

use tidewater::datafusion::common::ScalarValue;
use tidewater::datafusion::functions::core::expr_ext::FieldAccessor;
use tidewater::datafusion::functions::expr_fn::{lower, now, regexp_replace, starts_with};
use tidewater::datafusion::functions_aggregate::expr_fn::count;
use tidewater::datafusion::functions_nested::expr_fn::string_to_array;
use tidewater::datafusion::prelude::{col, lit};
use tidewater::{OutputMode, StreamingDataFrame, StreamingSession};

/// How many hashtags are shown.
const TOP: usize = 10;

/// The tweets a line server sends, one row each in column `value`.
pub(crate) async fn socket_tweets(
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

/// The top hashtags of the last 60 seconds: columns `window_start`, `window_end`, `hashtag`, `n`,
/// most used first (complete mode).
pub(crate) fn top_hashtags(tweets: StreamingDataFrame) -> tidewater::Result<StreamingDataFrame> {
    let window = || tidewater::sliding_window(now(), "60 seconds", "10 seconds");
    let slide = lit(ScalarValue::new_interval_mdn(0, 0, 10_000_000_000));
    tweets
        .select(vec![
            string_to_array(col("value"), lit(" "), lit(ScalarValue::Utf8(None))).alias("word"),
        ])?
        .transform(|df| df.unnest_columns(&["word"]))?
        .filter(starts_with(col("word"), lit("#")))?
        // Lower-cased, without punctuation: "#Barcelona!" is #barcelona.
        .select(vec![
            lower(regexp_replace(
                col("word"),
                lit("[^#[:alnum:]_]"),
                lit(""),
                Some(lit("g")),
            ))
            .alias("hashtag"),
        ])?
        .filter(col("hashtag").not_eq(lit("#")))?
        .aggregate(
            vec![window().alias("w"), col("hashtag")],
            vec![count(lit(1)).alias("n")],
        )?
        // The window that ends next: the last 60 seconds.
        .filter(
            col("w")
                .field("end")
                .gt(now())
                .and(col("w").field("end").lt_eq(now() + slide)),
        )?
        .select(vec![
            col("w").field("start").alias("window_start"),
            col("w").field("end").alias("window_end"),
            col("hashtag"),
            col("n"),
        ])?
        .transform(|df| {
            df.sort(vec![col("n").sort(false, false), col("hashtag").sort(true, false)])?
                .limit(0, Some(TOP))
        })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "localhost".to_string());
    let port: u16 = args.next().as_deref().unwrap_or("9999").parse()?;

    let session = StreamingSession::new();
    let query = top_hashtags(socket_tweets(&session, &host, port).await?)?
        .write_stream()
        .format("console")
        .option("truncate", false)
        .output_mode(OutputMode::Complete)
        .start()
        .await?;

    tokio::select! {
        ended = query.await_termination(None) => { ended?; }
        _ = tokio::signal::ctrl_c() => query.stop().await?,
    }
    Ok(())
}
