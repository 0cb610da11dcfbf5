//! Chains of stateful operators: each operator keeps its own state, bounded by the watermark,
//! and reports its own progress entry.

use crate::common::{push_json, query_rows, start};
use tidewater::StreamingSession;

#[tokio::test]
async fn a_deduplication_then_a_window_count_keep_their_states_bounded_and_report_each_operator() {
    let session = StreamingSession::new();
    let query = start(
        &session,
        "CREATE TABLE events (phone_id INT, time TIMESTAMP, action VARCHAR,
           WATERMARK FOR time AS time - INTERVAL '10' MINUTE) WITH (connector = 'memory');
         CREATE TABLE hourly WITH (connector = 'memory', output_mode = 'append');
         INSERT INTO hourly SELECT action, CAST(w.start AS VARCHAR) AS hour, n FROM (
           SELECT action, window(time, '1 hour') AS w, count(*) AS n
           FROM (SELECT DISTINCT ON (phone_id, time) phone_id, time, action FROM events)
           GROUP BY action, window(time, '1 hour'))",
    )
    .await;
    for hour in 0..30 {
        // Every event arrives twice, the second time in the next batch.
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
        for _ in 0..2 {
            push_json(&session, "events", &rows.iter().map(String::as_str).collect::<Vec<_>>());
            query.process_all_available().await.unwrap();
        }
    }
    let progress = query.recent_progress();
    let names: Vec<&str> = progress[0]
        .state_operators
        .iter()
        .map(|o| o.operator_name.as_str())
        .collect();
    assert_eq!(names, ["dedupe", "stateStoreSave"]);
    // The keys of at most an hour and ten minutes of events, and five actions in at most two
    // open windows, whatever the stream's length.
    for p in &progress {
        let held: Vec<u64> = p.state_operators.iter().map(|o| o.num_rows_total).collect();
        assert!(held[0] <= 40 && held[1] <= 10, "batch {}: {held:?}", p.batch_id);
    }
    let removed: u64 = progress.iter().map(|p| p.state_operators[0].num_rows_removed).sum();
    assert!(removed >= 20 * 28, "{removed}");
    // The repeats are not counted: four events per action and hour.
    let rows = query_rows(&session, "SELECT * FROM hourly WHERE hour = '2026-01-01T05:00:00'").await;
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows.iter().all(|r| r.ends_with("|4")), "{rows:?}");
    // EXPLAIN of the running query shows each operator's state.
    let plan = query.explain();
    assert!(
        plan.contains("\ndedupe: ") && plan.contains("\nstateStoreSave: "),
        "{plan}"
    );
    query.stop().await.unwrap();
}

#[tokio::test]
async fn an_endless_watermarked_join_keeps_its_state_bounded() {
    let session = StreamingSession::new();
    let query = start(
        &session,
        "CREATE TABLE impressions (ad INT, time TIMESTAMP,
           WATERMARK FOR time AS time - INTERVAL '10' MINUTE) WITH (connector = 'memory');
         CREATE TABLE clicks (ad INT, time TIMESTAMP,
           WATERMARK FOR time AS time - INTERVAL '10' MINUTE) WITH (connector = 'memory');
         CREATE TABLE matched WITH (connector = 'memory', output_mode = 'append');
         INSERT INTO matched SELECT i.ad, i.time AS shown, c.time AS clicked
         FROM impressions i LEFT JOIN clicks c ON c.ad = i.ad AND c.time BETWEEN i.time AND i.time + INTERVAL '30' MINUTE",
    )
    .await;
    let at = |hour: usize, minute: usize| format!("2026-01-{:02}T{:02}:{:02}:00", 1 + hour / 24, hour % 24, minute);
    for hour in 0..30 {
        // Every hour, 20 ads are shown; the even ones are clicked 5 minutes later.
        let shown: Vec<String> = (0..20)
            .map(|ad| format!(r#"{{"ad": {ad}, "time": "{}"}}"#, at(hour, ad * 2)))
            .collect();
        push_json(
            &session,
            "impressions",
            &shown.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let clicked: Vec<String> = (0..20)
            .step_by(2)
            .map(|ad| format!(r#"{{"ad": {ad}, "time": "{}"}}"#, at(hour, ad * 2 + 5)))
            .collect();
        push_json(
            &session,
            "clicks",
            &clicked.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        query.process_all_available().await.unwrap();
    }
    let progress = query.recent_progress();
    assert_eq!(progress[0].state_operators[0].operator_name, "symmetricHashJoin");
    // At most about an hour and a half of rows of both sides, whatever the stream's length.
    for p in &progress {
        let held = p.state_operators[0].num_rows_total;
        assert!(held <= 60, "batch {}: {held} rows held", p.batch_id);
    }
    let removed: u64 = progress.iter().map(|p| p.state_operators[0].num_rows_removed).sum();
    assert!(removed >= 28 * 30, "{removed}");
    // Each closed hour: ten clicked ads, ten shown without a click.
    let rows = query_rows(
        &session,
        "SELECT count(clicked), count(*) FROM matched WHERE shown < '2026-01-01T01:00:00'",
    )
    .await;
    assert_eq!(rows, ["10|20"]);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn available_now_ends_with_the_batch_that_emits_the_closed_unmatched_rows_of_an_outer_join() {
    let (shown, clicked) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    crate::common::drop_file(
        shown.path(),
        "a.json",
        b"{\"ad\": 1, \"time\": \"2026-01-01T10:00:00\"}\n{\"ad\": 2, \"time\": \"2026-01-01T10:05:00\"}\n\
          {\"ad\": 9, \"time\": \"2026-01-01T11:00:00\"}\n",
    );
    crate::common::drop_file(
        clicked.path(),
        "a.json",
        b"{\"ad\": 1, \"time\": \"2026-01-01T10:02:00\"}\n{\"ad\": 3, \"time\": \"2026-01-01T10:50:00\"}\n\
          {\"ad\": 9, \"time\": \"2026-01-01T11:00:00\"}\n",
    );
    let session = StreamingSession::new();
    let query = start(
        &session,
        &format!(
            "CREATE TABLE impressions (ad INT, time TIMESTAMP, WATERMARK FOR time AS time - INTERVAL '5' MINUTE)
               WITH (connector = 'files', format = 'json', path = '{}');
             CREATE TABLE clicks (ad INT, time TIMESTAMP, WATERMARK FOR time AS time - INTERVAL '5' MINUTE)
               WITH (connector = 'files', format = 'json', path = '{}');
             CREATE TABLE matched WITH (connector = 'memory', output_mode = 'append', trigger = 'available_now');
             INSERT INTO matched SELECT i.ad, CAST(i.time AS VARCHAR) AS shown, CAST(c.time AS VARCHAR) AS clicked
             FROM impressions i LEFT JOIN clicks c ON c.ad = i.ad AND c.time BETWEEN i.time AND i.time + INTERVAL '10' MINUTE",
            shown.path().display(),
            clicked.path().display()
        ),
    )
    .await;
    assert!(query.await_termination(None).await.unwrap());
    // One batch reads everything; the watermark it leaves (10:55) closes the ranges of the
    // impressions of 10:00 and 10:05, and the last batch, without new rows, emits ad 2's.
    assert_eq!(
        query_rows(&session, "SELECT * FROM matched ORDER BY shown").await,
        [
            "1|2026-01-01T10:00:00|2026-01-01T10:02:00",
            "2|2026-01-01T10:05:00|NULL",
            "9|2026-01-01T11:00:00|2026-01-01T11:00:00"
        ]
    );
    let batches = query.recent_progress().len();
    assert_eq!(batches, 2, "{:?}", query.recent_progress());
}
