//! The course programs of the README's "Course programs" table, each run on its sample input in
//! `data/` with its output checked row by row: every `sql/0N_*.sql` through the `tidewater`
//! binary, as a user runs it (`tidewater run FILE.sql` in a directory holding a copy of `data/`),
//! and every `examples/0N_*.rs` through the functions it is built from (its file is included here
//! as a module), writing to a memory sink instead of the console. Socket programs read from a line
//! server the test starts on loopback, and the word count also from `nc -lk` where it is installed.
//!
//! Processing-time windows follow the wall clock, so where a program's rows depend on how lines
//! fall into batches and windows, the tests check what does not depend on it: totals over all
//! windows, every row in as many windows as width and slide say, window widths and alignment.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tidewater::{OutputMode, StreamingQuery, StreamingSession, Trigger};

use crate::common::query_rows;

#[path = "../../examples/02_socket_word_count.rs"]
#[expect(
    dead_code,
    reason = "main is for `cargo run --example`; the tests run the program's queries"
)]
mod socket_word_count;

#[path = "../../examples/03_top_hashtags.rs"]
#[expect(
    dead_code,
    reason = "main is for `cargo run --example`; the tests run the program's query"
)]
mod top_hashtags;

#[path = "../../examples/04_rsvp_venues.rs"]
#[expect(
    dead_code,
    reason = "main is for `cargo run --example`; the tests run the program's queries"
)]
mod rsvp_venues;

#[path = "../../examples/05_orders.rs"]
#[expect(
    dead_code,
    reason = "main is for `cargo run --example`; the tests run the program's queries"
)]
mod orders;

#[path = "../../examples/06_count_by_window.rs"]
#[expect(
    dead_code,
    reason = "main is for `cargo run --example`; the tests run the program's query"
)]
mod count_by_window;

#[path = "../../examples/07_hourly_actions.rs"]
#[expect(
    dead_code,
    reason = "main is for `cargo run --example`; the tests run the program's query"
)]
mod hourly_actions;

/// Every word of `data/words/words.txt` with how often it occurs, sorted by word.
const WORD_TOTALS: [&str; 21] = [
    "a|3",
    "as|1",
    "batch|1",
    "count|2",
    "each|1",
    "flows|1",
    "growing|1",
    "grows|1",
    "hello|2",
    "hi|4",
    "is|1",
    "never|1",
    "new|2",
    "of|2",
    "stops|1",
    "stream|3",
    "table|2",
    "that|1",
    "the|4",
    "to|1",
    "words|2",
];

/// The 10 most used hashtags of `data/tweets/tweets.txt`, most used first, ties by name.
const TOP_HASHTAGS: [&str; 10] = [
    "#barcelona|9",
    "#bcn|6",
    "#fcbarcelona|4",
    "#food|4",
    "#gaudi|3",
    "#travel|3",
    "#architecture|2",
    "#barca|2",
    "#mwc|2",
    "#tech|2",
];

/// The lines in all of `data/rsvps/` (one RSVP each), and those with a venue.
const RSVPS: u64 = 24;
const RSVPS_WITH_VENUE: u64 = 22;

/// The venues saved from `data/rsvps/`, as the JSON lines the files sink writes, sorted.
fn saved_venues() -> Vec<String> {
    let venue = |id: u64, name: &str, lat: &str, lon: &str, times: usize| {
        vec![format!(r#"{{"venue_id":{id},"venue_name":"{name}","lat":{lat},"lon":{lon}}}"#); times]
    };
    let mut lines = [
        venue(2111876, "TechHub London", "51.5074", "-0.1278", 5),
        venue(2334511, "Galvanize Seattle", "47.6062", "-122.3321", 10),
        venue(2399881, "Impact Hub Vienna", "48.2082", "16.3738", 2),
        venue(2455121, "WeWork Berlin", "52.52", "13.405", 4),
        venue(21741962, "Couchbase San Francisco", "37.790005", "-122.397354", 1),
    ]
    .concat();
    lines.sort();
    lines
}

/// The top 5 clients by traded value after each file of `data/orders/` (worked out with SQLite
/// over the well-formed lines).
const TOP_CLIENTS: [[&str; 5]; 3] = [
    ["2|51440.0", "4|39176.0", "1|34786.0", "8|26944.0", "9|24497.0"],
    ["1|90304.0", "2|75880.0", "6|63600.0", "8|60552.0", "9|57077.0"],
    ["12|159253.0", "2|114216.0", "6|108105.0", "1|106545.0", "9|72887.0"],
];

/// The top 5 symbols by amount over all of `data/orders/`.
const TOP_SYMBOLS: [&str; 5] = ["NFLX|4110", "BP|3654", "CHK|3089", "VALE|2195", "MNKD|2075"];

/// Buy and sell orders in `data/orders/`, and its malformed lines (one per file).
const BUYS_SELLS: [&str; 2] = ["B|22", "S|20"];
const MALFORMED_ORDERS: u64 = 3;

/// The table `sql/07_hourly_actions.sql` leaves in SQLite: action, hour, count.
const HOURLY_ACTIONS: [&str; 5] = [
    "close|2026-01-01 01:00:00|2026-01-01 02:00:00|1",
    "open|2026-01-01 01:00:00|2026-01-01 02:00:00|3",
    "close|2026-01-01 02:00:00|2026-01-01 03:00:00|2",
    "open|2026-01-01 02:00:00|2026-01-01 03:00:00|1",
    "open|2026-01-01 03:00:00|2026-01-01 04:00:00|2",
];

// ---------------------------------------------------------------------------------------------
// Running programs

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn program(name: &str) -> PathBuf {
    repo().join("sql").join(name)
}

fn tidewater() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tidewater"))
}

/// A directory to run programs in, with a copy of `data/<set>` for each set. The copies are
/// modified one after the other in name order, as a git checkout leaves them: the files source
/// reads the oldest file first, and the programs' output depends on that order.
fn workdir(sets: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let first = SystemTime::now() - Duration::from_secs(3600);
    for set in sets {
        let from = repo().join("data").join(set);
        let to = dir.path().join("data").join(set);
        std::fs::create_dir_all(&to).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&from)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for (i, name) in names.iter().enumerate() {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
            let file = std::fs::File::options().write(true).open(to.join(name)).unwrap();
            file.set_modified(first + Duration::from_secs(i as u64)).unwrap();
        }
    }
    dir
}

/// Runs `tidewater run <script>` in `dir` to its end; returns standard output.
fn run(dir: &Path, script: &Path) -> String {
    let output = tidewater().current_dir(dir).arg("run").arg(script).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed: {stderr}\nstdout:\n{stdout}",
        script.display()
    );
    stdout
}

/// The program `name` with the port of its socket stream (9999, as in `nc -lk 9999`) replaced by
/// `port`, written into `dir`.
fn with_port(dir: &Path, name: &str, port: u16) -> PathBuf {
    let sql = std::fs::read_to_string(program(name)).unwrap();
    assert_eq!(
        sql.matches("port = '9999'").count(),
        1,
        "{name} reads one socket on port 9999"
    );
    let script = dir.join(name);
    std::fs::write(&script, sql.replace("port = '9999'", &format!("port = '{port}'"))).unwrap();
    script
}

/// A `tidewater run` that runs until interrupted, its output collected as it comes.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    fn start(dir: &Path, script: &Path) -> Running {
        let mut child = tidewater()
            .current_dir(dir)
            .arg("run")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (stdout, out_reader) = collect(child.stdout.take().unwrap());
        let (stderr, err_reader) = collect(child.stderr.take().unwrap());
        Running {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    fn output(&self) -> (String, String) {
        (self.stdout.lock().unwrap().clone(), self.stderr.lock().unwrap().clone())
    }

    /// Waits until `done` holds for the tables printed so far; fails after `timeout`, or when the
    /// process ends first.
    fn wait_for(&mut self, what: &str, timeout: Duration, done: impl Fn(&[Table]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let (stdout, stderr) = self.output();
            if done(&tables(&stdout)) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the program ended ({status}) before {what}\nstdout:\n{stdout}\nstderr:\n{stderr}");
            }
            assert!(
                Instant::now() < deadline,
                "no {what} after {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ctrl-C: the program stops its queries after their current batch and exits 0. Returns its
    /// standard output.
    fn interrupt(mut self) -> String {
        let sent = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the program did not stop after Ctrl-C");
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        let (stdout, stderr) = self.output();
        assert!(status.success(), "exit {status} after Ctrl-C: {stderr}");
        stdout
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `pipe` to its end on a thread, into the returned string.
fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    let reader = std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buffer) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    (text, reader)
}

/// A line server on a free loopback port: sends `text` to the first client, then keeps the
/// connection open until dropped, as `nc -lk 9999 < file` does.
struct LineServer {
    port: u16,
    done: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LineServer {
    fn start(text: Vec<u8>) -> LineServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let (done, until_done) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut client = loop {
                match listener.accept() {
                    Ok((client, _)) => break client,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let dropped = !matches!(until_done.try_recv(), Err(mpsc::TryRecvError::Empty));
                        if dropped || Instant::now() > deadline {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("accepting a client: {e}"),
                }
            };
            client.set_nonblocking(false).unwrap();
            // The program may be stopped before it read everything.
            let _ = client.write_all(&text);
            let _ = until_done.recv();
        });
        LineServer {
            port,
            done: Some(done),
            thread: Some(thread),
        }
    }

    /// Serves the lines of the files in `data/<set>`, in name order.
    fn serving(set: &str) -> LineServer {
        let dir = repo().join("data").join(set);
        let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        LineServer::start(names.iter().flat_map(|p| std::fs::read(p).unwrap()).collect())
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.done.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `nc -lk <port> < file`, the line server the README tells users to start.
struct Netcat {
    child: Child,
    port: u16,
}

impl Netcat {
    /// Starts `nc` and waits until it listens; `None`, after saying so, when `nc` is not installed.
    fn serving(file: &Path) -> Option<Netcat> {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = match Command::new("nc")
            .args(["-lk", &port.to_string()])
            .stdin(std::fs::File::open(file).unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("skipped: nc is not installed");
                return None;
            }
            Err(e) => panic!("starting nc: {e}"),
        };
        let mut netcat = Netcat { child, port };
        // A probe connection would take the lines meant for the program: look for the listening
        // socket instead (Linux lists them in /proc; elsewhere the source's connection attempts,
        // about three seconds of them, cover nc's start).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new("/proc/net/tcp").exists() && !listening(port) {
            if let Some(status) = netcat.child.try_wait().unwrap() {
                panic!("nc -lk {port} ended at once ({status}): is it a netcat without -k?");
            }
            assert!(Instant::now() < deadline, "nc does not listen on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(netcat)
    }
}

impl Drop for Netcat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a TCP socket listens on `port` (Linux: `/proc/net/tcp` and `tcp6`, state `0A`).
fn listening(port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).unwrap_or_default().lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&wanted) && fields[3] == "0A"
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Reading what the console sink prints

/// One batch as the console sink prints it: `Batch: N`, then a table.
#[derive(Debug)]
struct Table {
    batch: u64,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// The rows as `a|b|c`, in printed order.
    fn lines(&self) -> Vec<String> {
        self.rows.iter().map(|r| r.join("|")).collect()
    }

    /// The rows as `a|b|c` of these columns, sorted.
    fn sorted(&self, columns: &[&str]) -> Vec<String> {
        let mut rows: Vec<String> = self.rows.iter().map(|r| self.pick(r, columns).join("|")).collect();
        rows.sort();
        rows
    }

    fn pick<'a>(&self, row: &'a [String], columns: &[&str]) -> Vec<&'a str> {
        columns
            .iter()
            .map(|c| {
                let at = self.header.iter().position(|h| h == c);
                row[at.unwrap_or_else(|| panic!("no column {c} in {:?}", self.header))].as_str()
            })
            .collect()
    }
}

/// The tables in `stdout`, in order (the last one may be cut short while the program prints).
fn tables(stdout: &str) -> Vec<Table> {
    // Whole lines only: the program may be writing the next one.
    let whole = &stdout[..stdout.rfind('\n').map_or(0, |end| end + 1)];
    let mut out: Vec<Table> = Vec::new();
    for line in whole.lines() {
        if let Some(id) = line.strip_prefix("Batch: ") {
            out.push(Table {
                batch: id.trim().parse().unwrap(),
                header: Vec::new(),
                rows: Vec::new(),
            });
        } else if let (Some(table), Some(inner)) = (out.last_mut(), line.strip_prefix('|')) {
            let inner = inner.trim_end().strip_suffix('|').unwrap_or(inner);
            let cells: Vec<String> = inner.split('|').map(|c| c.trim().to_string()).collect();
            match table.header.is_empty() {
                true => table.header = cells,
                false => table.rows.push(cells),
            }
        }
    }
    out
}

/// A window as the console prints it, `{start: 2026-01-01T10:00:00, end: 2026-01-01T10:00:10}`.
fn window(cell: &str) -> (chrono::NaiveDateTime, chrono::NaiveDateTime) {
    let inner = cell.trim_start_matches('{').trim_end_matches('}');
    let (start, end) = inner.split_once(", ").unwrap_or_else(|| panic!("not a window: {cell}"));
    let time = |part: &str, key: &str| {
        part.strip_prefix(key)
            .unwrap_or_else(|| panic!("not a window: {cell}"))
            .parse::<chrono::NaiveDateTime>()
            .unwrap()
    };
    (time(start, "start: "), time(end, "end: "))
}

/// Checks that `(start, end)` is `width` long and starts on a multiple of `slide`.
fn assert_window(start: chrono::NaiveDateTime, end: chrono::NaiveDateTime, width: i64, slide: i64) {
    assert_eq!((end - start).num_seconds(), width, "window {start} .. {end}");
    assert_eq!(
        start.and_utc().timestamp().rem_euclid(slide),
        0,
        "window {start} .. {end} is not on a slide"
    );
}

/// Sums the counts of several rows per key: `key|n` lines.
fn sum_by(rows: impl IntoIterator<Item = (String, u64)>) -> Vec<String> {
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for (key, n) in rows {
        *sums.entry(key).or_default() += n;
    }
    sums.into_iter().map(|(k, n)| format!("{k}|{n}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Rust programs: results in a memory sink

/// Polls `SELECT * FROM table` until `done` holds for its rows; fails after `timeout`.
async fn wait_rows(
    session: &StreamingSession,
    query: &StreamingQuery,
    sql: &str,
    timeout: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let rows = query_rows(session, sql).await;
        if done(&rows) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql} after {timeout:?}: {rows:?}; status {:?}, error {:?}",
            query.status(),
            query.exception()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Malformed records the query's source dropped since the query started (the source metric
/// counts from the start: the last report has them all).
fn dropped_malformed(query: &StreamingQuery) -> u64 {
    let last = query.last_progress().expect("a batch ran");
    last.sources[0].metrics["numDroppedMalformedRecords"].parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// 01: upper-case the lines of new files

#[test]
fn uppercase_lines_sql_upper_cases_each_file_in_its_batch() {
    let dir = workdir(&["lines"]);
    let printed = tables(&run(dir.path(), &program("01_uppercase_lines.sql")));
    let batches: Vec<(u64, Vec<String>)> = printed.iter().map(|t| (t.batch, t.lines())).collect();
    assert_eq!(
        batches,
        [
            (
                0,
                vec!["THE QUICK BROWN FOX".to_string(), "JUMPS OVER THE LAZY DOG".to_string()]
            ),
            (1, vec!["STREAMS ARE TABLES".to_string(), "THAT NEVER END".to_string()]),
        ]
    );
    assert_eq!(printed[0].header, ["line"]);
}

// ---------------------------------------------------------------------------------------------
// 02: word count over a socket, per batch and running

/// The running total: after the last batch the table holds every word with its count, sorted by
/// word, and no count ever goes down from one table to the next.
fn check_running_word_count(port: u16) {
    let dir = tempfile::tempdir().unwrap();
    let script = with_port(dir.path(), "02_socket_word_count_running.sql", port);
    let mut running = Running::start(dir.path(), &script);
    running.wait_for("table with every word", Duration::from_secs(30), |t| {
        t.last().is_some_and(|t| t.lines() == WORD_TOTALS)
    });
    let printed = tables(&running.interrupt());
    let mut before: BTreeMap<String, u64> = BTreeMap::new();
    for table in &printed {
        assert_eq!(table.header, ["word", "n"]);
        let words: Vec<&String> = table.rows.iter().map(|r| &r[0]).collect();
        assert!(words.is_sorted(), "{words:?}");
        for row in &table.rows {
            let n: u64 = row[1].parse().unwrap();
            assert!(n >= before.get(&row[0]).copied().unwrap_or(0), "{printed:?}");
            before.insert(row[0].clone(), n);
        }
    }
    assert_eq!(printed.last().unwrap().lines(), WORD_TOTALS);
}

/// Per batch: each 10-second window is printed once, when it closes, with the words that came in
/// it; over all windows every word adds up to its count in the file.
fn check_word_count_per_batch(port: u16) {
    let dir = tempfile::tempdir().unwrap();
    let script = with_port(dir.path(), "02_socket_word_count.sql", port);
    let mut running = Running::start(dir.path(), &script);
    let totals = |printed: &[Table]| {
        sum_by(
            printed
                .iter()
                .flat_map(|t| &t.rows)
                .map(|r| (r[1].clone(), r[2].parse::<u64>().unwrap())),
        )
    };
    // The lines' window closes at most 10 seconds after they came.
    running.wait_for("window with every word", Duration::from_secs(30), |t| {
        totals(t) == WORD_TOTALS
    });
    let printed = tables(&running.interrupt());
    assert_eq!(totals(&printed), WORD_TOTALS);
    let mut seen = BTreeSet::new();
    for table in &printed {
        assert_eq!(table.header, ["batch", "word", "n"]);
        for row in &table.rows {
            let (start, end) = window(&row[0]);
            assert_window(start, end, 10, 10);
            assert!(seen.insert((start, row[1].clone())), "printed twice: {row:?}");
        }
    }
}

#[test]
fn socket_word_count_sql_keeps_running_totals() {
    let server = LineServer::serving("words");
    check_running_word_count(server.port);
}

#[test]
fn socket_word_count_sql_counts_each_window_once() {
    let server = LineServer::serving("words");
    check_word_count_per_batch(server.port);
}

#[test]
fn socket_word_count_sql_reads_netcat() {
    let file = repo().join("data/words/words.txt");
    if let Some(nc) = Netcat::serving(&file) {
        check_running_word_count(nc.port);
    }
    if let Some(nc) = Netcat::serving(&file) {
        check_word_count_per_batch(nc.port);
    }
}

/// Runs the word count of `examples/02_socket_word_count.rs` over its own line server, into a
/// memory table `counts` in complete mode (each query connects to the server itself, and a line
/// server such as `nc -lk` serves one client at a time).
async fn word_count_example(
    counts: fn(tidewater::StreamingDataFrame) -> tidewater::Result<tidewater::StreamingDataFrame>,
) -> (LineServer, StreamingSession, StreamingQuery) {
    let server = LineServer::serving("words");
    let session = StreamingSession::new();
    let lines = socket_word_count::socket_lines(&session, "127.0.0.1", server.port)
        .await
        .unwrap();
    let query = counts(socket_word_count::words(lines).unwrap())
        .unwrap()
        .write_stream()
        .format("memory")
        .query_name("counts")
        .output_mode(OutputMode::Complete)
        .start()
        .await
        .unwrap();
    (server, session, query)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_word_count_example_keeps_running_totals() {
    let (_server, session, query) = word_count_example(socket_word_count::running_counts).await;
    let rows = wait_rows(
        &session,
        &query,
        "SELECT * FROM counts",
        Duration::from_secs(20),
        |rows| rows == WORD_TOTALS,
    )
    .await;
    assert_eq!(rows, WORD_TOTALS);
    query.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_word_count_example_counts_per_batch() {
    // Complete mode shows every window at once: no waiting for them to close.
    let (_server, session, query) = word_count_example(socket_word_count::counts_per_batch).await;
    let sql = "SELECT word, sum(n) FROM counts GROUP BY word ORDER BY word";
    wait_rows(&session, &query, sql, Duration::from_secs(20), |rows| {
        rows == WORD_TOTALS
    })
    .await;
    // Each (window, word) once: every line is in one 10-second window.
    let repeated = query_rows(
        &session,
        "SELECT count(*) FROM (SELECT batch, word FROM counts GROUP BY batch, word HAVING count(*) > 1)",
    )
    .await;
    assert_eq!(repeated, ["0"]);
    let widths = query_rows(
        &session,
        "SELECT DISTINCT CAST(batch['end'] - batch.start AS VARCHAR) FROM counts",
    )
    .await;
    assert_eq!(widths, ["0 days 0 hours 0 mins 10.000000000 secs"]);
    query.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 03: top hashtags of the last 60 seconds

#[test]
fn top_hashtags_sql_shows_the_top_ten_of_the_last_minute() {
    let server = LineServer::serving("tweets");
    let dir = tempfile::tempdir().unwrap();
    let script = with_port(dir.path(), "03_top_hashtags.sql", server.port);
    let mut running = Running::start(dir.path(), &script);
    let mut expected = TOP_HASHTAGS.map(String::from).to_vec();
    expected.sort();
    running.wait_for("top 10 of all tweets", Duration::from_secs(30), |t| {
        t.last().is_some_and(|t| t.sorted(&["hashtag", "n"]) == expected)
    });
    let printed = tables(&running.interrupt());
    let last = printed.last().unwrap();
    assert_eq!(last.header, ["window_start", "window_end", "hashtag", "n"]);
    let ranked: Vec<String> = last
        .rows
        .iter()
        .map(|r| last.pick(r, &["hashtag", "n"]).join("|"))
        .collect();
    assert_eq!(ranked, TOP_HASHTAGS);
    // All from one window: the last 60 seconds, on a 10-second slide.
    let windows: BTreeSet<(&str, &str)> = last.rows.iter().map(|r| (r[0].as_str(), r[1].as_str())).collect();
    assert_eq!(windows.len(), 1, "{last:?}");
    for (start, end) in windows {
        assert_window(start.parse().unwrap(), end.parse().unwrap(), 60, 10);
    }
    for table in &printed {
        assert!(table.rows.len() <= 10, "{table:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_hashtags_example_shows_the_top_ten_of_the_last_minute() {
    let server = LineServer::serving("tweets");
    let session = StreamingSession::new();
    let tweets = top_hashtags::socket_tweets(&session, "127.0.0.1", server.port)
        .await
        .unwrap();
    let query = top_hashtags::top_hashtags(tweets)
        .unwrap()
        .write_stream()
        .format("memory")
        .query_name("top")
        .output_mode(OutputMode::Complete)
        .start()
        .await
        .unwrap();
    let sql = "SELECT hashtag, n FROM top";
    let rows = wait_rows(&session, &query, sql, Duration::from_secs(20), |rows| {
        rows == TOP_HASHTAGS
    })
    .await;
    assert_eq!(rows, TOP_HASHTAGS);
    let windows = query_rows(
        &session,
        "SELECT DISTINCT CAST(window_end - window_start AS VARCHAR) FROM top",
    )
    .await;
    assert_eq!(windows, ["0 days 0 hours 1 mins 0.000000000 secs"]);
    query.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 04: RSVPs: counts per batch, venues saved to files

#[test]
fn rsvp_venue_count_sql_counts_rsvps_and_venues() {
    let dir = workdir(&["rsvps"]);
    let printed = tables(&run(dir.path(), &program("04_rsvp_venue_count.sql")));
    // Every file is there at start: one batch, one window.
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert_eq!(printed[0].header, ["batch", "rsvps", "with_venue"]);
    assert_eq!(
        printed[0].sorted(&["rsvps", "with_venue"]),
        [format!("{RSVPS}|{RSVPS_WITH_VENUE}")]
    );
    let (start, end) = window(&printed[0].rows[0][0]);
    assert_window(start, end, 10, 10);
}

/// The data files the files sink wrote under `dir` (not its manifest), their lines sorted.
fn written_lines(dir: &Path) -> (usize, Vec<String>) {
    let mut files = 0;
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("part-") && name.ends_with(".json") {
            files += 1;
            lines.extend(std::fs::read_to_string(&path).unwrap().lines().map(String::from));
        }
    }
    lines.sort();
    (files, lines)
}

#[test]
fn rsvp_venues_to_files_sql_saves_each_venue_once() {
    let dir = workdir(&["rsvps"]);
    let script = program("04_rsvp_venues_to_files.sql");
    run(dir.path(), &script);
    let out = dir.path().join("out/venues");
    let (files, lines) = written_lines(&out);
    assert_eq!(lines, saved_venues());
    // One file per batch, each batch committed in the manifest.
    assert_eq!(files, 4);
    for batch in 0..4 {
        assert!(out.join("_tidewater_metadata").join(batch.to_string()).exists());
    }
    // Run again: the checkpoint knows every input file, so nothing is written twice.
    run(dir.path(), &script);
    assert_eq!(written_lines(&out), (files, saved_venues()));

    // The files read back with SQL.
    let query = dir.path().join("read_back.sql");
    std::fs::write(
        &query,
        "CREATE EXTERNAL TABLE venues STORED AS JSON LOCATION 'out/venues';
         SELECT venue_name, count(*) AS rsvps FROM venues GROUP BY venue_name ORDER BY rsvps DESC, venue_name;",
    )
    .unwrap();
    let output = tidewater()
        .current_dir(dir.path())
        .arg("run")
        .arg(&query)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    assert_eq!(
        rows,
        [
            "Galvanize Seattle|10",
            "TechHub London|5",
            "WeWork Berlin|4",
            "Impact Hub Vienna|2",
            "Couchbase San Francisco|1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsvp_venues_example_counts_and_extracts_venues() {
    let dir = workdir(&["rsvps"]);
    let input = dir.path().join("data/rsvps").display().to_string();
    let session = StreamingSession::new();
    let counts = rsvp_venues::counts_per_batch(rsvp_venues::rsvps(&session, &input).await.unwrap())
        .unwrap()
        .write_stream()
        .format("memory")
        .query_name("counts")
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    let venues = rsvp_venues::venues(rsvp_venues::rsvps(&session, &input).await.unwrap())
        .unwrap()
        .write_stream()
        .format("json")
        .option("path", dir.path().join("out/venues").display())
        .option(
            "checkpoint_location",
            dir.path().join("out/checkpoints/venues").display(),
        )
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    assert!(counts.await_termination(None).await.unwrap());
    assert!(venues.await_termination(None).await.unwrap());
    assert_eq!(
        query_rows(&session, "SELECT rsvps, with_venue FROM counts").await,
        [format!("{RSVPS}|{RSVPS_WITH_VENUE}")]
    );
    assert_eq!(written_lines(&dir.path().join("out/venues")).1, saved_venues());
}

// ---------------------------------------------------------------------------------------------
// 05: orders: buys and sells per batch, top clients, top symbols of the last hour

/// Runs an orders program through the library, as `tidewater run` does, with its console sink
/// swapped for a memory sink: its rows and its progress reports (which `--progress` does not
/// show the dropped lines of) are then at hand.
async fn run_orders_program(name: &str, dir: &Path) -> (StreamingSession, StreamingQuery) {
    let sql = std::fs::read_to_string(program(name))
        .unwrap()
        .replace("'data/orders'", &format!("'{}'", dir.join("data/orders").display()))
        .replace("connector = 'console'", "connector = 'memory'")
        .replace(", truncate = 'false'", "");
    let session = StreamingSession::new();
    let query = crate::common::start(&session, &sql).await;
    assert!(query.await_termination(None).await.unwrap());
    (session, query)
}

#[test]
fn orders_buys_sells_sql_counts_each_side() {
    let dir = workdir(&["orders"]);
    let printed = tables(&run(dir.path(), &program("05_orders_buys_sells.sql")));
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert_eq!(printed[0].header, ["batch", "buy_or_sell", "orders"]);
    assert_eq!(printed[0].sorted(&["buy_or_sell", "orders"]), BUYS_SELLS);
    let (start, end) = window(&printed[0].rows[0][0]);
    assert_window(start, end, 3, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_buys_sells_sql_drops_the_malformed_lines() {
    let dir = workdir(&["orders"]);
    let (session, query) = run_orders_program("05_orders_buys_sells.sql", dir.path()).await;
    assert_eq!(
        query_rows(
            &session,
            "SELECT buy_or_sell, orders FROM buys_sells ORDER BY buy_or_sell"
        )
        .await,
        BUYS_SELLS
    );
    assert_eq!(dropped_malformed(&query), MALFORMED_ORDERS);
}

#[test]
fn orders_top_clients_sql_ranks_clients_after_each_file() {
    let dir = workdir(&["orders"]);
    let printed = tables(&run(dir.path(), &program("05_orders_top_clients.sql")));
    let batches: Vec<Vec<String>> = printed.iter().map(Table::lines).collect();
    assert_eq!(batches, TOP_CLIENTS);
    assert_eq!(printed[0].header, ["client_id", "traded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_top_clients_sql_drops_one_malformed_line_per_file() {
    let dir = workdir(&["orders"]);
    let (session, query) = run_orders_program("05_orders_top_clients.sql", dir.path()).await;
    assert_eq!(query_rows(&session, "SELECT * FROM top_clients").await, TOP_CLIENTS[2]);
    let per_batch: Vec<String> = query
        .recent_progress()
        .iter()
        .map(|p| format!("{}:{}", p.batch_id, p.sources[0].metrics["numDroppedMalformedRecords"]))
        .collect();
    // One in each file, counted from the query's start.
    assert_eq!(per_batch, ["0:1", "1:2", "2:3"]);
    assert_eq!(dropped_malformed(&query), MALFORMED_ORDERS);
}

#[test]
fn orders_top_symbols_sql_ranks_the_symbols_of_the_last_hour() {
    let dir = workdir(&["orders"]);
    let printed = tables(&run(dir.path(), &program("05_orders_top_symbols.sql")));
    assert_eq!(printed.len(), 1, "{printed:?}");
    let table = &printed[0];
    assert_eq!(table.header, ["window_start", "window_end", "symbol", "amount"]);
    let ranked: Vec<String> = table
        .rows
        .iter()
        .map(|r| table.pick(r, &["symbol", "amount"]).join("|"))
        .collect();
    assert_eq!(ranked, TOP_SYMBOLS);
    for row in &table.rows {
        assert_window(row[0].parse().unwrap(), row[1].parse().unwrap(), 3600, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_example_runs_the_three_jobs() {
    let dir = workdir(&["orders"]);
    let input = dir.path().join("data/orders").display().to_string();
    let session = StreamingSession::new();
    type Job = fn(tidewater::StreamingDataFrame) -> tidewater::Result<tidewater::StreamingDataFrame>;
    let jobs: [(&str, Job, OutputMode); 3] = [
        ("buys_sells", orders::buys_and_sells, OutputMode::Update),
        ("top_clients", orders::top_clients, OutputMode::Complete),
        ("top_symbols", orders::top_symbols_last_hour, OutputMode::Complete),
    ];
    let mut queries = Vec::new();
    for (name, job, mode) in jobs {
        let query = job(orders::orders(&session, &input).await.unwrap())
            .unwrap()
            .write_stream()
            .format("memory")
            .query_name(name)
            .output_mode(mode)
            .trigger(Trigger::AvailableNow)
            .start()
            .await
            .unwrap();
        queries.push(query);
    }
    for query in &queries {
        assert!(query.await_termination(None).await.unwrap());
        assert_eq!(dropped_malformed(query), MALFORMED_ORDERS, "{:?}", query.name());
    }
    assert_eq!(
        query_rows(
            &session,
            "SELECT buy_or_sell, orders FROM buys_sells ORDER BY buy_or_sell"
        )
        .await,
        BUYS_SELLS
    );
    assert_eq!(query_rows(&session, "SELECT * FROM top_clients").await, TOP_CLIENTS[2]);
    assert_eq!(
        query_rows(&session, "SELECT symbol, amount FROM top_symbols").await,
        TOP_SYMBOLS
    );
}

// ---------------------------------------------------------------------------------------------
// 06: countByWindow(30, 10)

#[test]
fn count_by_window_sql_counts_each_line_in_three_windows() {
    let server = LineServer::serving("rsvps");
    let dir = tempfile::tempdir().unwrap();
    let script = with_port(dir.path(), "06_count_by_window.sql", server.port);
    let mut running = Running::start(dir.path(), &script);
    let counted = |printed: &[Table]| -> u64 {
        printed
            .iter()
            .flat_map(|t| &t.rows)
            .map(|r| r[1].parse::<u64>().unwrap())
            .sum()
    };
    // A line's last window closes at most 30 seconds after it came.
    running.wait_for("every line in three windows", Duration::from_secs(60), |t| {
        counted(t) == 3 * RSVPS
    });
    let printed = tables(&running.interrupt());
    assert_eq!(counted(&printed), 3 * RSVPS);
    let mut starts = Vec::new();
    for table in &printed {
        assert_eq!(table.header, ["last_30_seconds", "lines"]);
        for row in &table.rows {
            let (start, end) = window(&row[0]);
            assert_window(start, end, 30, 10);
            starts.push(start);
        }
    }
    // Printed once each, in order, one slide apart: three windows, or four when the lines came on
    // both sides of a slide's start.
    assert!(
        starts.windows(2).all(|w| (w[1] - w[0]).num_seconds() == 10),
        "{starts:?}"
    );
    assert!(matches!(starts.len(), 3 | 4), "{printed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_by_window_example_counts_each_line_in_three_windows() {
    let server = LineServer::serving("rsvps");
    let session = StreamingSession::new();
    let lines = count_by_window::socket_lines(&session, "127.0.0.1", server.port)
        .await
        .unwrap();
    // Complete mode shows the windows before they close.
    let query = count_by_window::count_by_window(lines)
        .unwrap()
        .write_stream()
        .format("memory")
        .query_name("counts")
        .output_mode(OutputMode::Complete)
        .start()
        .await
        .unwrap();
    let expected = [(3 * RSVPS).to_string()];
    wait_rows(
        &session,
        &query,
        "SELECT sum(lines) FROM counts",
        Duration::from_secs(20),
        |rows| rows == expected,
    )
    .await;
    let widths = query_rows(
        &session,
        "SELECT DISTINCT CAST(last_30_seconds['end'] - last_30_seconds.start AS VARCHAR) FROM counts",
    )
    .await;
    assert_eq!(widths, ["0 days 0 hours 0 mins 30.000000000 secs"]);
    let windows = query_rows(&session, "SELECT count(*) FROM counts").await;
    assert!(windows == ["3"] || windows == ["4"], "{windows:?}");
    query.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 07: hourly action counts with a watermark, into SQLite

async fn sqlite_rows(db: &Path, table: &str) -> Vec<String> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(&format!(
        "SELECT action, w_start, w_end, n FROM {table} ORDER BY w_start, action"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter()
        .map(|(a, s, e, n)| format!("{a}|{s}|{e}|{n}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_actions_sql_writes_the_counts_to_sqlite() {
    let dir = workdir(&["events"]);
    let script = program("07_hourly_actions.sql");
    let at = dir.path().to_path_buf();
    let run_it = move || run(&at, &script);
    tokio::task::spawn_blocking(run_it.clone()).await.unwrap();
    let db = dir.path().join("out/hourly_actions.db");
    assert_eq!(sqlite_rows(&db, "hourly_actions").await, HOURLY_ACTIONS);

    // The README's query, through the sqlite3 command line where it is installed.
    match Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT action, w_start, n FROM hourly_actions ORDER BY w_start, action")
        .output()
    {
        Ok(output) => {
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let expected: Vec<String> = HOURLY_ACTIONS
                .iter()
                .map(|r| {
                    let cells: Vec<&str> = r.split('|').collect();
                    format!("{}|{}|{}", cells[0], cells[1], cells[3])
                })
                .collect();
            assert_eq!(
                String::from_utf8_lossy(&output.stdout).lines().collect::<Vec<_>>(),
                expected
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("skipped: sqlite3 is not installed"),
        Err(e) => panic!("running sqlite3: {e}"),
    }

    // Again: every file was read and every batch committed, so the table stays as it is.
    tokio::task::spawn_blocking(run_it).await.unwrap();
    assert_eq!(sqlite_rows(&db, "hourly_actions").await, HOURLY_ACTIONS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_actions_example_drops_the_event_after_its_hour_closed() {
    let dir = workdir(&["events"]);
    let input = dir.path().join("data/events").display().to_string();
    let db = dir.path().join("hourly.db");
    let session = StreamingSession::new();
    let query = hourly_actions::hourly_actions(hourly_actions::events(&session, &input).await.unwrap())
        .unwrap()
        .write_stream()
        .format("database")
        .option("url", format!("sqlite://{}", db.display()))
        .option("table", hourly_actions::TABLE)
        .option("checkpoint_location", dir.path().join("checkpoint").display())
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    assert!(query.await_termination(None).await.unwrap());
    assert_eq!(sqlite_rows(&db, hourly_actions::TABLE).await, HOURLY_ACTIONS);
    let dropped: u64 = query
        .recent_progress()
        .iter()
        .flat_map(|p| &p.state_operators)
        .map(|s| s.num_rows_dropped_by_watermark)
        .sum();
    assert_eq!(dropped, 1);
}
