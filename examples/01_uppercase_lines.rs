//! The first classic streaming lab: watch a directory of text files and print every line
//! upper-cased, batch by batch.
//!
//! ```sh
//! cargo run --example 01_uppercase_lines -- data/lines                 # runs until Ctrl-C
//! cargo run --example 01_uppercase_lines -- data/lines --available-now
//! ```
//! Then move text files into the directory (write them elsewhere first, then `mv` them in): each
//! new file's lines appear upper-cased under a `Batch: N` header.

use tidewater::datafusion::functions::expr_fn::upper;
use tidewater::datafusion::prelude::col;
use tidewater::{StreamingSession, Trigger};

#[tokio::main]
async fn main() -> tidewater::Result<()> {
    let mut args = std::env::args().skip(1);
    let directory = args.next().unwrap_or_else(|| "data/lines".to_string());
    let available_now = args.any(|a| a == "--available-now");

    let session = StreamingSession::new();
    let lines = session.read_stream().format("text").load(&directory).await?;
    let query = lines
        .select(vec![upper(col("value")).alias("line")])?
        .write_stream()
        .format("console")
        .option("truncate", false)
        .trigger(if available_now {
            Trigger::AvailableNow
        } else {
            Trigger::Default
        })
        .start()
        .await?;

    tokio::select! {
        ended = query.await_termination(None) => { ended?; }
        _ = tokio::signal::ctrl_c() => query.stop().await?,
    }
    Ok(())
}
