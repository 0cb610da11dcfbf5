//! The files sink over real directories: each format read back with `CREATE EXTERNAL TABLE`,
//! partitioning, replays, leftovers of crashed batches, complete mode, refused update mode, and
//! a files stream over a sink's output.

use std::path::Path;

use crate::common::{drop_file, push_json, query_rows, start};
use tidewater::{OutputMode, StreamingSession};

/// Every data file under `dir` (not the manifest's), relative, `/`-separated, sorted.
fn data_files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("_tidewater_metadata") {
                    walk(root, &path, out);
                }
            } else {
                let relative = path.strip_prefix(root).unwrap();
                let parts: Vec<_> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                out.push(parts.join("/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The data files with their random part blanked: `part-00000-*.parquet`.
fn shapes(dir: &Path) -> Vec<String> {
    data_files(dir)
        .into_iter()
        .map(|f| {
            let (directory, name) = f.rsplit_once('/').map_or(("", f.as_str()), |(d, n)| (d, n));
            let (_, extension) = name.rsplit_once('.').unwrap();
            let shape = format!("{}*.{extension}", &name[..11]);
            match directory {
                "" => shape,
                d => format!("{d}/{shape}"),
            }
        })
        .collect()
}

/// `events (n INT, action VARCHAR, amount DOUBLE)` as a memory stream, and a files sink `out`
/// over `dir` with `options`, with `INSERT INTO out <select>` started.
async fn memory_to_files(
    dir: &Path,
    checkpoint: &Path,
    options: &str,
    select: &str,
) -> (StreamingSession, tidewater::StreamingQuery) {
    let session = StreamingSession::new();
    let sql = format!(
        "CREATE TABLE events (n INT, action VARCHAR, amount DOUBLE) WITH (connector = 'memory');
         CREATE TABLE out WITH (connector = 'files', path = '{}', checkpoint_location = '{}', {options});
         INSERT INTO out {select}",
        dir.display(),
        checkpoint.display()
    );
    let query = start(&session, &sql).await;
    (session, query)
}

#[tokio::test]
async fn each_format_round_trips_through_create_external_table() {
    for format in ["parquet", "csv", "json"] {
        let (dir, checkpoint) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (session, query) = memory_to_files(
            dir.path(),
            checkpoint.path(),
            &format!("format = '{format}'"),
            "SELECT n, upper(action) AS action, amount FROM events",
        )
        .await;
        push_json(
            &session,
            "events",
            &[
                r#"{"n": 1, "action": "open", "amount": 1.5}"#,
                r#"{"n": 2, "amount": 2.25}"#,
            ],
        );
        query.process_all_available().await.unwrap();
        push_json(
            &session,
            "events",
            &[r#"{"n": 3, "action": "a, \"quoted\" one", "amount": -3.0}"#],
        );
        query.process_all_available().await.unwrap();
        query.stop().await.unwrap();
        assert_eq!(
            shapes(dir.path()),
            [format!("part-00000-*.{format}"), format!("part-00001-*.{format}")],
            "{format}"
        );

        let reader = StreamingSession::new();
        reader
            .sql(&format!(
                "CREATE EXTERNAL TABLE t STORED AS {format} LOCATION '{}'",
                dir.path().display()
            ))
            .await
            .unwrap();
        assert_eq!(
            query_rows(&reader, "SELECT n, action, amount FROM t ORDER BY n").await,
            ["1|OPEN|1.5", "2|NULL|2.25", r#"3|A, "QUOTED" ONE|-3.0"#],
            "{format}"
        );
    }
}

#[tokio::test]
async fn the_dataframe_writer_takes_parquet_as_the_files_sink() {
    let (dir, checkpoint) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let session = StreamingSession::new();
    session
        .sql("CREATE TABLE events (n INT, action VARCHAR) WITH (connector = 'memory')")
        .await
        .unwrap();
    let query = session
        .stream("events")
        .await
        .unwrap()
        .write_stream()
        .format("parquet")
        .option("path", dir.path().display())
        .option("checkpoint_location", checkpoint.path().display())
        .option("partition_by", "action")
        .start()
        .await
        .unwrap();
    push_json(
        &session,
        "events",
        &[r#"{"n": 1, "action": "open"}"#, r#"{"n": 2, "action": "close"}"#],
    );
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        shapes(dir.path()),
        ["action=close/part-00000-*.parquet", "action=open/part-00000-*.parquet"]
    );
    assert!(query.last_progress().unwrap().sink.description.starts_with("FileSink["));

    // Writing needs a checkpoint location, so a restarted query continues its batch ids.
    let error = session
        .stream("events")
        .await
        .unwrap()
        .write_stream()
        .format("json")
        .option("path", dir.path().display())
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("checkpoint_location"), "{error}");
}

#[tokio::test]
async fn partitioned_output_goes_to_escaped_hive_directories_without_the_partition_columns() {
    let (dir, checkpoint) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (session, query) = memory_to_files(
        dir.path(),
        checkpoint.path(),
        "format = 'parquet', partition_by = 'day, action'",
        "SELECT n, CAST('2024-01-0' || CAST(n % 2 + 1 AS VARCHAR) AS DATE) AS day, action FROM events",
    )
    .await;
    push_json(
        &session,
        "events",
        &[
            r#"{"n": 1, "action": "open"}"#,
            r#"{"n": 2, "action": "b:c=d"}"#,
            r#"{"n": 3, "action": "open"}"#,
            r#"{"n": 4}"#,
        ],
    );
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        shapes(dir.path()),
        [
            "day=2024-01-01/action=__HIVE_DEFAULT_PARTITION__/part-00000-*.parquet",
            "day=2024-01-01/action=b%3Ac%3Dd/part-00000-*.parquet",
            "day=2024-01-02/action=open/part-00000-*.parquet",
        ]
    );

    // The files hold only `n`; the directories give day and action back.
    let reader = StreamingSession::new();
    reader
        .sql(&format!(
            "CREATE EXTERNAL TABLE t (n INT, day DATE, action VARCHAR) STORED AS PARQUET
             PARTITIONED BY (day, action) LOCATION '{}'",
            dir.path().display()
        ))
        .await
        .unwrap();
    assert_eq!(
        query_rows(&reader, "SELECT n, day, action FROM t WHERE n <> 4 ORDER BY n").await,
        ["1|2024-01-02|open", "2|2024-01-01|b:c=d", "3|2024-01-02|open"]
    );
    // Filters on partition columns find Hive-escaped directories.
    assert_eq!(
        query_rows(
            &reader,
            "SELECT n FROM t WHERE day = DATE '2024-01-01' AND action = 'b:c=d'"
        )
        .await,
        ["2"]
    );
    assert_eq!(
        query_rows(&reader, "SELECT count(*) FROM t WHERE day = DATE '2024-01-02'").await,
        ["2"]
    );
    // DataFusion reads a null partition as Hive's directory name, not as null.
    assert_eq!(
        query_rows(&reader, "SELECT action FROM t WHERE n = 4").await,
        ["__HIVE_DEFAULT_PARTITION__"]
    );
    let file = data_files(dir.path()).remove(0);
    reader
        .sql(&format!(
            "CREATE EXTERNAL TABLE one_file STORED AS PARQUET LOCATION '{}'",
            dir.path().join(file).display()
        ))
        .await
        .unwrap();
    let frame = reader.sql("SELECT * FROM one_file").await.unwrap();
    let columns: Vec<&String> = frame.schema().fields().iter().map(|f| f.name()).collect();
    assert_eq!(columns, ["n"]);
}

#[tokio::test]
async fn an_unknown_partition_column_is_named_with_the_columns_there_are() {
    let (dir, checkpoint) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let session = StreamingSession::new();
    let error = session
        .run_script(&format!(
            "CREATE TABLE events (n INT, action VARCHAR) WITH (connector = 'memory');
             CREATE TABLE out WITH (connector = 'files', path = '{}', checkpoint_location = '{}', partition_by = 'dya');
             INSERT INTO out SELECT * FROM events",
            dir.path().display(),
            checkpoint.path().display()
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("statement 3") && error.contains("'dya'") && error.contains("its columns are: n, action"),
        "{error}"
    );
}

#[tokio::test]
async fn update_mode_is_refused_saying_what_to_use_instead() {
    let (dir, checkpoint) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let session = StreamingSession::new();
    let error = session
        .sql(&format!(
            "CREATE TABLE out WITH (connector = 'files', path = '{}', checkpoint_location = '{}', output_mode = 'update')",
            dir.path().display(),
            checkpoint.path().display()
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("output_mode 'update'") && error.contains("'append'") && error.contains("'complete'"),
        "{error}"
    );

    // The DataFrame API sets the mode after the options: refused when the query starts.
    session
        .sql("CREATE TABLE events (n INT) WITH (connector = 'memory')")
        .await
        .unwrap();
    let error = session
        .stream("events")
        .await
        .unwrap()
        .write_stream()
        .format("csv")
        .option("path", dir.path().display())
        .option("checkpoint_location", checkpoint.path().display())
        .output_mode(OutputMode::Update)
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("output_mode 'update'"), "{error}");
    assert!(data_files(dir.path()).is_empty());
}

#[tokio::test]
async fn complete_mode_leaves_only_the_latest_table() {
    let (dir, checkpoint) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (session, query) = memory_to_files(
        dir.path(),
        checkpoint.path(),
        "format = 'json', output_mode = 'complete'",
        "SELECT action, count(*) AS n FROM events GROUP BY action",
    )
    .await;
    push_json(&session, "events", &[r#"{"action": "open"}"#, r#"{"action": "close"}"#]);
    query.process_all_available().await.unwrap();
    push_json(&session, "events", &[r#"{"action": "open"}"#]);
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(shapes(dir.path()), ["part-00001-*.json"]);

    let reader = StreamingSession::new();
    reader
        .sql(&format!(
            "CREATE EXTERNAL TABLE t STORED AS JSON LOCATION '{}'",
            dir.path().display()
        ))
        .await
        .unwrap();
    assert_eq!(
        query_rows(&reader, "SELECT action, n FROM t ORDER BY action").await,
        ["close|1", "open|2"]
    );
}

/// Input `in/` of JSON files, copied by `INSERT INTO out SELECT * FROM input` into a files sink
/// `out/`, one batch per input file; returns the query once it is done.
async fn copy_files(input: &Path, output: &Path, checkpoint: &Path) -> tidewater::StreamingQuery {
    let session = StreamingSession::new();
    let query = start(
        &session,
        &format!(
            "CREATE TABLE input (n INT, action VARCHAR) WITH (connector = 'files', format = 'json', path = '{}',
               max_files_per_trigger = '1');
             CREATE TABLE out WITH (connector = 'files', format = 'parquet', path = '{}', partition_by = 'action',
               checkpoint_location = '{}', trigger = 'available_now');
             INSERT INTO out SELECT * FROM input",
            input.display(),
            output.display(),
            checkpoint.display()
        ),
    )
    .await;
    assert!(query.await_termination(None).await.unwrap());
    query
}

#[tokio::test]
async fn a_replayed_batch_adds_nothing_and_a_crashed_batch_is_invisible_then_deleted() {
    let (input, output) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    drop_file(
        input.path(),
        "1.json",
        b"{\"n\": 1, \"action\": \"open\"}\n{\"n\": 2, \"action\": \"close\"}\n",
    );
    let (checkpoint, lost_checkpoint) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = copy_files(input.path(), output.path(), checkpoint.path()).await;
    assert_eq!(first.last_progress().unwrap().sink.num_output_rows, 2);
    let committed = data_files(output.path());

    // A batch that crashed after writing a data file: a copy of a committed one under a fresh name.
    let crashed = "action=open/part-00001-3f2504e0-4f89-11d3-9a0c-0305e82c3301.parquet";
    std::fs::copy(output.path().join(&committed[1]), output.path().join(crashed)).unwrap();
    let reader = StreamingSession::new();
    reader
        .sql(&format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET PARTITIONED BY (action) LOCATION '{}'",
            output.path().display()
        ))
        .await
        .unwrap();
    let all = "SELECT n, action FROM t ORDER BY n";
    assert_eq!(query_rows(&reader, all).await, ["1|open", "2|close"]);

    // The same batch again (a restart that lost its checkpoint re-runs batch 0 on the same input):
    // nothing is written, and the crashed batch's file is deleted.
    let replay = copy_files(input.path(), output.path(), lost_checkpoint.path()).await;
    assert_eq!(replay.last_progress().unwrap().sink.num_output_rows, 0);
    assert_eq!(data_files(output.path()), committed);
    assert_eq!(query_rows(&reader, all).await, ["1|open", "2|close"]);
}

#[tokio::test]
async fn a_files_stream_over_a_sink_directory_reads_committed_batches_once_in_order() {
    let (input, output) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    drop_file(
        input.path(),
        "1.json",
        b"{\"n\": 1, \"action\": \"open\"}\n{\"n\": 2}\n",
    );
    drop_file(input.path(), "2.json", b"{\"n\": 3, \"action\": \"close\"}\n");
    let checkpoint = tempfile::tempdir().unwrap();
    copy_files(input.path(), output.path(), checkpoint.path()).await;
    // Files no manifest entry lists: a crashed batch, and files of a batch still being written.
    let crashed = "action=open/part-00002-3f2504e0-4f89-11d3-9a0c-0305e82c3301.parquet";
    let any_committed = data_files(output.path()).remove(0);
    std::fs::copy(output.path().join(&any_committed), output.path().join(crashed)).unwrap();

    let session = StreamingSession::new();
    let query = start(
        &session,
        &format!(
            "CREATE TABLE copied (n INT, action VARCHAR) WITH (connector = 'files', format = 'parquet', path = '{}');
             CREATE TABLE seen WITH (connector = 'memory');
             INSERT INTO seen SELECT n, action FROM copied",
            output.path().display()
        ),
    )
    .await;
    query.process_all_available().await.unwrap();
    // Batch 0's files, then batch 1's; the partition column comes from the directories.
    assert_eq!(
        query_rows(&session, "SELECT * FROM seen").await,
        ["1|open", "2|NULL", "3|close"]
    );

    // A batch committed later is read once, by the running query.
    drop_file(input.path(), "3.json", b"{\"n\": 4, \"action\": \"open\"}\n");
    copy_files(input.path(), output.path(), checkpoint.path()).await;
    query.process_all_available().await.unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(
        query_rows(&session, "SELECT * FROM seen").await,
        ["1|open", "2|NULL", "3|close", "4|open"]
    );
    query.stop().await.unwrap();
}

#[tokio::test]
async fn a_files_sink_writing_where_its_source_reads_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for (case, sink_dir) in [input.clone(), input.join("out"), dir.path().to_path_buf()]
        .iter()
        .enumerate()
    {
        let checkpoint = dir.path().join(format!("checkpoint-{case}"));
        let error = start_error(
            &input.display().to_string(),
            &sink_dir.display().to_string(),
            &checkpoint,
        )
        .await
        .expect("refused");
        let message = error.to_string();
        assert!(
            message.contains("would come back as input"),
            "{}: {message}",
            sink_dir.display()
        );
        assert_eq!(error.kind(), tidewater::ErrorKind::User);
    }
}

/// The error of starting `INSERT INTO out SELECT n FROM events` with a files stream over
/// `source` and a files sink into `sink`, or `None` when the query starts.
async fn start_error(source: &str, sink: &str, checkpoint: &Path) -> Option<tidewater::Error> {
    let session = tidewater::StreamingSession::new();
    let result = session
        .run_script(&format!(
            "CREATE TABLE events (n INT) WITH (connector = 'files', path = '{source}', format = 'json');
             CREATE TABLE out WITH (connector = 'files', path = '{sink}', format = 'json', checkpoint_location = '{}');
             INSERT INTO out SELECT n FROM events",
            checkpoint.display()
        ))
        .await;
    match result {
        Ok(outcomes) => {
            for outcome in outcomes {
                if let tidewater::StatementOutcome::Started(query) = outcome {
                    query.stop().await.unwrap();
                }
            }
            None
        }
        Err(e) => Some(e),
    }
}

#[tokio::test]
async fn every_spelling_of_the_source_directory_is_refused_as_the_sink_s() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let checkpoint = dir.path().join("checkpoint");
    let (root, input_text) = (dir.path().display().to_string(), input.display().to_string());
    let file_url = |path: &Path| url::Url::from_file_path(path).unwrap().to_string();
    let refused = [
        // (source, sink)
        (input_text.clone(), format!("{root}/in/../in")),
        (input_text.clone(), format!("{root}/./in/out")),
        (input_text.clone(), format!("{root}/missing/../in/out")),
        (input_text.clone(), link.display().to_string()),
        (input_text.clone(), format!("{}/out", link.display())),
        (link.display().to_string(), root.clone()),
        (input_text.clone(), file_url(&input)),
        (input_text.clone(), file_url(&input.join("sub/out"))),
        (file_url(&input), input_text.clone()),
        (file_url(&input), format!("{root}/in/../in/out")),
        ("memory:///data/in".to_string(), "memory:///data/in".to_string()),
        ("memory:///data/in".to_string(), "memory:///data/in/out/".to_string()),
        (
            "memory:///data/in".to_string(),
            "memory:///data/x/../in/out".to_string(),
        ),
        ("memory:///data/in/".to_string(), "memory:///data".to_string()),
    ];
    // Each case has a checkpoint of its own: a checkpoint belongs to the sources it was made for.
    for (case, (source, sink)) in refused.into_iter().enumerate() {
        let error = start_error(&source, &sink, &checkpoint.join(case.to_string())).await;
        let message = error.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(
            message.contains("would come back as input"),
            "source {source}, sink {sink}: {message}"
        );
        assert_eq!(error.unwrap().kind(), tidewater::ErrorKind::User);
    }
    // Neighbours are fine: a sibling whose name starts the same, another store path.
    let allowed = [
        (input_text.clone(), format!("{root}/input")),
        (input_text.clone(), format!("{root}/in/../out")),
        ("memory:///data/in".to_string(), "memory:///data/in2".to_string()),
    ];
    for (case, (source, sink)) in allowed.into_iter().enumerate() {
        let error = start_error(&source, &sink, &checkpoint.join(format!("allowed-{case}"))).await;
        assert!(error.is_none(), "source {source}, sink {sink}: {error:?}");
    }
}

#[test]
fn a_restart_deletes_only_the_sink_s_own_leftovers() {
    let (input, output) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    drop_file(input.path(), "1.json", b"{\"n\": 1, \"action\": \"open\"}\n");
    let checkpoint = tempfile::tempdir().unwrap();
    let script = checkpoint.path().join("copy.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE TABLE input (n INT, action VARCHAR) WITH (connector = 'files', format = 'json', path = '{}');
             CREATE TABLE out WITH (connector = 'files', format = 'csv', path = '{}', partition_by = 'action',
               checkpoint_location = '{}', trigger = 'available_now');
             INSERT INTO out SELECT * FROM input;",
            input.path().display(),
            output.path().display(),
            checkpoint.path().join("cp").display()
        ),
    )
    .unwrap();
    // Through the command line, whose log (warnings, on standard error) users see.
    let copy = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tidewater"))
            .arg("run")
            .arg(&script)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        stderr
    };
    copy();
    let committed = data_files(output.path());
    assert_eq!(shapes(output.path()), ["action=open/part-00000-*.csv"]);

    // What the user or other tools put there, next to the sink's files; and a crashed batch's file.
    let uuid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    let theirs = [
        "notes.txt".to_string(),
        "part-x.csv".to_string(),
        "action=open/part-x.csv".to_string(),
        "action=open/notes.txt".to_string(),
        format!("part-00001-{uuid}.csv"),
        format!("action=open/part-00001-{uuid}.parquet"),
        format!("other/part-00001-{uuid}.csv"),
        format!("day=1/part-00001-{uuid}.csv"),
        format!("action=open/deeper/part-00001-{uuid}.csv"),
    ];
    for file in &theirs {
        let path = output.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"mine\n").unwrap();
    }
    let crashed = format!("action=close/part-00001-{uuid}.csv");
    std::fs::create_dir_all(output.path().join("action=close")).unwrap();
    std::fs::write(output.path().join(&crashed), b"n\n2\n").unwrap();

    // A restart (no new input: the same checkpoint, nothing to write) opens the sink only when it
    // writes, so give it one more file.
    drop_file(input.path(), "2.json", b"{\"n\": 2, \"action\": \"open\"}\n");
    let log = copy();
    assert!(
        log.contains("WARN") && log.contains(&crashed) && !log.contains("notes.txt"),
        "{log}"
    );
    let files = data_files(output.path());
    for file in &theirs {
        assert!(files.contains(file), "{file} was deleted: {files:?}");
        assert_eq!(std::fs::read(output.path().join(file)).unwrap(), b"mine\n");
    }
    assert!(!files.contains(&crashed), "the crashed batch's file is left: {files:?}");
    assert!(committed.iter().all(|f| files.contains(f)));
    assert_eq!(files.len(), theirs.len() + 2, "{files:?}");
}
