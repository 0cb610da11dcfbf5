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
pub(crate) use crate::options::{Options, parse_duration};
use crate::query::Trigger;
use crate::sink::{OutputMode, SinkConnector, SinkSpec};
use crate::source::{MemoryStream, Source, SourceConnector, SourceRequest};

/// Every source connector. A new source is its own file, with its `CONNECTOR`, and one line here.
const SOURCE_CONNECTORS: &[SourceConnector] = &[
    crate::source::files::CONNECTOR,
    crate::source::memory::CONNECTOR,
    crate::source::rate::CONNECTOR,
    crate::source::socket::CONNECTOR,
];

/// Every sink connector. A new sink is its own file, with its `CONNECTOR`, and one line here.
const SINK_CONNECTORS: &[SinkConnector] = &[
    crate::sink::console::CONNECTOR,
    crate::sink::memory::CONNECTOR,
    crate::sink::files::CONNECTOR,
    crate::sink::database::CONNECTOR,
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
    /// The connector's name.
    pub(crate) connector: &'static str,
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
        connector: connector.name,
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
        .map(|c| c.name)
        .chain(crate::sink::files::FORMATS.iter().map(|(n, _)| *n))
        .collect()
}

/// How a streaming query runs and where its output goes, from a sink's options.
#[derive(Debug, Clone)]
pub(crate) struct SinkDefinition {
    pub(crate) name: String,
    /// The sink's connector, as the `connector` option names it.
    pub(crate) connector: &'static str,
    /// The sink's own options, read.
    pub(crate) spec: Arc<dyn SinkSpec>,
    pub(crate) query: QueryOptions,
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
    let names = || sink_names().join(", ");
    let given = options
        .get("connector")
        .ok_or_else(|| options.error(format!("option 'connector' is required; one of: {}", names())))?;
    let connector = SINK_CONNECTORS
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(given.trim()))
        .ok_or_else(|| options.error(format!("connector '{given}' is not known here; one of: {}", names())))?;
    let valid: Vec<&str> = connector.options.iter().chain(QUERY_OPTIONS).copied().collect();
    options.check_known(connector.name, &valid)?;
    let spec = (connector.parse)(options)?;
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
    if spec.exactly_once()
        && options
            .get("checkpoint_location")
            .is_none_or(|l| l.trim() == crate::checkpoint::NO_CHECKPOINT)
    {
        let hint = match connector.name {
            "files" => " (a files table without a column list is a sink; with one, it is a stream)",
            _ => "",
        };
        return Err(options.error(format!(
            "the {connector} sink needs option 'checkpoint_location' (a path or URL): it writes each batch \
             once by its id, so a restarted query must go on with its batch ids{hint}",
            connector = connector.name
        )));
    }
    spec.check_output_mode(output_mode)
        .map_err(|e| options.error(e.to_string()))?;
    let trigger = match options.get("trigger") {
        None => Trigger::default(),
        Some(text) => parse_trigger(text).map_err(|m| options.error(format!("option 'trigger' = '{text}': {m}")))?,
    };
    Ok(SinkDefinition {
        name: name.to_string(),
        connector: connector.name,
        spec,
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
    let Some((format, _)) = crate::sink::files::FORMATS
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
