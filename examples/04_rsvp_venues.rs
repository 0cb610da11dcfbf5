//! Course program: the RSVP job of lab 10 (steps 3 and 5, submission 2), with the DataFrame API.
//! Meetup RSVPs come as JSON lines in files dropped into a directory; the program counts the RSVPs
//! of each 10-second batch and those with a venue, prints the counts, and saves the venues of the
//! RSVPs that have one to JSON files, exactly once. The SQL twins are
//! `sql/04_rsvp_venue_count.sql` and `sql/04_rsvp_venues_to_files.sql`.
//!
//! ```sh
//! cargo run --example 04_rsvp_venues -- data/rsvps out/rust-venues --available-now
//! cat out/rust-venues/*.json
//! ```
//! Without `--available-now` it keeps watching the directory (copy more RSVP files in); Ctrl-C
//! stops. The checkpoint in `<out>/../checkpoints/<name>` makes a second run go on where the
//! first stopped: no RSVP file is read, and no venue written, twice.

use std::path::Path;

use tidewater::datafusion::functions::expr_fn::now;
use tidewater::datafusion::functions_aggregate::expr_fn::count;
use tidewater::datafusion::prelude::{col, lit};
use tidewater::{OutputMode, StreamingDataFrame, StreamingQuery, StreamingSession, Trigger};

use datafusion_functions_json::udfs::{json_get_float_udf, json_get_int_udf, json_get_str_udf, json_get_udf};

/// The RSVP files of `directory`, one JSON document per line in column `value`.
pub(crate) async fn rsvps(session: &StreamingSession, directory: &str) -> tidewater::Result<StreamingDataFrame> {
    session.read_stream().format("text").load(directory).await
}

/// Per 10-second batch (a processing-time window): columns `batch` (`{start, end}`), `rsvps`,
/// `with_venue`. Use update mode.
pub(crate) fn counts_per_batch(rsvps: StreamingDataFrame) -> tidewater::Result<StreamingDataFrame> {
    let venue_name = json_get_str_udf().call(vec![col("value"), lit("venue"), lit("venue_name")]);
    rsvps.aggregate(
        vec![tidewater::window(now(), "10 seconds").alias("batch")],
        vec![count(lit(1)).alias("rsvps"), count(venue_name).alias("with_venue")],
    )
}

/// The venue of every RSVP that has one: `venue_id`, `venue_name`, `lat`, `lon`.
pub(crate) fn venues(rsvps: StreamingDataFrame) -> tidewater::Result<StreamingDataFrame> {
    let field = |udf: fn() -> std::sync::Arc<tidewater::datafusion::logical_expr::ScalarUDF>, name: &str| {
        udf().call(vec![col("value"), lit("venue"), lit(name)]).alias(name)
    };
    rsvps
        .filter(json_get_udf().call(vec![col("value"), lit("venue")]).is_not_null())?
        .select(vec![
            field(json_get_int_udf, "venue_id"),
            field(json_get_str_udf, "venue_name"),
            field(json_get_float_udf, "lat"),
            field(json_get_float_udf, "lon"),
        ])
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let input = positional.first().map_or("data/rsvps", |s| s.as_str());
    let output = positional.get(1).map_or("out/rust-venues", |s| s.as_str());
    let trigger = match args.iter().any(|a| a == "--available-now") {
        true => Trigger::AvailableNow,
        false => Trigger::Default,
    };
    // The checkpoint sits next to the output directory, never inside it.
    let output_path = Path::new(output);
    let name = output_path.file_name().map_or("venues".into(), |n| n.to_string_lossy());
    let checkpoint = output_path.with_file_name("checkpoints").join(name.as_ref());

    let session = StreamingSession::new();
    let counts = counts_per_batch(rsvps(&session, input).await?)?
        .write_stream()
        .format("console")
        .option("truncate", false)
        .output_mode(OutputMode::Update)
        .trigger(trigger)
        .start()
        .await?;
    let saved = venues(rsvps(&session, input).await?)?
        .write_stream()
        .format("json")
        .option("path", output)
        .option("checkpoint_location", checkpoint.display())
        .trigger(trigger)
        .start()
        .await?;

    let queries: [&StreamingQuery; 2] = [&counts, &saved];
    tokio::select! {
        ended = futures::future::try_join_all(queries.iter().map(|q| q.await_termination(None))) => { ended?; }
        _ = tokio::signal::ctrl_c() => {
            for query in queries {
                query.stop().await?;
            }
        }
    }
    println!("venues saved to {output}");
    Ok(())
}
