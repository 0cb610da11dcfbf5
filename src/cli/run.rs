//! `tidewater run FILE.sql`: runs a script's statements in order, then waits for its streaming
//! queries to end (or for Ctrl-C, which stops them after their current batch), showing their
//! progress ([`super::progress`]).

use std::path::PathBuf;

use anyhow::Context;
use tidewater::{StatementOutcome, StreamingSession};

use super::progress::{self, Progress};
use super::{Interrupted, Interrupts, print_table};

pub(crate) async fn run(file: PathBuf, per_batch: bool) -> anyhow::Result<()> {
    let sql = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    // Listen for Ctrl-C before any query starts, so an early interrupt also stops gracefully.
    let mut interrupts = Interrupts::listen()?;
    let session = StreamingSession::new();
    // Ctrl-C while statements run (a long static SELECT) drops them, which cancels their work.
    let statements = async {
        let outcomes = session
            .run_script(&sql)
            .await
            .with_context(|| format!("in {}", file.display()))?;
        let mut queries = Vec::new();
        for outcome in outcomes {
            match outcome {
                StatementOutcome::Rows(df) => print_table(&df.collect().await?)?,
                StatementOutcome::Started(query) => queries.push(query),
                StatementOutcome::Done => {}
            }
        }
        anyhow::Ok(queries)
    };
    let queries = tokio::select! {
        queries = statements => queries?,
        () = interrupts.next() => {
            return Err(Interrupted("interrupted: the running statement was cancelled").into());
        }
    };
    // On a terminal, a live line per query; with `--progress`, a line per batch.
    let live = !queries.is_empty() && progress::live_lines_fit(&session).await;
    let mut progress = Progress::start(&queries, live, per_batch);
    let all_done = futures::future::join_all(queries.iter().map(|q| q.await_termination(None)));
    tokio::select! {
        results = all_done => {
            for (query, result) in queries.iter().zip(results) {
                result.with_context(|| format!("query '{}'", query.name().unwrap_or(query.id())))?;
            }
        }
        () = interrupts.next() => {
            progress.freeze();
            progress.println(&format!(
                "stopping {} queries after their current batch (Ctrl-C again to quit at once)",
                queries.len()
            ));
            let stop_all = async {
                for query in &queries {
                    query.stop().await.with_context(|| format!("query '{}'", query.name().unwrap_or(query.id())))?;
                }
                anyhow::Ok(())
            };
            tokio::select! {
                stopped = stop_all => stopped?,
                () = interrupts.next() => {
                    return Err(Interrupted("interrupted again: quit without waiting for the current batches").into());
                }
            }
        }
    }
    progress.finish().await;
    Ok(())
}
