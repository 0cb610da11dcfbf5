//! Throughput of the socket source end to end: a line server on loopback into a streaming word
//! count, with the source's write-ahead log (a `checkpoint_location`: every chunk of lines read
//! is written to `sources/0/` before a batch may use it) and without one (`checkpoint_location =
//! 'none'`).
//!
//! The server is a thread writing lines of 6 words from a vocabulary of 16 as fast as the socket
//! takes them, then holding the connection open. The query is `SELECT word, count(*) ... GROUP BY
//! word` over `unnest(string_to_array(value, ' '))`, complete mode, into a memory sink, with the
//! default trigger (the next batch as soon as the previous one is done). Measured end to end:
//! from the script's start (the source connects) to the batch that has counted the last line.
//! Also measured, as "in": how long the server took to hand all its lines to the socket. The
//! source reads (and logs) ahead of the batches, into memory, so that is how fast lines come in;
//! the rest is the query catching up. The socket source has no per-trigger limit: a batch takes
//! every line held, so after a small first batch most lines land in one or two large ones.
//!
//! Run with `cargo bench --bench socket_source` (`LINES=...` to change the size, default 1M).

use std::io::Write;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tidewater::arrow::array::AsArray;
use tidewater::arrow::datatypes::Int64Type;
use tidewater::{StatementOutcome, StreamingSession};

const RUNS: usize = 3;
const WORDS_PER_LINE: usize = 6;
const VOCABULARY: [&str; 16] = [
    "stream",
    "batch",
    "offset",
    "watermark",
    "state",
    "sink",
    "source",
    "trigger",
    "window",
    "query",
    "row",
    "table",
    "checkpoint",
    "commit",
    "log",
    "line",
];
/// The longest a run may take before the benchmark gives up on it.
const TIMEOUT: Duration = Duration::from_secs(600);

/// `lines` lines of words, picked by a multiplicative hash so that every word is counted often.
fn payload(lines: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines * 8 * WORDS_PER_LINE);
    for line in 0..lines {
        for w in 0..WORDS_PER_LINE {
            let n = (line * WORDS_PER_LINE + w).wrapping_mul(2_654_435_761) >> 7;
            if w > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(VOCABULARY[n % VOCABULARY.len()].as_bytes());
        }
        out.push(b'\n');
    }
    out
}

/// A line server for one connection: writes `payload` as fast as the socket takes it, sends how
/// long that took on `wrote`, then holds the connection open until `close` says so (a server
/// that went away would make the source reconnect).
fn serve(listener: TcpListener, payload: &[u8], wrote: mpsc::Sender<Duration>, close: mpsc::Receiver<()>) {
    let Ok((mut stream, _)) = listener.accept() else {
        return;
    };
    let start = Instant::now();
    for chunk in payload.chunks(64 << 10) {
        if stream.write_all(chunk).is_err() {
            return;
        }
    }
    let _ = wrote.send(start.elapsed());
    let _ = close.recv();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

struct Run {
    elapsed: Duration,
    /// How long the server took to write every line.
    written: Duration,
    batches: u64,
}

/// One run: a fresh server and query; `checkpoint` is the query's `checkpoint_location`.
async fn run(payload: &'static [u8], lines: u64, checkpoint: &str) -> Result<Run, Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (wrote_tx, wrote) = mpsc::channel();
    let (close, close_rx) = mpsc::channel();
    let server = std::thread::spawn(move || serve(listener, payload, wrote_tx, close_rx));

    let session = StreamingSession::new();
    let start = Instant::now();
    let outcomes = session
        .run_script(&format!(
            "CREATE TABLE lines (value VARCHAR) WITH (connector = 'socket', host = '127.0.0.1', port = '{port}');
             CREATE TABLE counts WITH (connector = 'memory', output_mode = 'complete', checkpoint_location = '{checkpoint}');
             INSERT INTO counts SELECT word, count(*) AS n
               FROM (SELECT unnest(string_to_array(value, ' ')) AS word FROM lines) GROUP BY word;"
        ))
        .await?;
    let Some(StatementOutcome::Started(query)) = outcomes.into_iter().last() else {
        return Err("no query started".into());
    };
    // Input rows of the batches seen so far (the query keeps only its last 100 reports).
    let (mut read, mut last_batch, mut batches) = (0, None, 0);
    while read < lines {
        for p in query.recent_progress() {
            if last_batch.is_none_or(|last| p.batch_id > last) {
                read += p.num_input_rows;
                last_batch = Some(p.batch_id);
                batches += 1;
            }
        }
        if let Some(e) = query.exception() {
            return Err(e.to_string().into());
        }
        if start.elapsed() > TIMEOUT {
            return Err(format!("{read} of {lines} lines after {TIMEOUT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    query.stop().await?;
    let written = wrote.recv()?;
    let _ = close.send(());
    let _ = server.join();

    let counted = session
        .sql("SELECT CAST(sum(n) AS BIGINT) AS words FROM counts")
        .await?
        .collect()
        .await?;
    let words = counted
        .first()
        .and_then(|b| b.column(0).as_primitive_opt::<Int64Type>())
        .map(|c| c.value(0));
    assert_eq!(
        words,
        Some((lines as usize * WORDS_PER_LINE) as i64),
        "every word counted once"
    );
    Ok(Run {
        elapsed,
        written,
        batches,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lines: usize = std::env::var("LINES")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1_000_000);
    let payload: &'static [u8] = Box::leak(payload(lines).into_boxed_slice());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "socket_source: {lines} lines of {WORDS_PER_LINE} words ({:.1} MB) over loopback, word count in complete mode, {} cores",
        payload.len() as f64 / 1e6,
        std::thread::available_parallelism()?
    );
    let (mut best_plain, mut best_logged) = (Duration::MAX, Duration::MAX);
    let (mut best_plain_in, mut best_logged_in) = (Duration::MAX, Duration::MAX);
    for i in 0..RUNS {
        let plain = runtime.block_on(run(payload, lines as u64, "none"))?;
        let dir = tempfile::tempdir()?;
        let logged = runtime.block_on(run(payload, lines as u64, &dir.path().display().to_string()))?;
        assert!(dir.path().join("sources/0").is_dir(), "the source logged its lines");
        println!(
            "  run {i}: without log {:.3} s ({} batches, lines in after {:.3} s), with log {:.3} s ({} batches, lines in after {:.3} s)",
            plain.elapsed.as_secs_f64(),
            plain.batches,
            plain.written.as_secs_f64(),
            logged.elapsed.as_secs_f64(),
            logged.batches,
            logged.written.as_secs_f64()
        );
        best_plain = best_plain.min(plain.elapsed);
        best_logged = best_logged.min(logged.elapsed);
        best_plain_in = best_plain_in.min(plain.written);
        best_logged_in = best_logged_in.min(logged.written);
    }
    let rate = |d: Duration| lines as f64 / d.as_secs_f64();
    println!(
        "without write-ahead log : {:>10.0} lines/s end to end, {:>10.0} lines/s in (best of {RUNS})",
        rate(best_plain),
        rate(best_plain_in)
    );
    println!(
        "with write-ahead log    : {:>10.0} lines/s end to end, {:>10.0} lines/s in (best of {RUNS})",
        rate(best_logged),
        rate(best_logged_in)
    );
    println!(
        "ratio with/without      : {:.2} end to end, {:.2} in",
        rate(best_logged) / rate(best_plain),
        rate(best_logged_in) / rate(best_plain_in)
    );
    Ok(())
}
