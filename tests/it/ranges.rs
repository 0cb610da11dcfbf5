//! Event times and window sizes at the edges of the engine's range, as properties: a row anywhere
//! in the timestamp range, of any unit, gets exactly the windows that hold it, or an error naming
//! its time when one of those windows lies outside the range the engine computes in; never a
//! wrapped window, and never a panic (tests build with overflow checks).

use proptest::prelude::*;
use tidewater::StreamingSession;

/// The units of a time column: its name in `arrow_cast` and nanoseconds per unit.
const UNITS: [(&str, i64); 4] = [
    ("Second", 1_000_000_000),
    ("Millisecond", 1_000_000),
    ("Microsecond", 1_000),
    ("Nanosecond", 1),
];

/// The windows of `width` every `slide` (in the column's unit) that hold `t`, latest first, or
/// `None` when one of them starts or ends outside the nanosecond range (strictly inside `i64`).
fn expected_windows(t: i64, width: i64, slide: i64, per: i64) -> Option<Vec<(i64, i64)>> {
    let (t, width, slide) = (i128::from(t), i128::from(width), i128::from(slide));
    let inside = |v: i128| {
        let nanos = v * i128::from(per);
        nanos > i128::from(i64::MIN) && nanos < i128::from(i64::MAX)
    };
    let mut windows = Vec::new();
    let mut start = t - t.rem_euclid(slide);
    while start + width > t {
        if !(inside(start) && inside(start + width)) {
            return None;
        }
        windows.push((start as i64, (start + width) as i64));
        start -= slide;
    }
    Some(windows)
}

/// Times spread over the whole `i64` range, with the ends and zero more likely.
fn times() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        (0..1_000_000_000_000i64).prop_map(|d| i64::MIN + d),
        (0..1_000_000_000_000i64).prop_map(|d| i64::MAX - d),
        -1_000_000_000_000i64..1_000_000_000_000,
    ]
}

/// A window width in nanoseconds, from one nanosecond to the longest duration there is.
fn widths() -> impl Strategy<Value = i64> {
    prop_oneof![
        1..1_000_000_000i64,
        (1..=106_751i64).prop_map(|days| days * 86_400_000_000_000),
        1..=i64::MAX,
    ]
}

async fn windows_of(session: &StreamingSession, sql: &str) -> Result<Vec<(i64, i64)>, String> {
    let frame = session.sql(sql).await.map_err(|e| e.to_string())?;
    let batches = frame.collect().await.map_err(|e| e.to_string())?;
    let mut windows: Vec<(i64, i64)> = crate::common::rows(&batches)
        .iter()
        .map(|row| {
            let (start, end) = row.split_once('|').unwrap();
            (start.parse().unwrap(), end.parse().unwrap())
        })
        .collect();
    windows.sort_unstable_by(|a, b| b.cmp(a));
    Ok(windows)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_row_anywhere_gets_the_windows_that_hold_it_or_an_error_naming_its_time(
        t in times(),
        unit in 0..UNITS.len(),
        width in widths(),
        per_slide in 1..=12i64,
    ) {
        let (unit, per) = UNITS[unit];
        // Sizes in whole units of the column, as the engine requires.
        let width = (width / per).max(1);
        let slide = (width / per_slide).max(1);
        let (width_ns, slide_ns) = (width.saturating_mul(per), slide.saturating_mul(per));
        prop_assume!(width_ns / per == width && slide_ns / per == slide);
        let time = format!("arrow_cast(arrow_cast({t}, 'Timestamp({unit}, None)'), 'Timestamp({unit}, None)')");
        let as_int = |w: &str| format!("arrow_cast({w}['start'], 'Int64'), arrow_cast({w}['end'], 'Int64')");
        let tumbling = format!(
            "SELECT {} FROM (SELECT window({time}, '{width_ns} nanoseconds') AS w)",
            as_int("w")
        );
        let sliding = format!(
            "SELECT {} FROM (SELECT {time} AS t) GROUP BY window(t, '{width_ns} nanoseconds', '{slide_ns} nanoseconds')",
            as_int(&format!("window(t, '{width_ns} nanoseconds', '{slide_ns} nanoseconds')"))
        );
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let session = StreamingSession::new();
            for (sql, slide) in [(tumbling, width), (sliding, slide)] {
                let got = windows_of(&session, &sql).await;
                let expected = expected_windows(t, width, slide, per);
                match (&got, &expected) {
                    (Ok(got), Some(expected)) => prop_assert_eq!(got, expected, "{}", sql),
                    (Err(error), None) => prop_assert!(
                        error.contains("falls in a window outside the range the engine computes in"),
                        "{}: {}", sql, error
                    ),
                    _ => prop_assert!(false, "{sql}\n  gave {got:?}\n  expected {expected:?}"),
                }
            }
            Ok(())
        })?;
    }
}

/// The error `sql` fails with, whether at planning or while it runs.
async fn error_of(session: &StreamingSession, sql: &str) -> String {
    match session.sql(sql).await {
        Ok(frame) => frame.collect().await.expect_err(sql).to_string(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn window_sizes_that_are_not_whole_units_of_the_column_are_refused_not_cut() {
    let session = StreamingSession::new();
    let seconds = "arrow_cast(TIMESTAMP '2024-01-01 00:00:01', 'Timestamp(Second, None)')";
    for (sql, says) in [
        (
            format!("SELECT window({seconds}, '1500 milliseconds')"),
            "window(): the width (1500000000 nanoseconds) is not a whole number of seconds",
        ),
        (
            format!(
                "SELECT count(*) FROM (SELECT {seconds} AS t) GROUP BY window(t, '4 seconds', '1500 milliseconds')"
            ),
            "window(): the slide (1500000000 nanoseconds) is not a whole number of seconds",
        ),
        (
            format!("SELECT count(*) FROM (SELECT {seconds} AS t) GROUP BY session_window(t, '10 milliseconds')"),
            "session_window(): the gap (10000000 nanoseconds) is not a whole number of seconds",
        ),
    ] {
        let error = error_of(&session, &sql).await;
        assert!(error.contains(says), "{sql}: {error}");
    }
    // Whole seconds are fine.
    let rows = crate::common::query_rows(&session, &format!("SELECT window({seconds}, '2000 milliseconds')")).await;
    assert_eq!(rows, ["{start: 2024-01-01T00:00:00, end: 2024-01-01T00:00:02}"]);
}

#[tokio::test]
async fn a_session_at_the_end_of_the_range_is_refused_not_wrapped() {
    let session = StreamingSession::new();
    session
        .sql("CREATE TABLE late_taps (t TIMESTAMP) WITH (connector = 'memory')")
        .await
        .unwrap();
    let query = crate::common::start(
        &session,
        "CREATE TABLE taps_out WITH (connector = 'memory', output_mode = 'complete');
         INSERT INTO taps_out SELECT session_window(t, '1 hour') AS s, count(*) AS n FROM late_taps
         GROUP BY session_window(t, '1 hour')",
    )
    .await;
    session
        .sql("INSERT INTO late_taps VALUES (TIMESTAMP '2262-04-11 23:47:16')")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let error = query
        .await_termination(None)
        .await
        .expect_err("out of range")
        .to_string();
    assert!(
        error.contains("session_window(): the row at 2262-04-11T23:47:16 falls in a window outside the range"),
        "{error}"
    );
    // The same rows in a static query: an error too, never a session ending in 1677.
    let error = error_of(
        &session,
        "SELECT count(*) FROM (SELECT TIMESTAMP '2262-04-11 23:47:16' AS t) GROUP BY session_window(t, '1 hour')",
    )
    .await;
    assert!(error.contains("Timestamp out of range"), "{error}");
}
