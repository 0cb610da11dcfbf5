//! Course program: the brokerage orders of the lecture (count-buys.py, top-clients.py,
//! windows-operations.py), with the DataFrame API. Orders come as CSV lines
//! `time,order_id,client_id,symbol,amount,price,buy_or_sell` in files dropped into a directory;
//! lines that do not parse are dropped and counted. The program prints the buys and sells of each
//! 3-second batch, the top 5 clients by the value they traded so far, and the top 5 symbols by the
//! amount traded in the last hour. The SQL twins are `sql/05_orders_*.sql`.
//!
//! ```sh
//! cargo run --example 05_orders -- data/orders --available-now
//! ```
//! Without `--available-now` it keeps watching the directory (the course's splitAndSend.sh moves
//! a chunk of orders into it every 3 seconds); Ctrl-C stops.
//!
//! The last hour is processing time, as the course's DStream `window(60*60)`: what arrived in the
//! last hour, sliding with every 3-second batch. The orders' own `time` column would not do: the
//! bundled orders were placed within minutes in 2016, so an event-time hour would never move.

use std::sync::Arc;

use tidewater::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use tidewater::datafusion::common::ScalarValue;
use tidewater::datafusion::functions::core::expr_ext::FieldAccessor;
use tidewater::datafusion::functions::expr_fn::now;
use tidewater::datafusion::functions_aggregate::expr_fn::{count, sum};
use tidewater::datafusion::prelude::{col, lit};
use tidewater::{OutputMode, StreamingDataFrame, StreamingQuery, StreamingSession, Trigger};

/// The orders in the CSV files of `directory`; malformed lines are dropped and counted in the
/// progress report (`numDroppedMalformedRecords`), as the course's `parseOrder` skipped them.
pub(crate) async fn orders(session: &StreamingSession, directory: &str) -> tidewater::Result<StreamingDataFrame> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("time", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        Field::new("order_id", DataType::Int64, true),
        Field::new("client_id", DataType::Int64, true),
        Field::new("symbol", DataType::Utf8, true),
        Field::new("amount", DataType::Int32, true),
        Field::new("price", DataType::Float64, true),
        Field::new("buy_or_sell", DataType::Utf8, true),
    ]));
    session
        .read_stream()
        .format("csv")
        .schema(schema)
        .option("header", false)
        .option("mode", "drop_malformed")
        .load(directory)
        .await?
        .filter(col("buy_or_sell").in_list(vec![lit("B"), lit("S")], false))
}

/// Buy and sell orders per 3-second batch (a processing-time window): `batch`, `buy_or_sell`,
/// `orders`. Use update mode.
pub(crate) fn buys_and_sells(orders: StreamingDataFrame) -> tidewater::Result<StreamingDataFrame> {
    orders.aggregate(
        vec![tidewater::window(now(), "3 seconds").alias("batch"), col("buy_or_sell")],
        vec![count(lit(1)).alias("orders")],
    )
}

/// The 5 clients who traded the most value (`amount * price`) so far: `client_id`, `traded`.
/// Use complete mode.
pub(crate) fn top_clients(orders: StreamingDataFrame) -> tidewater::Result<StreamingDataFrame> {
    orders
        .aggregate(
            vec![col("client_id")],
            vec![sum(col("amount") * col("price")).alias("traded")],
        )?
        .transform(|df| {
            df.sort(vec![
                col("traded").sort(false, false),
                col("client_id").sort(true, false),
            ])?
            .limit(0, Some(5))
        })
}

/// The 5 symbols most traded (by amount) in the last hour: `window_start`, `window_end`,
/// `symbol`, `amount`. Use complete mode.
pub(crate) fn top_symbols_last_hour(orders: StreamingDataFrame) -> tidewater::Result<StreamingDataFrame> {
    let slide = lit(ScalarValue::new_interval_mdn(0, 0, 3_000_000_000));
    orders
        .aggregate(
            vec![
                tidewater::sliding_window(now(), "1 hour", "3 seconds").alias("w"),
                col("symbol"),
            ],
            vec![sum(col("amount")).alias("amount")],
        )?
        // Of the 1200 one-hour windows an order is in, the one that ends next is the last hour.
        .filter(
            col("w")
                .field("end")
                .gt(now())
                .and(col("w").field("end").lt_eq(now() + slide)),
        )?
        .select(vec![
            col("w").field("start").alias("window_start"),
            col("w").field("end").alias("window_end"),
            col("symbol"),
            col("amount"),
        ])?
        .transform(|df| {
            df.sort(vec![col("amount").sort(false, false), col("symbol").sort(true, false)])?
                .limit(0, Some(5))
        })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let directory = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or("data/orders", |s| s.as_str());
    let trigger = match args.iter().any(|a| a == "--available-now") {
        true => Trigger::AvailableNow,
        false => Trigger::Default,
    };

    let session = StreamingSession::new();
    let mut queries: Vec<StreamingQuery> = Vec::new();
    type Job = fn(StreamingDataFrame) -> tidewater::Result<StreamingDataFrame>;
    let jobs: [(&str, Job, OutputMode); 3] = [
        ("buys_and_sells", buys_and_sells, OutputMode::Update),
        ("top_clients", top_clients, OutputMode::Complete),
        ("top_symbols_last_hour", top_symbols_last_hour, OutputMode::Complete),
    ];
    for (name, job, mode) in jobs {
        let query = job(orders(&session, directory).await?)?
            .write_stream()
            .format("console")
            .option("truncate", false)
            .query_name(name)
            .output_mode(mode)
            .trigger(trigger)
            .start()
            .await?;
        queries.push(query);
    }

    tokio::select! {
        ended = futures::future::try_join_all(queries.iter().map(|q| q.await_termination(None))) => { ended?; }
        _ = tokio::signal::ctrl_c() => {
            for query in &queries {
                query.stop().await?;
            }
        }
    }
    // The source's metrics count from the query's start: the last report has them all.
    for query in &queries {
        let dropped = query
            .last_progress()
            .and_then(|p| p.sources.first()?.metrics.get("numDroppedMalformedRecords").cloned())
            .unwrap_or_else(|| "0".to_string());
        println!(
            "{}: {dropped} malformed lines dropped",
            query.name().unwrap_or(query.id())
        );
    }
    Ok(())
}
