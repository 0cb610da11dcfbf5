//! State stores: what stateful operators keep between batches, and how it becomes durable.
//!
//! State is Arrow all the way: group keys and aggregate states are record batches, never
//! accumulator objects, so a state is independent of any accumulator's internals and is written
//! out as Arrow IPC and read back as it was ([`store`]).

pub(crate) mod groups;
pub(crate) mod store;

pub(crate) use groups::GroupTable;
pub(crate) use store::{StateFile, StateStore};
