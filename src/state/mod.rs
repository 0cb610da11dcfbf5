//! State stores: what stateful operators keep between batches.
//!
//! State is Arrow all the way: group keys and aggregate states are record batches, never
//! accumulator objects, so a state is independent of any accumulator's internals and can be
//! written out as Arrow IPC and read back (the checkpoint issue builds on that).

pub(crate) mod groups;

pub(crate) use groups::GroupTable;
