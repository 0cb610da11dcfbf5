//! Sources: replayable, append-only inputs.
//!
//! A source hands out *offsets*, positions in its input that only move forward, and can read the
//! rows between any two offsets it handed out, again and again with the same result. That is what
//! lets the driver log a batch's end offsets before running it and re-run it identically after a
//! crash. Offsets are JSON values so the offsets log can hold any source's position.
//!
//! One source per file: [`files`] watches a directory, [`memory`] takes rows pushed from Rust code,
//! [`rate`] generates rows for demos and benchmarks, [`socket`] reads lines from a TCP server.
//! [`decode`] turns bytes into rows for the sources that read records (files, socket).
//!
//! A source's life in a query: [`Source::restore`] from the checkpoint (when the query has run
//! before), [`Source::start`], then per batch [`Source::latest_offset`], [`Source::persist`],
//! [`Source::read`] and, once the batch is committed, [`Source::commit`]; [`Source::stop`] at
//! the end.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use serde::{Deserialize, Serialize};

use crate::error::Result;

pub(crate) mod decode;
pub(crate) mod files;
pub(crate) mod memory;
pub(crate) mod rate;
pub(crate) mod socket;

pub use files::{FileFormat, FilesSource, FilesSourceConfig, MalformedMode};
pub use memory::MemoryStream;
pub use rate::RateSource;

/// How a source connector is declared: its name (the `connector` option), the options it takes,
/// and how it builds its source from them. Each source file has its `CONNECTOR`, and the registry
/// in [`crate::connector`] lists them.
pub(crate) struct SourceConnector {
    pub(crate) name: &'static str,
    /// Its own options (every stream also takes `idle_timeout`).
    pub(crate) options: &'static [&'static str],
    /// Builds the source; a memory stream also returns its push handle.
    pub(crate) build: fn(&SourceRequest<'_>) -> Result<Built>,
}

/// A built source, and the push handle when it is a memory stream.
pub(crate) type Built = (Arc<dyn Source>, Option<MemoryStream>);

/// What a stream declaration gives a source connector.
pub(crate) struct SourceRequest<'a> {
    /// The stream's name in SQL, if it has one.
    pub(crate) name: Option<&'a str>,
    pub(crate) options: &'a crate::options::Options,
    /// The declared column list, `None` when there is none.
    pub(crate) schema: Option<SchemaRef>,
}

/// The `mode` option of sources that read records: what to do with a malformed one.
pub(crate) fn malformed_mode(options: &crate::options::Options) -> Result<MalformedMode> {
    Ok(options
        .choice(
            "mode",
            &[
                ("permissive", MalformedMode::Permissive),
                ("drop_malformed", MalformedMode::DropMalformed),
                ("fail_fast", MalformedMode::FailFast),
            ],
        )?
        .unwrap_or_default())
}

/// A position in a source's input, as JSON so the offsets log can hold it.
///
/// # Examples
/// ```
/// use tidewater::Offset;
/// let offset = Offset::from_u64(42);
/// assert_eq!(offset.as_u64(), Some(42));
/// assert_eq!(offset.to_string(), "42");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(pub serde_json::Value);

impl Offset {
    /// An offset that is a count, as used by the file, memory and rate sources.
    pub fn from_u64(n: u64) -> Self {
        Offset(serde_json::Value::from(n))
    }

    /// The count held by an offset made with [`Offset::from_u64`].
    pub fn as_u64(&self) -> Option<u64> {
        self.0.as_u64()
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How much a source may admit into one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadLimit {
    /// The source's own per-trigger limits (e.g. `max_files_per_trigger`).
    Default,
    /// Everything available now, ignoring per-trigger limits (trigger `once`).
    All,
    /// The source's per-trigger limits, but never past this offset (trigger `available_now`: the
    /// driver first asks for [`ReadLimit::All`], then works up to that offset batch by batch).
    UpTo(Offset),
}

/// A replayable, append-only input of a streaming query.
///
/// # Contract
/// - `latest_offset` never returns an offset before `start`.
/// - `read(start, end)` returns the same rows every time it is called with the same offsets, for
///   any offsets this source has returned, so an interrupted batch can be re-run exactly.
#[async_trait]
pub trait Source: Send + Sync + Debug {
    /// The rows' schema.
    fn schema(&self) -> SchemaRef;

    /// A short human description for progress reports, e.g. `FilesSource[data/events]`.
    fn description(&self) -> String;

    /// What a checkpoint records to know this source again when the query restarts: its kind and
    /// what it reads (a files source's directory, a memory stream's name). A restart whose sources
    /// are not the checkpoint's is refused, since their offsets would mean other rows. Options
    /// that only pace a source (a rate, a per-trigger limit) are left out, so they may change.
    fn identity(&self) -> String {
        self.description()
    }

    /// The offset up to which input is available now, bounded by `limit`, or `None` when there
    /// has never been any input. Equal to `start` when nothing new arrived.
    async fn latest_offset(&self, start: Option<&Offset>, limit: ReadLimit) -> Result<Option<Offset>>;

    /// The rows after `start` (from the beginning when `None`) up to and including `end`, with
    /// only the columns in `projection` (indices into [`Source::schema`]) when given.
    async fn read(
        &self,
        start: Option<&Offset>,
        end: &Offset,
        projection: Option<&[usize]>,
    ) -> Result<SendableRecordBatchStream>;

    /// The source as one more query reads it. A source that keeps per-query state (the files
    /// source's log of which files make which offsets, restored from that query's checkpoint)
    /// returns a fresh instance over the same input; others are shared as they are.
    fn for_query(self: Arc<Self>) -> Result<Arc<dyn Source>>;

    /// The directory the source reads, if it reads one, as given (a local path or an object store
    /// URL): a query may not write there.
    fn directory(&self) -> Option<String> {
        None
    }

    /// Counters for progress reports (e.g. malformed records), cumulative since the query started.
    fn metrics(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Why input is not arriving right now, if the source knows (a socket reconnecting), for the
    /// query's status.
    fn status(&self) -> Option<String> {
        None
    }

    /// Starts reading for the query, once, after [`Source::restore`] and before the first batch.
    /// `log` is the source's folder in the query's checkpoint (`None` without a checkpoint). A
    /// source that reads from outside (a socket, a broker) connects here, and fails when it
    /// cannot.
    async fn start(&self, log: Option<Arc<dyn SourceLog>>) -> Result<()> {
        let _ = log;
        Ok(())
    }

    /// Tells the source that the batches up to `end` are committed: their input is never read
    /// again, so a source that holds it (received lines, their log) can let it go.
    async fn commit(&self, end: &Offset) -> Result<()> {
        let _ = end;
        Ok(())
    }

    /// Stops reading, when the query ends.
    async fn stop(&self) {}

    /// Records in `log` what the next batch, `batch_id`, reads: the rows after `start` up to
    /// `end`. Called before the batch enters the offsets log, so after a crash [`Source::restore`]
    /// can make `read(start, end)` return the same rows. Sources whose offsets alone say which
    /// rows they mean (counts over an append-only input) need not log anything.
    async fn persist(&self, log: &dyn SourceLog, batch_id: u64, start: Option<&Offset>, end: &Offset) -> Result<()> {
        let _ = (log, batch_id, start, end);
        Ok(())
    }

    /// Reads back what [`Source::persist`] logged, when a query restarts from its checkpoint;
    /// `end` is the last end offset the offsets log holds for this source. A log that does not
    /// reach `end` (deleted or damaged) is an error naming it: reading on would skip or repeat rows.
    async fn restore(&self, log: &dyn SourceLog, end: Option<&Offset>) -> Result<()> {
        let _ = (log, end);
        Ok(())
    }
}

/// A source's own durable log: a folder of the query's checkpoint. Writes are atomic.
#[async_trait]
pub trait SourceLog: Send + Sync {
    /// Writes entry `name`, replacing it if it exists.
    async fn put(&self, name: &str, content: bytes::Bytes) -> Result<()>;
    /// Entry `name`, `None` when missing.
    async fn get(&self, name: &str) -> Result<Option<bytes::Bytes>>;
    /// The names of the entries, sorted.
    async fn list(&self) -> Result<Vec<String>>;
    /// Deletes entry `name`.
    async fn delete(&self, name: &str) -> Result<()>;
    /// Entry `name` as users know it (a path or URL), for error messages.
    fn display(&self, name: &str) -> String;
}

/// The count held by a count offset, 0 for "from the beginning" (`None`), for the sources whose
/// offsets are counts (files, memory, rate).
pub(crate) fn count(offset: Option<&Offset>, source: &str) -> Result<usize> {
    match offset {
        None => Ok(0),
        Some(o) => o
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| crate::error::Error::Internal(format!("{source} offset {o} is not a count"))),
    }
}

/// Projects `schema` to `projection`, the way every source applies a read's projection.
pub(crate) fn project_schema(schema: &SchemaRef, projection: Option<&[usize]>) -> Result<SchemaRef> {
    Ok(match projection {
        Some(p) => std::sync::Arc::new(schema.project(p).map_err(datafusion::error::DataFusionError::from)?),
        None => schema.clone(),
    })
}
