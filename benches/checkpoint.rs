//! What checkpoints cost: batch time with and without them, and recovery time.
//!
//! A running count and sum per key over 1M keys (update mode, memory source, memory sink): batch 0
//! creates the 1M groups, then every batch updates 1% of them (10k random keys); the first 10 of
//! those are a warm-up, then 300 are timed. Measured:
//! - the mean time of the update batches without checkpoints (`checkpoint_location = 'none'`), with
//!   a checkpoint in `memory://` (what the engine's own work costs: encoding, snapshots) and with one
//!   on the local disk (offsets and commits logs, one state delta per shard per
//!   batch, and in the background a snapshot of all 1M groups whenever the deltas since the last
//!   one hold as many rows: about every 100 batches, so the timed batches pay for three).
//!   Target: under 20% more.
//! - the time to restart over that checkpoint (metadata, logs, latest snapshot + deltas for 1M
//!   groups) until the next batch is done. Target: under 2 s.
//!
//! Run with `cargo bench --bench checkpoint`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidewater::arrow::array::{Int64Array, RecordBatch};
use tidewater::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tidewater::{StatementOutcome, StreamingQuery, StreamingSession};

const KEYS: i64 = 1_000_000;
const UPDATES_PER_BATCH: usize = 10_000;
const UPDATE_BATCHES: usize = 310;
/// Each variant runs this many times; the best run counts (the machine's speed varies).
const ROUNDS: usize = 5;
/// Update batches not timed: the first ones overlap the background write of batch 0's 1M groups.
const WARM_UP: usize = 10;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

fn batch(keys: Vec<i64>) -> RecordBatch {
    let values = Int64Array::from_iter_values(keys.iter().map(|k| k % 7));
    RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(keys)), Arc::new(values)]).expect("batch")
}

/// Batch 0 has every key once; the others 1% of the keys, scattered.
fn input() -> Vec<RecordBatch> {
    let mut batches = vec![batch((0..KEYS).collect())];
    let mut x: u64 = 7;
    for _ in 0..UPDATE_BATCHES {
        let keys = (0..UPDATES_PER_BATCH)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 33) % KEYS as u64) as i64
            })
            .collect();
        batches.push(batch(keys));
    }
    batches
}

async fn start(session: &StreamingSession, checkpoint: &str) -> StreamingQuery {
    let sql = format!(
        "CREATE TABLE out WITH (connector = 'memory', output_mode = 'update', checkpoint_location = '{checkpoint}');
         INSERT INTO out SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k"
    );
    let _ = session.sql("DROP TABLE IF EXISTS out").await;
    match session.run_script(&sql).await.expect("query starts").pop() {
        Some(StatementOutcome::Started(q)) => q,
        _ => panic!("no query started"),
    }
}

/// A fresh session and query checkpointed at `checkpoint`, run over `batches`: the mean update
/// batch time, and the session (whose stream holds the input) for a restart.
async fn timed(checkpoint: &str, batches: &[RecordBatch]) -> (Duration, StreamingSession) {
    let session = StreamingSession::new();
    session
        .sql("CREATE TABLE t (k BIGINT, v BIGINT) WITH (connector = 'memory')")
        .await
        .expect("stream");
    let query = start(&session, checkpoint).await;
    let time = run(&session, &query, batches).await;
    query.stop().await.expect("stop");
    (time, session)
}

/// Runs every batch; returns the mean time of the update batches after the warm-up (the
/// background snapshots included).
async fn run(session: &StreamingSession, query: &StreamingQuery, batches: &[RecordBatch]) -> Duration {
    let stream = session.memory_stream("t").expect("stream");
    let mut update_time = Duration::ZERO;
    for (i, b) in batches.iter().enumerate() {
        let started = Instant::now();
        stream.add_batch(b.clone()).expect("push");
        query.process_all_available().await.expect("batch");
        if i > WARM_UP {
            update_time += started.elapsed();
        }
    }
    update_time / (batches.len() - 1 - WARM_UP) as u32
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let batches = input();
        let dir = tempfile::tempdir().expect("temp dir");
        let checkpoint = dir.path().join("checkpoint").display().to_string();

        let mut without = Duration::MAX;
        let mut with = Duration::MAX;
        let mut in_memory = Duration::MAX;
        // Alternate the variants, best of five each, so none gets a warmer machine.
        for round in 0..ROUNDS {
            without = without.min(timed("none", &batches).await.0);
            // The same checkpoint in memory: what the encoding and bookkeeping cost without a disk.
            in_memory = in_memory.min(timed(&format!("memory:///checkpoint-{round}"), &batches).await.0);
            let location = format!("{checkpoint}-{round}");
            let (time, session) = timed(&location, &batches).await;
            with = with.min(time);

            if round == ROUNDS - 1 {
                // Recovery: a new query over the checkpoint restores 1M groups, then runs a batch.
                let restarted = Instant::now();
                let query = start(&session, &location).await;
                session
                    .memory_stream("t")
                    .expect("stream")
                    .add_batch(batch(vec![1, 2, 3]))
                    .expect("push");
                query.process_all_available().await.expect("batch");
                let recovery = restarted.elapsed();
                let progress = query.last_progress().expect("progress");
                assert_eq!(
                    progress.state_operators[0].num_rows_total, KEYS as u64,
                    "state restored"
                );
                query.stop().await.expect("stop");
                println!(
                    "recovery of {KEYS} groups until the next batch is done: {:.0} ms (target < 2000 ms)",
                    recovery.as_secs_f64() * 1000.0
                );
            }
        }
        let overhead = |time: Duration| (time.as_secs_f64() / without.as_secs_f64() - 1.0) * 100.0;
        let ms = |time: Duration| time.as_secs_f64() * 1000.0;
        println!(
            "update batch ({UPDATES_PER_BATCH} of {KEYS} groups): {:.2} ms without checkpoint; \
             {:.2} ms with it in memory:// (overhead {:.0}%); {:.2} ms with it on the local disk (overhead {:.0}%); \
             target < 20%",
            ms(without),
            ms(in_memory),
            overhead(in_memory),
            ms(with),
            overhead(with),
        );
    });
}
