//! `tidewater shell`: an interactive SQL prompt over one session. `INSERT INTO <sink> SELECT ...`
//! starts its streaming query in the background and the prompt comes back at once, so the user
//! can watch results (`SELECT` from a memory sink, `SHOW QUERIES`) while the queries run.
//!
//! A failing statement prints its error and the shell goes on; a query that fails prints one line
//! above the prompt. Ctrl-C clears the line being typed or cancels the running statement. Leaving
//! (Ctrl-D, `\q`, the end of piped input) stops the running queries after their current batch; a
//! second Ctrl-C or Ctrl-D quits without waiting.
//!
//! Without a terminal on standard input and output, the shell reads statements from standard
//! input without prompts or line editing, so it can be scripted; it then exits non-zero when a
//! statement or a query failed.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tidewater::arrow::array::RecordBatch;
use tidewater::datafusion::dataframe::DataFrame;
use tidewater::{StatementOutcome, StreamingQuery, StreamingSession};

use super::input::{Input, Reader};
use super::script::{Statement, split};
use super::{Interrupted, Interrupts, Notices, label, print_table};

/// How `tidewater shell` was asked to run.
pub(crate) struct ShellOptions {
    /// A SQL file to run first, each statement echoed before it runs.
    pub(crate) file: Option<PathBuf>,
    /// At the end of input, wait for the queries to end instead of stopping them.
    pub(crate) wait: bool,
}

/// How a statement ended.
#[derive(Debug, PartialEq, Eq)]
enum Ran {
    Done,
    Failed,
    /// Ctrl-C cancelled it; the statements typed after it are skipped.
    Cancelled,
}

/// The shell's session and what it keeps about its queries.
struct Shell {
    session: StreamingSession,
    notices: Notices,
    /// Whether the user types at a terminal (prompts, line editing).
    terminal: bool,
    /// Every query the shell started, to report failures once and count them.
    started: Vec<StreamingQuery>,
    /// Run ids of the failed queries already reported (by their watcher, or when leaving).
    reported: Arc<Mutex<HashSet<String>>>,
    /// Statements that failed.
    failed_statements: usize,
}

/// Runs the shell until the user leaves.
///
/// # Errors
/// The `-f` file cannot be read, the terminal cannot be set up, a second Ctrl-C or Ctrl-D quit
/// without waiting ([`Interrupted`]), or, without a terminal, a statement or query failed.
pub(crate) async fn shell(options: ShellOptions, notices: Notices) -> anyhow::Result<()> {
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let mut interrupts = Interrupts::listen()?;
    let mut shell = Shell {
        session: StreamingSession::new(),
        notices: notices.clone(),
        terminal,
        started: Vec::new(),
        reported: Arc::default(),
        failed_statements: 0,
    };
    let script = match &options.file {
        Some(file) => Some(std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?),
        None => None,
    };
    let reader = Reader::start(terminal, &notices)?;
    if terminal {
        println!(
            "tidewater {}: statements end with ';'; 'help' lists the statements; Ctrl-D leaves",
            env!("CARGO_PKG_VERSION")
        );
    }
    if let (Some(file), Some(script)) = (&options.file, &script) {
        shell.run_file(file, script, &mut interrupts).await;
    }
    loop {
        let input = tokio::select! {
            input = reader.next() => input,
            // At a terminal, Ctrl-C at the prompt is a key the editor reads; a signal now comes
            // from elsewhere, or (piped input) from a user who wants to end: leave.
            () = interrupts.next(), if !terminal => Input::End,
        };
        let Input::Statements(statements) = input else {
            break;
        };
        for statement in statements {
            if shell.execute(&statement, None, &mut interrupts).await == Ran::Cancelled {
                break;
            }
        }
    }
    shell.leave(options.wait, &mut interrupts, &reader).await
}

impl Shell {
    /// Runs the statements of the `-f` file, each echoed first, as `psql -f` with `-a` does.
    /// An error is printed and the next statement runs; Ctrl-C cancels the rest of the file.
    async fn run_file(&mut self, file: &Path, script: &str, interrupts: &mut Interrupts) {
        let split = split(script);
        for statement in split.complete.iter().chain(&split.rest) {
            println!("{};", statement.text);
            if self.execute(statement, Some(file), interrupts).await == Ran::Cancelled {
                eprintln!("the rest of {} was skipped", file.display());
                return;
            }
        }
    }

    /// Runs one statement and prints what it gave: rows as a table, a started query's name and
    /// id, or its error (`file` says where the statement comes from, for the error's position).
    async fn execute(&mut self, statement: &Statement, file: Option<&Path>, interrupts: &mut Interrupts) -> Ran {
        let ran = self.run_statement(statement, file, interrupts).await;
        // A Ctrl-C that came too late for this statement (or twice) is not meant for the next
        // one. Earlier ones are not forgotten here: one pressed right after Enter, before the
        // statement started, is meant for it (at the prompt the editor reads Ctrl-C as a key).
        interrupts.forget_earlier();
        ran
    }

    async fn run_statement(&mut self, statement: &Statement, file: Option<&Path>, interrupts: &mut Interrupts) -> Ran {
        let session = self.session.clone();
        let work = async {
            let outcomes = session.run_script(&statement.text).await.map_err(without_position)?;
            let mut started = Vec::new();
            for outcome in outcomes {
                match outcome {
                    StatementOutcome::Rows(df) => print_rows(df).await?,
                    StatementOutcome::Started(query) => {
                        println!("started query '{}' (id {})", label(&query), query.id());
                        started.push(query);
                    }
                    StatementOutcome::Done => {}
                }
            }
            anyhow::Ok(started)
        };
        tokio::select! {
            result = work => match result {
                Ok(started) => {
                    for query in started {
                        self.watch(query);
                    }
                    Ran::Done
                }
                Err(e) => {
                    match file {
                        Some(file) => eprintln!("error: {}, line {}: {e:#}", file.display(), statement.line),
                        None => eprintln!("error: {e:#}"),
                    }
                    self.failed_statements += 1;
                    Ran::Failed
                }
            },
            () = interrupts.next() => {
                // After the `^C` the terminal shows.
                eprintln!("{}cancelled", if self.terminal { "\n" } else { "" });
                Ran::Cancelled
            }
        }
    }

    /// Reports `query`'s failure when it happens, while the shell is open.
    fn watch(&mut self, query: StreamingQuery) {
        self.started.push(query.clone());
        let (notices, reported) = (self.notices.clone(), self.reported.clone());
        tokio::spawn(async move {
            let _ = query.await_termination(None).await;
            report_failure(&query, &notices, &reported);
        });
    }

    /// Ends the session: waits for the running queries (`wait`) or stops them after their
    /// current batch; Ctrl-C (or Ctrl-D at a terminal) quits without waiting.
    async fn leave(&mut self, wait: bool, interrupts: &mut Interrupts, reader: &Reader) -> anyhow::Result<()> {
        interrupts.forget_earlier();
        let running = self.session.active_queries();
        let stop = if wait && !running.is_empty() {
            let all_done = futures::future::join_all(running.iter().map(|q| q.await_termination(None)));
            tokio::select! {
                _ = all_done => false,
                () = interrupts.next() => true,
            }
        } else {
            !running.is_empty()
        };
        if stop {
            let running = self.session.active_queries();
            let again = if self.terminal { "Ctrl-C or Ctrl-D" } else { "Ctrl-C" };
            let queries = match running.len() {
                1 => "1 query after its current batch".to_string(),
                n => format!("{n} queries after their current batch"),
            };
            eprintln!("stopping {queries} ({again} again to quit at once)");
            let stop_all = futures::future::join_all(running.iter().map(StreamingQuery::stop));
            tokio::select! {
                _ = stop_all => {}
                () = interrupts.next() => {
                    return Err(Interrupted("interrupted again: quit without waiting for the current batches").into());
                }
                () = reader.second_end() => {
                    return Err(Interrupted("quit without waiting for the current batches").into());
                }
            }
        }
        let mut failed_queries = 0;
        for query in &self.started {
            if query.exception().is_some() {
                failed_queries += 1;
                report_failure(query, &self.notices, &self.reported);
            }
        }
        if self.terminal || (self.failed_statements == 0 && failed_queries == 0) {
            return Ok(());
        }
        let failed: Vec<String> = [
            (self.failed_statements, "statement", "statements"),
            (failed_queries, "query", "queries"),
        ]
        .into_iter()
        .filter(|(n, ..)| *n > 0)
        .map(|(n, one, many)| format!("{n} {}", if n == 1 { one } else { many }))
        .collect();
        anyhow::bail!("{} failed", failed.join(" and "))
    }
}

/// Prints the failure of `query`, if it failed and was not reported yet.
fn report_failure(query: &StreamingQuery, notices: &Notices, reported: &Mutex<HashSet<String>>) {
    let Some(error) = query.exception() else {
        return;
    };
    if !reported
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(query.run_id().to_string())
    {
        return;
    }
    // A failed batch's error already reads "query 'name' failed in batch N: ...".
    let line = match error.as_ref() {
        tidewater::Error::Query { .. } => error.to_string(),
        _ => format!("query '{}' failed: {error}", label(query)),
    };
    notices.print(&line);
}

/// The error of a statement run alone: its position in that one-statement script says nothing.
fn without_position(error: tidewater::Error) -> tidewater::Error {
    match error {
        tidewater::Error::Statement { error, .. } => *error,
        other => other,
    }
}

/// Prints a statement's rows as a table: the header alone when there are none, nothing at all
/// for a statement without columns (a declaration).
async fn print_rows(df: DataFrame) -> anyhow::Result<()> {
    let schema = Arc::new(df.schema().as_arrow().clone());
    if schema.fields().is_empty() {
        return Ok(());
    }
    let mut batches = df.collect().await?;
    batches.retain(|b| b.num_rows() > 0);
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema));
    }
    print_table(&batches)
}
