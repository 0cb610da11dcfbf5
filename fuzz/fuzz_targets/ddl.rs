//! Text in the statements Tidewater parses itself: a `CREATE TABLE ... WITH (...)` (its column
//! list, `WATERMARK FOR` clause, options, or all of it), and the arguments of `window()` and
//! `session_window()` in a query over a static table, run through a session. Any error is fine; a
//! panic, an abort or a hang is a bug.
//!
//! The first byte picks the statement; the rest is the text put in it. Text holding `;` is
//! skipped: a second statement could start a query that writes files or connects to databases.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tidewater::StreamingSession;

/// Statements with a `{}` where the text goes.
const TEMPLATES: &[&str] = &[
    "CREATE TABLE t ({}) WITH (connector = 'memory')",
    "CREATE TABLE t (time TIMESTAMP, n INT, WATERMARK FOR time AS {}) WITH (connector = 'memory')",
    "CREATE TABLE t ({}, WATERMARK FOR time AS time - INTERVAL '5' SECOND) WITH (connector = 'files', format = 'json', path = 'in')",
    "CREATE TABLE t (time TIMESTAMP, n INT) WITH ({})",
    "CREATE TABLE t WITH ({})",
    "CREATE TABLE {}",
    "SELECT window({}) AS w FROM v",
    "SELECT window(time, {}) AS w, count(*) AS n FROM v GROUP BY window(time, {})",
    "SELECT session_window(time, {}) AS s, count(*) AS n FROM v GROUP BY session_window(time, {})",
];

/// A static table `v (time, n)` for the window functions.
const TABLE: &str = "CREATE TABLE v AS VALUES (TIMESTAMP '2024-01-01 00:00:00', 1), \
                     (TIMESTAMP '2024-01-01 00:00:07', 2), (TIMESTAMP '1970-01-01 00:00:00', 3), (NULL, 4)";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if text.contains(';') {
        return;
    }
    let statement = TEMPLATES[usize::from(choice) % TEMPLATES.len()].replace("{}", text);
    runtime().block_on(async {
        let session = StreamingSession::new();
        session
            .sql(TABLE)
            .await
            .expect("the static table")
            .collect()
            .await
            .expect("created");
        if let Ok(frame) = session.sql(&statement).await {
            let _ = frame.collect().await;
        }
    });
});
