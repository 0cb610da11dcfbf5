//! The socket source against real line servers on loopback: a server written here that sends
//! exactly what a test says (split writes, bad bytes, closing and coming back), and `nc -lk`
//! where it is installed.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::common::{query_rows, start};
use tidewater::{StreamingQuery, StreamingSession};

/// A listener on a free loopback port.
async fn server() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

async fn accept(listener: &TcpListener) -> TcpStream {
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the source connects")
        .unwrap();
    stream
}

/// Waits until the query has processed `rows` rows in all, or fails after ten seconds.
async fn wait_for_rows(query: &StreamingQuery, rows: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen: u64 = query.recent_progress().iter().map(|p| p.num_input_rows).sum();
        if seen >= rows {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{seen} of {rows} rows after 10 s; status {:?}, error {:?}",
            query.status(),
            query.exception()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lines_query(port: u16, columns: &str, mode: &str) -> String {
    format!(
        "CREATE TABLE lines ({columns}) WITH (connector = 'socket', host = '127.0.0.1', port = '{port}', mode = '{mode}');
         CREATE TABLE out WITH (connector = 'memory');
         INSERT INTO out SELECT * FROM lines"
    )
}

/// Lines cut anywhere across writes, CRLF and LF ends, an empty line, a line of 1 MB, and a last
/// line without its end when the server closes: each arrives whole, once, in order.
#[tokio::test]
async fn lines_are_whole_whatever_the_writes_and_line_ends() {
    let (listener, port) = server().await;
    let session = StreamingSession::new();
    let query = start(&session, &lines_query(port, "value VARCHAR", "fail_fast")).await;
    let mut client = accept(&listener).await;
    let long = "x".repeat(1 << 20);
    client.write_all(b"first\r\nsec").await.unwrap();
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client
        .write_all(format!("ond\n\nthird line\n{long}\nno end").as_bytes())
        .await
        .unwrap();
    drop(client);
    wait_for_rows(&query, 6).await;
    let rows = query_rows(&session, "SELECT value FROM out").await;
    assert_eq!(rows.len(), 6, "{:?}", rows.iter().map(|r| r.len()).collect::<Vec<_>>());
    assert_eq!(rows[..4], ["first", "second", "", "third line"]);
    assert_eq!(rows[4], long);
    assert_eq!(rows[5], "no end");
    query.stop().await.unwrap();
}

/// A line that is not UTF-8 is a malformed record, as in the files source: kept as null with its
/// text in `_corrupt_record`, dropped and counted, or failing the query naming the line.
#[tokio::test]
async fn invalid_utf8_is_a_malformed_record_in_every_mode() {
    for mode in ["permissive", "drop_malformed", "fail_fast"] {
        let (listener, port) = server().await;
        let session = StreamingSession::new();
        let query = start(
            &session,
            &lines_query(port, "value VARCHAR, _corrupt_record VARCHAR", mode),
        )
        .await;
        let mut client = accept(&listener).await;
        client.write_all(b"good\nbad \xff\xfe\nalso good\n").await.unwrap();
        client.flush().await.unwrap();
        if mode == "fail_fast" {
            let ended = query.await_termination(Some(Duration::from_secs(10))).await;
            let error = ended.expect_err("fail_fast fails the query").to_string();
            assert!(
                error.contains("TextSocketSource[127.0.0.1:") && error.contains("line 2") && error.contains("UTF-8"),
                "{error}"
            );
            continue;
        }
        // Dropped lines are not input rows.
        let expected_rows = if mode == "permissive" { 3 } else { 2 };
        wait_for_rows(&query, expected_rows).await;
        let rows = query_rows(&session, "SELECT value, _corrupt_record FROM out").await;
        let metrics = &query.last_progress().unwrap().sources[0].metrics;
        if mode == "permissive" {
            assert_eq!(rows, ["good|NULL", "NULL|bad \u{fffd}\u{fffd}", "also good|NULL"]);
            assert_eq!(metrics["numMalformedRecords"], "1", "{metrics:?}");
        } else {
            assert_eq!(rows, ["good|NULL", "also good|NULL"]);
            assert_eq!(metrics["numDroppedMalformedRecords"], "1", "{metrics:?}");
        }
        query.stop().await.unwrap();
    }
}

/// `timestamp` holds when each line arrived.
#[tokio::test]
async fn the_timestamp_column_is_when_the_line_arrived() {
    let (listener, port) = server().await;
    let session = StreamingSession::new();
    let query = start(
        &session,
        &lines_query(port, "value VARCHAR, timestamp TIMESTAMP", "permissive"),
    )
    .await;
    let before = chrono::Utc::now().naive_utc();
    let mut client = accept(&listener).await;
    client.write_all(b"a\n").await.unwrap();
    wait_for_rows(&query, 1).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    client.write_all(b"b\n").await.unwrap();
    wait_for_rows(&query, 2).await;
    let after = chrono::Utc::now().naive_utc();
    let rows = query_rows(&session, "SELECT value, CAST(timestamp AS VARCHAR) FROM out").await;
    let times: Vec<chrono::NaiveDateTime> = rows
        .iter()
        .map(|r| r.split('|').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(
        before <= times[0] && times[0] < times[1] && times[1] <= after,
        "{rows:?}"
    );
    query.stop().await.unwrap();
}

/// The server closes the connection and goes away: the source says so in the query's status and
/// connects again when the server is back, losing nothing the server sent to it.
#[tokio::test]
async fn the_source_reconnects_when_the_server_comes_back() {
    let (listener, port) = server().await;
    let session = StreamingSession::new();
    let query = start(&session, &lines_query(port, "value VARCHAR", "fail_fast")).await;
    let mut client = accept(&listener).await;
    client.write_all(b"one\ntwo\n").await.unwrap();
    wait_for_rows(&query, 2).await;
    drop(client);
    drop(listener);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !query.status().message.contains("reconnecting") {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", query.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let mut client = accept(&listener).await;
    client.write_all(b"three\n").await.unwrap();
    wait_for_rows(&query, 3).await;
    assert_eq!(
        query_rows(&session, "SELECT value FROM out").await,
        ["one", "two", "three"]
    );
    assert!(query.is_active());
    query.stop().await.unwrap();
}

/// Nothing listens: the query fails after its attempts, naming host and port.
#[tokio::test]
async fn an_unreachable_server_fails_the_query_naming_host_and_port() {
    let (listener, port) = server().await;
    drop(listener);
    let session = StreamingSession::new();
    let query = start(&session, &lines_query(port, "value VARCHAR", "permissive")).await;
    let error = query
        .await_termination(Some(Duration::from_secs(20)))
        .await
        .expect_err("the query fails")
        .to_string();
    assert!(
        error.contains(&format!("cannot connect to 127.0.0.1:{port}")) && error.contains(&format!("port {port}")),
        "{error}"
    );
}

/// Options are checked when the stream is declared.
#[tokio::test]
async fn socket_options_are_checked_when_declared() {
    let session = StreamingSession::new();
    for (options, message) in [
        ("host = 'localhost'", "option 'port' is required"),
        (
            "port = '70000'",
            "option 'port' = '70000' must be a whole number from 1 to 65535",
        ),
        (
            "port = '9999', path = 'x'",
            "unknown option 'path' for connector 'socket'",
        ),
    ] {
        let error = session
            .sql(&format!(
                "CREATE TABLE s (value VARCHAR) WITH (connector = 'socket', {options})"
            ))
            .await
            .expect_err(options)
            .to_string();
        assert!(error.contains(message), "{options}: {error}");
    }
    let error = session
        .sql("CREATE TABLE s (value VARCHAR, n INT) WITH (connector = 'socket', port = '9999')")
        .await
        .expect_err("a column other than value and timestamp")
        .to_string();
    assert!(error.contains("'n' is none of them"), "{error}");
}

/// With a checkpoint, a stopped query goes on where it stopped: the lines of its first run are
/// not read again, and the second run's follow, each once.
#[tokio::test]
async fn a_restarted_query_goes_on_after_the_lines_it_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, port) = server().await;
    let script = format!(
        "CREATE TABLE lines (value VARCHAR) WITH (connector = 'socket', host = '127.0.0.1', port = '{port}');
         CREATE TABLE counts WITH (connector = 'memory', output_mode = 'complete', checkpoint_location = '{}');
         INSERT INTO counts SELECT value, count(*) AS n FROM lines GROUP BY value",
        dir.path().join("cp").display()
    );
    let session = StreamingSession::new();
    let query = start(&session, &script).await;
    let mut client = accept(&listener).await;
    client.write_all(b"a\nb\na\n").await.unwrap();
    wait_for_rows(&query, 3).await;
    query.stop().await.unwrap();
    drop(client);

    let session = StreamingSession::new();
    let query = start(&session, &script).await;
    let mut client = accept(&listener).await;
    client.write_all(b"a\nc\n").await.unwrap();
    wait_for_rows(&query, 2).await;
    let mut rows = query_rows(&session, "SELECT * FROM counts").await;
    rows.sort();
    assert_eq!(rows, ["a|3", "b|1", "c|1"]);
    query.stop().await.unwrap();
    // Every chunk of the log was committed, so none is left (hidden files are the checkpoint's
    // deleted files kept to be written over).
    let left: Vec<String> = std::fs::read_dir(dir.path().join("cp/sources/0"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let left: Vec<String> = left.into_iter().filter(|name| !name.starts_with('.')).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Lines in the socket source's log in `checkpoint` (`sources/0/`): per chunk, 12 bytes of header
/// per line (arrival time, length) then the line, and the seal after the content.
fn logged_lines(checkpoint: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(checkpoint.join("sources/0")) else {
        return 0;
    };
    let mut lines = 0;
    for entry in entries {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(file) = std::fs::read(entry.path()) else {
            continue; // deleted by a commit meanwhile
        };
        // The seal line says how long the content is.
        let body = &file[..file.len() - 1];
        let seal = body.iter().rposition(|b| *b == b'\n').unwrap();
        let length: usize = std::str::from_utf8(&body[seal + 1..])
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let mut at = 0;
        while at < length {
            let len = u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap()) as usize;
            at += 12 + len;
            lines += 1;
        }
    }
    lines
}

/// The CLI, killed with SIGKILL at random moments while a server sends numbered lines, and
/// restarted over the same checkpoint: in the end the database holds every line once. Each kill
/// comes after the process has read and logged all lines sent so far (the test watches the log and
/// the table), so no line is in the kernel's buffers, where any client would lose it; the kill
/// then lands while those lines are logged but not yet (all) committed, or mid-batch.
#[tokio::test]
async fn killed_at_random_the_cli_loses_and_repeats_no_line_it_read() {
    const BURSTS: u64 = 12;
    const PER_BURST: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let (listener, port) = server().await;
    let checkpoint = dir.path().join("cp");
    let db = dir.path().join("out.db");
    let sql = dir.path().join("job.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE lines (value VARCHAR) WITH (connector = 'socket', host = '127.0.0.1', port = '{port}');
             CREATE TABLE total WITH (connector = 'database', url = 'sqlite://{}', table = 'total',
               output_mode = 'update', checkpoint_location = '{}', trigger = '50 milliseconds');
             INSERT INTO total SELECT 'all' AS k, count(*) AS n, count(DISTINCT value) AS d,
               max(CAST(value AS BIGINT)) AS hi FROM lines GROUP BY 'all';",
            db.display(),
            checkpoint.display()
        ),
    )
    .unwrap();
    let start_cli = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tidewater"))
            .arg("run")
            .arg(&sql)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let committed = || async {
        let url = format!("sqlite://{}", db.display());
        let Ok(pool) = sqlx::SqlitePool::connect(&url).await else {
            return (0, 0, 0);
        };
        let row: Option<(i64, i64, i64)> = sqlx::query_as("SELECT n, d, hi FROM total")
            .fetch_optional(&pool)
            .await
            .unwrap_or(None);
        pool.close().await;
        row.unwrap_or((0, 0, 0))
    };
    let mut seed = 0x5eed_u64;
    let mut random = |below: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % below
    };
    let mut child = start_cli();
    let mut client = accept(&listener).await;
    let mut sent = 0;
    for burst in 0..BURSTS {
        let lines: String = (sent + 1..=sent + PER_BURST).map(|n| format!("{n}\n")).collect();
        client.write_all(lines.as_bytes()).await.unwrap();
        sent += PER_BURST;
        // Wait until the process has every line sent so far: committed, or in its log.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (n, _, _) = committed().await;
            if n as u64 == sent || n as u64 + logged_lines(&checkpoint) >= sent {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "burst {burst}: {n} committed of {sent}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if burst + 1 < BURSTS {
            tokio::time::sleep(Duration::from_millis(random(120))).await;
            child.kill().unwrap();
            child.wait().unwrap();
            drop(client);
            child = start_cli();
            client = accept(&listener).await;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (n, d, hi) = committed().await;
        if n as u64 >= sent {
            assert_eq!((n as u64, d as u64, hi as u64), (sent, sent, sent), "every line once");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} of {sent} lines committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The Rust API reads a socket as SQL does: `read_stream().format("socket")`.
#[tokio::test]
async fn read_stream_format_socket_reads_lines() {
    let (listener, port) = server().await;
    let session = StreamingSession::new();
    let lines = session
        .read_stream()
        .format("socket")
        .option("host", "127.0.0.1")
        .option("port", port)
        .start()
        .await
        .unwrap();
    let query = lines
        .write_stream()
        .format("memory")
        .query_name("socket_lines")
        .start()
        .await
        .unwrap();
    let mut client = accept(&listener).await;
    client.write_all(b"hello\nworld\n").await.unwrap();
    wait_for_rows(&query, 2).await;
    assert_eq!(
        query_rows(&session, "SELECT value FROM socket_lines").await,
        ["hello", "world"]
    );
    query.stop().await.unwrap();
}
