//! Streaming aggregation beyond the SQL files: progress of the state operator, bounded state on an
//! endless stream, and the no-data batch that closes the last windows.

use crate::common::{drop_file, push_json, query_rows, sorted, start};
use tidewater::StreamingSession;

async fn hourly(session: &StreamingSession, mode: &str) -> tidewater::StreamingQuery {
    start(
        session,
        &format!(
            "CREATE TABLE events (phone_id INT, time TIMESTAMP, action VARCHAR,
               WATERMARK FOR time AS time - INTERVAL '10' MINUTE) WITH (connector = 'memory');
             CREATE TABLE hourly WITH (connector = 'memory', output_mode = '{mode}');
             INSERT INTO hourly SELECT action, window(time, '1 hour') AS w, count(*) AS n
             FROM events GROUP BY action, window(time, '1 hour')"
        ),
    )
    .await
}

#[tokio::test]
async fn progress_reports_state_watermark_late_and_null_rows() {
    let session = StreamingSession::new();
    let query = hourly(&session, "append").await;
    push_json(
        &session,
        "events",
        &[
            r#"{"phone_id": 1, "time": "2026-01-01T10:05:00", "action": "open"}"#,
            r#"{"phone_id": 2, "time": "2026-01-01T11:30:00", "action": "open"}"#,
            r#"{"phone_id": 3, "time": null, "action": "open"}"#,
        ],
    );
    query.process_all_available().await.unwrap();
    push_json(
        &session,
        "events",
        &[r#"{"phone_id": 4, "time": "2026-01-01T10:15:00", "action": "open"}"#],
    );
    query.process_all_available().await.unwrap();

    let progress = query.recent_progress();
    let first = &progress[0].state_operators[0];
    assert_eq!(first.num_rows_total, 2, "{first:?}");
    assert_eq!(first.num_rows_updated, 2);
    assert_eq!(first.custom_metrics["numRowsWithNullEventTime"], 1);
    assert!(first.memory_used_bytes > 0);
    // The no-data batch after batch 0 ran with watermark 11:20 and closed 10:00-11:00.
    assert_eq!(progress[1].num_input_rows, 0);
    assert_eq!(progress[1].event_time["watermark"], "2026-01-01T11:20:00.000Z");
    assert_eq!(progress[1].state_operators[0].num_rows_removed, 1);
    // The 10:15 row came after its window closed: dropped and counted.
    let last = query.last_progress().unwrap();
    assert_eq!(last.state_operators[0].num_rows_dropped_by_watermark, 1);
    assert_eq!(query_rows(&session, "SELECT action, n FROM hourly").await, ["open|1"]);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn state_stays_bounded_on_an_endless_stream_with_a_watermark() {
    let session = StreamingSession::new();
    let query = hourly(&session, "update").await;
    for hour in 0..30 {
        let rows: Vec<String> = (0..20)
            .map(|i| {
                format!(
                    r#"{{"phone_id": {i}, "time": "2026-01-{:02}T{:02}:{:02}:00", "action": "a{}"}}"#,
                    1 + hour / 24,
                    hour % 24,
                    i * 2,
                    i % 5
                )
            })
            .collect();
        push_json(&session, "events", &rows.iter().map(String::as_str).collect::<Vec<_>>());
        query.process_all_available().await.unwrap();
    }
    // Five actions in at most two open windows at any time, whatever the stream's length.
    let held: Vec<u64> = query
        .recent_progress()
        .iter()
        .map(|p| p.state_operators[0].num_rows_total)
        .collect();
    assert!(held.iter().all(|n| *n <= 10), "{held:?}");
    let removed: u64 = query
        .recent_progress()
        .iter()
        .map(|p| p.state_operators[0].num_rows_removed)
        .sum();
    assert!(removed >= 5 * 28, "{removed}");
    query.stop().await.unwrap();
}

#[tokio::test]
async fn available_now_ends_with_a_batch_that_closes_the_last_windows() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(
        dir.path(),
        "a.json",
        b"{\"t\": \"2026-01-01T10:05:00\"}\n{\"t\": \"2026-01-01T10:20:00\"}\n",
    );
    drop_file(dir.path(), "b.json", b"{\"t\": \"2026-01-01T11:40:00\"}\n");
    let session = StreamingSession::new();
    let query = start(
        &session,
        &format!(
            "CREATE TABLE e (t TIMESTAMP, WATERMARK FOR t AS t - INTERVAL '5 minutes')
               WITH (connector = 'files', format = 'json', path = '{}', max_files_per_trigger = '1');
             CREATE TABLE out WITH (connector = 'memory', output_mode = 'append', trigger = 'available_now');
             INSERT INTO out SELECT w['start'] AS start, count(*) AS n FROM (SELECT window(t, '1 hour') AS w FROM e) GROUP BY w",
            dir.path().display()
        ),
    )
    .await;
    assert!(query.await_termination(None).await.unwrap());
    // Two files, then a batch without data whose watermark (11:35) closes 10:00-11:00.
    let inputs: Vec<u64> = query.recent_progress().iter().map(|p| p.num_input_rows).collect();
    assert_eq!(inputs.last(), Some(&0), "{inputs:?}");
    assert_eq!(
        query_rows(&session, "SELECT * FROM out").await,
        ["2026-01-01T10:00:00|2"]
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_stops_holding_the_watermark_back() {
    let session = StreamingSession::new();
    let query = start(
        &session,
        "CREATE TABLE a (t TIMESTAMP, WATERMARK FOR t AS t) WITH (connector = 'memory', idle_timeout = '1 minute');
         CREATE TABLE b (t TIMESTAMP, WATERMARK FOR t AS t) WITH (connector = 'memory', idle_timeout = '1 minute');
         CREATE TABLE out WITH (connector = 'memory', output_mode = 'append');
         INSERT INTO out SELECT w['start'] AS start, count(*) AS n
         FROM (SELECT window(t, '1 hour') AS w FROM (SELECT t FROM a UNION ALL SELECT t FROM b)) GROUP BY w",
    )
    .await;
    push_json(&session, "b", &[r#"{"t": "2026-01-01T10:00:00"}"#]);
    query.process_all_available().await.unwrap();
    push_json(&session, "a", &[r#"{"t": "2026-01-01T12:30:00"}"#]);
    query.process_all_available().await.unwrap();
    // The watermark is the minimum over both streams: b still holds it at 10:00.
    assert!(query_rows(&session, "SELECT * FROM out").await.is_empty());

    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    push_json(&session, "a", &[r#"{"t": "2026-01-01T12:40:00"}"#]);
    query.process_all_available().await.unwrap();
    // b has been idle for over a minute: the watermark follows a alone and closes 10:00-11:00.
    assert_eq!(
        query_rows(&session, "SELECT * FROM out").await,
        ["2026-01-01T10:00:00|1"]
    );
    query.stop().await.unwrap();
}

#[tokio::test]
async fn large_batches_are_merged_by_shards_in_parallel_with_the_same_result() {
    let session = StreamingSession::new();
    let query = start(
        &session,
        "CREATE TABLE nums (n BIGINT) WITH (connector = 'memory');
         CREATE TABLE counts WITH (connector = 'memory', output_mode = 'complete', state_partitions = '4');
         INSERT INTO counts SELECT n % 5000 AS k, count(*) AS c, sum(n) AS s FROM nums GROUP BY n % 5000",
    )
    .await;
    for round in 0..3 {
        session
            .sql(&format!(
                "INSERT INTO nums SELECT value + {} FROM generate_series(1, 20000)",
                round * 20000
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        query.process_all_available().await.unwrap();
    }
    let streamed = query_rows(&session, "SELECT count(*), sum(c), sum(s) FROM counts").await;
    assert_eq!(streamed, ["5000|60000|1800030000"]);
    assert_eq!(query.last_progress().unwrap().state_operators[0].num_rows_total, 5000);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn explain_shows_the_batch_plan_the_operator_and_the_post_plan() {
    let session = StreamingSession::new();
    let query = hourly(&session, "complete").await;
    let plan = query.explain();
    assert!(
        plan.contains("== Batch plan ==") && plan.contains("mode=Partial"),
        "{plan}"
    );
    assert!(plan.contains("StreamScanExec: stream=events"), "{plan}");
    assert!(
        plan.contains("StatefulAggregate: keys [action, window(events.time"),
        "{plan}"
    );
    assert!(
        plan.contains("(with watermark)") && plan.contains("state partitions"),
        "{plan}"
    );
    assert!(plan.contains("== Post plan =="), "{plan}");
    assert!(!plan.contains("== State after"), "no batch yet: {plan}");
    push_json(
        &session,
        "events",
        &[r#"{"phone_id": 1, "time": "2026-01-01T10:05:00", "action": "open"}"#],
    );
    query.process_all_available().await.unwrap();
    let plan = query.explain();
    assert!(
        plan.contains("== State after batch 1 ==\nstateStoreSave: 1 rows, "),
        "{plan}"
    );
    query.stop().await.unwrap();
}

/// Spark's watermark boundary, per batch, over files and restarts (EventTimeWatermarkSuite's
/// "append mode" input: 10 s watermark, 5 s windows, event times `10..=15`, then `25`, then `10`).
///
/// A window ending exactly at the watermark is closed (`end <= watermark`). Which rows still count
/// in it depends on the batches, as in Spark 3.4+: a batch drops rows as late with the watermark
/// the batch before it closed windows with.
#[tokio::test]
async fn a_window_ending_at_the_watermark_closes_and_later_rows_for_it_are_late() {
    let files = [
        ("0.json", &[10, 11, 12, 13, 14, 15][..]),
        ("1.json", &[25][..]),
        ("2.json", &[10][..]),
    ];
    let write = |dir: &std::path::Path, name: &str, seconds: &[i64]| {
        let lines: Vec<String> = seconds
            .iter()
            .map(|s| format!("{{\"t\": \"1970-01-01T00:00:{s:02}\"}}\n"))
            .collect();
        drop_file(dir, name, lines.concat().as_bytes());
    };
    let run = |input: &std::path::Path, checkpoint: &std::path::Path, trigger: &str| {
        format!(
            "CREATE TABLE e (t TIMESTAMP, WATERMARK FOR t AS t - INTERVAL '10' SECOND)
               WITH (connector = 'files', format = 'json', path = '{}', max_files_per_trigger = '1');
             CREATE TABLE out WITH (connector = 'memory', output_mode = 'append', trigger = '{trigger}',
               checkpoint_location = '{}');
             INSERT INTO out SELECT CAST(extract(epoch FROM w.start) AS BIGINT) AS start, count(*) AS n
             FROM (SELECT window(t, '5 seconds') AS w FROM e) GROUP BY w",
            input.display(),
            checkpoint.display()
        )
    };

    // All three files at once, one per batch: the `10` arrives in the batch right after the one
    // that moved the watermark to 15, before a no-data batch could close [10, 15). It drops late
    // rows with the watermark batch 1 closed with (5), so it counts, and the window closes with 6.
    let dir = tempfile::tempdir().unwrap();
    let (input, checkpoint) = (dir.path().join("in"), dir.path().join("cp"));
    std::fs::create_dir(&input).unwrap();
    for (name, seconds) in files {
        write(&input, name, seconds);
    }
    let session = StreamingSession::new();
    let query = start(&session, &run(&input, &checkpoint, "available_now")).await;
    assert!(query.await_termination(None).await.unwrap());
    assert_eq!(query_rows(&session, "SELECT * FROM out").await, ["10|6"]);

    // One file per run, restarted from the checkpoint each time. A `once` run takes one batch and
    // no no-data batch. A run with no new file runs the no-data batch the moved watermark is owed,
    // which closes [10, 15) with 5 rows; the `10` of the next run is late and dropped.
    let dir = tempfile::tempdir().unwrap();
    let (input, checkpoint) = (dir.path().join("in"), dir.path().join("cp"));
    std::fs::create_dir(&input).unwrap();
    let mut emitted = Vec::new();
    let mut dropped = 0;
    let runs = [Some(files[0]), Some(files[1]), None, Some(files[2])];
    for (i, file) in runs.into_iter().enumerate() {
        let trigger = if i < 2 { "once" } else { "available_now" };
        if let Some((name, seconds)) = file {
            write(&input, name, seconds);
        }
        let session = StreamingSession::new();
        let query = start(&session, &run(&input, &checkpoint, trigger)).await;
        assert!(query.await_termination(None).await.unwrap());
        emitted.extend(query_rows(&session, "SELECT * FROM out").await);
        dropped += query
            .recent_progress()
            .iter()
            .flat_map(|p| p.state_operators.iter())
            .map(|s| s.num_rows_dropped_by_watermark)
            .sum::<u64>();
    }
    assert_eq!(emitted, ["10|5"]);
    assert_eq!(dropped, 1);
}

/// Windows over processing time, DStream's way of counting (`countByWindow`, per-batch counts):
/// `window(current_timestamp(), ...)` puts each row in the windows of the batch that read it (the
/// batch's time, kept in the offsets log), complete mode counts each in every sliding window, and
/// append mode emits a window once the clock has passed its end, with no new rows needed.
#[tokio::test]
async fn processing_time_windows_close_when_the_clock_passes_their_end() {
    let session = StreamingSession::new();
    session
        .run_script(
            "CREATE TABLE words (w VARCHAR) WITH (connector = 'memory');
             CREATE TABLE sliding WITH (connector = 'memory', output_mode = 'complete');
             CREATE TABLE tumbling WITH (connector = 'memory', output_mode = 'append');",
        )
        .await
        .unwrap();
    let sliding = start(
        &session,
        "INSERT INTO sliding SELECT w, count(*) AS n FROM words
         GROUP BY w, window(current_timestamp(), '30 seconds', '10 seconds')",
    )
    .await;
    let tumbling = start(
        &session,
        "INSERT INTO tumbling SELECT win['end'] - win.start AS width, n FROM (SELECT
         window(current_timestamp(), '500 milliseconds') AS win, count(*) AS n
         FROM words GROUP BY window(current_timestamp(), '500 milliseconds'))",
    )
    .await;
    session
        .sql("INSERT INTO words VALUES ('a'), ('b'), ('a')")
        .await
        .unwrap();
    sliding.process_all_available().await.unwrap();
    tumbling.process_all_available().await.unwrap();
    // Every row is in three 30-second windows sliding every 10 seconds.
    assert_eq!(
        sorted(query_rows(&session, "SELECT * FROM sliding").await),
        ["a|2", "a|2", "a|2", "b|1", "b|1", "b|1"]
    );
    // The batch that read the rows emitted nothing: its own window was still open at its time.
    let reading = &tumbling.recent_progress()[0];
    assert_eq!((reading.num_input_rows, reading.sink.num_output_rows), (3, 0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while query_rows(&session, "SELECT * FROM tumbling").await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "{:?}", tumbling.recent_progress());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        query_rows(&session, "SELECT CAST(width AS VARCHAR), n FROM tumbling").await,
        ["0 days 0 hours 0 mins 0.500000000 secs|3"]
    );
    let closing = tumbling.last_progress().unwrap();
    assert_eq!(closing.num_input_rows, 0, "a batch without rows closed the window");
    sliding.stop().await.unwrap();
    tumbling.stop().await.unwrap();
}

/// `now()` after an aggregation is the batch's time, as before it: the plan after the stateful
/// operator is planned again for each batch when it reads the clock.
#[tokio::test]
async fn now_after_an_aggregation_is_each_batch_s_time() {
    let session = StreamingSession::new();
    let query = start(
        &session,
        "CREATE TABLE words (w VARCHAR) WITH (connector = 'memory');
         CREATE TABLE stamped WITH (connector = 'memory', output_mode = 'complete');
         INSERT INTO stamped SELECT count(*) AS n, max(now()) AS in_batch, now() AS after FROM words",
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        session.sql("INSERT INTO words VALUES ('a')").await.unwrap();
        query.process_all_available().await.unwrap();
        let rows = query_rows(&session, "SELECT n, in_batch = after FROM stamped").await;
        seen.push(query_rows(&session, "SELECT after FROM stamped").await);
        assert_eq!(rows.len(), 1);
        assert!(rows[0].ends_with("|true"), "now() is one time in a batch: {rows:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_ne!(seen[0], seen[1], "each batch has its own time");
    query.stop().await.unwrap();
}
