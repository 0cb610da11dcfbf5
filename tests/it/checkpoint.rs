//! Checkpoints: a query restarted over its checkpoint goes on where it stopped, re-runs a batch
//! that was never committed, refuses a checkpoint it cannot use, and names damaged files.

use std::path::Path;

use crate::common::{push_json, query_rows, start};
use tidewater::StreamingSession;

/// The script of a running count per word in complete mode, checkpointed in `checkpoint`, into
/// the memory table `counts` (the memory sink starts empty after a restart, like the one it
/// replaces).
fn counts_script(checkpoint: &Path, extra: &str) -> String {
    format!(
        "DROP TABLE IF EXISTS counts;
         CREATE TABLE counts WITH (connector = 'memory', output_mode = 'complete',
           checkpoint_location = '{}'{extra});
         INSERT INTO counts SELECT word, count(*) AS n, sum(x) AS total FROM words GROUP BY word",
        checkpoint.display()
    )
}

/// Starts [`counts_script`].
async fn counts(session: &StreamingSession, checkpoint: &Path, extra: &str) -> tidewater::StreamingQuery {
    start(session, &counts_script(checkpoint, extra)).await
}

/// A session whose checkpoint `cp` (in the returned directory) holds one committed batch of the
/// running count, with `partitions` state shards.
async fn one_committed_batch(partitions: usize) -> (tempfile::TempDir, std::path::PathBuf, StreamingSession) {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("cp");
    let session = StreamingSession::new();
    words_stream(&session).await;
    let query = counts(&session, &checkpoint, &format!(", state_partitions = '{partitions}'")).await;
    push(&session, &[("a", 1)]);
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    (dir, checkpoint, session)
}

async fn words_stream(session: &StreamingSession) {
    session
        .sql("CREATE TABLE words (word VARCHAR, x INT) WITH (connector = 'memory')")
        .await
        .unwrap();
}

fn push(session: &StreamingSession, words: &[(&str, i32)]) {
    let lines: Vec<String> = words
        .iter()
        .map(|(w, x)| format!(r#"{{"word": "{w}", "x": {x}}}"#))
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    push_json(session, "words", &lines);
}

async fn table(session: &StreamingSession) -> Vec<String> {
    query_rows(session, "SELECT word, n, total FROM counts ORDER BY word").await
}

/// The files of a checkpoint folder, without the hidden ones (deleted files kept to be written
/// over).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_restarted_query_restores_its_state_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("cp");
    let session = StreamingSession::new();
    words_stream(&session).await;
    let query = counts(
        &session,
        &checkpoint,
        ", state_partitions = '2', state_snapshot_interval = '2'",
    )
    .await;
    for batch in 0..5 {
        push(
            &session,
            &[("a", batch), ("b", 1), (if batch % 2 == 0 { "c" } else { "a" }, 10)],
        );
        query.process_all_available().await.unwrap();
    }
    let before = table(&session).await;
    assert_eq!(before, ["a|7|30", "b|5|5", "c|3|30"]);
    let id = query.id();
    query.stop().await.unwrap();
    assert_eq!(entries(&checkpoint.join("commits")).len(), 5);
    assert_eq!(entries(&checkpoint.join("offsets")), ["0", "1", "2", "3", "4"]);

    // Rows that arrive while the query is down are read after the restart, once.
    push(&session, &[("b", 100), ("d", 1)]);
    let query = counts(&session, &checkpoint, "").await;
    assert_eq!(query.id(), id, "the query id comes from the checkpoint");
    query.process_all_available().await.unwrap();
    assert_eq!(table(&session).await, ["a|7|30", "b|6|105", "c|3|30", "d|1|1"]);
    assert_eq!(query.last_progress().unwrap().batch_id, 5);
    assert_eq!(query.last_progress().unwrap().num_input_rows, 2);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn a_batch_logged_but_not_committed_runs_again_as_logged() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("cp");
    let session = StreamingSession::new();
    words_stream(&session).await;
    let query = counts(&session, &checkpoint, ", state_partitions = '1'").await;
    push(&session, &[("a", 1)]);
    query.process_all_available().await.unwrap();
    push(&session, &[("a", 2), ("b", 3)]);
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    // As if the process died after logging batch 1 and writing its state, before the commit.
    std::fs::remove_file(checkpoint.join("commits").join("1")).unwrap();
    // Rows that came later are not part of batch 1: they make batch 2.
    push(&session, &[("b", 4)]);

    let query = counts(&session, &checkpoint, "").await;
    query.process_all_available().await.unwrap();
    let progress = query.recent_progress();
    assert_eq!(progress[0].batch_id, 1, "batch 1 runs again");
    assert_eq!(progress[0].num_input_rows, 2, "with exactly its logged rows");
    assert_eq!(progress[1].batch_id, 2);
    assert_eq!(progress[1].num_input_rows, 1);
    assert_eq!(table(&session).await, ["a|2|3", "b|2|7"]);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn a_changed_query_that_no_longer_fits_its_state_is_refused_naming_the_change() {
    let (_dir, checkpoint, session) = one_committed_batch(2).await;

    let location = checkpoint.display();
    for (sql, expected) in [
        (
            format!(
                "CREATE TABLE t1 WITH (connector = 'memory', output_mode = 'complete', checkpoint_location = '{location}');
                 INSERT INTO t1 SELECT x, count(*) AS n, sum(x) AS total FROM words GROUP BY x"
            ),
            "stateful operator 0: the group keys changed from [word Utf8] to [x Int32]",
        ),
        (
            format!(
                "CREATE TABLE t2 WITH (connector = 'memory', output_mode = 'complete', checkpoint_location = '{location}');
                 INSERT INTO t2 SELECT word, count(*) AS n, max(x) AS total FROM words GROUP BY word"
            ),
            "the aggregates changed",
        ),
        (
            format!(
                "CREATE TABLE t3 WITH (connector = 'memory', output_mode = 'complete', state_partitions = '3',
                   checkpoint_location = '{location}');
                 INSERT INTO t3 SELECT word, count(*) AS n, sum(x) AS total FROM words GROUP BY word"
            ),
            "state_partitions changed from 2 to 3",
        ),
        (
            format!(
                "CREATE TABLE t4 WITH (connector = 'memory', checkpoint_location = '{location}');
                 INSERT INTO t4 SELECT upper(word) FROM words"
            ),
            "changed from state to no state",
        ),
        // A deduplication before the aggregation: another chain of operators.
        (
            format!(
                "CREATE TABLE t6 WITH (connector = 'memory', output_mode = 'complete', checkpoint_location = '{location}');
                 INSERT INTO t6 SELECT word, count(*) AS n, sum(x) AS total FROM (SELECT DISTINCT word, x FROM words) GROUP BY word"
            ),
            "the stateful operators changed from [StatefulAggregate: keys [word], aggregates [count(Int64(1)), \
             sum(words.x)]] to [Deduplicate: keys [word, x], no watermarked key",
        ),
    ] {
        let error = session.run_script(&sql).await.expect_err(&sql).to_string();
        assert!(error.contains(expected), "{sql}\n  gave: {error}\n  expected: {expected}");
        assert!(error.contains("cp/metadata"), "names the checkpoint: {error}");
    }

    // Another projection after the aggregation and another trigger keep the state usable.
    let query = start(
        &session,
        &format!(
            "CREATE TABLE t5 WITH (connector = 'memory', output_mode = 'complete', trigger = '50 milliseconds',
               checkpoint_location = '{location}');
             INSERT INTO t5 SELECT upper(word) AS w, n * 10 AS n10 FROM
               (SELECT word, count(*) AS n, sum(x) AS total FROM words GROUP BY word)"
        ),
    )
    .await;
    push(&session, &[("a", 1)]);
    query.process_all_available().await.unwrap();
    assert_eq!(query_rows(&session, "SELECT * FROM t5").await, ["A|20"]);
    query.stop().await.unwrap();
}

/// The error a restart over `checkpoint` stops with, whether at start or in its first batch.
async fn restart_error(session: &StreamingSession, checkpoint: &Path) -> String {
    match session.run_script(&counts_script(checkpoint, "")).await {
        Err(error) => error.to_string(),
        Ok(outcomes) => match outcomes.into_iter().last() {
            Some(tidewater::StatementOutcome::Started(query)) => {
                let error = query.await_termination(None).await.expect_err("a damaged checkpoint");
                error.to_string()
            }
            other => panic!("no query started: {other:?}"),
        },
    }
}

#[tokio::test]
async fn damaged_checkpoint_files_are_errors_naming_the_file() {
    let (_dir, checkpoint, session) = one_committed_batch(1).await;
    let delta = checkpoint.join("state/0/0.delta");
    let bytes = std::fs::read(&delta).unwrap();

    // A truncated state file: the query fails naming it, and nothing starts afresh.
    std::fs::write(&delta, &bytes[..bytes.len() / 2]).unwrap();
    let error = restart_error(&session, &checkpoint).await;
    assert!(
        error.contains("state/0/0.delta") && error.contains("cut short"),
        "{error}"
    );

    // One changed byte anywhere in it (a count of 1 could read back as another number): caught
    // by its checksum before anything reads it.
    for at in (0..bytes.len()).step_by(97) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x02;
        std::fs::write(&delta, &damaged).unwrap();
        let error = restart_error(&session, &checkpoint).await;
        assert!(error.contains("state/0/0.delta"), "byte {at}: {error}");
    }
    std::fs::write(&delta, &bytes).unwrap();

    // A damaged offsets entry: refused at start.
    let offsets = std::fs::read(checkpoint.join("offsets/0")).unwrap();
    std::fs::write(checkpoint.join("offsets/0"), b"{ not json").unwrap();
    let error = restart_error(&session, &checkpoint).await;
    assert!(error.contains("offsets/0") && error.contains("damaged"), "{error}");

    // An entry copied into another's place names what it is a copy of.
    std::fs::write(checkpoint.join("offsets/0"), &offsets).unwrap();
    std::fs::copy(checkpoint.join("offsets/0"), checkpoint.join("offsets/1")).unwrap();
    let error = restart_error(&session, &checkpoint).await;
    assert!(
        error.contains("offsets/1") && error.contains("copy of 'offsets/0'"),
        "{error}"
    );
    std::fs::remove_file(checkpoint.join("offsets/1")).unwrap();

    // Commits without offsets: not a state a crash leaves, so an error too.
    std::fs::remove_file(checkpoint.join("offsets/0")).unwrap();
    let error = restart_error(&session, &checkpoint).await;
    assert!(error.contains("offsets log is empty"), "{error}");
    std::fs::write(checkpoint.join("offsets/0"), &offsets).unwrap();

    // Without its metadata the checkpoint is damaged, not new: a new query id would make the
    // sinks take its replayed batches for new ones.
    let metadata = std::fs::read(checkpoint.join("metadata")).unwrap();
    std::fs::remove_file(checkpoint.join("metadata")).unwrap();
    let error = restart_error(&session, &checkpoint).await;
    assert!(
        error.contains("cp/metadata") && error.contains("missing, but the checkpoint holds offsets/0"),
        "{error}"
    );
    assert!(!checkpoint.join("metadata").exists(), "nothing written over it");
    std::fs::write(checkpoint.join("metadata"), &metadata).unwrap();

    // Put back as it was, the checkpoint restores.
    let query = counts(&session, &checkpoint, "").await;
    push(&session, &[("a", 2)]);
    query.process_all_available().await.unwrap();
    assert_eq!(table(&session).await, ["a|2|3"]);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn a_checkpoint_of_a_query_with_other_sources_is_refused_naming_them() {
    let (dir, checkpoint, session) = one_committed_batch(1).await;
    // The same query over another stream with the same columns.
    session
        .sql("CREATE TABLE other_words (word VARCHAR, x INT) WITH (connector = 'memory')")
        .await
        .unwrap();
    let script = counts_script(&checkpoint, "").replace("FROM words", "FROM other_words");
    let error = session
        .run_script(&script)
        .await
        .expect_err("other sources")
        .to_string();
    assert!(
        error.contains("the streams read changed from [MemoryStream[words]] to [MemoryStream[other_words]]"),
        "{error}"
    );

    // A rate stream's checkpoint reused by a files stream: the files would never be read.
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let rate = dir.path().join("rate");
    let run = |source: String| {
        format!(
            "DROP TABLE IF EXISTS src; DROP TABLE IF EXISTS out;
             {source};
             CREATE TABLE out WITH (connector = 'memory', checkpoint_location = '{}', trigger = 'once');
             INSERT INTO out SELECT value FROM src",
            rate.display()
        )
    };
    let query = start(
        &session,
        &run("CREATE TABLE src WITH (connector = 'rate', rows_per_second = '1000')".into()),
    )
    .await;
    query.await_termination(None).await.unwrap();
    let error = session
        .run_script(&run(format!(
            "CREATE TABLE src (value BIGINT) WITH (connector = 'files', format = 'json', path = '{}')",
            input.display()
        )))
        .await
        .expect_err("a rate checkpoint for a files query")
        .to_string();
    assert!(
        error.contains("the streams read changed from [RateSource] to [FilesSource["),
        "{error}"
    );
    // Another rate is the same source, paced differently: fine.
    let query = start(
        &session,
        &run("CREATE TABLE src WITH (connector = 'rate', rows_per_second = '5')".into()),
    )
    .await;
    query.await_termination(None).await.unwrap();
}

#[tokio::test]
async fn a_files_source_whose_log_was_deleted_is_refused_instead_of_reading_files_again() {
    let dir = tempfile::tempdir().unwrap();
    let (input, checkpoint) = (dir.path().join("in"), dir.path().join("cp"));
    std::fs::create_dir(&input).unwrap();
    crate::common::drop_file(&input, "a.json", b"{\"n\": 1}\n");
    crate::common::drop_file(&input, "b.json", b"{\"n\": 2}\n");
    read_new_files(&input, &checkpoint).await;

    for damage in ["the whole log", "its latest entry"] {
        let log = checkpoint.join("sources/0");
        let saved: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();
        match damage {
            "the whole log" => std::fs::remove_dir_all(&log).unwrap(),
            _ => std::fs::remove_file(log.join("1")).unwrap(),
        }
        let (_session, query) = start_reading(&input, &checkpoint).await;
        let error = query.await_termination(None).await.expect_err(damage).to_string();
        assert!(
            error.contains("sources/0") && error.contains("where the offsets log says 2 were read"),
            "{damage}: {error}"
        );
        std::fs::create_dir_all(&log).unwrap();
        for (path, bytes) in saved {
            std::fs::write(path, bytes).unwrap();
        }
    }
    // Restored, it reads only what is new.
    crate::common::drop_file(&input, "c.json", b"{\"n\": 3}\n");
    assert_eq!(read_new_files(&input, &checkpoint).await, (vec!["3".into()], 2));
}

#[tokio::test]
async fn a_memory_stream_in_a_new_process_is_read_from_its_first_row_and_a_lost_batch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("cp");
    let first = StreamingSession::new();
    words_stream(&first).await;
    let query = counts(&first, &checkpoint, ", state_partitions = '1'").await;
    push(&first, &[("a", 1)]);
    push(&first, &[("b", 1)]);
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();

    // A new process: a new, empty memory stream. None of its rows is skipped, though the
    // checkpoint's offsets say two batches were read (of the old stream).
    let second = StreamingSession::new();
    words_stream(&second).await;
    let query = counts(&second, &checkpoint, "").await;
    push(&second, &[("a", 10)]);
    query.process_all_available().await.unwrap();
    assert_eq!(table(&second).await, ["a|2|11", "b|1|1"]);
    push(&second, &[("c", 1)]);
    query.process_all_available().await.unwrap();
    assert_eq!(table(&second).await, ["a|2|11", "b|1|1", "c|1|1"]);
    query.stop().await.unwrap();

    // A batch logged but never committed cannot run again in a third process: its rows are gone.
    std::fs::remove_file(checkpoint.join("commits/2")).unwrap();
    let third = StreamingSession::new();
    words_stream(&third).await;
    let query = counts(&third, &checkpoint, "").await;
    let error = query.await_termination(None).await.expect_err("lost rows").to_string();
    assert!(
        error.contains("MemoryStream[words]") && error.contains("they are gone"),
        "{error}"
    );
}

#[tokio::test]
async fn old_checkpoint_files_are_cleaned_up_and_the_rest_still_restores() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("cp");
    let session = StreamingSession::new();
    words_stream(&session).await;
    let options = ", state_partitions = '1', state_snapshot_interval = '3', min_batches_to_retain = '4'";
    let query = counts(&session, &checkpoint, options).await;
    let mut expected = std::collections::BTreeMap::new();
    for batch in 0..31 {
        let word = ["a", "b", "c", "d", "e"][batch % 5];
        push(&session, &[(word, batch as i32)]);
        let entry = expected.entry(word).or_insert((0, 0));
        *entry = (entry.0 + 1, entry.1 + batch as i32);
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    let offsets = entries(&checkpoint.join("offsets"));
    assert!(
        offsets.len() <= 14 && offsets.contains(&"30".to_string()),
        "{offsets:?}"
    );
    let state = entries(&checkpoint.join("state/0"));
    // Snapshots are made in the background (one at a time), so where they fall varies a little;
    // files that no version from the retained ones needs are gone either way.
    let versions: Vec<u64> = state
        .iter()
        .map(|f| f.split('.').next().unwrap().parse().unwrap())
        .collect();
    assert!(versions.iter().all(|v| *v >= 12), "old state files deleted: {state:?}");
    assert!(state.iter().any(|f| f.ends_with(".snapshot")), "{state:?}");

    let query = counts(&session, &checkpoint, options).await;
    push(&session, &[("a", 1000)]);
    query.process_all_available().await.unwrap();
    expected.get_mut("a").map(|e| *e = (e.0 + 1, e.1 + 1000)).unwrap();
    let want: Vec<String> = expected.iter().map(|(w, (n, t))| format!("{w}|{n}|{t}")).collect();
    assert_eq!(table(&session).await, want);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn a_memory_url_checkpoint_lives_as_long_as_the_session() {
    let session = StreamingSession::new();
    words_stream(&session).await;
    let sql = "CREATE TABLE counts WITH (connector = 'memory', output_mode = 'complete',
                 checkpoint_location = 'memory:///checkpoints/words');
               INSERT INTO counts SELECT word, count(*) AS n, sum(x) AS total FROM words GROUP BY word";
    let query = start(&session, sql).await;
    push(&session, &[("a", 1)]);
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    session.sql("DROP TABLE counts").await.unwrap();
    let query = start(&session, sql).await;
    push(&session, &[("a", 2)]);
    query.process_all_available().await.unwrap();
    assert_eq!(table(&session).await, ["a|2|3"]);
    query.stop().await.unwrap();
}

/// Starts reading the files of `input` one per batch into memory table `seen`, through the
/// DataFrame API with Spark's option names.
async fn start_reading(input: &Path, checkpoint: &Path) -> (StreamingSession, tidewater::StreamingQuery) {
    let session = StreamingSession::new();
    let schema = std::sync::Arc::new(tidewater::arrow::datatypes::Schema::new(vec![
        tidewater::arrow::datatypes::Field::new("n", tidewater::arrow::datatypes::DataType::Int64, true),
    ]));
    let query = session
        .read_stream()
        .format("json")
        .schema(schema)
        .option("maxFilesPerTrigger", 1)
        .load(&input.display().to_string())
        .await
        .unwrap()
        .write_stream()
        .format("memory")
        .query_name("seen")
        .option("checkpointLocation", checkpoint.display())
        .trigger(tidewater::Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    (session, query)
}

/// The files each run reads from `input` (see [`start_reading`]), and its last batch id.
async fn read_new_files(input: &Path, checkpoint: &Path) -> (Vec<String>, u64) {
    let (session, query) = start_reading(input, checkpoint).await;
    assert!(query.await_termination(None).await.unwrap());
    let last_batch = query.last_progress().map_or(0, |p| p.batch_id);
    (query_rows(&session, "SELECT n FROM seen ORDER BY n").await, last_batch)
}

#[tokio::test]
async fn a_files_source_never_reads_a_file_twice_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (input, checkpoint) = (dir.path().join("in"), dir.path().join("cp"));
    std::fs::create_dir(&input).unwrap();
    crate::common::drop_file(&input, "a.json", b"{\"n\": 1}\n{\"n\": 2}\n");
    crate::common::drop_file(&input, "b.json", b"{\"n\": 3}\n");
    assert_eq!(
        read_new_files(&input, &checkpoint).await,
        (vec!["1".into(), "2".into(), "3".into()], 1)
    );

    // A new file, and an old one written again under the same name: only the new one is read.
    crate::common::drop_file(&input, "c.json", b"{\"n\": 4}\n");
    crate::common::drop_file(&input, "a.json", b"{\"n\": 100}\n");
    assert_eq!(read_new_files(&input, &checkpoint).await, (vec!["4".into()], 2));
    let logged = entries(&checkpoint.join("sources/0"));
    assert_eq!(
        logged,
        ["0.compact", "1", "2"],
        "the source's own log of files per batch"
    );
}

#[tokio::test]
async fn exactly_once_sinks_need_a_checkpoint_and_other_queries_get_a_temporary_one() {
    let dir = tempfile::tempdir().unwrap();
    let session = StreamingSession::new();
    words_stream(&session).await;
    for (sink, location) in [
        (
            format!("connector = 'files', path = '{}'", dir.path().join("out").display()),
            "",
        ),
        (
            format!(
                "connector = 'database', url = 'sqlite://{}', table = 't'",
                dir.path().join("db").display()
            ),
            ", checkpoint_location = 'none'",
        ),
    ] {
        let error = session
            .sql(&format!("CREATE TABLE s WITH ({sink}{location})"))
            .await
            .expect_err("an exactly-once sink without a checkpoint")
            .to_string();
        assert!(error.contains("needs option 'checkpoint_location'"), "{error}");
    }

    // A memory sink without a location checkpoints into a temporary directory, removed at the end.
    let query = start(
        &session,
        "CREATE TABLE plain WITH (connector = 'memory', output_mode = 'complete');
         INSERT INTO plain SELECT word, count(*) AS n FROM words GROUP BY word",
    )
    .await;
    push(&session, &[("a", 1)]);
    query.process_all_available().await.unwrap();
    let temporary: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("tidewater-checkpoint-"))
        .map(|e| e.path())
        .filter(|p| {
            p.join("metadata").exists()
                && std::fs::read_to_string(p.join("metadata"))
                    .unwrap()
                    .contains(query.id())
        })
        .collect();
    assert_eq!(temporary.len(), 1, "one temporary checkpoint for the query");
    query.stop().await.unwrap();
    assert!(!temporary[0].exists(), "removed when the query stopped");
}

/// State files whose checksum holds but that arrow's IPC reader cannot read, found by the
/// `state_file` fuzz target: one makes the reader panic, one makes it allocate 71 PB (which would
/// abort the process), one declares a type arrow panics on when it builds arrays. A restart must
/// report the file as damaged instead of crashing.
#[tokio::test]
async fn a_state_file_arrow_cannot_read_is_an_error_naming_it_not_a_crash() {
    let fixtures: [(usize, &[u8]); 3] = [
        (2, include_bytes!("fixtures/arrow_reader_panic.state")),
        (1, include_bytes!("fixtures/arrow_reader_huge_block.state")),
        (2, include_bytes!("fixtures/arrow_reader_bad_type.state")),
    ];
    for (shards, content) in fixtures {
        let (_dir, checkpoint, session) = one_committed_batch(shards).await;
        let name = "state/0/0.delta";
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(content);
        let mut file = content.to_vec();
        file.extend_from_slice(format!("\n#tidewater {} {crc:08x} {name}\n", content.len()).as_bytes());
        std::fs::write(checkpoint.join(name), file).unwrap();
        let error = restart_error(&session, &checkpoint).await;
        assert!(error.contains(name) && error.contains("damaged"), "{error}");
    }
}

/// A checkpoint file's content: all but its last line, the seal with its name and checksum.
fn unsealed(file: &[u8]) -> Vec<u8> {
    let body = file.strip_suffix(b"\n").unwrap();
    let seal = body.iter().rposition(|b| *b == b'\n').unwrap();
    assert!(body[seal + 1..].starts_with(b"#tidewater "), "a sealed file");
    body[..seal].to_vec()
}

/// The rows of a one-shard state file and the buckets it removes (as written in its metadata).
fn state_file(path: &Path) -> (usize, String) {
    let file = unsealed(&std::fs::read(path).unwrap());
    let reader = tidewater::arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(file), None).unwrap();
    let shards: serde_json::Value = serde_json::from_str(&reader.custom_metadata()["tidewater.shards"]).unwrap();
    let [shard] = shards.as_array().unwrap().as_slice() else {
        panic!("one shard: {shards}")
    };
    let removed = shard["removed"].to_string();
    (reader.map(|batch| batch.unwrap().num_rows()).sum(), removed)
}

#[tokio::test]
async fn session_windows_checkpoint_only_the_sessions_a_batch_changed() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("cp");
    let session = StreamingSession::new();
    session
        .sql("CREATE TABLE clicks (user VARCHAR, time TIMESTAMP) WITH (connector = 'memory')")
        .await
        .unwrap();
    let script = format!(
        "DROP TABLE IF EXISTS visits;
         CREATE TABLE visits WITH (connector = 'memory', output_mode = 'complete',
           checkpoint_location = '{}', state_partitions = '1');
         INSERT INTO visits SELECT user, session_window(time, '10 minutes') AS s, count(*) AS n
         FROM clicks GROUP BY user, session_window(time, '10 minutes')",
        checkpoint.display()
    );
    let clicks = |clicks: &[(&str, &str)]| {
        let lines: Vec<String> = clicks
            .iter()
            .map(|(user, minute)| format!(r#"{{"user": "{user}", "time": "2024-01-01T00:{minute}:00"}}"#))
            .collect();
        push_json(
            &session,
            "clicks",
            &lines.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    };
    let query = start(&session, &script).await;
    let users: Vec<String> = (0..10).map(|u| format!("u{u}")).collect();
    clicks(&users.iter().map(|u| (u.as_str(), "00")).collect::<Vec<_>>());
    query.process_all_available().await.unwrap();
    // u0's session grows; u1 starts a second session; then clicks join u1's two sessions.
    for batch in [
        &[("u0", "05")][..],
        &[("u1", "30")],
        &[("u1", "09"), ("u1", "18"), ("u1", "27")],
    ] {
        clicks(batch);
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();

    let state = checkpoint.join("state/0");
    assert_eq!(entries(&state), ["0.delta", "1.delta", "2.delta", "3.delta"]);
    let deltas: Vec<(usize, String)> = (0..4).map(|v| state_file(&state.join(format!("{v}.delta")))).collect();
    // Sessions are numbered 0..=9, then 10 for u1's second one, which the join removes: the
    // joined session goes on under u1's first number.
    assert_eq!(
        deltas,
        [
            (10, "[]".to_string()),
            (1, "[]".into()),
            (1, "[]".into()),
            (1, "[10]".into())
        ]
    );

    let query = start(&session, &script).await;
    clicks(&[("u2", "05")]);
    query.process_all_available().await.unwrap();
    let visits = query_rows(
        &session,
        "SELECT user, date_format(s['start'], '%H:%M'), date_format(s['end'], '%H:%M'), n FROM visits ORDER BY user",
    )
    .await;
    let mut expected = vec!["u0|00:00|00:15|2", "u1|00:00|00:40|5", "u2|00:00|00:15|2"];
    let rest: Vec<String> = (3..10).map(|u| format!("u{u}|00:00|00:10|1")).collect();
    expected.extend(rest.iter().map(String::as_str));
    assert_eq!(visits, expected);
    query.stop().await.unwrap();
}
