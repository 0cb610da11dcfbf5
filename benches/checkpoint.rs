//! What checkpoints cost: batch time with and without them, and recovery time.
//!
//! Two workloads (memory source, memory sink), each with a batch 0 that creates the state and 610
//! batches that touch 1% of it; the first 310 of those are a warm-up, long enough for a checkpoint
//! to reach the steady state of a query that runs for days (old files deleted, their space
//! written over, snapshots taken from a full retention), then 300 are timed:
//! - a running count and sum per key over 1M keys in update mode (10k random keys per batch);
//! - session windows of 100k users in append mode (1k users click again per batch, one second
//!   later, which grows their open sessions). Each such step runs two micro-batches, as in Spark:
//!   the clicks, then one without data because the watermark moved.
//!
//! Measured for each:
//! - the mean time per batch and the process's CPU time per batch (all threads, so the background
//!   writes and snapshots count too; steadier than wall-clock time on a shared machine), without
//!   checkpoints (`checkpoint_location = 'none'`), with a checkpoint in `memory://` (what the
//!   engine's own work costs: encoding, snapshots) and with one on the local disk (offsets and
//!   commits logs, one state delta per batch for all shards, and in the background a snapshot of
//!   the whole state whenever the deltas since the last one hold twice as many rows: about every
//!   200 batches, so the timed batches pay for one or two). Target: under 20% more.
//! - the time to restart over that checkpoint (metadata, logs, latest snapshot + deltas) until the
//!   next batch is done. Target for 1M groups: under 2 s.
//!
//! Run with `cargo bench --bench checkpoint` (`-- sessions` for one workload); the disk checkpoint
//! goes to the temporary directory (`TMPDIR`). Its cost depends on the file system more than on
//! anything of ours: compare `TMPDIR=/dev/shm` with the disk, and see the open questions in
//! `docs/design/02_checkpoints.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidewater::arrow::array::{Int64Array, RecordBatch, TimestampNanosecondArray};
use tidewater::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use tidewater::{StatementOutcome, StreamingQuery, StreamingSession};

const KEYS: i64 = 1_000_000;
const UPDATES_PER_BATCH: usize = 10_000;
const USERS: i64 = 100_000;
const CLICKS_PER_BATCH: usize = 1_000;
const UPDATE_BATCHES: usize = 610;
/// Each variant runs this many times; the best run counts (the machine's speed varies).
const ROUNDS: usize = 5;
/// Update batches not timed: the first ones overlap the background write of batch 0's state, and
/// until the first clean-up a local checkpoint has no deleted files to write over.
const WARM_UP: usize = 310;

/// A stream, a stateful query over it and its input: batch 0 creates the state, the others
/// touch 1% of it.
struct Workload {
    /// What the numbers are about.
    name: String,
    /// Creates the stream `t`.
    stream: &'static str,
    /// The query into the memory table `out`, checkpointed at `{checkpoint}`.
    query: &'static str,
    batches: Vec<RecordBatch>,
    /// Rows of state after batch 0.
    state_rows: u64,
}

/// `count` pseudo-random numbers below `below`, the same on every run.
fn scattered(x: &mut u64, count: usize, below: i64) -> Vec<i64> {
    (0..count)
        .map(|_| {
            *x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*x >> 33) % below as u64) as i64
        })
        .collect()
}

/// A running count and sum per key over 1M keys, in update mode.
fn counts() -> Workload {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]));
    let batch = |keys: Vec<i64>| {
        let values = Int64Array::from_iter_values(keys.iter().map(|k| k % 7));
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(keys)), Arc::new(values)]).expect("batch")
    };
    let mut x: u64 = 7;
    let mut batches = vec![batch((0..KEYS).collect())];
    batches.extend((0..UPDATE_BATCHES).map(|_| batch(scattered(&mut x, UPDATES_PER_BATCH, KEYS))));
    Workload {
        name: format!("counts: update batch ({UPDATES_PER_BATCH} of {KEYS} groups)"),
        stream: "CREATE TABLE t (k BIGINT, v BIGINT) WITH (connector = 'memory')",
        query:
            "CREATE TABLE out WITH (connector = 'memory', output_mode = 'update', checkpoint_location = '{checkpoint}');
                INSERT INTO out SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k",
        batches,
        state_rows: KEYS as u64,
    }
}

/// Session windows of 100k users, in append mode: every user has an open session, and each batch
/// one second later 1k of them click again, which grows their sessions (none closes).
fn sessions() -> Workload {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Int64, false),
        Field::new("time", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
    ]));
    let start: i64 = 1_700_000_000_000_000_000;
    let batch = |users: Vec<i64>, second: i64| {
        let times = TimestampNanosecondArray::from_value(start + second * 1_000_000_000, users.len());
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(users)), Arc::new(times)]).expect("batch")
    };
    let mut x: u64 = 11;
    let mut batches = vec![batch((0..USERS).collect(), 0)];
    batches.extend((1..=UPDATE_BATCHES as i64).map(|s| batch(scattered(&mut x, CLICKS_PER_BATCH, USERS), s)));
    Workload {
        name: format!("sessions: append batch ({CLICKS_PER_BATCH} of {USERS} session windows)"),
        stream: "CREATE TABLE t (user BIGINT, time TIMESTAMP, WATERMARK FOR time AS time - INTERVAL '10' SECOND)
                 WITH (connector = 'memory')",
        query:
            "CREATE TABLE out WITH (connector = 'memory', output_mode = 'append', checkpoint_location = '{checkpoint}');
                INSERT INTO out SELECT user, session_window(time, '30 minutes') AS s, count(*) AS n
                FROM t GROUP BY user, session_window(time, '30 minutes')",
        batches,
        state_rows: USERS as u64,
    }
}

async fn start(session: &StreamingSession, workload: &Workload, checkpoint: &str) -> StreamingQuery {
    let _ = session.sql("DROP TABLE IF EXISTS out").await;
    let sql = workload.query.replace("{checkpoint}", checkpoint);
    match session.run_script(&sql).await.expect("query starts").pop() {
        Some(StatementOutcome::Started(q)) => q,
        _ => panic!("no query started"),
    }
}

/// Wall-clock and CPU time (every thread of the process, user and system) per update batch.
#[derive(Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu: Duration,
}

impl Cost {
    const MAX: Cost = Cost {
        wall: Duration::MAX,
        cpu: Duration::MAX,
    };

    /// The best of both, taken apart: the machine's speed varies from run to run.
    fn min(self, other: Cost) -> Cost {
        Cost {
            wall: self.wall.min(other.wall),
            cpu: self.cpu.min(other.cpu),
        }
    }
}

/// CPU time the process has used so far, all threads together (user and system).
#[cfg(target_os = "linux")]
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills the `rusage` it is given; a zeroed one is valid before that.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Without `getrusage`, CPU time reads as zero.
#[cfg(not(target_os = "linux"))]
fn cpu_time() -> Duration {
    Duration::ZERO
}

/// A fresh session and query checkpointed at `checkpoint`, run over the workload: the mean cost
/// of an update batch, and the session (whose stream holds the input) for a restart.
async fn timed(workload: &Workload, checkpoint: &str) -> (Cost, StreamingSession) {
    let session = StreamingSession::new();
    session.sql(workload.stream).await.expect("stream");
    let query = start(&session, workload, checkpoint).await;
    let time = run(&session, &query, &workload.batches).await;
    query.stop().await.expect("stop");
    (time, session)
}

/// Runs every batch; returns the mean cost of the update batches after the warm-up (the
/// background writes and snapshots included: they run while later batches do).
async fn run(session: &StreamingSession, query: &StreamingQuery, batches: &[RecordBatch]) -> Cost {
    let stream = session.memory_stream("t").expect("stream");
    let (mut wall, mut cpu) = (Duration::ZERO, Duration::ZERO);
    for (i, b) in batches.iter().enumerate() {
        let (started, cpu_started) = (Instant::now(), cpu_time());
        stream.add_batch(b.clone()).expect("push");
        query.process_all_available().await.expect("batch");
        if i > WARM_UP {
            wall += started.elapsed();
            cpu += cpu_time().saturating_sub(cpu_started);
        }
    }
    let timed = (batches.len() - 1 - WARM_UP) as u32;
    Cost {
        wall: wall / timed,
        cpu: cpu / timed,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // `cargo bench --bench checkpoint -- sessions` runs the workloads whose name has `sessions`.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    runtime.block_on(async {
        for make in [counts as fn() -> Workload, sessions] {
            let workload = make();
            if filter.as_ref().is_none_or(|f| workload.name.contains(f.as_str())) {
                measure(&workload).await;
            }
        }
    });
}

/// Prints the workload's batch time without checkpoint, with one in memory and with one on the
/// local disk, and the time to recover from the disk checkpoint.
async fn measure(workload: &Workload) {
    let dir = tempfile::tempdir().expect("temp dir");
    let checkpoint = dir.path().join("checkpoint").display().to_string();
    let (mut without, mut with, mut in_memory) = (Cost::MAX, Cost::MAX, Cost::MAX);
    // Alternate the variants, best of five each, so none gets a warmer machine.
    for round in 0..ROUNDS {
        without = without.min(timed(workload, "none").await.0);
        // The same checkpoint in memory: what the encoding and bookkeeping cost without a disk.
        in_memory = in_memory.min(timed(workload, &format!("memory:///checkpoint-{round}")).await.0);
        let location = format!("{checkpoint}-{round}");
        let (time, session) = timed(workload, &location).await;
        with = with.min(time);

        if round == ROUNDS - 1 {
            // Recovery: a new query over the checkpoint restores the state, then runs a batch.
            let restarted = Instant::now();
            let query = start(&session, workload, &location).await;
            let stream = session.memory_stream("t").expect("stream");
            stream.add_batch(workload.batches[1].slice(0, 3)).expect("push");
            query.process_all_available().await.expect("batch");
            let recovery = restarted.elapsed();
            let progress = query.last_progress().expect("progress");
            assert_eq!(
                progress.state_operators[0].num_rows_total, workload.state_rows,
                "state restored"
            );
            query.stop().await.expect("stop");
            println!(
                "recovery of {} rows of state until the next batch is done: {:.0} ms (target < 2000 ms)",
                workload.state_rows,
                recovery.as_secs_f64() * 1000.0
            );
        }
    }
    let ms = |time: Duration| time.as_secs_f64() * 1000.0;
    let more = |time: Duration, base: Duration| (time.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0;
    println!(
        "{}: mean of {} batches, best of {ROUNDS} runs; target < 20% more than without checkpoint",
        workload.name,
        workload.batches.len() - 1 - WARM_UP
    );
    println!(
        "  without checkpoint:   {:.2} ms, CPU {:.2} ms",
        ms(without.wall),
        ms(without.cpu)
    );
    for (name, cost) in [("in memory://", in_memory), ("on the local disk", with)] {
        println!(
            "  {name:<20}  {:.2} ms ({:+.0}%), CPU {:.2} ms ({:+.0}%)",
            ms(cost.wall),
            more(cost.wall, without.wall),
            ms(cost.cpu),
            more(cost.cpu, without.cpu),
        );
    }
}
