//! Bytes as a state file of a checkpoint with 1 to 4 shards (the first byte picks how many),
//! decoded and restored as a restart does: a state per shard, or an error naming the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewater::fuzzing::restore_state_file;

fuzz_target!(
    // Arrow's IPC reader panics on some malformed files; the engine catches those panics and
    // reports the file as damaged. libfuzzer-sys's own panic hook aborts before any unwinding, so
    // it would report them anyway: a quiet hook lets them unwind to the engine's guard. A panic that
    // escapes the engine still reaches the harness, which aborts on it.
    init: std::panic::set_hook(Box::new(|_| {})),
    |data: &[u8]| {
    let Some((&shards, file)) = data.split_first() else {
        return;
    };
    let shards = 1 + usize::from(shards % 4);
    if let Ok(states) = restore_state_file(file, shards) {
        assert_eq!(states.len(), shards, "one state per shard");
    }
    }
);
