//! `tidewater run`'s progress: on a terminal, a live line per query drawn on standard error (a
//! bar where the progress reports say how much input is available, else a spinner with counts),
//! and with `--progress` a line per batch, printed above the live lines. Without a terminal only
//! the per-batch lines are printed, as plain lines, exactly as before the live lines existed.
//!
//! # Background
//! Everything shown comes from the queries' progress reports, read in their JSON form, with
//! Spark's field names: rows from `numInputRows`, the rate from `inputRowsPerSecond`, the
//! watermark from `eventTime.watermark`, and for a files source (whose offsets count files) the
//! files read from `sources[i].startOffset` and `endOffset`. How many files are available is
//! Spark's `sources[i].latestOffset`, which Tidewater's reports do not carry yet: until they do,
//! every query gets a spinner with counts, and a bar (`3/8 files`) appears by itself once they do.
//!
//! The live lines would be torn by anything else written to the terminal while they are drawn.
//! Lines from here and the engine's logs ([`super::Notices`]) go above them, through indicatif;
//! the console sink's tables cannot (the library prints them to standard output itself), so no
//! live lines are drawn when a console sink prints to the same terminal.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use indicatif::{HumanCount, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use tidewater::{StreamingQuery, StreamingQueryProgress, StreamingSession};

/// How often the reports are looked at: a batch's line shows within this long of its end.
const POLL: Duration = Duration::from_millis(50);
/// How often a live line is redrawn with nothing new (its spinner turns, its time goes on).
const TICK: Duration = Duration::from_millis(100);
/// The live line of a query while no total is known: spinner, name, counts, time so far.
const SPINNER: &str = "{spinner} {prefix}: {msg} ({elapsed})";
/// The live line of a query whose available input is known.
const BAR: &str = "{spinner} {prefix} [{bar:24}] {msg} ({elapsed})";
/// The spinner's frames; the last one is shown once the query has ended.
const TICKS: &[&str] = &["-", "\\", "|", "/", "*"];

/// The live lines being drawn, for lines printed from elsewhere ([`print_above_bars`]). The logs'
/// writer is made in `main` before a run starts, and has no other way to find them.
static DRAWING: Mutex<Option<MultiProgress>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prints `text` (whole lines) above the live lines if they are being drawn; returns `false`,
/// printing nothing, when they are not.
pub(crate) fn print_above_bars(text: &str) -> bool {
    let drawing = lock(&DRAWING);
    match drawing.as_ref() {
        Some(multi) => multi.println(text.strip_suffix('\n').unwrap_or(text)).is_ok(),
        None => false,
    }
}

/// Whether live lines can be drawn for the queries of `session`: standard error is a terminal
/// that moves its cursor (not `TERM=dumb`), and no console sink prints onto that terminal.
pub(crate) async fn live_lines_fit(session: &StreamingSession) -> bool {
    // indicatif's own rule for a terminal it can draw on: `TERM` set, and not `dumb`.
    let terminal = std::io::stderr().is_terminal() && std::env::var_os("TERM").is_some_and(|t| t != "dumb");
    terminal && !(std::io::stdout().is_terminal() && has_console_sink(session).await)
}

/// Whether the session has a console sink (`SHOW TABLES`); `true` when that cannot be told.
async fn has_console_sink(session: &StreamingSession) -> bool {
    use tidewater::arrow::array::{Array, AsArray};
    let Ok(tables) = session.sql("SHOW TABLES").await else {
        return true;
    };
    let Ok(batches) = tables.collect().await else {
        return true;
    };
    batches.iter().any(|batch| {
        let column = |name| batch.column_by_name(name).and_then(|c| c.as_string_opt::<i32>());
        match (column("kind"), column("connector")) {
            (Some(kind), Some(connector)) => (0..batch.num_rows())
                .any(|i| kind.value(i) == "sink" && !connector.is_null(i) && connector.value(i) == "console"),
            _ => true,
        }
    })
}

/// The progress of a run's queries, shown until they end: live lines, per-batch lines, or both.
/// Dropping it (a run that ends early) shows each query's last state and stops drawing.
pub(crate) struct Progress {
    multi: Option<MultiProgress>,
    watchers: Arc<Mutex<Vec<Watcher>>>,
    /// The task that looks at the reports every [`POLL`]; `None` when nothing is shown.
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts showing `queries`: a live line each when `live`, a line per batch when `per_batch`.
    pub(crate) fn start(queries: &[StreamingQuery], live: bool, per_batch: bool) -> Progress {
        let multi =
            (live && !queries.is_empty()).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let lines = match &multi {
            Some(multi) => {
                // Before the first line is drawn: the queries are running and may log already.
                *lock(&DRAWING) = Some(multi.clone());
                Lines::AboveBars(multi.clone())
            }
            None => Lines::Stderr,
        };
        let watchers: Vec<Watcher> = queries
            .iter()
            .map(|query| Watcher {
                query: query.clone(),
                tally: Tally::default(),
                bar: multi.as_ref().map(|multi| live_line(multi, query)),
                per_batch,
                lines: lines.clone(),
                frozen: false,
                ended: false,
            })
            .collect();
        let watchers = Arc::new(Mutex::new(watchers));
        let ticker = (multi.is_some() || per_batch).then(|| tokio::spawn(tick(watchers.clone())));
        Progress {
            multi,
            watchers,
            ticker,
        }
    }

    /// Prints a line for the user on standard error, above the live lines while they are drawn.
    pub(crate) fn println(&self, line: &str) {
        match &self.multi {
            Some(multi) if multi.println(line).is_ok() => {}
            _ => eprintln!("{line}"),
        }
    }

    /// Stops redrawing the live lines, which stay on the terminal as they are; from now on lines
    /// are printed plainly, and each query still running gets a plain last line when it ends.
    ///
    /// # Background
    /// Called on Ctrl-C. indicatif pads a live line to the terminal's width, leaving the cursor in
    /// its last column, so the `^C` the terminal echoes wraps onto a line of its own that indicatif
    /// does not know of: a redraw would then be one line off and leave a copy of a live line
    /// behind.
    pub(crate) fn freeze(&mut self) {
        let Some(multi) = self.multi.take() else {
            return;
        };
        *lock(&DRAWING) = None;
        multi.set_draw_target(ProgressDrawTarget::hidden());
        for watcher in lock(&self.watchers).iter_mut() {
            watcher.lines = Lines::Stderr;
            watcher.frozen = true;
        }
    }

    /// Waits until every query has ended and its last batch is shown; each live line stays on
    /// the terminal with the query's final counts.
    pub(crate) async fn finish(mut self) {
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.await;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        // The ticker never holds the lock across an await, so it is free once the ticker is aborted.
        for watcher in lock(&self.watchers).iter_mut() {
            watcher.poll();
            watcher.end();
        }
        if self.multi.is_some() {
            *lock(&DRAWING) = None;
        }
    }
}

async fn tick(watchers: Arc<Mutex<Vec<Watcher>>>) {
    loop {
        // Every watcher polls, also after one that has not ended.
        let running = lock(&watchers)
            .iter_mut()
            .map(Watcher::poll)
            .filter(|ended| !ended)
            .count();
        if running == 0 {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A query's live line, a spinner until a total is known.
fn live_line(multi: &MultiProgress, query: &StreamingQuery) -> ProgressBar {
    let bar = ProgressBar::new_spinner()
        .with_style(style(SPINNER))
        .with_prefix(super::label(query).to_string())
        .with_message("starting");
    let bar = multi.add(bar);
    bar.enable_steady_tick(TICK);
    bar
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_strings(TICKS)
        .progress_chars("=> ")
}

/// Where lines for the user go.
#[derive(Clone)]
enum Lines {
    Stderr,
    AboveBars(MultiProgress),
}

impl Lines {
    fn print(&self, line: &str) {
        match self {
            Lines::AboveBars(multi) if multi.println(line).is_ok() => {}
            _ => eprintln!("{line}"),
        }
    }
}

/// Shows one query: its batches as they end, and its live line.
struct Watcher {
    query: StreamingQuery,
    tally: Tally,
    bar: Option<ProgressBar>,
    per_batch: bool,
    lines: Lines,
    /// The live line is no longer drawn ([`Progress::freeze`]): its last state is printed plainly.
    frozen: bool,
    /// Set once the query has ended and everything about it is shown.
    ended: bool,
}

impl Watcher {
    /// Shows the batches that ended since the last call; returns whether the query has ended
    /// (its last batch shown and its live line finished).
    fn poll(&mut self) -> bool {
        if self.ended {
            return true;
        }
        // Whether it had ended is read first, so that its last report is among those read next.
        let ended = !self.query.is_active();
        let newest = self.query.last_progress().map(|p| p.batch_id);
        if newest.is_some() && newest != self.tally.last_batch {
            for report in self.query.recent_progress() {
                if self.tally.last_batch.is_some_and(|last| report.batch_id <= last) {
                    continue;
                }
                if self.per_batch {
                    self.lines.print(&batch_line(&report));
                }
                if let Ok(json) = serde_json::to_value(&report) {
                    self.tally.add(&json);
                }
            }
        }
        if ended {
            self.end();
        } else if let Some(bar) = &self.bar {
            let status = self.query.status();
            let waiting = (!status.is_trigger_active).then_some(status.message.as_str());
            self.draw(bar, &self.tally.message(waiting));
        }
        ended
    }

    fn draw(&self, bar: &ProgressBar, message: &str) {
        if let Some((done, of)) = self.tally.files_of_available() {
            if bar.length().is_none() {
                bar.set_style(style(BAR));
            }
            bar.set_length(of);
            bar.set_position(done);
        }
        bar.set_message(message.to_string());
    }

    /// Leaves the live line with the query's final counts and whether it ended or failed.
    fn end(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let Some(bar) = &self.bar else {
            return;
        };
        let mut message = self.tally.message(None);
        message.push_str(match self.query.exception() {
            Some(_) => " - failed",
            None if self.query.is_active() => "",
            None => " - ended",
        });
        self.draw(bar, &message);
        if self.frozen {
            let line = format!("{}: {message} ({:#})", bar.prefix(), HumanDuration(bar.elapsed()));
            self.lines.print(&line);
        }
        if self.query.is_active() {
            // Abandoned (a second Ctrl-C): the line stays as it is, its spinner stopped.
            bar.abandon();
        } else {
            bar.finish();
        }
    }
}

/// The `--progress` line of one batch.
fn batch_line(p: &StreamingQueryProgress) -> String {
    format!(
        "[{}] batch {}: {} rows, {:.0} rows/s, {} ms",
        p.name.as_deref().unwrap_or(&p.id),
        p.batch_id,
        p.num_input_rows,
        p.processed_rows_per_second,
        p.batch_duration
    )
}

/// What a query did in this run, added up from its progress reports (as JSON, Spark's names).
#[derive(Clone, Debug, Default, PartialEq)]
struct Tally {
    /// The last batch counted: a report of it or an earlier batch adds nothing.
    last_batch: Option<u64>,
    batches: u64,
    rows: u64,
    /// The input rate of the last batch, rows per second.
    rate: f64,
    /// The watermark the last batch ran with.
    watermark: Option<String>,
    /// Files of the query's files sources; `None` when it reads none.
    files: Option<Files>,
}

/// Files of a query's files sources, as offsets (which count files since the checkpoint began),
/// summed over its files sources.
#[derive(Clone, Debug, PartialEq)]
struct Files {
    /// Where this run started: the first batch's start offset.
    from: u64,
    /// How far batches have read: the last batch's end offset.
    read: u64,
    /// How far input is available (`latestOffset`), when every files source says.
    available: Option<u64>,
}

impl Tally {
    /// Counts one progress report; a report of a batch already counted is left out.
    fn add(&mut self, report: &Value) {
        let Some(batch) = report["batchId"].as_u64() else {
            return;
        };
        if self.last_batch.is_some_and(|last| batch <= last) {
            return;
        }
        self.last_batch = Some(batch);
        self.batches += 1;
        self.rows += report["numInputRows"].as_u64().unwrap_or(0);
        // The first batch of a run has no previous one to measure arrivals since.
        self.rate = [&report["inputRowsPerSecond"], &report["processedRowsPerSecond"]]
            .into_iter()
            .filter_map(Value::as_f64)
            .find(|rate| *rate > 0.0)
            .unwrap_or(0.0);
        self.watermark = report["eventTime"]["watermark"].as_str().map(str::to_string);
        let files: Vec<&Value> = report["sources"]
            .as_array()
            .map(|sources| {
                sources
                    .iter()
                    .filter(|s| s["description"].as_str().is_some_and(|d| d.starts_with("FilesSource[")))
                    .collect()
            })
            .unwrap_or_default();
        if files.is_empty() {
            return;
        }
        // `null` is the beginning; a source without data yet stays where it started.
        let start: u64 = files.iter().map(|s| s["startOffset"].as_u64().unwrap_or(0)).sum();
        let read: u64 = files
            .iter()
            .map(|s| s["endOffset"].as_u64().or(s["startOffset"].as_u64()).unwrap_or(0))
            .sum();
        let available = files.iter().map(|s| s["latestOffset"].as_u64()).sum::<Option<u64>>();
        let from = self.files.as_ref().map_or(start, |f| f.from);
        self.files = Some(Files { from, read, available });
    }

    /// Files read in this run and files available to it, when the reports say how many are.
    fn files_of_available(&self) -> Option<(u64, u64)> {
        let files = self.files.as_ref()?;
        let done = files.read.saturating_sub(files.from);
        let of = files.available?.saturating_sub(files.from).max(done);
        Some((done, of))
    }

    /// The live line's text: files (of those available) or rows, batches, the rate, the
    /// watermark, and `waiting`, what the query waits for, if it is waiting.
    fn message(&self, waiting: Option<&str>) -> String {
        let mut parts = Vec::new();
        match (&self.files, self.files_of_available()) {
            (_, Some((done, of))) => parts.push(format!("{}/{} files", HumanCount(done), HumanCount(of))),
            (Some(files), None) => parts.push(plural(files.read.saturating_sub(files.from), "file", "files")),
            (None, None) => {}
        }
        parts.push(plural(self.rows, "row", "rows"));
        parts.push(plural(self.batches, "batch", "batches"));
        parts.push(format!("{} rows/s", HumanCount(self.rate.round() as u64)));
        if let Some(watermark) = &self.watermark {
            parts.push(format!("watermark {watermark}"));
        }
        let mut message = parts.join(", ");
        if let Some(waiting) = waiting {
            message.push_str(" - ");
            message.push_str(waiting);
        }
        message
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", HumanCount(n), if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A report of batch `batch` of a query reading `sources`.
    fn report(batch: u64, rows: u64, sources: Value) -> Value {
        json!({
            "id": "q", "runId": "r", "name": "out", "timestamp": "2026-01-01T00:00:00.000Z",
            "batchId": batch, "batchDuration": 10, "numInputRows": rows,
            "inputRowsPerSecond": 0.0, "processedRowsPerSecond": 250.0,
            "durationMs": {}, "eventTime": {}, "stateOperators": [], "sources": sources,
            "sink": {"description": "MemorySink[out]", "numOutputRows": rows}
        })
    }

    fn files(start: Value, end: u64) -> Value {
        json!({"description": "FilesSource[in]", "startOffset": start, "endOffset": end, "numInputRows": 0,
               "inputRowsPerSecond": 0.0, "processedRowsPerSecond": 0.0, "metrics": {}})
    }

    #[test]
    fn files_read_are_counted_from_where_the_run_started() {
        let mut tally = Tally::default();
        tally.add(&report(0, 3, json!([files(Value::Null, 1)])));
        assert_eq!(tally.message(None), "1 file, 3 rows, 1 batch, 250 rows/s");
        let mut second = report(1, 2, json!([files(json!(1), 2)]));
        second["inputRowsPerSecond"] = json!(1234.4);
        tally.add(&second);
        assert_eq!(tally.message(None), "2 files, 5 rows, 2 batches, 1,234 rows/s");
        // A report seen again (the reports are read over and over) counts once.
        tally.add(&second);
        assert_eq!((tally.batches, tally.rows), (2, 5));
        assert_eq!(tally.files_of_available(), None, "no total without latestOffset");

        // A run restarted from a checkpoint where 10 files were read before.
        let mut restarted = Tally::default();
        restarted.add(&report(7, 4, json!([files(json!(10), 12)])));
        assert!(restarted.message(None).starts_with("2 files, 4 rows"));
    }

    #[test]
    fn a_known_total_makes_a_bar_of_files_read_of_those_available() {
        let mut tally = Tally::default();
        let mut source = files(json!(10), 11);
        source["latestOffset"] = json!(14);
        tally.add(&report(3, 2, json!([source])));
        assert_eq!(tally.files_of_available(), Some((1, 4)));
        assert!(
            tally.message(None).starts_with("1/4 files, 2 rows"),
            "{}",
            tally.message(None)
        );

        // Two files sources add up; a total is known only when every one of them says.
        let mut two = Tally::default();
        let (mut a, mut b) = (files(Value::Null, 2), files(Value::Null, 1));
        a["latestOffset"] = json!(2);
        b["latestOffset"] = json!(3);
        two.add(&report(0, 9, json!([a.clone(), b])));
        assert_eq!(two.files_of_available(), Some((3, 5)));
        let mut partial = Tally::default();
        partial.add(&report(0, 9, json!([a, files(Value::Null, 1)])));
        assert_eq!(partial.files_of_available(), None);
    }

    #[test]
    fn other_sources_show_rows_and_the_watermark_and_what_the_query_waits_for() {
        let mut tally = Tally::default();
        assert_eq!(tally.message(None), "0 rows, 0 batches, 0 rows/s");
        let socket = json!({"description": "TextSocketSource[localhost:9999]", "startOffset": 0, "endOffset": 1500,
                            "numInputRows": 1500, "inputRowsPerSecond": 0.0, "processedRowsPerSecond": 0.0,
                            "metrics": {}});
        let mut batch = report(4, 1500, json!([socket]));
        batch["eventTime"] = json!({"watermark": "2026-01-01T00:00:10.000Z"});
        tally.add(&batch);
        assert_eq!(
            tally.message(Some("Waiting for data to arrive")),
            "1,500 rows, 1 batch, 250 rows/s, watermark 2026-01-01T00:00:10.000Z - Waiting for data to arrive"
        );
    }

    #[test]
    fn the_templates_are_valid() {
        for template in [SPINNER, BAR] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }

    #[test]
    fn a_batch_line_is_as_before() {
        let p: StreamingQueryProgress = serde_json::from_value(report(2, 7, json!([files(json!(1), 2)]))).unwrap();
        assert_eq!(batch_line(&p), "[out] batch 2: 7 rows, 250 rows/s, 10 ms");
    }

    #[tokio::test]
    async fn a_console_sink_is_found_among_the_tables() {
        let session = StreamingSession::new();
        session
            .run_script("CREATE TABLE m WITH (connector = 'memory');")
            .await
            .unwrap();
        assert!(!has_console_sink(&session).await);
        session
            .run_script("CREATE TABLE c WITH (connector = 'console');")
            .await
            .unwrap();
        assert!(has_console_sink(&session).await);
    }
}
