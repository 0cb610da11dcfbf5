//! SQL semantics as data: every `.slt` file under `tests/slt/` runs through the sqllogictest runner.
//!
//! Before each statement, every running query processes all input pushed so far, so a file reads
//! as "push rows (INSERT INTO a memory stream), then look at the sink". Rewrite the expected
//! results after a deliberate change with `TIDEWATER_SLT_COMPLETE=1 cargo test slt` and review
//! the diff; `TIDEWATER_SLT=<part of a path>` runs only the matching files.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sqllogictest::{DBOutput, DefaultColumnType};
use tidewater::StreamingSession;

struct Tidewater {
    session: StreamingSession,
}

#[async_trait]
impl sqllogictest::AsyncDB for Tidewater {
    type Error = tidewater::Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, tidewater::Error> {
        for query in self.session.active_queries() {
            query.process_all_available().await?;
        }
        let frame = self.session.sql(sql).await?;
        let lower = sql.trim_start().to_ascii_lowercase();
        // SHOW, DESCRIBE and EXPLAIN return rows too (and `statement ok` takes rows).
        let is_query = ["select", "show", "describe", "desc ", "explain"]
            .iter()
            .any(|k| lower.starts_with(k));
        let batches = frame.collect().await?;
        if !is_query {
            return Ok(DBOutput::StatementComplete(0));
        }
        let rows = crate::common::cells(&batches);
        let width = batches.first().map_or(0, |b| b.num_columns());
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; width],
            rows,
        })
    }

    async fn shutdown(&mut self) {
        for query in self.session.active_queries() {
            let _ = query.stop().await;
        }
    }

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[tokio::test]
async fn slt() {
    let mut paths = Vec::new();
    slt_files(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/slt")), &mut paths);
    paths.sort();
    assert!(!paths.is_empty(), "no .slt files found");
    // `TIDEWATER_SLT=<part of a path>` runs only the files whose path contains it.
    let only = std::env::var("TIDEWATER_SLT").unwrap_or_default();
    paths.retain(|p| p.to_string_lossy().contains(&only));
    let complete = std::env::var_os("TIDEWATER_SLT_COMPLETE").is_some();
    // Every file runs; each stops at its first failing record, and the failures are listed at the end.
    let mut failures = Vec::new();
    for path in paths {
        let mut runner = sqllogictest::Runner::new(|| async {
            let session = StreamingSession::new();
            // Plans (EXPLAIN) show as many partitions on every machine.
            session
                .context()
                .state_ref()
                .write()
                .config_mut()
                .options_mut()
                .execution
                .target_partitions = 2;
            Ok(Tidewater { session })
        });
        let result = if complete {
            runner
                .update_test_file(
                    &path,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .map_err(|e| e.to_string())
        } else {
            runner.run_file_async(&path).await.map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every `.slt` file under `dir`, its subdirectories included.
fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            slt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
}
