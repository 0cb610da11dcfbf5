//! The one error type of the library.
//!
//! Every failure a user can cause names *what* and *where*: the option, the file and line, the
//! statement, the batch. [`Error::kind`] tells a caller whether to fix the input
//! ([`ErrorKind::User`]), look at something outside Tidewater ([`ErrorKind::External`]), or report a
//! bug ([`ErrorKind::Internal`]).

use datafusion::error::DataFusionError;

/// Result alias used throughout Tidewater.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who has to act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The query, an option or the input data is wrong; the message says where.
    User,
    /// Something outside Tidewater failed: a file system, a network, a database.
    External,
    /// A bug in Tidewater.
    Internal,
}

/// Everything that can go wrong in Tidewater.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `WITH (...)` option or a builder option is unknown or has a bad value.
    #[error("{context}: {}", clip(.message))]
    Option {
        /// Where the option was given, e.g. `stream 'events' (connector 'files')`.
        context: String,
        /// What is wrong, listing the valid choices.
        message: String,
    },

    /// A statement or query that Tidewater cannot run as written.
    #[error("{}", clip(.0))]
    Plan(String),

    /// A record in an input file could not be read in `fail_fast` mode, or a whole file is unreadable.
    #[error("{file}{}: {}", line.map(|l| format!(", line {l}")).unwrap_or_default(), clip(.message))]
    Input {
        /// The file (path or URL) the record came from.
        file: String,
        /// 1-based line number, when the format has lines.
        line: Option<u64>,
        /// What is wrong with it.
        message: String,
    },

    /// A statement of a SQL script failed; wraps the cause with the statement's position.
    /// (The cause is part of the message, so it is not repeated as a `source()`.)
    #[error("statement {index} (line {line}): {error}")]
    Statement {
        /// 1-based position of the statement in the script.
        index: usize,
        /// 1-based line on which the statement starts.
        line: u64,
        /// What went wrong.
        error: Box<Error>,
    },

    /// A streaming query failed while running a batch.
    #[error("query '{query}' failed in batch {batch_id}: {error}")]
    Query {
        /// The query's name or id.
        query: String,
        /// The batch that failed.
        batch_id: u64,
        /// What went wrong.
        error: Box<Error>,
    },

    /// The error that ended a streaming query, as seen through its handle.
    #[error(transparent)]
    Terminated(std::sync::Arc<Error>),

    /// An error from DataFusion or Arrow (planning or execution).
    /// (Shown in full, so not also a `source()`.)
    #[error("{}", clip(&.0.to_string()))]
    DataFusion(DataFusionError),

    /// An error from the object store that holds input files.
    #[error("{context}: {error}")]
    ObjectStore {
        /// What Tidewater was doing, e.g. `listing 'data/events'`.
        context: String,
        /// The store's error.
        error: datafusion::object_store::Error,
    },

    /// An I/O error with the path it happened on.
    #[error("{context}: {error}")]
    Io {
        /// What Tidewater was doing, with the path.
        context: String,
        /// The operating system's error.
        error: std::io::Error,
    },

    /// A checkpoint file is unreadable or does not fit the others: the checkpoint is damaged.
    /// Tidewater never starts afresh over it; move it away to start over on purpose.
    #[error("checkpoint file '{file}': {message}")]
    Checkpoint {
        /// The file (path or URL).
        file: String,
        /// What is wrong with it.
        message: String,
    },

    /// A database sink failed: its database refused a statement or could not be reached (after
    /// retries, for failures that pass), or its table does not fit the query's output.
    #[error("{database}, table '{table}': {message}")]
    Database {
        /// Which database, e.g. `PostgreSQL postgres://app@db:5432/analytics` (never a password).
        database: String,
        /// The sink's table.
        table: String,
        /// What went wrong: the database's own message, or which columns do not fit.
        message: String,
        /// Whether the table's shape or the options are at fault (rather than the database).
        user: bool,
    },

    /// A database sink's network step got no answer within its limit: a server that accepts
    /// connections but never answers, or a network that dropped the connection silently.
    #[error(
        "{database}, table '{table}': {step} timed out after {limit:?}: the server did not answer in time \
         (raise option '{option}' if it is only slow)"
    )]
    DatabaseTimeout {
        /// Which database, e.g. `PostgreSQL postgres://app@db:5432/analytics` (never a password).
        database: String,
        /// The sink's table.
        table: String,
        /// The step that timed out, e.g. `connecting` or `writing batch 3`.
        step: String,
        /// The limit it ran into.
        limit: std::time::Duration,
        /// The option that sets the limit: `connect_timeout` or `statement_timeout`.
        option: &'static str,
    },

    /// An event time or window bound outside what the engine computes in: nanoseconds since the
    /// epoch in an `i64`, 1677-09-21 to 2262-04-11. Such a value is refused, never wrapped.
    #[error("{}", clip(.0))]
    OutOfRange(String),

    /// A source could not reach what it reads (a socket's server), or lost what it had read.
    #[error("{source_name}: {}", clip(.message))]
    Source {
        /// The source, e.g. `TextSocketSource[127.0.0.1:9999]`.
        source_name: String,
        /// What went wrong.
        message: String,
    },

    /// A bug: an invariant of Tidewater did not hold. Please report it.
    #[error("internal error (this is a bug in Tidewater, please report it): {0}")]
    Internal(String),
}

impl From<DataFusionError> for Error {
    fn from(error: DataFusionError) -> Self {
        Error::DataFusion(error)
    }
}

/// Longest text an error message shows of something a user gave (a value, a record, an option):
/// a 50 MB bad value must not become 50 MB of error output.
const SHOWN_TEXT: usize = 400;

/// `text` if it is short, else its start and end around a note of how much was left out, so a
/// message that quotes a huge value keeps the words on both sides of it.
pub(crate) fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= SHOWN_TEXT {
        return text.into();
    }
    let head = text.floor_char_boundary(SHOWN_TEXT * 2 / 3);
    let tail = text.ceil_char_boundary(text.len() - SHOWN_TEXT / 3);
    format!("{}… [{} bytes left out] …{}", &text[..head], tail - head, &text[tail..]).into()
}

impl Error {
    /// Who has to act on this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Option { .. } | Error::Plan(_) | Error::Input { .. } | Error::OutOfRange(_) => ErrorKind::User,
            Error::Statement { error, .. } | Error::Query { error, .. } => error.kind(),
            Error::Terminated(source) => source.kind(),
            Error::DataFusion(e) => match e.find_root() {
                DataFusionError::Internal(_) => ErrorKind::Internal,
                DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => ErrorKind::External,
                DataFusionError::External(inner) => match inner.downcast_ref::<Error>() {
                    Some(ours) => ours.kind(),
                    None => ErrorKind::External,
                },
                _ => ErrorKind::User,
            },
            Error::ObjectStore { .. } | Error::Io { .. } | Error::Checkpoint { .. } | Error::Source { .. } => {
                ErrorKind::External
            }
            Error::Database { user: true, .. } => ErrorKind::User,
            Error::Database { user: false, .. } | Error::DatabaseTimeout { .. } => ErrorKind::External,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Shorthand for an option error.
    pub(crate) fn option(context: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Option {
            context: context.into(),
            message: message.into(),
        }
    }

    /// Shorthand for a plan error.
    pub(crate) fn plan(message: impl Into<String>) -> Self {
        Error::Plan(message.into())
    }

    /// Wraps our error for a trip through a DataFusion stream; [`Error::from_datafusion`] unwraps it.
    pub(crate) fn into_datafusion(self) -> DataFusionError {
        match self {
            Error::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }

    /// Takes back an error of ours that travelled through DataFusion, so it keeps its message.
    pub(crate) fn from_datafusion(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::DataFusion(DataFusionError::External(other)),
            },
            DataFusionError::Context(ctx, inner) => match Error::from_datafusion(*inner) {
                Error::DataFusion(e) => Error::DataFusion(DataFusionError::Context(ctx, Box::new(e))),
                ours => ours,
            },
            other => Error::DataFusion(other),
        }
    }
}
