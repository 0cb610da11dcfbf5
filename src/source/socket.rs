//! The socket source: lines read from a TCP line server (`nc -lk 9999`), Spark's `socket` format.
//!
//! # Background
//! The source connects as a client and makes one row per line: `value` (the line, without its
//! `\n` or `\r\n`) and, if the stream declares it, `timestamp` (when the line arrived, Spark's
//! `includeTimestamp`). Offsets count lines since the query's first.
//!
//! Spark keeps received lines in memory, so a crash loses every line read from the socket but
//! not yet processed, and a restart cannot replay a batch. Here the reader task writes each chunk
//! of lines it receives to the query's checkpoint (`sources/<i>/`, one file per chunk, named by
//! its first line's number) *before* the lines become available to a batch. A restart reads the
//! chunks back: a batch logged but not committed runs again with exactly its lines, and the lines
//! no batch took yet come next. A chunk is deleted once every line in it is committed. A line the
//! server sent that was still in the kernel's buffers when the process was killed is lost, as with
//! any client: no line protocol acknowledges lines.
//!
//! When the server goes away the source reconnects with backoff, saying so at `warn` and in the
//! query's status. If it cannot connect when the query starts, the query fails after a few
//! attempts with an error naming host and port.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, TimestampNanosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::memory::MemoryStream;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::decode::{CORRUPT_RECORD_COLUMN, text_lines};
use super::{
    Built, MalformedMode, Offset, ReadLimit, Source, SourceConnector, SourceLog, SourceRequest, count, malformed_mode,
    project_schema,
};
use crate::error::{Error, Result};

/// Attempts to connect when the query starts, before it fails: with the backoff below, about
/// three seconds, enough for a server started a moment after the query.
const START_ATTEMPTS: u32 = 5;
/// The first pause between connection attempts; each next one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between attempts to reconnect: a server back after an outage is found
/// within this long.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest line taken: a longer one is a malformed record. A line is held in memory whole
/// until a batch takes it, so the bound keeps a server that never sends a line end from taking
/// all memory.
pub(crate) const MAX_LINE_BYTES: usize = 16 << 20;
/// Bytes asked of the socket per read; a chunk of lines is logged per read.
const READ_BYTES: usize = 256 << 10;

/// The `socket` connector.
pub(crate) const CONNECTOR: SourceConnector = SourceConnector {
    name: "socket",
    options: &["host", "port", "mode"],
    build,
};

fn build(request: &SourceRequest<'_>) -> Result<Built> {
    let options = request.options;
    let schema = request
        .schema
        .clone()
        .unwrap_or_else(|| Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)])));
    let port = options
        .positive("port", u16::MAX as usize)?
        .ok_or_else(|| options.error("option 'port' is required: the port of the line server, e.g. port = '9999'"))?;
    let config = SocketConfig {
        host: options.get("host").unwrap_or("localhost").trim().to_string(),
        port: port as u16,
        schema,
        mode: malformed_mode(options)?,
    };
    config.check().map_err(|m| options.error(m))?;
    Ok((Arc::new(SocketSource::new(config)), None))
}

/// What the socket source reads and how it shapes rows.
#[derive(Debug, Clone)]
pub(crate) struct SocketConfig {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The declared columns: `value`, and optionally `timestamp` and `_corrupt_record`.
    pub(crate) schema: SchemaRef,
    pub(crate) mode: MalformedMode,
}

impl SocketConfig {
    /// Checks the declared columns.
    ///
    /// # Errors
    /// A column other than `value` (a string), `timestamp` (a timestamp) and `_corrupt_record`
    /// (a string), or no `value` column.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let is_string = |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
        for field in self.schema.fields() {
            let ok = match field.name().as_str() {
                "value" | CORRUPT_RECORD_COLUMN => is_string(field.data_type()),
                "timestamp" => matches!(field.data_type(), DataType::Timestamp(_, _)),
                _ => {
                    return Err(format!(
                        "a socket stream has the columns value VARCHAR and, optionally, timestamp TIMESTAMP \
                         (when the line arrived) and _corrupt_record VARCHAR; '{}' is none of them",
                        field.name()
                    ));
                }
            };
            if !ok {
                return Err(format!(
                    "column '{}' of a socket stream cannot be {}",
                    field.name(),
                    field.data_type()
                ));
            }
        }
        if self.schema.index_of("value").is_err() {
            return Err("a socket stream needs a column value VARCHAR".into());
        }
        Ok(())
    }

    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A line and when it arrived (nanoseconds since the epoch).
#[derive(Debug, Clone)]
struct Line {
    bytes: Bytes,
    arrived: i64,
}

/// The lines the source holds: those not yet committed, numbered from `first`.
#[derive(Debug, Default)]
struct Lines {
    first: u64,
    held: VecDeque<Line>,
    /// The chunks in the log, by first line: their end (the first line after them) and name.
    chunks: BTreeMap<u64, (u64, String)>,
    /// Whether the log's chunks have been read back.
    loaded: bool,
}

impl Lines {
    fn end(&self) -> u64 {
        self.first + self.held.len() as u64
    }
}

/// What the source and its reader task share.
#[derive(Debug, Default)]
struct Shared {
    lines: Mutex<Lines>,
    /// Why lines are not arriving right now (reconnecting), for the query's status.
    trouble: Mutex<Option<String>>,
    /// The reader's fatal error (the log could not be written): the query fails with it.
    failed: Mutex<Option<String>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    malformed: AtomicU64,
    dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lines from a TCP server. Each query reads through its own connection ([`Source::for_query`]).
pub(crate) struct SocketSource {
    config: Arc<SocketConfig>,
    shared: Arc<Shared>,
    /// The log in the query's checkpoint, once started; `None` without a checkpoint.
    log: Mutex<Option<Arc<dyn SourceLog>>>,
}

impl std::fmt::Debug for SocketSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketSource").field("config", &self.config).finish()
    }
}

impl SocketSource {
    pub(crate) fn new(config: SocketConfig) -> Self {
        SocketSource {
            config: Arc::new(config),
            shared: Arc::default(),
            log: Mutex::new(None),
        }
    }

    /// Reads the log's chunks back into memory, once.
    async fn load(&self, log: &dyn SourceLog) -> Result<()> {
        if lock(&self.shared.lines).loaded {
            return Ok(());
        }
        let mut chunks = BTreeMap::new();
        let mut held = Vec::new();
        for name in log.list().await? {
            let Ok(first) = name.parse::<u64>() else {
                continue;
            };
            let bytes = log.get(&name).await?.ok_or_else(|| Error::Checkpoint {
                file: log.display(&name),
                message: "vanished while the socket source read it back".into(),
            })?;
            let lines = decode_chunk(bytes).map_err(|message| Error::Checkpoint {
                file: log.display(&name),
                message,
            })?;
            chunks.insert(first, (first + lines.len() as u64, name));
            held.push((first, lines));
        }
        let mut lines = lock(&self.shared.lines);
        let mut next = None;
        for (first, chunk) in held {
            if next.is_some_and(|n| n != first) {
                return Err(Error::Checkpoint {
                    file: log.display(&format!("{first:020}")),
                    message: format!(
                        "the socket source's log has a gap: lines {} to {} are missing",
                        next.unwrap_or_default(),
                        first
                    ),
                });
            }
            if next.is_none() {
                lines.first = first;
            }
            next = Some(first + chunk.len() as u64);
            lines.held.extend(chunk);
        }
        lines.chunks = chunks;
        lines.loaded = true;
        Ok(())
    }
}

#[async_trait]
impl Source for SocketSource {
    fn schema(&self) -> SchemaRef {
        self.config.schema.clone()
    }

    fn description(&self) -> String {
        format!("TextSocketSource[{}]", self.config.address())
    }

    async fn latest_offset(&self, start: Option<&Offset>, limit: ReadLimit) -> Result<Option<Offset>> {
        if let Some(message) = lock(&self.shared.failed).clone() {
            return Err(Error::Source {
                source_name: self.description(),
                message,
            });
        }
        let end = lock(&self.shared.lines).end();
        let end = match limit {
            ReadLimit::UpTo(cap) => end.min(count(Some(&cap), "socket")? as u64),
            ReadLimit::Default | ReadLimit::All => end,
        };
        let start = count(start, "socket")? as u64;
        Ok((end > 0 || start > 0).then(|| Offset::from_u64(end.max(start))))
    }

    async fn read(
        &self,
        start: Option<&Offset>,
        end: &Offset,
        projection: Option<&[usize]>,
    ) -> Result<SendableRecordBatchStream> {
        let (start, end) = (count(start, "socket")? as u64, count(Some(end), "socket")? as u64);
        let lines: Vec<Line> = {
            let held = lock(&self.shared.lines);
            if start < held.first || end > held.end() {
                return Err(Error::Internal(format!(
                    "socket source: lines {start}..{end} asked, {}..{} held",
                    held.first,
                    held.end()
                )));
            }
            let from = (start - held.first) as usize;
            held.held.range(from..from + (end - start) as usize).cloned().collect()
        };
        let batch = self.rows(start, &lines)?;
        let batch = match projection {
            Some(p) => batch
                .project(p)
                .map_err(|e| Error::Internal(format!("socket projection: {e}")))?,
            None => batch,
        };
        let schema = project_schema(&self.config.schema, projection)?;
        Ok(Box::pin(MemoryStream::try_new(vec![batch], schema, None)?))
    }

    fn for_query(self: Arc<Self>) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(SocketSource::new((*self.config).clone())))
    }

    fn metrics(&self) -> BTreeMap<String, String> {
        let mut metrics = BTreeMap::from([
            (
                "numMalformedRecords".to_string(),
                self.shared.malformed.load(Ordering::Relaxed).to_string(),
            ),
            (
                "numDroppedMalformedRecords".to_string(),
                self.shared.dropped.load(Ordering::Relaxed).to_string(),
            ),
        ]);
        if let Some(trouble) = lock(&self.shared.trouble).clone() {
            metrics.insert("connection".into(), trouble);
        }
        metrics
    }

    fn status(&self) -> Option<String> {
        lock(&self.shared.trouble)
            .clone()
            .map(|trouble| format!("{}: {trouble}", self.description()))
    }

    /// Every line is logged as it arrives (see the module docs): nothing is left to log here.
    async fn persist(&self, _log: &dyn SourceLog, _batch: u64, _start: Option<&Offset>, _end: &Offset) -> Result<()> {
        Ok(())
    }

    async fn restore(&self, log: &dyn SourceLog, end: Option<&Offset>) -> Result<()> {
        self.load(log).await?;
        let end = count(end, "socket")? as u64;
        let mut lines = lock(&self.shared.lines);
        if lines.held.is_empty() {
            // Every line was committed and its chunk deleted: numbering goes on after them.
            lines.first = lines.first.max(end);
        } else if lines.end() < end {
            return Err(Error::Checkpoint {
                file: log.display(""),
                message: format!(
                    "the socket source's log ends at line {} but the offsets log says a batch read up to line \
                     {end}: chunks were deleted, and the lines of that batch are lost",
                    lines.end()
                ),
            });
        }
        Ok(())
    }

    async fn start(&self, log: Option<Arc<dyn SourceLog>>) -> Result<()> {
        if let Some(log) = &log {
            self.load(log.as_ref()).await?;
        }
        *lock(&self.log) = log.clone();
        let stream = connect_at_start(&self.config).await?;
        let reader = Reader {
            config: Arc::clone(&self.config),
            shared: Arc::clone(&self.shared),
            log,
        };
        let task = tokio::spawn(reader.run(stream));
        if let Some(old) = lock(&self.shared.task).replace(task) {
            old.abort();
        }
        Ok(())
    }

    async fn commit(&self, end: &Offset) -> Result<()> {
        let end = count(Some(end), "socket")? as u64;
        let done: Vec<String> = {
            let mut lines = lock(&self.shared.lines);
            while lines.first < end && !lines.held.is_empty() {
                lines.held.pop_front();
                lines.first += 1;
            }
            let mut done = Vec::new();
            while let Some(entry) = lines.chunks.first_entry() {
                if entry.get().0 > end {
                    break;
                }
                done.push(entry.remove().1);
            }
            done
        };
        let log = lock(&self.log).clone();
        if let Some(log) = log {
            for name in done {
                log.delete(&name).await?;
            }
        }
        Ok(())
    }

    async fn stop(&self) {
        if let Some(task) = lock(&self.shared.task).take() {
            task.abort();
        }
    }
}

impl SocketSource {
    /// The rows of `lines`, the first of which is line number `first` (from 0).
    fn rows(&self, first: u64, lines: &[Line]) -> Result<RecordBatch> {
        let source = self.description();
        let text = text_lines(
            self.config.mode,
            &source,
            first + 1,
            lines.iter().map(|l| l.bytes.as_ref()),
        )?;
        self.shared.malformed.fetch_add(text.malformed, Ordering::Relaxed);
        self.shared.dropped.fetch_add(text.dropped, Ordering::Relaxed);
        let rows = text.kept.len();
        let columns = self
            .config
            .schema
            .fields()
            .iter()
            .map(|field| {
                let column: ArrayRef = match field.name().as_str() {
                    "value" => Arc::new(text.values.clone()),
                    "timestamp" => Arc::new(TimestampNanosecondArray::from_iter_values(
                        text.kept.iter().map(|i| lines[*i].arrived),
                    )),
                    _ => Arc::new(text.corrupt.clone()),
                };
                cast(&column, field.data_type()).map_err(|e| Error::Internal(format!("socket column: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new_with_options(
            self.config.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| Error::Internal(format!("socket rows: {e}")))
    }
}

/// Connects when the query starts: a few attempts, then an error naming host and port.
async fn connect_at_start(config: &SocketConfig) -> Result<TcpStream> {
    let mut pause = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match TcpStream::connect((config.host.as_str(), config.port)).await {
            Ok(stream) => return Ok(stream),
            Err(e) if attempt >= START_ATTEMPTS => {
                return Err(Error::Source {
                    source_name: format!("TextSocketSource[{}]", config.address()),
                    message: format!(
                        "cannot connect to {} (host '{}', port {}) after {attempt} attempts: {e}; is a line \
                         server such as `nc -lk {}` listening there?",
                        config.address(),
                        config.host,
                        config.port,
                        config.port
                    ),
                });
            }
            Err(e) => {
                tracing::debug!(address = %config.address(), attempt, error = %e, "socket source: cannot connect yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
        }
    }
}

/// The task that reads lines from the server, logs them, and makes them available.
struct Reader {
    config: Arc<SocketConfig>,
    shared: Arc<Shared>,
    log: Option<Arc<dyn SourceLog>>,
}

impl Reader {
    async fn run(self, first: TcpStream) {
        let mut stream = Some(first);
        loop {
            let connection = match stream.take() {
                Some(s) => s,
                None => self.reconnect().await,
            };
            let why = match self.read_from(connection).await {
                Ok(()) => "the server closed the connection".to_string(),
                Err(Stop::Connection(e)) => format!("the connection failed: {e}"),
                Err(Stop::Log(e)) => {
                    tracing::error!(address = %self.config.address(), error = %e, "socket source: cannot log lines");
                    *lock(&self.shared.failed) = Some(format!("cannot log received lines: {e}"));
                    return;
                }
            };
            tracing::warn!(address = %self.config.address(), "socket source: {why}; reconnecting");
            *lock(&self.shared.trouble) = Some(format!("{why}; reconnecting"));
        }
    }

    /// Connects again, with backoff, for as long as it takes.
    async fn reconnect(&self) -> TcpStream {
        let mut pause = FIRST_BACKOFF;
        let mut attempt: u64 = 1;
        loop {
            match TcpStream::connect((self.config.host.as_str(), self.config.port)).await {
                Ok(stream) => {
                    tracing::info!(address = %self.config.address(), attempt, "socket source: connected again");
                    *lock(&self.shared.trouble) = None;
                    return stream;
                }
                Err(e) => {
                    *lock(&self.shared.trouble) = Some(format!("reconnecting (attempt {attempt}): {e}"));
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Reads lines until the server closes the connection.
    async fn read_from(&self, mut stream: TcpStream) -> std::result::Result<(), Stop> {
        let mut buffer = BytesMut::with_capacity(READ_BYTES);
        // Bytes of a line longer than the limit are skipped up to its end.
        let mut skipping = false;
        loop {
            buffer.reserve(READ_BYTES);
            let read = stream.read_buf(&mut buffer).await.map_err(Stop::Connection)?;
            let arrived = crate::time::now_nanos();
            let mut lines = Vec::new();
            while let Some(at) = memchr::memchr(b'\n', &buffer) {
                let mut line = buffer.split_to(at + 1).freeze();
                if std::mem::take(&mut skipping) {
                    continue;
                }
                line.truncate(at);
                if line.last() == Some(&b'\r') {
                    line.truncate(at - 1);
                }
                lines.push(Line { bytes: line, arrived });
            }
            if read == 0 {
                // The server closed the connection: a last line without its end still counts.
                if !buffer.is_empty() && !skipping {
                    lines.push(Line {
                        bytes: buffer.split().freeze(),
                        arrived,
                    });
                }
                self.append(lines).await.map_err(Stop::Log)?;
                return Ok(());
            }
            if skipping {
                buffer.clear();
            } else if buffer.len() > MAX_LINE_BYTES {
                // A line past the limit: its start is kept as a malformed record, the rest skipped.
                tracing::warn!(address = %self.config.address(), "socket source: a line longer than {MAX_LINE_BYTES} bytes");
                let mut line = buffer.split().freeze();
                line.truncate(MAX_LINE_BYTES + 1);
                lines.push(Line { bytes: line, arrived });
                skipping = true;
            }
            self.append(lines).await.map_err(Stop::Log)?;
        }
    }

    /// Logs a chunk of lines, then makes them available.
    async fn append(&self, chunk: Vec<Line>) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let first = lock(&self.shared.lines).end();
        let end = first + chunk.len() as u64;
        let name = format!("{first:020}");
        if let Some(log) = &self.log {
            log.put(&name, encode_chunk(&chunk)).await?;
        }
        let mut lines = lock(&self.shared.lines);
        lines.held.extend(chunk);
        if self.log.is_some() {
            lines.chunks.insert(first, (end, name));
        }
        Ok(())
    }
}

/// Why reading from a connection stopped.
enum Stop {
    Connection(std::io::Error),
    Log(Error),
}

/// A chunk of lines as logged: per line, its arrival time (8 bytes) and length (4 bytes), little
/// endian, then its bytes.
fn encode_chunk(lines: &[Line]) -> Bytes {
    let size = lines.iter().map(|l| 12 + l.bytes.len()).sum();
    let mut out = BytesMut::with_capacity(size);
    for line in lines {
        out.put_i64_le(line.arrived);
        out.put_u32_le(line.bytes.len() as u32);
        out.put_slice(&line.bytes);
    }
    out.freeze()
}

/// The lines of a logged chunk.
fn decode_chunk(mut bytes: Bytes) -> std::result::Result<Vec<Line>, String> {
    let mut lines = Vec::new();
    while bytes.has_remaining() {
        if bytes.remaining() < 12 {
            return Err("a socket log chunk ends inside a line's header".into());
        }
        let arrived = bytes.get_i64_le();
        let len = bytes.get_u32_le() as usize;
        if bytes.remaining() < len {
            return Err("a socket log chunk ends inside a line".into());
        }
        lines.push(Line {
            bytes: bytes.split_to(len),
            arrived,
        });
    }
    Ok(lines)
}
