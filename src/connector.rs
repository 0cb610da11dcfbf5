//! Connectors: sources and sinks built from their string options.
//!
//! SQL (`CREATE TABLE ... WITH (...)`) and the DataFrame API (`.format(..).option(..)`) both end up
//! here, so both accept the same option names with the same checks. Unknown options and bad values
//! are refused with an error that names the option and lists what is valid.
//!
//! Each source connector reads its own options in its own file (its `CONNECTOR`); the registry
//! below lists them, so a new source is one file and one line. An unknown connector, or a sink's
//! used for a stream, is refused with the list of known ones, never taken for another.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;

use crate::error::Result;
pub(crate) use crate::options::Options;
use crate::query::Trigger;
use crate::sink::{OutputMode, SinkFormat};
use crate::source::{MemoryStream, Source, SourceConnector, SourceRequest};

/// A sink connector's name and the options it accepts.
type Connector = (&'static str, &'static [&'static str]);

/// The most rows a console sink prints per batch.
const MAX_CONSOLE_ROWS: usize = 1_000_000;

/// Every source connector. A new source is its own file, with its `CONNECTOR`, and one line here.
const SOURCE_CONNECTORS: &[SourceConnector] = &[
    crate::source::files::CONNECTOR,
    crate::source::memory::CONNECTOR,
    crate::source::rate::CONNECTOR,
    crate::source::socket::CONNECTOR,
];

/// Sink connectors and the options each accepts, besides [`QUERY_OPTIONS`].
const SINK_CONNECTORS: &[Connector] = &[
    ("console", &["num_rows", "truncate"]),
    ("memory", &[]),
    ("files", &["path", "format", "partition_by"]),
    (
        "database",
        &["url", "table", "key", "connect_timeout", "statement_timeout"],
    ),
];

/// File formats the files sink writes; each also works as a sink connector name, so that
/// `.format("parquet").option("path", ..)` means the files sink, as in Spark.
const SINK_FILE_FORMATS: &[(&str, SinkFormat)] = &[
    ("parquet", SinkFormat::Parquet),
    ("csv", SinkFormat::Csv),
    ("json", SinkFormat::Json),
];

/// Options of the streaming query that writes to a sink, valid for every sink.
const QUERY_OPTIONS: &[&str] = &[
    "output_mode",
    "trigger",
    "checkpoint_location",
    "query_name",
    "state_partitions",
    "state_snapshot_interval",
    "min_batches_to_retain",
];

impl Options {
    /// The `connector` option, checked against `connectors`, with the options that connector takes.
    fn connector(&self, connectors: &[Connector]) -> Result<Connector> {
        let names: Vec<&str> = connectors.iter().map(|(n, _)| *n).collect();
        let given = self
            .get("connector")
            .ok_or_else(|| self.error(format!("option 'connector' is required; one of: {}", names.join(", "))))?;
        connectors
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(given.trim()))
            .copied()
            .ok_or_else(|| {
                self.error(format!(
                    "connector '{given}' is not known here; one of: {}",
                    names.join(", ")
                ))
            })
    }

    /// Whether a `CREATE TABLE ... WITH` declares a sink rather than a stream: a table of a
    /// connector that is only a source (rate, socket) is a stream; otherwise a table with columns
    /// is a stream and one without is a sink (its columns are those of the query writing to it).
    pub(crate) fn is_sink(&self, has_columns: bool) -> bool {
        let Some(given) = self.get("connector").map(str::trim) else {
            return !has_columns;
        };
        let source = SOURCE_CONNECTORS.iter().any(|c| c.name.eq_ignore_ascii_case(given));
        match (source, is_sink_connector(given)) {
            (true, false) => false,
            _ => !has_columns,
        }
    }
}

/// A built source, with the push handle when it is a memory stream.
pub(crate) struct BuiltSource {
    pub(crate) source: Arc<dyn Source>,
    pub(crate) memory: Option<MemoryStream>,
    /// After this long without new rows, the source no longer holds the watermark back.
    pub(crate) idle_timeout: Option<Duration>,
}

/// Builds the source of a stream. `schema` is the declared column list (`None` when there is none).
/// `name` is the stream's name in SQL, if it has one.
pub(crate) fn build_source(name: Option<&str>, options: &Options, schema: Option<SchemaRef>) -> Result<BuiltSource> {
    let connector = source_connector(options)?;
    let valid: Vec<&str> = connector.options.iter().chain(&["idle_timeout"]).copied().collect();
    options.check_known(connector.name, &valid)?;
    let idle_timeout = options
        .get("idle_timeout")
        .map(|t| parse_duration(t).map_err(|m| options.error(format!("option 'idle_timeout': {m}"))))
        .transpose()?;
    let (source, memory) = (connector.build)(&SourceRequest { name, options, schema })?;
    Ok(BuiltSource {
        source,
        memory,
        idle_timeout,
    })
}

/// The source connector the `connector` option names. A sink connector is refused saying so, an
/// unknown one listing the known ones; none is ever taken for another.
fn source_connector(options: &Options) -> Result<&'static SourceConnector> {
    let names = || SOURCE_CONNECTORS.iter().map(|c| c.name).collect::<Vec<_>>().join(", ");
    let given = options
        .get("connector")
        .ok_or_else(|| options.error(format!("option 'connector' is required; one of: {}", names())))?;
    let given = given.trim();
    if let Some(connector) = SOURCE_CONNECTORS.iter().find(|c| c.name.eq_ignore_ascii_case(given)) {
        return Ok(connector);
    }
    if is_sink_connector(given) {
        return Err(options.error(format!(
            "connector '{given}' is a sink, and a table with a column list is a stream: leave out the column \
             list to declare a sink (its columns are those of the query writing to it); stream connectors: {}",
            names()
        )));
    }
    Err(options.error(format!(
        "connector '{given}' is not known; stream connectors: {}; sink connectors: {}",
        names(),
        sink_names().join(", ")
    )))
}

/// Whether `name` is a sink connector (or a file format that names the files sink).
fn is_sink_connector(name: &str) -> bool {
    sink_names().iter().any(|n| n.eq_ignore_ascii_case(name))
}

fn sink_names() -> Vec<&'static str> {
    SINK_CONNECTORS
        .iter()
        .map(|(n, _)| *n)
        .chain(SINK_FILE_FORMATS.iter().map(|(n, _)| *n))
        .collect()
}

/// How a streaming query runs and where its output goes, from a sink's options.
#[derive(Debug, Clone)]
pub(crate) struct SinkDefinition {
    pub(crate) name: String,
    pub(crate) kind: SinkKind,
    pub(crate) query: QueryOptions,
}

#[derive(Debug, Clone)]
pub(crate) enum SinkKind {
    Console {
        num_rows: usize,
        truncate: bool,
    },
    /// A table in SQLite, PostgreSQL or MySQL.
    Database {
        /// The connection URL (`sqlite://`, `postgres://`, `mysql://`).
        url: String,
        /// The table written to.
        table: String,
        /// The `key` option: the columns that identify a row (upsert key, primary key).
        key: Option<Vec<String>>,
        /// How long connecting and each statement step may take.
        limits: crate::sink::database::Limits,
    },
    Memory,
    /// Parquet, CSV or JSON files in a directory, committed through a manifest log.
    Files {
        /// The directory: a local path or an object store URL.
        path: String,
        /// The files' format.
        format: SinkFormat,
        /// Columns whose values name the `column=value/` directories rows go to.
        partition_by: Vec<String>,
    },
}

impl SinkKind {
    /// The connector's name, as the `connector` option gives it.
    pub(crate) fn connector(&self) -> &'static str {
        match self {
            SinkKind::Console { .. } => "console",
            SinkKind::Database { .. } => "database",
            SinkKind::Memory => "memory",
            SinkKind::Files { .. } => "files",
        }
    }

    /// Refuses an output mode this sink cannot serve, saying why.
    pub(crate) fn check_output_mode(&self, mode: OutputMode) -> Result<()> {
        match self {
            SinkKind::Files { .. } => crate::sink::files::check_output_mode(mode),
            _ => Ok(()),
        }
    }
}

/// The options of the query that writes to a sink.
#[derive(Debug, Clone)]
pub(crate) struct QueryOptions {
    pub(crate) output_mode: OutputMode,
    pub(crate) trigger: Trigger,
    pub(crate) checkpoint_location: Option<String>,
    pub(crate) query_name: Option<String>,
    /// Shards of a stateful query's state (`None`: one per core, or what the checkpoint says).
    pub(crate) state_partitions: Option<usize>,
    /// A state snapshot every this many batches.
    pub(crate) state_snapshot_interval: usize,
    /// The last this many batches stay recoverable; older checkpoint files are deleted.
    pub(crate) min_batches_to_retain: usize,
}

/// Reads a sink's options.
pub(crate) fn sink_definition(name: &str, options: &Options) -> Result<SinkDefinition> {
    let options = &files_format_as_connector(options)?;
    let (connector, own) = options.connector(SINK_CONNECTORS)?;
    let valid: Vec<&str> = own.iter().chain(QUERY_OPTIONS).copied().collect();
    options.check_known(connector, &valid)?;
    let kind = match connector {
        "console" => SinkKind::Console {
            num_rows: options.positive("num_rows", MAX_CONSOLE_ROWS)?.unwrap_or(20),
            truncate: options.boolean("truncate")?.unwrap_or(true),
        },
        "database" => {
            let url = options.required("url")?.trim().to_string();
            if !crate::sink::database::is_supported_url(&url) {
                return Err(options.error(format!(
                    "option 'url' must start with sqlite://, postgres:// or mysql:// (got '{}')",
                    url.split("://").next().unwrap_or_default()
                )));
            }
            let table = options.required("table")?.to_string();
            if table.trim().is_empty() {
                return Err(options.error("option 'table' must name a table"));
            }
            let key = options
                .get("key")
                .map(|k| crate::sink::database::parse_key(k).map_err(|m| options.error(format!("option 'key': {m}"))))
                .transpose()?;
            let mut limits = crate::sink::database::Limits::default();
            for (option, limit) in [
                ("connect_timeout", &mut limits.connect),
                ("statement_timeout", &mut limits.statement),
            ] {
                if let Some(text) = options.get(option) {
                    *limit = parse_duration(text).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
                        options.error(format!(
                            "option '{option}' must be a positive duration such as '10 seconds' or '5 minutes' \
                                 (got '{text}')"
                        ))
                    })?;
                }
            }
            SinkKind::Database {
                url,
                table,
                key,
                limits,
            }
        }
        "files" => {
            let partition_by = options
                .get("partition_by")
                .map(|columns| {
                    columns
                        .split(',')
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            SinkKind::Files {
                path: options.required("path")?.to_string(),
                format: options
                    .choice("format", SINK_FILE_FORMATS)?
                    .unwrap_or(SinkFormat::Parquet),
                partition_by,
            }
        }
        _ => SinkKind::Memory,
    };
    let output_mode = options
        .choice(
            "output_mode",
            &[
                ("append", OutputMode::Append),
                ("update", OutputMode::Update),
                ("complete", OutputMode::Complete),
            ],
        )?
        .unwrap_or_default();
    // Exactly-once sinks skip the batch ids they already have, so a restarted query must go on
    // with its batch ids: that needs a checkpoint.
    if matches!(kind, SinkKind::Files { .. } | SinkKind::Database { .. })
        && options
            .get("checkpoint_location")
            .is_none_or(|l| l.trim() == crate::checkpoint::NO_CHECKPOINT)
    {
        let hint = match connector {
            "files" => " (a files table without a column list is a sink; with one, it is a stream)",
            _ => "",
        };
        return Err(options.error(format!(
            "the {connector} sink needs option 'checkpoint_location' (a path or URL): it writes each batch \
             once by its id, so a restarted query must go on with its batch ids{hint}"
        )));
    }
    kind.check_output_mode(output_mode)
        .map_err(|e| options.error(e.to_string()))?;
    let trigger = match options.get("trigger") {
        None => Trigger::default(),
        Some(text) => parse_trigger(text).map_err(|m| options.error(format!("option 'trigger' = '{text}': {m}")))?,
    };
    Ok(SinkDefinition {
        name: name.to_string(),
        kind,
        query: QueryOptions {
            output_mode,
            trigger,
            checkpoint_location: options.get("checkpoint_location").map(str::to_string),
            query_name: options.get("query_name").map(str::to_string),
            state_partitions: options.positive("state_partitions", crate::state::MAX_STATE_PARTITIONS)?,
            state_snapshot_interval: options
                .positive("state_snapshot_interval", u32::MAX as usize)?
                .unwrap_or(10),
            min_batches_to_retain: options
                .positive("min_batches_to_retain", u32::MAX as usize)?
                .unwrap_or(100),
        },
    })
}

/// `connector = 'parquet'` (or csv, json) as `connector = 'files', format = 'parquet'`.
fn files_format_as_connector(options: &Options) -> Result<Options> {
    let connector = options.get("connector").map(|c| c.trim().to_ascii_lowercase());
    let Some((format, _)) = SINK_FILE_FORMATS
        .iter()
        .find(|(name, _)| connector.as_deref() == Some(*name))
    else {
        return Ok(options.clone());
    };
    if let Some(other) = options.get("format")
        && !other.trim().eq_ignore_ascii_case(format)
    {
        return Err(options.error(format!(
            "connector '{format}' writes {format} files, but option 'format' = '{other}'"
        )));
    }
    let mut options = options.clone();
    options.insert("connector", "files");
    options.insert("format", format.to_string());
    Ok(options)
}

/// Parses a trigger: `available_now`, `once`, or a processing-time interval such as `'2 seconds'`.
pub(crate) fn parse_trigger(text: &str) -> std::result::Result<Trigger, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "available_now" | "availablenow" => Ok(Trigger::AvailableNow),
        "once" => Ok(Trigger::Once),
        _ => parse_duration(text)
            .map(Trigger::ProcessingTime)
            .map_err(|m| format!("{m}; a trigger is available_now, once, or an interval such as '2 seconds'")),
    }
}

/// Parses a duration such as `'10 seconds'`, `'1 hour'`, `'500 milliseconds'` or `'1 day 2 hours'`.
///
/// # Examples
/// ```
/// # use std::time::Duration;
/// # use tidewater::parse_duration;
/// assert_eq!(parse_duration("2 seconds"), Ok(Duration::from_secs(2)));
/// assert_eq!(parse_duration("1 hour"), Ok(Duration::from_secs(3600)));
/// assert!(parse_duration("1 month").is_err());
/// ```
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let interval = datafusion::arrow::compute::kernels::cast_utils::parse_interval_month_day_nano(text)
        .map_err(|_| format!("'{text}' is not a duration (e.g. '10 seconds', '5 minutes', '1 hour')"))?;
    if interval.months != 0 {
        return Err(format!(
            "'{text}' has months or years, whose length varies; use days, hours, minutes, seconds or milliseconds"
        ));
    }
    let nanos = i128::from(interval.days) * i128::from(crate::time::NANOS_PER_DAY) + i128::from(interval.nanoseconds);
    if nanos < 0 {
        return Err(format!("'{text}' is negative"));
    }
    // Event times are nanoseconds in an i64, so no longer duration can be added to one.
    match u64::try_from(nanos) {
        Ok(n) if n <= i64::MAX as u64 => Ok(Duration::from_nanos(n)),
        _ => Err(format!(
            "'{text}' is longer than the longest duration the engine computes with ({})",
            crate::time::longest_duration()
        )),
    }
}
