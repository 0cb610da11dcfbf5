//! State shards: one operator split by a hash of the group key, the shards worked on in parallel.
//!
//! Every group lives in exactly one shard, chosen by hashing its key columns, so the shards never
//! need to talk to each other: each takes its rows of the batch, merges them into its own state and
//! emits its own rows. The number of shards is the query's `state_partitions` (by default the
//! number of cores); the checkpoint issue fixes it for the life of a checkpoint, since moving to
//! another count would need the state re-sharded.

use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::common::hash_utils::{RandomState, create_hashes};

use super::{OperatorMetrics, StatefulOperator};
use crate::error::{Error, Result};
use crate::sink::OutputMode;

/// An operator split into shards by key hash.
#[derive(Debug)]
pub(crate) struct Sharded {
    shards: Vec<Box<dyn StatefulOperator>>,
    /// The input columns whose values pick the shard (the group key, less any session window).
    key_columns: Vec<usize>,
}

impl Sharded {
    pub(crate) fn new(shards: Vec<Box<dyn StatefulOperator>>, key_columns: Vec<usize>) -> Self {
        Sharded { shards, key_columns }
    }

    /// The rows of `batch` for each shard.
    fn split(&self, batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let n = self.shards.len();
        let columns: Vec<_> = self.key_columns.iter().map(|i| batch.column(*i).clone()).collect();
        let mut hashes = vec![0u64; batch.num_rows()];
        create_hashes(&columns, &RandomState::with_seed(0), &mut hashes)?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (row, hash) in hashes.iter().enumerate() {
            rows[(*hash % n as u64) as usize].push(row as u32);
        }
        rows.into_iter()
            .map(|r| {
                take_record_batch(batch, &UInt32Array::from(r)).map_err(|e| Error::Internal(format!("sharding: {e}")))
            })
            .collect()
    }
}

impl StatefulOperator for Sharded {
    fn process(
        &mut self,
        input: &[RecordBatch],
        mode: OutputMode,
        late_watermark: Option<i64>,
        close_watermark: Option<i64>,
    ) -> Result<(RecordBatch, OperatorMetrics)> {
        if self.shards.len() == 1 {
            return self.shards[0].process(input, mode, late_watermark, close_watermark);
        }
        let mut per_shard: Vec<Vec<RecordBatch>> = vec![Vec::new(); self.shards.len()];
        for batch in input.iter().filter(|b| b.num_rows() > 0) {
            for (shard, rows) in self.split(batch)?.into_iter().enumerate() {
                per_shard[shard].push(rows);
            }
        }
        // One thread per core at most; each takes the next shard until none are left.
        let next = AtomicUsize::new(0);
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(self.shards.len());
        let shards: Vec<std::sync::Mutex<&mut Box<dyn StatefulOperator>>> =
            self.shards.iter_mut().map(std::sync::Mutex::new).collect();
        let results: Vec<std::sync::Mutex<Option<Result<(RecordBatch, OperatorMetrics)>>>> =
            (0..shards.len()).map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(shard) = shards.get(i) else { break };
                        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                        let result = shard.process(&per_shard[i], mode, late_watermark, close_watermark);
                        *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                    }
                });
            }
        });
        let mut outputs = Vec::with_capacity(results.len());
        let mut metrics = OperatorMetrics::default();
        for result in results {
            let (output, m) = result
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .ok_or_else(|| Error::Internal("a state shard did not run".into()))??;
            outputs.push(output);
            metrics.add(&m);
        }
        let schema = outputs[0].schema();
        let output = concat_batches(&schema, &outputs).map_err(|e| Error::Internal(format!("shard outputs: {e}")))?;
        Ok((output, metrics))
    }
}
