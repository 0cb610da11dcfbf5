//! Where the shell's statements come from: a line editor when the shell runs in a terminal, plain
//! lines from standard input otherwise (a pipe or a file: scripted use, without prompts).
//!
//! # Background
//! Both read by blocking, so they run on a thread of their own, and the shell asks that thread
//! for the next statements only once the previous ones have run. So the terminal is in its
//! normal mode while a statement runs, where Ctrl-C is a signal that cancels the statement, and
//! in the editor's raw mode only at the prompt, where Ctrl-C is a key that clears the line.

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::sync::mpsc;

use rustyline::error::ReadlineError;
use tokio::sync::oneshot;

use super::script::{Statement, split};
use super::{LinePrinter, Notices};

/// The prompt for a new statement.
const PROMPT: &str = "tidewater> ";
/// The prompt for the next line of a statement that has no `;` yet.
const CONTINUATION: &str = "        -> ";
/// Statements kept in the history file.
const HISTORY_SIZE: usize = 1000;

const HELP: &str = "\
Statements end with ';' and may span lines: CREATE TABLE ... WITH (connector = ...) declares a
stream or a sink, INSERT INTO <sink> SELECT ... starts a streaming query in the background, and
SELECT reads static tables and memory sinks while their queries run. Also:
  SHOW QUERIES          the session's queries: status, batches, input rows, watermark, errors
  STOP QUERY <name>     stop a query after its current batch (a name, or an id in quotes)
  SHOW TABLES           streams, sinks and tables
  DESCRIBE <table>      the columns of a stream, a sink or a table
Ctrl-C clears the line, or cancels the running statement. Ctrl-D (or \\q) leaves, stopping the
running queries after their current batch.";

/// What the shell does next.
pub(crate) enum Input {
    /// Run these statements, in order (one line may end several).
    Statements(Vec<Statement>),
    /// Leave: Ctrl-D at the prompt, `\q`, or the end of piped input.
    End,
}

enum Request {
    /// Read until statements are complete, or input ends.
    Next(oneshot::Sender<Input>),
    /// Answer when the user ends input once more.
    SecondEnd(oneshot::Sender<()>),
}

/// The handle of the input thread.
pub(crate) struct Reader {
    requests: mpsc::Sender<Request>,
}

impl Reader {
    /// Starts reading standard input: with a line editor and history when `terminal`, in which
    /// case later `notices` print above its prompt.
    ///
    /// # Errors
    /// The terminal cannot be set up for editing.
    pub(crate) fn start(terminal: bool, notices: &Notices) -> anyhow::Result<Reader> {
        let (requests, incoming) = mpsc::channel();
        let (opened, ready) = mpsc::channel::<anyhow::Result<Option<LinePrinter>>>();
        std::thread::Builder::new()
            .name("shell input".to_string())
            .spawn(move || {
                let lines: Box<dyn Lines> = if terminal {
                    match Terminal::open() {
                        Ok((lines, printer)) => {
                            let _ = opened.send(Ok(printer));
                            Box::new(lines)
                        }
                        Err(e) => {
                            let _ = opened.send(Err(e));
                            return;
                        }
                    }
                } else {
                    let _ = opened.send(Ok(None));
                    Box::new(Piped)
                };
                serve(lines, &incoming);
            })?;
        if let Some(printer) = ready.recv()?? {
            notices.print_above_prompt(printer);
        }
        Ok(Reader { requests })
    }

    /// The next statements the user entered, once they are complete.
    pub(crate) async fn next(&self) -> Input {
        let (reply, answer) = oneshot::channel();
        if self.requests.send(Request::Next(reply)).is_err() {
            return Input::End;
        }
        answer.await.unwrap_or(Input::End)
    }

    /// Resolves when the user ends input once more (Ctrl-D while the shell stops its queries);
    /// never for piped input, which has ended for good.
    pub(crate) async fn second_end(&self) {
        let (reply, answer) = oneshot::channel();
        if self.requests.send(Request::SecondEnd(reply)).is_ok() && answer.await.is_ok() {
            return;
        }
        std::future::pending().await
    }
}

/// What reading one line gave.
enum Line {
    Text(String),
    /// Ctrl-C at the prompt: forget what was typed.
    Cancel,
    /// Ctrl-D at the prompt, or the end of the input.
    End,
}

/// A source of lines.
trait Lines: Send {
    fn read_line(&mut self, prompt: &str) -> Line;

    /// Keeps a complete entry (all lines of its statements) in the history.
    fn remember(&mut self, _entry: &str) {}

    /// Blocks until the user ends input once more; `false` when that cannot happen.
    fn second_end(&mut self) -> bool;

    /// Whether a statement without `;` at the end of the input still runs (a script's last one).
    fn runs_unfinished(&self) -> bool;
}

fn serve(mut lines: Box<dyn Lines>, requests: &mpsc::Receiver<Request>) {
    // The text of a statement being written (lines typed so far, and what followed the last `;`).
    let mut pending = String::new();
    for request in requests {
        match request {
            Request::Next(reply) => {
                let _ = reply.send(next_statements(lines.as_mut(), &mut pending));
            }
            Request::SecondEnd(reply) => {
                if lines.second_end() {
                    let _ = reply.send(());
                }
            }
        }
    }
}

/// Reads lines until they complete at least one statement, or input ends.
fn next_statements(lines: &mut dyn Lines, pending: &mut String) -> Input {
    loop {
        let prompt = if pending.is_empty() { PROMPT } else { CONTINUATION };
        let line = match lines.read_line(prompt) {
            Line::Text(line) => line,
            Line::Cancel => {
                pending.clear();
                continue;
            }
            Line::End => {
                let unfinished = std::mem::take(pending);
                return match split(&unfinished).rest {
                    Some(statement) if lines.runs_unfinished() => Input::Statements(vec![statement]),
                    _ => Input::End,
                };
            }
        };
        if pending.is_empty() {
            match line.trim().trim_end_matches(';').to_ascii_lowercase().as_str() {
                "\\q" | "quit" | "exit" => return Input::End,
                "help" | "\\?" | "\\h" => {
                    println!("{HELP}");
                    continue;
                }
                _ => {}
            }
        }
        pending.push_str(&line);
        pending.push('\n');
        let split = split(pending);
        if split.complete.is_empty() {
            if split.rest.is_none() {
                // Blank lines and comments: nothing to run or to wait for.
                pending.clear();
            }
            continue;
        }
        lines.remember(pending.trim_end());
        *pending = split.rest.map(|rest| rest.text + "\n").unwrap_or_default();
        return Input::Statements(split.complete);
    }
}

/// A line editor on the terminal, with history.
struct Terminal {
    editor: rustyline::DefaultEditor,
    /// Where the history is kept; `None` keeps none.
    history: Option<PathBuf>,
}

impl Terminal {
    fn open() -> anyhow::Result<(Terminal, Option<LinePrinter>)> {
        let config = rustyline::Config::builder()
            .auto_add_history(false)
            .history_ignore_space(true)
            .history_ignore_dups(true)?
            .max_history_size(HISTORY_SIZE)?
            .build();
        let mut editor = rustyline::DefaultEditor::with_config(config)?;
        let history = history_file();
        if let Some(path) = history.as_deref().filter(|p| p.exists())
            && let Err(e) = editor.load_history(path)
        {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the shell's history");
        }
        let printer = match editor.create_external_printer() {
            Ok(printer) => Some(Box::new(printer) as LinePrinter),
            Err(e) => {
                tracing::debug!(error = %e, "no printing above the prompt");
                None
            }
        };
        Ok((Terminal { editor, history }, printer))
    }
}

impl Lines for Terminal {
    fn read_line(&mut self, prompt: &str) -> Line {
        match self.editor.readline(prompt) {
            Ok(line) => Line::Text(line),
            Err(ReadlineError::Interrupted) => Line::Cancel,
            Err(ReadlineError::Eof) => Line::End,
            Err(e) => {
                eprintln!("error: reading the terminal: {e}");
                Line::End
            }
        }
    }

    fn remember(&mut self, entry: &str) {
        let _ = self.editor.add_history_entry(entry);
        if let Some(path) = &self.history
            && let Err(e) = self.editor.append_history(path)
        {
            tracing::debug!(file = %path.display(), error = %e, "cannot write the shell's history");
        }
    }

    /// Reads the terminal in its normal mode, where Ctrl-D at the start of a line ends a read
    /// with nothing; lines typed meanwhile are ignored.
    fn second_end(&mut self) -> bool {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = [0u8; 256];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    fn runs_unfinished(&self) -> bool {
        false
    }
}

/// Lines of standard input as they come, without prompts.
struct Piped;

impl Lines for Piped {
    fn read_line(&mut self, _prompt: &str) -> Line {
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) => Line::End,
            Ok(_) => {
                let end = line.trim_end_matches(['\n', '\r']).len();
                line.truncate(end);
                Line::Text(line)
            }
            Err(e) => {
                eprintln!("error: reading standard input: {e}");
                Line::End
            }
        }
    }

    fn second_end(&mut self) -> bool {
        false
    }

    fn runs_unfinished(&self) -> bool {
        true
    }
}

/// The history file: `TIDEWATER_HISTORY` (empty for none), else `~/.tidewater_history`.
fn history_file() -> Option<PathBuf> {
    match std::env::var_os("TIDEWATER_HISTORY") {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".tidewater_history")),
    }
}
