//! `tidewater shell` as users meet it: typed at a real terminal (a pseudo-terminal driven with
//! rexpect), fed through a pipe, and started with `-f`. The shell's statements (`SHOW QUERIES`,
//! `STOP QUERY`, ...) as the library answers them are checked at the end; their error messages are
//! in `tests/slt/shell_statements.slt`.
//!
//! Nothing here sleeps to let something happen: each step waits for the output it expects (with
//! a timeout), and a result that appears once a query has run its batch is asked for again until
//! it shows.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{drop_file, query_rows};

/// The shell's prompt for a new statement.
const PROMPT: &str = "tidewater> ";

fn tidewater(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidewater"));
    command
        .arg("shell")
        .current_dir(dir)
        .env("TIDEWATER_HISTORY", dir.join("history"))
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    command
}

/// The SQL declaring a text `files` stream `lines` over `input` and a memory sink `out`.
fn declarations(input: &Path) -> [String; 2] {
    [
        format!(
            "CREATE TABLE lines (value VARCHAR) WITH (connector = 'files', format = 'text', path = '{}');",
            input.display()
        ),
        "CREATE TABLE out WITH (connector = 'memory');".to_string(),
    ]
}

#[cfg(target_os = "linux")]
mod terminal {
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    use rexpect::process::WaitStatus;
    use rexpect::session::{Options, PtySession};

    use super::*;

    /// The prompt for the next line of an unfinished statement.
    const CONTINUATION: &str = "-> ";

    /// How long one step may take: a batch of a debug build on a busy 2-core machine is slow.
    const STEP: Duration = Duration::from_secs(60);

    /// A shell in a pseudo-terminal, 400 columns wide so that no statement wraps.
    struct Shell {
        pty: PtySession,
    }

    impl Shell {
        fn start(dir: &Path, args: &[&str]) -> Shell {
            let mut command = tidewater(dir);
            command.args(args);
            let options = Options::new()
                .timeout_ms(Some(STEP.as_millis() as u64))
                .strip_ansi_escape_codes(true);
            let pty = rexpect::session::spawn_with_options(command, options).unwrap();
            let terminal = pty.process().get_file_handle().unwrap();
            let size = libc::winsize {
                ws_row: 50,
                ws_col: 400,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: a valid descriptor and a winsize that outlives the call.
            assert_eq!(unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &size) }, 0);
            Shell { pty }
        }

        /// Waits for `text`; returns what came before it.
        fn expect(&mut self, text: &str) -> String {
            match self.pty.exp_string(text) {
                Ok(before) => before,
                Err(e) => panic!("waiting for {text:?}: {e}"),
            }
        }

        /// Types `sql` and Enter; returns what the shell printed before its next prompt.
        fn run(&mut self, sql: &str) -> String {
            self.pty.send_line(sql).unwrap();
            self.expect(PROMPT)
        }

        /// Runs `sql` until its output contains `wanted` (the result of a batch still running).
        fn run_until(&mut self, sql: &str, wanted: &str) -> String {
            let deadline = Instant::now() + STEP;
            loop {
                let output = self.run(sql);
                if output.contains(wanted) {
                    return output;
                }
                assert!(
                    Instant::now() < deadline,
                    "{sql} never showed {wanted:?}; last: {output}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        /// Waits until the shell runs a statement: the terminal is back in its normal mode, where
        /// Ctrl-C is a signal (at the prompt, the line editor reads it as a key).
        fn wait_until_running(&self) {
            let terminal = self.pty.process().get_file_handle().unwrap();
            let deadline = Instant::now() + STEP;
            loop {
                // SAFETY: a valid descriptor and a termios struct to fill.
                let mut mode: libc::termios = unsafe { std::mem::zeroed() };
                assert_eq!(unsafe { libc::tcgetattr(terminal.as_raw_fd(), &mut mode) }, 0);
                if mode.c_lflag & libc::ISIG != 0 {
                    return;
                }
                assert!(Instant::now() < deadline, "the statement never started");
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        /// Waits for the shell to exit; returns its exit code.
        fn exit_code(&mut self) -> i32 {
            self.pty.exp_eof().unwrap();
            match self.pty.process().wait().unwrap() {
                WaitStatus::Exited(_, code) => code,
                other => panic!("the shell did not exit: {other:?}"),
            }
        }
    }

    /// The cells of the table row whose first cell is `first`.
    fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
        table
            .lines()
            .map(|line| {
                line.trim()
                    .trim_matches('|')
                    .split('|')
                    .map(str::trim)
                    .collect::<Vec<_>>()
            })
            .find(|cells| cells.first() == Some(&first))
            .unwrap_or_else(|| panic!("no row {first:?} in\n{table}"))
    }

    #[test]
    fn a_session_at_the_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let json = dir.path().join("json");
        std::fs::create_dir(&input).unwrap();
        std::fs::create_dir(&json).unwrap();
        let mut shell = Shell::start(dir.path(), &[]);
        shell.expect(PROMPT);

        // A statement over several lines: the continuation prompt until its `;`.
        let [lines, _] = declarations(&input);
        shell.run(&lines);
        shell.pty.send_line("CREATE TABLE out").unwrap();
        shell.expect(CONTINUATION);
        shell.pty.send_line("  WITH (connector = 'memory')").unwrap();
        shell.expect(CONTINUATION);
        shell.run(";");

        // The query starts in the background and the prompt comes back at once.
        let started = shell.run("INSERT INTO out SELECT upper(value) AS line FROM lines;");
        assert!(started.contains("started query 'out' (id "), "{started}");

        // Input arrives while the shell waits; the memory table shows it.
        drop_file(&input, "1.txt", b"hello\n");
        shell.run_until("SELECT * FROM out;", "| HELLO |");
        let queries = shell.run("SHOW QUERIES;");
        let out = row(&queries, "out");
        assert_eq!((out[3], out[4]), ("1", "1"), "batches, input rows:\n{queries}");

        // An error prints and leaves the shell and its query running.
        let error = shell.run("SELECT * FROM nowhere;");
        assert!(
            error.contains("error: ") && error.contains("nowhere' not found"),
            "{error}"
        );
        drop_file(&input, "2.txt", b"world\n");
        shell.run_until("SELECT count(*) AS n FROM out;", "| 2 |");

        // Ctrl-C drops a half-typed line; the next statement runs alone.
        shell.pty.send("SELECT 'half").unwrap();
        shell.pty.flush().unwrap();
        shell.pty.send_control('c').unwrap();
        shell.expect(PROMPT);
        let whole = shell.run("SELECT 'whole' AS w;");
        assert!(whole.contains("| whole |") && !whole.contains("error"), "{whole}");

        // Ctrl-C while a statement runs cancels it, and the shell goes on.
        shell
            .pty
            .send_line("SELECT max(value + 1) FROM generate_series(1, 1000000000000);")
            .unwrap();
        shell.wait_until_running();
        shell.pty.send_control('c').unwrap();
        assert!(shell.expect(PROMPT).contains("cancelled"));
        assert!(shell.run("SELECT 1 + 1 AS two;").contains("| 2   |"));

        // A query that fails says so above the prompt, while the user does nothing.
        shell.run(&format!(
            "CREATE TABLE numbers (n INT) WITH (connector = 'files', format = 'json', mode = 'fail_fast', path = '{}');",
            json.display()
        ));
        shell.run("CREATE TABLE bad WITH (connector = 'memory');");
        shell.run("INSERT INTO bad SELECT n FROM numbers;");
        drop_file(&json, "1.json", b"{oops\n");
        shell.expect("query 'bad' failed in batch 0: ");
        shell.expect(PROMPT);

        // STOP QUERY by id (quoted) and SHOW QUERIES of ended queries.
        let id = started
            .split("(id ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .unwrap()
            .to_string();
        let stopped = shell.run(&format!("STOP QUERY '{id}';"));
        assert_eq!(row(&stopped, "out")[2], "stopped", "{stopped}");
        let queries = shell.run("SHOW QUERIES;");
        assert_eq!(row(&queries, "out")[2], "stopped");
        assert!(
            row(&queries, "bad")[2].starts_with("failed: query 'bad' failed in batch 0"),
            "{queries}"
        );
        assert!(
            shell
                .run("STOP QUERY nobody;")
                .contains("there is no query called 'nobody'; no query is running")
        );

        // Ctrl-D leaves, stopping the queries still running.
        shell.run("INSERT INTO out SELECT lower(value) AS line FROM lines;");
        shell.pty.send_control('d').unwrap();
        shell.expect("stopping 1 query after its current batch");
        assert_eq!(shell.exit_code(), 0);

        // The history holds whole statements, the multi-line one as typed.
        let history = std::fs::read_to_string(dir.path().join("history")).unwrap();
        assert!(history.contains("SELECT 'whole' AS w;"), "{history}");
        assert!(!history.contains("'half"), "{history}");
    }

    #[test]
    fn a_file_runs_first_then_the_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        std::fs::create_dir(&input).unwrap();
        drop_file(&input, "1.txt", b"first\n");
        let [lines, out] = declarations(&input);
        let setup = dir.path().join("setup.sql");
        std::fs::write(
            &setup,
            format!(
                "{lines}\n{out}\nSELECT * FROM missing;\nINSERT INTO out SELECT upper(value) AS line FROM lines;\n"
            ),
        )
        .unwrap();
        let mut shell = Shell::start(dir.path(), &["-f", setup.to_str().unwrap()]);
        // Each statement is echoed before what it prints; an error names the file and line.
        let ran = shell.expect(PROMPT);
        let echoed = ran.find("INSERT INTO out SELECT").expect("echoed");
        assert!(ran.contains("CREATE TABLE lines (value VARCHAR)"), "{ran}");
        assert!(ran.contains(&format!("error: {}, line 3: ", setup.display())), "{ran}");
        assert!(ran[echoed..].contains("started query 'out'"), "{ran}");
        shell.run_until("SELECT * FROM out;", "| FIRST |");
        shell.pty.send_line("\\q").unwrap();
        shell.expect("stopping 1 query after its current batch");
        assert_eq!(shell.exit_code(), 0);
    }
}

/// Without a terminal the shell reads statements from standard input without prompts: an error
/// is printed and the rest runs, a statement without `;` at the end runs too, and `--wait` waits
/// for the queries (here one with `available_now`) before exiting non-zero for the error.
#[test]
fn piped_statements_run_without_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    drop_file(&input, "1.txt", b"hello\n");
    let [lines, _] = declarations(&input);
    let script = format!(
        "{lines}
         CREATE TABLE shout WITH (connector = 'console', trigger = 'available_now');
         SHOW TABLES;
         SELECT * FROM nowhere;
         INSERT INTO shout SELECT upper(value) AS line FROM lines;
         SELECT 'still here'
           AS status"
    );
    let mut child = tidewater(dir.path())
        .arg("--wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stdout.contains(PROMPT), "{stdout}");
    assert!(stdout.contains("| shout | sink   | console   |"), "{stdout}");
    assert!(stdout.contains("started query 'shout'"), "{stdout}");
    assert!(stdout.contains("| HELLO |"), "the console sink's batch: {stdout}");
    assert!(stdout.contains("| still here |"), "{stdout}");
    assert!(stderr.contains("nowhere' not found"), "{stderr}");
    assert!(stderr.contains("error: 1 statement failed"), "{stderr}");
    assert_eq!(output.status.code(), Some(1));
}

/// What `SHOW QUERIES` says of an aggregation with a watermark, a failed query and a stopped one.
#[tokio::test]
async fn show_queries_reports_each_query() {
    let session = tidewater::StreamingSession::new();
    session
        .run_script(
            "CREATE TABLE events (phone_id INT, time TIMESTAMP, WATERMARK FOR time AS time - INTERVAL '10' SECOND)
               WITH (connector = 'memory');
             CREATE TABLE counts WITH (connector = 'memory', output_mode = 'update');
             CREATE TABLE halves WITH (connector = 'memory');",
        )
        .await
        .unwrap();
    let counts = crate::common::start(
        &session,
        "INSERT INTO counts SELECT phone_id, count(*) AS n, max(time) AS last FROM events GROUP BY phone_id",
    )
    .await;
    let halves = crate::common::start(
        &session,
        "INSERT INTO halves SELECT CAST(100 / (phone_id - 1) AS INT) AS h FROM events",
    )
    .await;
    session
        .sql("INSERT INTO events VALUES (2, '2026-01-01T10:00:30'), (3, '2026-01-01T10:00:00'), (2, '2026-01-01T10:00:10')")
        .await
        .unwrap();
    counts.process_all_available().await.unwrap();
    halves.process_all_available().await.unwrap();
    session
        .sql("INSERT INTO events VALUES (1, '2026-01-01T10:01:00')")
        .await
        .unwrap();
    counts.process_all_available().await.unwrap();
    assert!(
        halves.process_all_available().await.is_err(),
        "division by zero fails the query"
    );

    let shown = query_rows(&session, "SHOW QUERIES").await;
    let cells = |name: &str| -> Vec<String> {
        shown
            .iter()
            .find(|r| r.starts_with(&format!("{name}|")))
            .unwrap_or_else(|| panic!("no {name} in {shown:?}"))
            .split('|')
            .map(str::to_string)
            .collect()
    };
    let c = cells("counts");
    assert_eq!(c[1], counts.id());
    assert_eq!(c[2], "Waiting for data to arrive");
    assert_eq!((c[3].as_str(), c[4].as_str()), ("2", "4"), "batches, input rows: {c:?}");
    assert_eq!(c[6], "2026-01-01T10:00:20.000Z", "the watermark batch 0 left: {c:?}");
    assert_eq!(c[7], "3", "groups in state: {c:?}");
    assert_eq!(c[8], "NULL");
    let h = cells("halves");
    assert!(h[2].starts_with("failed: query 'halves' failed in batch 1: "), "{h:?}");
    assert!(h[8].contains("Divide by zero"), "{h:?}");
    assert_eq!(h[7], "NULL", "a stateless query has no state rows");

    let stopped = query_rows(&session, "STOP QUERY counts").await;
    assert!(
        stopped[0].starts_with(&format!("counts|{}|stopped|2|4|", counts.id())),
        "{stopped:?}"
    );
    assert!(!counts.is_active());
}
