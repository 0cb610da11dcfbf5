//! Incremental = batch, as properties: random rows with out-of-order event times, cut into random
//! micro-batches, give the same result as one DataFusion query over all rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use tidewater::arrow::array::{Int32Array, RecordBatch, TimestampNanosecondArray};
use tidewater::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tidewater::{StreamingQuery, StreamingSession};

use crate::common::{query_rows, sorted, start};

const HOUR: i64 = 3_600_000_000_000;
const MINUTE: i64 = 60_000_000_000;
/// The watermark delay of the windowed queries.
const DELAY_MINUTES: i64 = 30;

/// One input row: (key, event time in minutes after midnight, value).
type Row = (i32, i64, i32);

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int32, true),
        Field::new("time", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        Field::new("v", DataType::Int32, true),
    ]))
}

fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int32Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(TimestampNanosecondArray::from(
                rows.iter().map(|r| r.1 * MINUTE).collect::<Vec<_>>(),
            )),
            Arc::new(Int32Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

/// An event time in minutes: anywhere, or exactly on a window end (a whole hour), or where it
/// moves the watermark exactly onto one (a whole hour plus the delay), the boundaries where
/// `end <= watermark` decides.
fn minute() -> impl Strategy<Value = i64> {
    prop_oneof![
        2 => 0..600i64,
        1 => (0..10i64).prop_map(|h| h * 60),
        1 => (0..10i64).prop_map(|h| h * 60 + DELAY_MINUTES),
    ]
}

/// Rows, and the sizes of the micro-batches they are cut into.
fn rows_and_cuts() -> impl Strategy<Value = (Vec<Row>, Vec<usize>)> {
    let row = (0..4i32, minute(), -50..50i32);
    prop::collection::vec(row, 1..60).prop_flat_map(|rows| {
        let n = rows.len();
        (Just(rows), prop::collection::vec(0..=n, 0..8))
    })
}

/// Rows whose times advance as they arrive (two minutes a row, give or take 20), so that the
/// watermark moves in small steps and passes the edges of join ranges while partners still
/// arrive; and the sizes of the micro-batches they are cut into.
fn advancing_rows_and_cuts() -> impl Strategy<Value = (Vec<Row>, Vec<usize>)> {
    let row = (0..2i32, -20..20i64, -50..50i32);
    prop::collection::vec(row, 1..80).prop_flat_map(|rows| {
        let rows: Vec<Row> = rows
            .into_iter()
            .enumerate()
            .map(|(i, (k, jitter, v))| (k, 20 + 2 * i as i64 + jitter, v))
            .collect();
        let n = rows.len();
        (Just(rows), prop::collection::vec(0..=n, 0..30))
    })
}

/// The batches `rows` are cut into at `cuts` (positions, in any order, repeats allowed).
fn cut(rows: &[Row], cuts: &[usize]) -> Vec<Vec<Row>> {
    let mut points: Vec<usize> = cuts.iter().copied().chain([0, rows.len()]).collect();
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| rows[w[0]..w[1]].to_vec()).collect()
}

async fn run_batches(session: &StreamingSession, queries: &[StreamingQuery], batches: &[Vec<Row>]) {
    let events = session.memory_stream("events").unwrap();
    for rows in batches {
        events.add_batch(batch(rows)).unwrap();
        for q in queries {
            q.process_all_available().await.unwrap();
        }
    }
}

const SLIDING: &str = "SELECT k, window(time, '1 hour', '20 minutes') AS w, count(*) AS n, max(v) AS high FROM {} \
                       GROUP BY k, window(time, '1 hour', '20 minutes')";
const SESSIONS: &str = "SELECT k, session_window(time, '45 minutes') AS s, count(*) AS n, sum(v) AS total FROM {} \
                        GROUP BY k, session_window(time, '45 minutes')";
const RUNNING: &str = "SELECT k, count(*) AS n, sum(v) AS total, min(v) AS low, max(v) AS high, avg(v) AS mean, \
                       count(DISTINCT v) AS distinct_values FROM {} GROUP BY k";
const WINDOWED: &str = "SELECT k, window(time, '1 hour') AS w, count(*) AS n, sum(v) AS total FROM {} \
                        GROUP BY k, window(time, '1 hour')";
const DISTINCT: &str = "SELECT DISTINCT k, v FROM {}";
/// A chain: a deduplication, then an aggregation.
const DISTINCT_COUNTS: &str = "SELECT k, count(*) AS n, sum(v) AS total FROM (SELECT DISTINCT k, v FROM {}) GROUP BY k";
/// A chain under a watermark: a deduplication on a key with event time, then a window count.
const DEDUP_WINDOWED: &str = "SELECT k, window(time, '1 hour') AS w, count(*) AS n FROM \
                              (SELECT DISTINCT k, time FROM {}) GROUP BY k, window(time, '1 hour')";

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Complete and update mode of a running aggregate, sliding and session windows in complete
    /// mode, a deduplication and a deduplication followed by an aggregation end with the batch
    /// query's table; the deduplication emits each distinct row exactly once.
    #[test]
    fn running_aggregates_equal_the_batch_result((rows, cuts) in rows_and_cuts()) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let session = StreamingSession::new();
            session.run_script(
                "CREATE TABLE events (k INT, time TIMESTAMP, v INT) WITH (connector = 'memory');
                 CREATE TABLE complete_out WITH (connector = 'memory', output_mode = 'complete', state_partitions = '3');
                 CREATE TABLE update_out WITH (connector = 'memory', output_mode = 'update', state_partitions = '1');",
            ).await.unwrap();
            let complete = start(&session, &format!("INSERT INTO complete_out {}", RUNNING.replace("{}", "events"))).await;
            session.run_script("CREATE TABLE sliding_out WITH (connector = 'memory', output_mode = 'complete')").await.unwrap();
            let sliding = start(&session, &format!("INSERT INTO sliding_out {}", SLIDING.replace("{}", "events"))).await;
            session.run_script("CREATE TABLE sessions_out WITH (connector = 'memory', output_mode = 'complete')").await.unwrap();
            let sessions = start(&session, &format!("INSERT INTO sessions_out {}", SESSIONS.replace("{}", "events"))).await;
            let update = start(&session, &format!("INSERT INTO update_out {}", RUNNING.replace("{}", "events"))).await;
            session.run_script(
                "CREATE TABLE distinct_out WITH (connector = 'memory', output_mode = 'append', state_partitions = '3');
                 CREATE TABLE distinct_counts_out WITH (connector = 'memory', output_mode = 'complete');",
            ).await.unwrap();
            let distinct = start(&session, &format!("INSERT INTO distinct_out {}", DISTINCT.replace("{}", "events"))).await;
            let distinct_counts =
                start(&session, &format!("INSERT INTO distinct_counts_out {}", DISTINCT_COUNTS.replace("{}", "events"))).await;
            let queries = [
                complete.clone(), update.clone(), sliding.clone(), sessions.clone(), distinct.clone(), distinct_counts.clone(),
            ];
            run_batches(&session, &queries, &cut(&rows, &cuts)).await;

            session.context().register_batch("all_rows", batch(&rows)).unwrap();
            let expected = sorted(query_rows(&session, &RUNNING.replace("{}", "all_rows")).await);
            assert_eq!(sorted(query_rows(&session, "SELECT * FROM complete_out").await), expected);
            assert_eq!(
                sorted(query_rows(&session, "SELECT * FROM sliding_out").await),
                sorted(query_rows(&session, &SLIDING.replace("{}", "all_rows")).await)
            );
            assert_eq!(
                sorted(query_rows(&session, "SELECT * FROM sessions_out").await),
                sorted(query_rows(&session, &SESSIONS.replace("{}", "all_rows")).await)
            );
            // Update mode: applying every emitted row as an upsert on k, in order, gives the table.
            let mut upserted: BTreeMap<String, String> = BTreeMap::new();
            for row in query_rows(&session, "SELECT * FROM update_out").await {
                let key = row.split('|').next().unwrap().to_string();
                upserted.insert(key, row);
            }
            assert_eq!(sorted(upserted.into_values().collect()), expected);
            // Every distinct row once: no duplicates among the rows emitted across batches.
            assert_eq!(
                sorted(query_rows(&session, "SELECT * FROM distinct_out").await),
                sorted(query_rows(&session, &DISTINCT.replace("{}", "all_rows")).await)
            );
            assert_eq!(
                sorted(query_rows(&session, "SELECT * FROM distinct_counts_out").await),
                sorted(query_rows(&session, &DISTINCT_COUNTS.replace("{}", "all_rows")).await)
            );
            distinct.stop().await.unwrap();
            distinct_counts.stop().await.unwrap();
            complete.stop().await.unwrap();
            sliding.stop().await.unwrap();
            sessions.stop().await.unwrap();
            update.stop().await.unwrap();
        });
    }

    /// Append mode emits each window once, when final, with exactly the rows that were not late.
    #[test]
    fn windowed_append_equals_the_batch_result_over_rows_in_time((rows, cuts) in rows_and_cuts()) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let session = StreamingSession::new();
            session.run_script(&format!(
                "CREATE TABLE events (k INT, time TIMESTAMP, v INT,
                   WATERMARK FOR time AS time - INTERVAL '{DELAY_MINUTES}' MINUTE) WITH (connector = 'memory');
                 CREATE TABLE out WITH (connector = 'memory', output_mode = 'append');
                 CREATE TABLE chained_out WITH (connector = 'memory', output_mode = 'append', state_partitions = '2');"
            )).await.unwrap();
            let query = start(&session, &format!("INSERT INTO out {}", WINDOWED.replace("{}", "events"))).await;
            let chained = start(&session, &format!("INSERT INTO chained_out {}", DEDUP_WINDOWED.replace("{}", "events"))).await;
            let batches = cut(&rows, &cuts);
            run_batches(&session, &[query.clone(), chained.clone()], &batches).await;

            // The watermark, simulated: a row is late when its window ended at or before the
            // watermark left by the batches before it.
            // The deduplication's rule: a row is late when its own time is at or before it.
            let mut watermark: Option<i64> = None;
            let mut in_time = Vec::new();
            let mut dedup_in_time = Vec::new();
            let mut dropped = 0;
            for rows in &batches {
                for row in rows {
                    let end = (row.1 * MINUTE).div_euclid(HOUR) * HOUR + HOUR;
                    if watermark.is_some_and(|w| end <= w) { dropped += 1 } else { in_time.push(*row) }
                    if watermark.is_none_or(|w| row.1 * MINUTE > w) { dedup_in_time.push(*row) }
                }
                if let Some(max) = rows.iter().map(|r| r.1 * MINUTE).max() {
                    let next = max - DELAY_MINUTES * MINUTE;
                    watermark = Some(watermark.map_or(next, |w| w.max(next)));
                }
            }
            let final_watermark = watermark.unwrap();
            session.context().register_batch("in_time", batch(&in_time)).unwrap();
            let expected = query_rows(&session, &format!(
                "SELECT * FROM ({}) WHERE w['end'] <= to_timestamp_nanos({final_watermark})",
                WINDOWED.replace("{}", "in_time")
            )).await;
            let emitted = query_rows(&session, "SELECT * FROM out").await;
            assert_eq!(sorted(emitted), sorted(expected));
            let reported: u64 = query.recent_progress().iter()
                .flat_map(|p| p.state_operators.iter().map(|o| o.num_rows_dropped_by_watermark))
                .sum();
            assert_eq!(reported, dropped);
            session.context().register_batch("dedup_in_time", batch(&dedup_in_time)).unwrap();
            let expected = query_rows(&session, &format!(
                "SELECT * FROM ({}) WHERE w['end'] <= to_timestamp_nanos({final_watermark})",
                DEDUP_WINDOWED.replace("{}", "dedup_in_time")
            )).await;
            assert_eq!(sorted(query_rows(&session, "SELECT * FROM chained_out").await), sorted(expected));
            chained.stop().await.unwrap();
            query.stop().await.unwrap();
        });
    }
}

/// A self-join of the events: each row with the rows of its key up to 20 minutes after it.
const JOIN: &str = "SELECT a.k, a.time AS t1, a.v AS v1, b.time AS t2, b.v AS v2 FROM {} a {kind} JOIN {} b \
                    ON a.k = b.k AND b.time BETWEEN a.time AND a.time + INTERVAL '20' MINUTE";
/// The join's range, in minutes.
const JOIN_RANGE: i64 = 20;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A join of two streams (here a stream with itself) under a watermark emits, across random
    /// batches, exactly the batch join of the rows that were not late: every matching pair once,
    /// and in a left outer join every row that found no match once its range closed.
    #[test]
    fn stream_joins_equal_the_batch_join_of_the_rows_in_time((rows, cuts) in advancing_rows_and_cuts()) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let session = StreamingSession::new();
            session.run_script(&format!(
                "CREATE TABLE events (k INT, time TIMESTAMP, v INT,
                   WATERMARK FOR time AS time - INTERVAL '{DELAY_MINUTES}' MINUTE) WITH (connector = 'memory');
                 CREATE TABLE inner_out WITH (connector = 'memory', output_mode = 'append', state_partitions = '3');
                 CREATE TABLE left_out WITH (connector = 'memory', output_mode = 'append');"
            )).await.unwrap();
            let join = |kind: &str, table: &str| JOIN.replace("{kind}", kind).replace("{}", table);
            let inner = start(&session, &format!("INSERT INTO inner_out {}", join("INNER", "events"))).await;
            let left = start(&session, &format!("INSERT INTO left_out {}", join("LEFT", "events"))).await;
            let batches = cut(&rows, &cuts);
            run_batches(&session, &[inner.clone(), left.clone()], &batches).await;

            // A row is late when its time is at or before the watermark the batches before left.
            let mut watermark: Option<i64> = None;
            let mut in_time = Vec::new();
            for rows in &batches {
                in_time.extend(rows.iter().filter(|r| watermark.is_none_or(|w| r.1 * MINUTE > w)));
                if let Some(max) = rows.iter().map(|r| r.1 * MINUTE).max() {
                    let next = max - DELAY_MINUTES * MINUTE;
                    watermark = Some(watermark.map_or(next, |w| w.max(next)));
                }
            }
            let final_watermark = watermark.unwrap();
            session.context().register_batch("in_time", batch(&in_time)).unwrap();
            assert_eq!(
                sorted(query_rows(&session, "SELECT * FROM inner_out").await),
                sorted(query_rows(&session, &join("INNER", "in_time")).await)
            );
            // Unmatched rows come out once their range has closed: time + range <= watermark.
            let expected = query_rows(&session, &format!(
                "SELECT * FROM ({}) WHERE t2 IS NOT NULL OR t1 + INTERVAL '{JOIN_RANGE}' MINUTE <= to_timestamp_nanos({final_watermark})",
                join("LEFT", "in_time")
            )).await;
            assert_eq!(sorted(query_rows(&session, "SELECT * FROM left_out").await), sorted(expected));
            inner.stop().await.unwrap();
            left.stop().await.unwrap();
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Session windows in update mode, written to a database: the sink upserts each session on
    /// its key and start and deletes the sessions merges replace, so the table ends as the batch
    /// query's sessions, however the rows were cut and whatever merged when.
    #[test]
    fn session_updates_in_a_database_equal_the_batch_sessions((rows, cuts) in rows_and_cuts()) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("out.db").display());
            let session = StreamingSession::new();
            let query = start(&session, &format!(
                "CREATE TABLE events (k INT, time TIMESTAMP, v INT) WITH (connector = 'memory');
                 CREATE TABLE sessions WITH (connector = 'database', url = '{url}', table = 'sessions',
                   output_mode = 'update', state_partitions = '2', checkpoint_location = '{}');
                 INSERT INTO sessions {}", dir.path().join("cp").display(), SESSIONS.replace("{}", "events")
            )).await;
            run_batches(&session, std::slice::from_ref(&query), &cut(&rows, &cuts)).await;
            query.stop().await.unwrap();

            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let table: Vec<(i64, String, String, i64, i64)> =
                sqlx::query_as("SELECT k, s_start, s_end, n, total FROM sessions").fetch_all(&pool).await.unwrap();
            let table: Vec<String> = table
                .into_iter()
                .map(|(k, start, end, n, total)| format!("{k}|{start}|{end}|{n}|{total}").replace(' ', "T"))
                .collect();
            session.context().register_batch("all_rows", batch(&rows)).unwrap();
            let expected = query_rows(&session, &format!(
                "SELECT k, s['start'], s['end'], n, total FROM ({})", SESSIONS.replace("{}", "all_rows")
            )).await;
            assert_eq!(sorted(table), sorted(expected));
        });
    }
}

/// The queries of the restart property: sink name, output mode, query.
/// A left outer join of the events with themselves (see [`JOIN`]).
const LEFT_JOIN: &str = "SELECT a.k, a.time AS t1, a.v AS v1, b.time AS t2, b.v AS v2 FROM {} a LEFT JOIN {} b \
                         ON a.k = b.k AND b.time BETWEEN a.time AND a.time + INTERVAL '20' MINUTE";

/// A deduplication within the watermark (Spark's `dropDuplicatesWithinWatermark`).
const WITHIN_WATERMARK: &str = "SELECT DISTINCT ON (k, within_watermark(time)) k, time, v FROM {}";

const RESTARTED: [(&str, &str, &str); 7] = [
    ("sessions_complete", "complete", SESSIONS),
    ("sessions_append", "append", SESSIONS),
    ("running_update", "update", RUNNING),
    ("distinct_append", "append", DISTINCT),
    ("dedup_windowed_append", "append", DEDUP_WINDOWED),
    ("left_join_append", "append", LEFT_JOIN),
    ("within_watermark_append", "append", WITHIN_WATERMARK),
];

/// Starts the queries of [`RESTARTED`] with their sinks named `<prefix><name>`; checkpointed in
/// `checkpoints` when given, with snapshots as often as the store allows.
async fn start_restarted(
    session: &StreamingSession,
    prefix: &str,
    checkpoints: Option<&std::path::Path>,
) -> Vec<StreamingQuery> {
    let mut queries = Vec::new();
    for (name, mode, sql) in RESTARTED {
        let options = checkpoints.map_or(String::new(), |dir| {
            format!(
                ", checkpoint_location = '{}', state_partitions = '2', state_snapshot_interval = '1'",
                dir.join(name).display()
            )
        });
        let sink = format!("{prefix}{name}");
        let script = format!(
            "DROP TABLE IF EXISTS {sink};
             CREATE TABLE {sink} WITH (connector = 'memory', output_mode = '{mode}'{options});
             INSERT INTO {sink} {}",
            sql.replace("{}", "events")
        );
        queries.push(start(session, &script).await);
    }
    queries
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Stopping queries and restarting them from their checkpoints between batches changes
    /// nothing they emit: session windows (complete, and append under a watermark, where sessions
    /// merge and close), a running aggregate in update mode, deduplications (of whole rows, and
    /// within the watermark), a chain of a deduplication and a window count, and a left outer join
    /// of two streams, each over two state shards, with state snapshots as often as the store
    /// makes them.
    #[test]
    fn restarting_from_the_checkpoint_changes_no_output(
        (rows, cuts) in rows_and_cuts(),
        restart_before in prop::collection::vec(any::<bool>(), 8),
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let session = StreamingSession::new();
            session.run_script(&format!(
                "CREATE TABLE events (k INT, time TIMESTAMP, v INT,
                   WATERMARK FOR time AS time - INTERVAL '{DELAY_MINUTES}' MINUTE) WITH (connector = 'memory')"
            )).await.unwrap();
            let reference = start_restarted(&session, "uninterrupted_", None).await;
            let mut restarted = start_restarted(&session, "", Some(dir.path())).await;
            // What each restarted query's sink held when it was stopped, run after run.
            let mut emitted: Vec<Vec<String>> = vec![Vec::new(); RESTARTED.len()];
            let mut complete_table = Vec::new();
            let events = session.memory_stream("events").unwrap();
            for (i, rows) in cut(&rows, &cuts).iter().enumerate() {
                if i > 0 && restart_before[i % restart_before.len()] {
                    for ((query, (name, _, _)), out) in restarted.iter().zip(RESTARTED).zip(&mut emitted) {
                        query.stop().await.unwrap();
                        out.extend(query_rows(&session, &format!("SELECT * FROM {name}")).await);
                    }
                    restarted = start_restarted(&session, "", Some(dir.path())).await;
                }
                events.add_batch(batch(rows)).unwrap();
                for query in reference.iter().chain(&restarted) {
                    query.process_all_available().await.unwrap();
                }
            }
            for ((query, (name, _, _)), out) in restarted.iter().zip(RESTARTED).zip(&mut emitted) {
                let held = query_rows(&session, &format!("SELECT * FROM {name}")).await;
                if name == "sessions_complete" {
                    complete_table = held.clone();
                }
                out.extend(held);
                query.stop().await.unwrap();
            }
            // Complete mode: the last run's table is the whole result.
            assert_eq!(
                sorted(complete_table),
                sorted(query_rows(&session, "SELECT * FROM uninterrupted_sessions_complete").await)
            );
            // Append and update mode: the runs together emitted exactly the uninterrupted rows.
            for ((name, _, _), out) in RESTARTED[1..].iter().zip(&emitted[1..]) {
                let expected = query_rows(&session, &format!("SELECT * FROM uninterrupted_{name}")).await;
                assert_eq!(sorted(out.clone()), sorted(expected), "{name}");
            }
            for query in reference {
                query.stop().await.unwrap();
            }
        });
    }
}
