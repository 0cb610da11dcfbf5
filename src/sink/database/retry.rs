//! Which database failures are worth another try, and how long to wait before it.
//!
//! # Background
//! A batch is written in one transaction, so a failure anywhere rolls all of it back and the batch
//! can simply be written again. Some failures pass by themselves: a connection that was reset or
//! killed (the pool opens a new one), a deadlock or serialization failure (the other transaction
//! wins), a server that is restarting. Those are retried with exponential backoff; anything else
//! (a constraint violation, a bad type) fails the query at once with the database's message,
//! since trying again would fail again.

use std::future::Future;
use std::time::Duration;

use super::limits::StepLimit;
use crate::error::{Error, Result};

/// How many times, and with which pauses, a batch is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Tries in all, the first included (at least 1).
    pub(crate) attempts: u32,
    /// The pause after the first failure; each further pause doubles.
    pub(crate) first_delay: Duration,
    /// The longest pause.
    pub(crate) max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Six tries over about three seconds (0.1 + 0.2 + 0.4 + 0.8 + 1.6 s of pauses): long enough
    /// for a killed connection or a deadlock, short enough that a server that is really down fails
    /// the query quickly.
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed try number `attempt` (1-based).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// PostgreSQL SQLSTATEs that pass by themselves: serialization failure, deadlock, and the server
/// ending connections (admin shutdown, crash shutdown, cannot connect now). Class 08 (connection
/// exceptions) is matched as a class.
const PG_TRANSIENT: &[&str] = &["40001", "40P01", "57P01", "57P02", "57P03"];

/// MySQL/MariaDB error numbers that pass by themselves: deadlock (1213), lock wait timeout (1205),
/// server gone away (2006), connection lost (2013), connection killed (1927, MariaDB), server
/// shutting down (1053).
const MYSQL_TRANSIENT: &[u16] = &[1213, 1205, 2006, 2013, 1927, 1053];

/// SQLite result codes (the primary code, low byte of the extended one) that pass: BUSY, LOCKED.
const SQLITE_TRANSIENT: &[i64] = &[5, 6];

/// Whether `error` is worth another try of the whole transaction.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        // A connection cut in the middle of a message shows up as unexpected data.
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                return MYSQL_TRANSIENT.contains(&mysql.number());
            }
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                let code = db.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
                return SQLITE_TRANSIENT.contains(&(code & 0xff));
            }
            match db.code() {
                Some(code) => code.starts_with("08") || PG_TRANSIENT.contains(&code.as_ref()),
                None => false,
            }
        }
        _ => false,
    }
}

/// Runs `op` until it succeeds, fails for good, or has failed transiently `policy.attempts` times.
/// Each try runs within `limit`; a try that runs into it fails at once (see [`super::limits`]).
pub(crate) async fn with_retries<T, F, Fut>(
    policy: RetryPolicy,
    limit: StepLimit,
    database: &str,
    table: &str,
    what: &str,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, sqlx::Error>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match limit.run(database, table, what, op()).await? {
            Ok(value) => return Ok(value),
            Err(e) if is_transient(&e) && attempt < policy.attempts => {
                let pause = policy.delay(attempt);
                tracing::warn!(%database, %table, attempt, error = %e, "database sink: {what} failed, retrying");
                tokio::time::sleep(pause).await;
            }
            Err(e) => {
                let tries = if attempt > 1 {
                    format!(" after {attempt} tries")
                } else {
                    String::new()
                };
                return Err(Error::Database {
                    database: database.to_string(),
                    table: table.to_string(),
                    message: format!("{what} failed{tries}: {e}"),
                    user: false,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let pauses: Vec<u128> = (1..8).map(|a| policy.delay(a).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn connection_failures_are_transient_and_others_not() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(is_transient(&sqlx::Error::Io(reset)));
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::PoolClosed));
    }
}
