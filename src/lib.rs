//! # Tidewater
//!
//! A structured streaming SQL engine on [DataFusion](datafusion). A stream is an unbounded,
//! append-only table; a streaming query is an ordinary SQL or DataFrame query over it, and its
//! result is kept up to date batch by batch, as in Apache Spark Structured Streaming.
//!
//! ```text
//! source ──offsets──▶ driver loop ──batch N──▶ segment ──▶ stateful operator ──▶ … ──▶ post plan ──▶ sink.add_batch(N)
//!    ▲                 │     │        (DataFusion:  (aggregation, dedup,        (DataFusion)          │
//!    │                 │     │         batch plan)   join; two watermarks)                           │
//!    │      offsets/N ◀┘     │                           │ state/<id> delta N                        │
//!    │      (before)         └──── commits/N (after) ◀───┴───────────────────────────────────────────┘
//!    └── read(start, end): the same rows again when batch N is re-run after a crash
//! ```
//!
//! # Examples
//! ```
//! # #[tokio::main]
//! # async fn main() -> tidewater::Result<()> {
//! use tidewater::StreamingSession;
//! use tidewater::arrow::array::{Int32Array, RecordBatch, StringArray};
//! use std::sync::Arc;
//!
//! let session = StreamingSession::new();
//! session.run_script("
//!     CREATE TABLE events (phone_id INT, action VARCHAR) WITH (connector = 'memory');
//!     CREATE TABLE opens WITH (connector = 'memory');
//! ").await?;
//! let events = session.memory_stream("events")?;
//! let query = session.run_script(
//!     "INSERT INTO opens SELECT upper(action) AS action, phone_id FROM events WHERE phone_id > 10",
//! ).await?;
//! let tidewater::StatementOutcome::Started(query) = &query[0] else { unreachable!() };
//!
//! let schema = tidewater::Source::schema(&events);
//! events.add_batch(RecordBatch::try_new(schema, vec![
//!     Arc::new(Int32Array::from(vec![5, 11])),
//!     Arc::new(StringArray::from(vec!["open", "close"])),
//! ]).unwrap())?;
//! query.process_all_available().await?;
//!
//! let rows = session.sql("SELECT action, phone_id FROM opens").await?.collect().await?;
//! assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
//! query.stop().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`session`](StreamingSession): the entry point; a DataFusion context plus streams, sinks and
//!   queries. Composes everything below.
//! - `sql`: splitting scripts, `CREATE TABLE ... WITH`, the `WATERMARK` clause, the window
//!   functions and the analyzer rules that expand sliding windows and compute session windows on
//!   static tables. Uses `connector`, `planner` (to tell streams from static tables).
//! - `connector`: the registry of source and sink connectors (one line each) and the query's
//!   options (output mode, trigger, checkpoint). Each source and sink reads its own options in
//!   its own file. Uses `source`, `sink`, `options`.
//! - `options`: a connector's options, with typed readers that name a bad option; durations.
//!   Depends on `error` only.
//! - `frame`: the DataFrame API (`read_stream`, `write_stream`). Uses `session`, `connector`.
//! - `planner`: incrementalization: which queries can run on streams, the cut into a chain of
//!   stateful operators (aggregation, deduplication, join; one file each) with stateless segments
//!   between them, and the binding of each batch's rows. No I/O, no tasks. Uses `operator`,
//!   `source` (for scans).
//! - `operator`: stateful operators (aggregation, session windows, deduplication, stream-stream
//!   join; state shards). Uses `state`.
//! - `state`: state kept between batches, as Arrow arrays (group tables), the state file format,
//!   and the state store that writes its versions as delta and snapshot files. Uses `checkpoint`
//!   (its folders only).
//! - `checkpoint`: the checkpoint's folders, metadata, offsets and commits logs and the recovery
//!   decision; knows nothing of operators. Uses `source` (offsets).
//! - `source`: the [`Source`] trait and the files, memory, rate and socket sources, and the
//!   record decoding files and socket share. Uses `options`, `time`.
//! - `sink`: the [`Sink`] trait and the console, memory, files and database sinks, each with its
//!   connector. Uses `storage`, `options`.
//! - `storage`: object store locations for files read and written.
//! - `query`: the only module with tasks and time: the micro-batch loop in named steps (`driver`),
//!   the read side and watermarks (`cursor`), the running operators and their stores (`stages`),
//!   progress reports, the [`StreamingQuery`] handle and triggers. Uses `planner`, `operator`,
//!   `state`, `checkpoint`, `source`, `sink`.
//! - `time`: checked event-time arithmetic (the nanosecond range, units, durations). Depends on
//!   `error` only.
//! - `error`: the one error type.
//! - `fuzzing`: only with `--cfg fuzzing` (the fuzz targets in `fuzz/`): thin wrappers that hand
//!   raw bytes to the files source's decoder and the checkpoint and state-file readers.

pub(crate) mod checkpoint;
pub(crate) mod connector;
mod error;
mod frame;
pub(crate) mod operator;
pub(crate) mod options;
pub(crate) mod planner;
mod query;
mod session;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod sql;
pub(crate) mod state;
pub(crate) mod storage;
pub(crate) mod time;

/// Crate-private decoders for the fuzz targets in `fuzz/` (see its module docs); only in builds
/// with `--cfg fuzzing`, as `cargo fuzz` makes them.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;

pub use error::{Error, ErrorKind, Result};
pub use frame::{DataStreamReader, DataStreamWriter, StreamingDataFrame, session_window, sliding_window, window};
pub use options::parse_duration;
pub use query::{
    SinkProgress, SourceProgress, StateOperatorProgress, StreamingQuery, StreamingQueryProgress, StreamingQueryStatus,
    Trigger,
};
pub use session::{StatementOutcome, StreamingSession};
pub use sink::{ConsoleSink, MemorySink, OutputMode, Sink};
pub use source::{
    FileFormat, FilesSource, FilesSourceConfig, MalformedMode, MemoryStream, Offset, RateSource, ReadLimit, Source,
    SourceLog,
};
pub use sql::Watermark;

/// The DataFusion version underneath.
pub use datafusion;
/// The README's Rust example, compiled as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The Arrow version Tidewater and DataFusion use (re-exported, so no second copy can sneak in).
pub use datafusion::arrow;
