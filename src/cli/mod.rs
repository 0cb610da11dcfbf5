//! The pieces of the `tidewater` command line: `run` (a SQL file, to the end) and `shell` (an
//! interactive SQL prompt over a session whose queries run in the background), and what they
//! share: printing rows, Ctrl-C, and lines that background work prints for the user.
//!
//! The CLI uses only the library's public API (and the DataFusion it re-exports).

pub(crate) mod input;
pub(crate) mod progress;
pub(crate) mod run;
pub(crate) mod script;
pub(crate) mod shell;

use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tidewater::StreamingQuery;

/// Ctrl-C ended the work before it finished (statements cancelled), or a second Ctrl-C (or
/// Ctrl-D in the shell) abandoned queries that were stopping. The process exits with
/// [`INTERRUPTED_EXIT_CODE`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Interrupted(pub(crate) &'static str);

/// The exit code of a run ended by Ctrl-C before it finished: 128 + SIGINT, as shells report it.
pub(crate) const INTERRUPTED_EXIT_CODE: u8 = 130;

/// The name a user knows a query by: its name, or its id when it has none.
pub(crate) fn label(query: &StreamingQuery) -> &str {
    query.name().unwrap_or(query.id())
}

/// Prints rows as a table on standard output. A reader that closed the pipe (`| head`) has all
/// it wanted, so the rest is dropped quietly, as the console sink does.
pub(crate) fn print_table(batches: &[tidewater::arrow::array::RecordBatch]) -> anyhow::Result<()> {
    let table = tidewater::arrow::util::pretty::pretty_format_batches(batches)?;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{table}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}

/// Ctrl-C (SIGINT), each press once. Listening starts when this is made, not when first awaited.
///
/// While listening, Ctrl-C no longer kills the process: whoever holds this decides what it means.
pub(crate) struct Interrupts {
    #[cfg(unix)]
    signals: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub(crate) fn listen() -> anyhow::Result<Self> {
        #[cfg(unix)]
        let signals = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot listen for Ctrl-C")?;
        Ok(Interrupts {
            #[cfg(unix)]
            signals,
        })
    }

    /// Resolves on the next Ctrl-C.
    pub(crate) async fn next(&mut self) {
        #[cfg(unix)]
        self.signals.recv().await;
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }

    /// Forgets a Ctrl-C pressed before now: it was meant for what ran then (or for nothing), not
    /// for what starts next.
    pub(crate) fn forget_earlier(&mut self) {
        use futures::FutureExt;
        while self.next().now_or_never().is_some() {}
    }
}

/// Something that prints a line above a prompt being edited and shows the prompt again
/// (rustyline's `ExternalPrinter`).
pub(crate) type LinePrinter = Box<dyn rustyline::ExternalPrinter + Send>;

/// Lines that background work prints for the user (a query that failed, the engine's warnings).
/// While the shell waits at its prompt they go above it, so the line being typed stays whole;
/// while `run` draws live progress lines, above those; otherwise they go to standard error. Cloning gives another handle to the same
/// place. As a tracing writer, each event is one notice.
#[derive(Clone, Default)]
pub(crate) struct Notices {
    /// The shell's printer above the prompt, once the shell has a terminal; `None` until then.
    printer: Arc<Mutex<Option<LinePrinter>>>,
}

impl Notices {
    /// Prints the next notices above the prompt of this printer.
    pub(crate) fn print_above_prompt(&self, printer: LinePrinter) {
        *self.printer.lock().unwrap_or_else(|e| e.into_inner()) = Some(printer);
    }

    /// Prints `text` as one or more whole lines.
    pub(crate) fn print(&self, text: &str) {
        let mut text = text.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let mut printer = self.printer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(printer) = printer.as_mut()
            && printer.print(text.clone()).is_ok()
        {
            return;
        }
        drop(printer);
        if progress::print_above_bars(&text) {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Notices {
    type Writer = NoticeWriter;

    fn make_writer(&'a self) -> NoticeWriter {
        NoticeWriter {
            notices: self.clone(),
            text: Vec::new(),
        }
    }
}

/// Collects one tracing event and prints it as a notice when dropped (the formatter writes an
/// event through one writer, then drops it).
pub(crate) struct NoticeWriter {
    notices: Notices,
    text: Vec<u8>,
}

impl Write for NoticeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for NoticeWriter {
    fn drop(&mut self) {
        if !self.text.is_empty() {
            self.notices.print(&String::from_utf8_lossy(&self.text));
        }
    }
}
