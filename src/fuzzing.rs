//! Entry points for the fuzz targets in `fuzz/`: only built with `--cfg fuzzing`, which
//! `cargo fuzz` sets, so neither normal builds nor the public API have them.
//!
//! # Background
//! The inputs most worth fuzzing reach Tidewater below its public API: an input file's bytes
//! meet the files source's decoder, and a checkpoint's bytes meet the checkpoint and state-store
//! readers, on a restart. Going through a session for each would spend the fuzzer's time on
//! directories and query start-up instead of on the bytes. Each function here hands raw bytes to
//! the same crate-private code the engine runs on them, and adds nothing of its own: what a fuzz
//! target finds through it, a user can meet. Checkpoint bytes are handed over as the content
//! under a file's seal (see `checkpoint::seal`, tested on its own): a fuzzer rarely forges a
//! CRC, and the parsers behind the seal are what these targets are for.

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::checkpoint::{self, CommitEntry, Metadata, OffsetEntry};
use crate::error::Result;
use crate::source::decode::DecodePlan;
use crate::source::{FileFormat, MalformedMode};

/// The name decoded bytes go by in error messages.
const FILE: &str = "fuzz-input";

/// What the files source made of one file.
#[derive(Debug)]
pub struct DecodedFile {
    /// The rows, in the declared schema.
    pub batches: Vec<RecordBatch>,
    /// Malformed records kept as rows of nulls (`permissive`).
    pub malformed: u64,
    /// Malformed records dropped (`drop_malformed`).
    pub dropped: u64,
}

/// Decodes `bytes` as one input file of a files stream with `format`, `mode` and the declared
/// columns `schema` (which may include `_corrupt_record`), as a batch reading the file does.
///
/// # Errors
/// What the files source reports for the file: in `fail_fast`, its first malformed record.
pub fn decode_file(format: FileFormat, mode: MalformedMode, schema: SchemaRef, bytes: &[u8]) -> Result<DecodedFile> {
    let decoded = DecodePlan::new(format, mode, schema).decode(FILE, Bytes::copy_from_slice(bytes))?;
    Ok(DecodedFile {
        batches: decoded.batches,
        malformed: decoded.malformed,
        dropped: decoded.dropped,
    })
}

/// A checkpoint file kind whose content is JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFile {
    /// `<checkpoint>/metadata`.
    Metadata,
    /// `<checkpoint>/offsets/<N>`.
    Offsets,
    /// `<checkpoint>/commits/<N>`.
    Commits,
}

/// Reads `bytes` as a checkpoint file of `kind`, as a restart does (metadata of another format
/// version is refused), and returns the file the checkpoint would write for what was read.
///
/// # Errors
/// A damaged file, named, as a restart reports it.
pub fn read_checkpoint_file(kind: CheckpointFile, bytes: &[u8]) -> Result<Bytes> {
    match kind {
        CheckpointFile::Metadata => {
            let metadata: Metadata = checkpoint::parse_file(bytes, FILE)?;
            checkpoint::check_version(&metadata, FILE)?;
            checkpoint::file_bytes(&metadata)
        }
        CheckpointFile::Offsets => checkpoint::file_bytes(&checkpoint::parse_file::<OffsetEntry>(bytes, FILE)?),
        CheckpointFile::Commits => checkpoint::file_bytes(&checkpoint::parse_file::<CommitEntry>(bytes, FILE)?),
    }
}

/// Reads `bytes` as a state file of a checkpoint with `shards` shards and restores each shard's
/// state from it alone, as restoring a version whose files start with it does: the rows each
/// shard's state holds afterwards.
///
/// # Errors
/// A damaged or truncated file, named, as a restart reports it.
pub fn restore_state_file(bytes: &[u8], shards: usize) -> Result<Vec<RecordBatch>> {
    crate::state::file::decode(Bytes::copy_from_slice(bytes), FILE, shards)?
        .into_iter()
        .map(|part| crate::state::file::fold(&[part]).map(|state| state.rows))
        .collect()
}
