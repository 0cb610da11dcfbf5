//! State stores: what stateful operators keep between batches, and how it becomes durable.
//!
//! State is Arrow all the way: group keys and aggregate states are record batches, never
//! accumulator objects, so a state is independent of any accumulator's internals and is written
//! out as Arrow IPC and read back as it was ([`store`]).

/// The most state partitions (shards) a query may have. Each shard is a hash table and a part of
/// every state file, held for the query's life; Spark's default is 200, and past a few thousand
/// shards each holds too few groups to pay for itself.
pub(crate) const MAX_STATE_PARTITIONS: usize = 4096;

pub(crate) mod file;
pub(crate) mod groups;
pub(crate) mod store;

pub(crate) use file::StateFile;
pub(crate) use groups::GroupTable;
pub(crate) use store::StateStore;
