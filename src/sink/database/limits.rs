//! How long each network step of the database sink may take.
//!
//! # Background
//! A server that accepts TCP connections but never answers (a hung server, a half-open
//! connection after a network change, a load balancer in front of nothing) would otherwise keep
//! the sink waiting forever: the operating system only gives up on a silent connection after many
//! minutes, if ever. So every step that waits on the network runs under a limit, and running
//! into it fails the query with [`Error::DatabaseTimeout`](crate::Error::DatabaseTimeout), which
//! names the database, the table and the step.
//!
//! Two limits, as JDBC drivers have them: `connect_timeout` for opening a connection (pgjdbc's
//! `connectTimeout` is 10 seconds too) and `statement_timeout` for the work on an open one.
//!
//! A step that times out is not retried. The retries of [`super::retry`] are for failures that
//! pass within seconds (a killed connection, a deadlock); a server silent for the whole limit is
//! not such a blip, and a retry could wait on the row locks the abandoned transaction still
//! holds until the server notices the dead connection. The batch's transaction was dropped, which
//! rolls it back (the server does so when the connection closes), so failing is safe: a restart
//! writes the batch again, and the commit mark keeps it exactly once even if the abandoned
//! transaction did commit after all.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};

/// The limits of one database sink's network steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Opening a connection: TCP, the protocol's handshake and authentication, and taking a connection
    /// from the pool (which may have to open one).
    pub(crate) connect: Duration,
    /// One statement step: each start-up check (reading the table's columns, creating the table
    /// or the commits table, reading the packet size) and each try at a batch's transaction, from
    /// `BEGIN` to `COMMIT`.
    pub(crate) statement: Duration,
}

/// Connecting: 10 seconds, pgjdbc's default `connectTimeout`. A server on a LAN answers in
/// milliseconds, one across the world in well under a second; ten times that still reports a
/// dead server quickly.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A batch's transaction: 5 minutes. The transaction may legitimately take long: a complete-mode
/// batch deletes and rewrites the whole table, an update batch of millions of rows upserts them
/// all, and a second writer of the same batch waits on the first one's commit mark. PostgreSQL
/// and JDBC put no limit on a statement by default; this one only has to end a wait that would
/// otherwise never end, so it is far above any batch that makes progress.
pub(crate) const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect: DEFAULT_CONNECT_TIMEOUT,
            statement: DEFAULT_STATEMENT_TIMEOUT,
        }
    }
}

/// A limit of one kind of step and the option that sets it (named in the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StepLimit {
    pub(crate) limit: Duration,
    pub(crate) option: &'static str,
}

impl Limits {
    /// The limit of opening a connection.
    pub(crate) fn connecting(&self) -> StepLimit {
        StepLimit {
            limit: self.connect,
            option: "connect_timeout",
        }
    }

    /// The limit of a statement step.
    pub(crate) fn statement(&self) -> StepLimit {
        StepLimit {
            limit: self.statement,
            option: "statement_timeout",
        }
    }
}

impl StepLimit {
    /// Runs `step` within the limit: `Ok` with its own result, or the timeout error naming
    /// `database`, `table` and `what` (the step). Dropping `step` on the timeout drops whatever
    /// transaction it had open, which rolls it back.
    pub(crate) async fn run<T>(
        self,
        database: &str,
        table: &str,
        what: &str,
        step: impl Future<Output = T>,
    ) -> Result<T> {
        tokio::time::timeout(self.limit, step).await.map_err(|_| {
            tracing::warn!(%database, %table, step = %what, limit = ?self.limit, "database sink step timed out");
            Error::DatabaseTimeout {
                database: database.to_string(),
                table: table.to_string(),
                step: what.to_string(),
                limit: self.limit,
                option: self.option,
            }
        })
    }
}
