//! The `tidewater` binary, run as a process: end to end over real files.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::drop_file;

fn tidewater() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tidewater"))
}

fn write_sql(dir: &Path, sql: &str) -> std::path::PathBuf {
    let file = dir.join("job.sql");
    std::fs::write(&file, sql).unwrap();
    file
}

#[test]
fn runs_a_file_to_completion_and_prints_each_batch() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    drop_file(&input, "1.txt", b"hello world\nsecond line\n");
    drop_file(&input, "2.txt", b"third\n");
    let sql = write_sql(
        dir.path(),
        &format!(
            "-- upper-case every line
             CREATE TABLE lines (value VARCHAR) WITH (connector = 'files', format = 'text', path = '{}', max_files_per_trigger = '1');
             CREATE TABLE out WITH (connector = 'console', trigger = 'available_now');
             INSERT INTO out SELECT upper(value) AS line FROM lines;",
            input.display()
        ),
    );
    let output = tidewater().arg("run").arg(&sql).arg("--progress").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let batch0 = stdout.find("Batch: 0").expect("batch 0 printed");
    let batch1 = stdout.find("Batch: 1").expect("batch 1 printed");
    assert!(batch0 < stdout.find("HELLO WORLD").unwrap() && stdout.find("SECOND LINE").unwrap() < batch1);
    assert!(stdout[batch1..].contains("THIRD"));
    assert!(stderr.contains("[out] batch 0: 2 rows"), "{stderr}");
    assert!(stderr.contains("[out] batch 1: 1 rows"), "{stderr}");
}

#[test]
fn a_bad_statement_exits_non_zero_and_points_at_it() {
    let dir = tempfile::tempdir().unwrap();
    let sql = write_sql(
        dir.path(),
        "CREATE TABLE a (n INT) WITH (connector = 'memory');\n\nCREATE TABLE out WITH (connector = 'console', output_mode = 'sometimes');",
    );
    let output = tidewater().arg("run").arg(&sql).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("statement 2 (line 3)") && stderr.contains("output_mode"),
        "{stderr}"
    );

    let output = tidewater()
        .arg("run")
        .arg(dir.path().join("missing.sql"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.sql"));
}

#[test]
fn a_failing_query_exits_non_zero_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "bad.json", b"{\"n\": 1}\n{oops\n");
    let sql = write_sql(
        dir.path(),
        &format!(
            "CREATE TABLE e (n INT) WITH (connector = 'files', format = 'json', mode = 'fail_fast', path = '{}');
             CREATE TABLE out WITH (connector = 'console', trigger = 'available_now');
             INSERT INTO out SELECT n FROM e;",
            dir.path().display()
        ),
    );
    let output = tidewater().arg("run").arg(&sql).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("bad.json, line 2"), "{stderr}");
}

#[test]
fn ctrl_c_stops_the_queries_gracefully_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    drop_file(&input, "1.txt", b"one\n");
    let sql = write_sql(
        dir.path(),
        &format!(
            "CREATE TABLE lines (value VARCHAR) WITH (connector = 'files', format = 'text', path = '{}');
             CREATE TABLE out WITH (connector = 'console');
             INSERT INTO out SELECT value FROM lines;",
            input.display()
        ),
    );
    let mut child = tidewater()
        .arg("run")
        .arg(&sql)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    // The query keeps running (default trigger); wait for its first batch, then interrupt it.
    while !seen.contains("| one") {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "process ended early: {seen}");
        seen.push_str(&line);
    }
    let status = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn the_bundled_quickstart_runs_every_file_once() {
    let output = tidewater()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "sql/quickstart.sql", "--progress"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Four files, one per batch; every RSVP with a venue comes out exactly once.
    assert!(stdout.contains("Batch: 3") && !stdout.contains("Batch: 4"), "{stdout}");
    assert!(stdout.contains("Couchbase San Francisco"), "{stdout}");
    let read: usize = stderr
        .lines()
        .filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(read, 24, "{stderr}");
}

#[test]
fn a_static_query_printed_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_sql(dir.path(), "SELECT * FROM generate_series(1, 200000);");
    let mut child = tidewater()
        .arg("run")
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close the pipe, as `| head -1` does.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{stderr}");
}

/// Starts `tidewater run` on `sql`, lets it work for a moment, sends it SIGINT, and returns its
/// exit status, standard error, and how long it took to exit after the signal.
#[cfg(target_os = "linux")]
fn interrupt_after_start(sql: &str) -> (std::process::ExitStatus, String, std::time::Duration) {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let script = write_sql(dir.path(), sql);
    let mut child = tidewater()
        .arg("run")
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough to be inside the statement (the binary starts in milliseconds).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the statement ended before the signal"
    );
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: `kill` only sends a signal to the process we started and still own.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("the process did not exit after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr, took)
}

#[test]
#[cfg(target_os = "linux")]
fn ctrl_c_cancels_a_long_static_query_at_once() {
    let (status, stderr, took) = interrupt_after_start("SELECT count(*) FROM generate_series(1, 10000000000);");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(3), "exited {took:?} after SIGINT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(target_os = "linux")]
async fn ctrl_c_ends_a_start_that_waits_on_a_silent_database() {
    let server = crate::database_timeouts::SilentServer::start().await;
    let sql = format!(
        "CREATE TABLE words (word VARCHAR) WITH (connector = 'memory');
         CREATE TABLE out WITH (connector = 'database', url = 'postgres://postgres@127.0.0.1:{}/test',
           table = 'out', connect_timeout = '10 minutes', checkpoint_location = 'memory:///cp');
         INSERT INTO out SELECT word FROM words;",
        server.port
    );
    let (status, stderr, took) = tokio::task::spawn_blocking(move || interrupt_after_start(&sql))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(3), "exited {took:?} after SIGINT");
}

/// The live progress lines are drawn only on a terminal: with standard error piped, `run` prints
/// what it always did (a plain line per batch with `--progress`, nothing without), no escape
/// codes; in a pseudo-terminal, the line of an `available_now` files job shows its files.
#[test]
fn live_progress_lines_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    drop_file(&input, "1.txt", b"one\ntwo\n");
    drop_file(&input, "2.txt", b"three\n");
    let sql = write_sql(
        dir.path(),
        &format!(
            "CREATE TABLE lines (value VARCHAR) WITH (connector = 'files', format = 'text', path = '{}', max_files_per_trigger = '1');
             CREATE TABLE out WITH (connector = 'memory', trigger = 'available_now');
             INSERT INTO out SELECT upper(value) AS line FROM lines;",
            input.display()
        ),
    );
    for per_batch in [true, false] {
        let mut command = tidewater();
        command.arg("run").arg(&sql).env_remove("RUST_LOG");
        if per_batch {
            command.arg("--progress");
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(!stderr.contains('\x1b') && !stderr.contains('\r'), "{stderr:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        match per_batch {
            true => assert!(
                lines.len() == 2 && lines.iter().all(|l| l.starts_with("[out] batch ")),
                "{stderr}"
            ),
            false => assert!(lines.is_empty(), "{stderr}"),
        }
    }

    #[cfg(target_os = "linux")]
    {
        let mut command = tidewater();
        command.arg("run").arg(&sql).env("TERM", "xterm").env_remove("RUST_LOG");
        let options = rexpect::session::Options::new()
            .timeout_ms(Some(60_000))
            .strip_ansi_escape_codes(true);
        let mut terminal = rexpect::session::spawn_with_options(command, options).unwrap();
        terminal.exp_string("2 files, 3 rows, 2 batches").unwrap();
        terminal.exp_string("ended").unwrap();
        terminal.exp_eof().unwrap();
        match terminal.process().wait().unwrap() {
            rexpect::process::WaitStatus::Exited(_, code) => assert_eq!(code, 0),
            other => panic!("tidewater run did not exit: {other:?}"),
        }
    }
}
