//! Bytes as a checkpoint's metadata, offsets or commits file (the first byte picks which), read as
//! a restart reads them. What reads must write back as a file that reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewater::fuzzing::{CheckpointFile, read_checkpoint_file};

const KINDS: [CheckpointFile; 3] = [
    CheckpointFile::Metadata,
    CheckpointFile::Offsets,
    CheckpointFile::Commits,
];

fuzz_target!(|data: &[u8]| {
    let Some((&kind, file)) = data.split_first() else {
        return;
    };
    let kind = KINDS[usize::from(kind) % KINDS.len()];
    if let Ok(written) = read_checkpoint_file(kind, file) {
        let again = read_checkpoint_file(kind, &written).expect("a file the checkpoint wrote reads back");
        assert_eq!(written, again, "reading and writing again changed the file");
    }
});
