//! The `tidewater` command line: runs `.sql` files of streams, sinks and streaming queries.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tidewater::{StatementOutcome, StreamingQuery, StreamingSession};

#[derive(Parser)]
#[command(
    name = "tidewater",
    version,
    about = "Structured streaming SQL: queries over streams that stay up to date"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the statements of a SQL file in order; each `INSERT INTO <sink> SELECT ...` starts a
    /// streaming query. Exits when every query has finished, or on Ctrl-C after stopping them.
    Run {
        /// The SQL file.
        file: PathBuf,
        /// Print one line per batch: query, batch id, input rows, rows/s, duration.
        #[arg(long)]
        progress: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run { file, progress } => runtime.block_on(run(file, progress)),
    };
    // Work still running (a computation between two yields, a blocking write) is abandoned after
    // a moment rather than waited for: after Ctrl-C, or after an error, the user wants the prompt.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("{e}");
            ExitCode::from(INTERRUPTED_EXIT_CODE)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long the runtime's remaining tasks get to end once `run` has returned.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The exit code of a run ended by Ctrl-C before it finished: 128 + SIGINT, as shells report it.
const INTERRUPTED_EXIT_CODE: u8 = 130;

/// Ctrl-C ended the run before its statements finished (they were cancelled), or a second Ctrl-C
/// abandoned queries that were stopping.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Interrupted(&'static str);

async fn run(file: PathBuf, progress: bool) -> anyhow::Result<()> {
    let sql = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    // Listen for Ctrl-C before any query starts, so an early interrupt also stops gracefully.
    let mut interrupts = Interrupts::listen()?;
    let session = StreamingSession::new();
    // Ctrl-C while statements run (a long static SELECT) drops them, which cancels their work.
    let statements = async {
        let outcomes = session
            .run_script(&sql)
            .await
            .with_context(|| format!("in {}", file.display()))?;
        let mut queries = Vec::new();
        for outcome in outcomes {
            match outcome {
                StatementOutcome::Rows(df) => print_table(&df.collect().await?)?,
                StatementOutcome::Started(query) => queries.push(query),
                StatementOutcome::Done => {}
            }
        }
        anyhow::Ok(queries)
    };
    let queries = tokio::select! {
        queries = statements => queries?,
        () = interrupts.next() => {
            return Err(Interrupted("interrupted: the running statement was cancelled").into());
        }
    };
    let printers: Vec<_> = if progress {
        queries
            .iter()
            .map(|q| tokio::spawn(print_progress(q.clone())))
            .collect()
    } else {
        Vec::new()
    };
    let all_done = futures::future::join_all(queries.iter().map(|q| q.await_termination(None)));
    tokio::select! {
        results = all_done => {
            for (query, result) in queries.iter().zip(results) {
                result.with_context(|| format!("query '{}'", query.name().unwrap_or(query.id())))?;
            }
        }
        () = interrupts.next() => {
            eprintln!(
                "stopping {} queries after their current batch (Ctrl-C again to quit at once)",
                queries.len()
            );
            let stop_all = async {
                for query in &queries {
                    query.stop().await.with_context(|| format!("query '{}'", query.name().unwrap_or(query.id())))?;
                }
                anyhow::Ok(())
            };
            tokio::select! {
                stopped = stop_all => stopped?,
                () = interrupts.next() => {
                    return Err(Interrupted("interrupted again: quit without waiting for the current batches").into());
                }
            }
        }
    }
    // Each printer ends once its query has ended and its last batch is printed.
    futures::future::join_all(printers).await;
    Ok(())
}

/// Prints rows as a table on standard output. A reader that closed the pipe (`| head`) has all
/// it wanted, so the rest is dropped quietly, as the console sink does.
fn print_table(batches: &[tidewater::arrow::array::RecordBatch]) -> anyhow::Result<()> {
    use std::io::Write;
    let table = tidewater::arrow::util::pretty::pretty_format_batches(batches)?;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{table}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}

/// Ctrl-C (SIGINT), each press once. Listening starts when this is made, not when first awaited.
struct Interrupts {
    #[cfg(unix)]
    signals: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn listen() -> anyhow::Result<Self> {
        #[cfg(unix)]
        let signals = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot listen for Ctrl-C")?;
        Ok(Interrupts {
            #[cfg(unix)]
            signals,
        })
    }

    /// Resolves on the next Ctrl-C.
    async fn next(&mut self) {
        #[cfg(unix)]
        self.signals.recv().await;
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prints one line per batch of `query` to standard error until it ends.
async fn print_progress(query: StreamingQuery) {
    let mut printed = None;
    loop {
        let ended = !query.is_active();
        for p in query.recent_progress() {
            if printed.is_some_and(|last| p.batch_id <= last) {
                continue;
            }
            eprintln!(
                "[{}] batch {}: {} rows, {:.0} rows/s, {} ms",
                p.name.as_deref().unwrap_or(&p.id),
                p.batch_id,
                p.num_input_rows,
                p.processed_rows_per_second,
                p.batch_duration
            );
            printed = Some(p.batch_id);
        }
        if ended {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
