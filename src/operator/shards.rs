//! State shards: one operator split by a hash of the group key, the shards worked on in parallel.
//!
//! Every group lives in exactly one shard, chosen by hashing its key columns, so the shards never
//! need to talk to each other: each takes its rows of the batch, merges them into its own state and
//! emits its own rows. The number of shards is the query's `state_partitions` (by default the
//! number of cores); the checkpoint issue fixes it for the life of a checkpoint, since moving to
//! another count would need the state re-sharded.

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::common::hash_utils::{RandomState, create_hashes};

use super::{Emitted, OperatorMetrics, StatefulOperator};
use crate::error::{Error, Result};
use crate::sink::OutputMode;
use crate::state::StateFile;
use crate::state::store::SnapshotJob;

/// Below this many input rows a batch's shards are processed one after the other. Starting a
/// thread costs tens of microseconds; merging a few thousand groups costs about as much.
const PARALLEL_MIN_ROWS: usize = 4096;

/// What one shard's batch gave.
type ShardResult = Result<Emitted>;

/// An operator split into shards by key hash.
#[derive(Debug)]
pub(crate) struct Sharded {
    shards: Vec<Box<dyn StatefulOperator>>,
    /// Per input, the columns whose values pick the shard (the group key, less any session
    /// window; a join's keys on each side).
    key_columns: Vec<Vec<usize>>,
}

impl Sharded {
    pub(crate) fn new(shards: Vec<Box<dyn StatefulOperator>>, key_columns: Vec<Vec<usize>>) -> Self {
        Sharded { shards, key_columns }
    }

    /// The rows of `batch` of input `input` for each shard.
    fn split(&self, input: usize, batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let n = self.shards.len();
        let keys = self
            .key_columns
            .get(input)
            .ok_or_else(|| Error::Internal(format!("no key columns for input {input}")))?;
        let columns: Vec<_> = keys.iter().map(|i| batch.column(*i).clone()).collect();
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

impl Sharded {
    /// Processes one batch's input in every shard; see [`StatefulOperator::process`].
    pub(crate) fn process(
        &mut self,
        inputs: &[Vec<RecordBatch>],
        mode: OutputMode,
        late_watermark: Option<i64>,
        close_watermark: Option<i64>,
    ) -> Result<Emitted> {
        if self.shards.len() == 1 {
            return self.shards[0].process(inputs, mode, late_watermark, close_watermark);
        }
        // Per shard, per input, its rows.
        let mut per_shard: Vec<Vec<Vec<RecordBatch>>> = vec![vec![Vec::new(); inputs.len()]; self.shards.len()];
        for (index, input) in inputs.iter().enumerate() {
            for batch in input.iter().filter(|b| b.num_rows() > 0) {
                for (shard, rows) in self.split(index, batch)?.into_iter().enumerate() {
                    per_shard[shard][index].push(rows);
                }
            }
        }
        // At most one thread per core, each with an equal share of the shards; small batches stay
        // on this thread, where they cost less than starting threads would.
        let rows: usize = per_shard.iter().flatten().flatten().map(|b| b.num_rows()).sum();
        let threads = match rows < PARALLEL_MIN_ROWS {
            true => 1,
            false => std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(self.shards.len()),
        };
        let mut work: Vec<_> = self.shards.iter_mut().zip(per_shard).collect();
        let share = work.len().div_ceil(threads);
        let results: Vec<ShardResult> = std::thread::scope(|scope| {
            let handles: Vec<_> = work
                .chunks_mut(share)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter_mut()
                            .map(|(shard, input)| shard.process(input, mode, late_watermark, close_watermark))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|_| vec![Err(Error::Internal("a state shard panicked".into()))])
                })
                .collect()
        });
        let (mut rows, mut replaced) = (Vec::with_capacity(results.len()), Vec::new());
        let mut metrics = OperatorMetrics::default();
        for result in results {
            let emitted = result?;
            rows.push(emitted.rows);
            replaced.push(emitted.replaced);
            metrics.add(&emitted.metrics);
        }
        let concat = |batches: Vec<RecordBatch>| {
            concat_batches(&batches[0].schema(), &batches).map_err(|e| Error::Internal(format!("shard outputs: {e}")))
        };
        Ok(Emitted {
            rows: concat(rows)?,
            replaced: concat(replaced)?,
            metrics,
        })
    }

    /// The earliest window end of any shard; see [`StatefulOperator::next_close`].
    pub(crate) fn next_close(&self) -> Option<i64> {
        self.shards.iter().filter_map(|s| s.next_close()).min()
    }

    /// Number of shards.
    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    /// Each shard's changes since the last call: the next state version, shard by shard.
    pub(crate) fn changes(&mut self) -> Result<Vec<StateFile>> {
        self.shards.iter_mut().map(|s| s.changes()).collect()
    }

    /// Forgets the changes since the last call, when nothing is checkpointed.
    pub(crate) fn discard_changes(&mut self) {
        for shard in &mut self.shards {
            shard.discard_changes();
        }
    }

    /// Each shard's snapshot work; see [`StatefulOperator::snapshot`].
    pub(crate) fn snapshot(&self) -> Vec<SnapshotJob> {
        self.shards.iter().map(|s| s.snapshot()).collect()
    }

    /// Restores every shard from its state of one version.
    pub(crate) fn restore(&mut self, states: Vec<StateFile>) -> Result<()> {
        if states.len() != self.shards.len() {
            return Err(Error::Internal(format!(
                "state of {} shards for {} shards",
                states.len(),
                self.shards.len()
            )));
        }
        for (shard, state) in self.shards.iter_mut().zip(states) {
            shard.restore(&state)?;
        }
        Ok(())
    }
}
