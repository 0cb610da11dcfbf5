//! The `tidewater` command line: runs `.sql` files of streams, sinks and streaming queries, or an
//! interactive shell over a session whose queries run in the background.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::{INTERRUPTED_EXIT_CODE, Interrupted, Notices};

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
    /// An interactive SQL prompt: `INSERT INTO <sink> SELECT ...` starts a query in the
    /// background, `SELECT`, `SHOW QUERIES`, `SHOW TABLES` look at results while queries run.
    /// Ctrl-D leaves, stopping the queries. Reads statements from standard input without prompts
    /// when it is not a terminal.
    Shell {
        /// A SQL file to run first, its statements echoed as they run.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// At the end of input, wait for the running queries to end (as `run` does) instead of
        /// stopping them.
        #[arg(long)]
        wait: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let notices = Notices::default();
    init_logs(&notices, matches!(cli.command, Command::Shell { .. }));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run { file, progress } => runtime.block_on(cli::run::run(file, progress)),
        Command::Shell { file, wait } => {
            runtime.block_on(cli::shell::shell(cli::shell::ShellOptions { file, wait }, notices))
        }
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

/// Logs go to standard error (`RUST_LOG` chooses them; warnings by default), through `notices` so
/// that in the shell they print above the prompt instead of through the line being typed.
///
/// The shell prints a failed query's error itself, as one line; by default its log event (an
/// error of the query driver, the only one it logs) is left out so the error shows once.
fn init_logs(notices: &Notices, shell: bool) {
    let configured = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let quiet_failures = shell && configured.is_none();
    let filter = configured.unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"));
    let failures = tracing_subscriber::filter::filter_fn(move |meta| {
        !(quiet_failures && *meta.level() == tracing::Level::ERROR && meta.target() == "tidewater::query::driver")
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(notices.clone())
                .with_filter(filter)
                .with_filter(failures),
        )
        .init();
}
