//! Decoding input files, as a user meets it: every line format × every column subset a query
//! reads × every malformed-record mode, checked against DataFusion's batch reader; records that span lines;
//! hostile records (deep nesting, huge values).

use std::path::Path;

use crate::common::{drop_file, query_rows, sorted, start};
use tidewater::{ErrorKind, StreamingQuery, StreamingSession};

/// Four good records — one with a quoted line end in `b` — and two bad ones, on lines 3 and 6.
const CSV: &str = "1,x,10\n2,y,20\nbad,z,30\n3,\"multi\nline\",40\n4,x,5,extra\n5,x,1\n";
/// The same records as JSON lines; the bad ones: a string for `a`, two objects on one line.
const JSON: &str = concat!(
    r#"{"a": 1, "b": "x", "d": 10}"#,
    "\n",
    r#"{"a": 2, "b": "y", "d": 20}"#,
    "\n",
    r#"{"a": "bad", "b": "z", "d": 30}"#,
    "\n",
    r#"{"a": 3, "b": "multi\nline", "d": 40}"#,
    "\n\n",
    r#"{"a": 4, "b": "x", "d": 5} {"a": 6}"#,
    "\n",
    r#"{"a": 5, "b": "x", "d": 1}"#,
    "\n"
);

/// A query, and its rows (sorted) over the good records, with the row a bad record makes in
/// `permissive` mode (`None` where it adds no row of its own, as in an aggregate).
struct Case {
    select: &'static str,
    good: &'static [&'static str],
    permissive: &'static [&'static str],
    mode: &'static str,
}

const CASES: &[Case] = &[
    Case {
        select: "SELECT a, b, d FROM c",
        good: &["1|x|10", "2|y|20", "3|multi\nline|40", "5|x|1"],
        permissive: &[
            "1|x|10",
            "2|y|20",
            "3|multi\nline|40",
            "5|x|1",
            "NULL|NULL|NULL",
            "NULL|NULL|NULL",
        ],
        mode: "append",
    },
    Case {
        select: "SELECT b, sum(d) FROM c GROUP BY b",
        good: &["multi\nline|40", "x|11", "y|20"],
        permissive: &["NULL|NULL", "multi\nline|40", "x|11", "y|20"],
        mode: "complete",
    },
    Case {
        select: "SELECT d, a FROM c",
        good: &["1|5", "10|1", "20|2", "40|3"],
        permissive: &["1|5", "10|1", "20|2", "40|3", "NULL|NULL", "NULL|NULL"],
        mode: "append",
    },
    Case {
        select: "SELECT count(*) FROM c",
        good: &["4"],
        permissive: &["6"],
        mode: "complete",
    },
];

/// The good records of [`CSV`] read by DataFusion's own batch CSV reader: the reference a
/// streaming query's rows must equal (with `drop_malformed`).
async fn batch_reference(select: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let good: String = CSV
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("bad") && !l.contains("extra"))
        .collect();
    std::fs::write(dir.path().join("good.csv"), good).unwrap();
    let session = StreamingSession::new();
    session
        .sql(&format!(
            "CREATE EXTERNAL TABLE c (a INT, b VARCHAR, d INT) STORED AS CSV LOCATION '{}/' \
             OPTIONS ('format.has_header' 'false')",
            dir.path().display()
        ))
        .await
        .unwrap();
    sorted(query_rows(&session, select).await)
}

/// Runs `INSERT INTO out <select>` over the files stream `c (<columns>)` on `dir` to its end
/// (`available_now`); `options` are the stream's, after its path.
async fn run_to_end(
    dir: &Path,
    columns: &str,
    options: &str,
    output_mode: &str,
    select: &str,
) -> (StreamingSession, StreamingQuery, tidewater::Result<bool>) {
    let session = StreamingSession::new();
    let sql = format!(
        "CREATE TABLE c ({columns}) WITH (connector = 'files', path = '{}', {options});
         CREATE TABLE out WITH (connector = 'memory', output_mode = '{output_mode}', trigger = 'available_now');
         INSERT INTO out {select}",
        dir.display()
    );
    let query = start(&session, &sql).await;
    let ended = query.await_termination(None).await;
    (session, query, ended)
}

#[tokio::test]
async fn every_format_projection_and_mode_gives_the_rows_a_batch_read_would() {
    for (format, content, bad_line) in [("csv", CSV, 3), ("json", JSON, 3)] {
        let dir = tempfile::tempdir().unwrap();
        drop_file(dir.path(), &format!("in.{format}"), content.as_bytes());
        for case in CASES {
            for mode in ["permissive", "drop_malformed", "fail_fast"] {
                let what = format!("{format}, {mode}, {}", case.select);
                let header = if format == "csv" { ", header = 'false'" } else { "" };
                let options = format!("format = '{format}', mode = '{mode}'{header}");
                let (session, query, ended) =
                    run_to_end(dir.path(), "a INT, b VARCHAR, d INT", &options, case.mode, case.select).await;
                match mode {
                    "fail_fast" => {
                        let error = ended.unwrap_err();
                        let message = error.to_string();
                        assert!(
                            message.contains(&format!("in.{format}, line {bad_line}")),
                            "{what}: {message}"
                        );
                        assert_eq!(error.kind(), ErrorKind::User, "{what}");
                    }
                    _ => {
                        ended.unwrap();
                        let expected = if mode == "permissive" {
                            case.permissive
                        } else {
                            case.good
                        };
                        let streamed = sorted(query_rows(&session, "SELECT * FROM out").await);
                        assert_eq!(
                            streamed,
                            sorted(expected.iter().map(|s| s.to_string()).collect()),
                            "{what}"
                        );
                        if mode == "drop_malformed" {
                            assert_eq!(batch_reference(case.select).await, streamed, "{what}: batch reference");
                        }
                        let metrics = &query.last_progress().unwrap().sources[0].metrics;
                        let (kept, dropped) = if mode == "permissive" { ("2", "0") } else { ("0", "2") };
                        assert_eq!(metrics["numMalformedRecords"], kept, "{what}");
                        assert_eq!(metrics["numDroppedMalformedRecords"], dropped, "{what}");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_quoted_multi_line_csv_record_survives_a_bad_line_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(
        dir.path(),
        "quoted.csv",
        b"id,text,tag\n1,\"line one\nline two\",x\nshort\n2,\"a \"\"quoted\"\" word\",y\n",
    );
    let (session, _, ended) = run_to_end(
        dir.path(),
        "id INT, text VARCHAR, tag VARCHAR, _corrupt_record VARCHAR",
        "format = 'csv', header = 'true'",
        "append",
        "SELECT * FROM c",
    )
    .await;
    ended.unwrap();
    assert_eq!(
        query_rows(&session, "SELECT * FROM out").await,
        [
            "1|line one\nline two|x|NULL",
            "NULL|NULL|NULL|short",
            "2|a \"quoted\" word|y|NULL"
        ]
    );
}

#[tokio::test]
async fn a_bad_record_after_a_multi_line_record_is_reported_at_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "lines.csv", b"1,\"a\nb\nc\"\n2,ok\nnot a number,x\n");
    let options = "format = 'csv', mode = 'fail_fast'";
    let (_, _, ended) = run_to_end(dir.path(), "n INT, s VARCHAR", options, "append", "SELECT * FROM c").await;
    let message = ended.unwrap_err().to_string();
    assert!(message.contains("lines.csv, line 5"), "{message}");
    assert!(!message.contains("at line"), "arrow's own line count leaks: {message}");
}

#[tokio::test]
async fn every_good_record_is_kept_when_bad_ones_are_scattered_through_a_big_file() {
    // Bad records at the edges of decoder batches and chunks, and in runs.
    let bad: Vec<usize> = vec![0, 1, 63, 64, 65, 8191, 8192, 8193, 9000, 9001, 9002, 19_999];
    for format in ["csv", "json"] {
        let mut content = String::new();
        let mut expected_sum = 0i64;
        for i in 0..20_000usize {
            let good = !bad.contains(&i);
            match (format, good) {
                ("csv", true) => content.push_str(&format!("{i},v{i}\n")),
                ("csv", false) => content.push_str(&format!("x{i},v{i}\n")),
                (_, true) => content.push_str(&format!("{{\"n\": {i}, \"s\": \"v{i}\"}}\n")),
                (_, false) => content.push_str(&format!("{{\"n\": \"x{i}\"}}\n")),
            }
            if good {
                expected_sum += i as i64;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        drop_file(dir.path(), &format!("big.{format}"), content.as_bytes());
        let (session, query, ended) = run_to_end(
            dir.path(),
            "n INT, s VARCHAR",
            &format!("format = '{format}', mode = 'drop_malformed'"),
            "complete",
            "SELECT count(*), sum(n), count(DISTINCT s) FROM c",
        )
        .await;
        ended.unwrap();
        let good = 20_000 - bad.len();
        assert_eq!(
            query_rows(&session, "SELECT * FROM out").await,
            [format!("{good}|{expected_sum}|{good}")],
            "{format}"
        );
        let metrics = &query.last_progress().unwrap().sources[0].metrics;
        assert_eq!(metrics["numDroppedMalformedRecords"], bad.len().to_string(), "{format}");
    }
}

#[tokio::test]
async fn bad_values_in_any_column_are_found_and_only_they_are_malformed() {
    // Bad values in each column, nested (a bad value in a later column before one in an earlier
    // column), a value whose text names another row as arrow's messages do, and records with a
    // field too many or too few.
    let mut bad = std::collections::BTreeMap::new();
    bad.insert(10, "{i},x,2024-01-01T00:00:00");
    bad.insert(11, "{i},1.5,2024-13-01T00:00:00");
    bad.insert(12, "y{i},1.5,2024-01-01T00:00:00");
    bad.insert(700, "{i},1.5,not a time at line 0. Row data");
    bad.insert(701, "{i},at line 3,2024-01-01T00:00:00");
    bad.insert(702, "{i},1.5,2024-01-01T00:00:00,extra");
    bad.insert(703, "{i},1.5");
    bad.insert(4000, "{i},1.5,2024-01-01T25:00:00");
    bad.insert(4998, "z,z,z");
    let mut content = String::new();
    let mut expected_sum = 0i64;
    for i in 0..5000usize {
        match bad.get(&i) {
            Some(line) => content.push_str(&line.replace("{i}", &i.to_string())),
            None => {
                content.push_str(&format!("{i},{i}.25,2024-01-01T00:{:02}:00", i % 60));
                expected_sum += i as i64;
            }
        }
        content.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "orders.csv", content.as_bytes());
    let (session, _query, ended) = run_to_end(
        dir.path(),
        "a INT, b DOUBLE, c TIMESTAMP, _corrupt_record VARCHAR",
        "format = 'csv', header = 'false', mode = 'permissive'",
        "append",
        "SELECT a, _corrupt_record FROM c",
    )
    .await;
    ended.unwrap();
    let good = 5000 - bad.len();
    assert_eq!(
        query_rows(&session, "SELECT count(a), sum(a), count(_corrupt_record) FROM out").await,
        [format!("{good}|{expected_sum}|{}", bad.len())]
    );
    let kept: Vec<String> = query_rows(
        &session,
        "SELECT _corrupt_record FROM out WHERE _corrupt_record IS NOT NULL",
    )
    .await;
    let expected: Vec<String> = bad
        .iter()
        .map(|(i, line)| line.replace("{i}", &i.to_string()))
        .collect();
    assert_eq!(sorted(kept), sorted(expected));
}

#[tokio::test]
async fn every_line_ending_delimits_records_around_a_bad_one() {
    for (ending, name) in [("\n", "lf"), ("\r\n", "crlf"), ("\r", "cr"), ("\n\n", "blank lines")] {
        let lines = ["1,a", "2,b", "x,c", "3,d", "4,e,extra", "5,f"];
        let content = lines.join(ending) + ending;
        let dir = tempfile::tempdir().unwrap();
        drop_file(dir.path(), "in.csv", content.as_bytes());
        let (session, query, ended) = run_to_end(
            dir.path(),
            "n INT, s VARCHAR",
            "format = 'csv', header = 'false', mode = 'drop_malformed'",
            "append",
            "SELECT n, s FROM c",
        )
        .await;
        ended.unwrap();
        assert_eq!(
            sorted(query_rows(&session, "SELECT * FROM out").await),
            ["1|a", "2|b", "3|d", "5|f"],
            "{name}"
        );
        let metrics = &query.last_progress().unwrap().sources[0].metrics;
        assert_eq!(metrics["numDroppedMalformedRecords"], "2", "{name}");
    }
}

#[tokio::test]
async fn deeply_nested_json_is_a_malformed_record_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!("{{\"n\": {}1{}}}\n", "[".repeat(100_000), "]".repeat(100_000));
    let not_closed = format!("{{\"n\": {}\n", "[".repeat(100_000));
    let in_a_string = format!("{{\"n\": 2, \"s\": \"{}\"}}\n", "[".repeat(100_000));
    drop_file(
        dir.path(),
        "deep.json",
        format!("{{\"n\": 1}}\n{deep}{not_closed}{in_a_string}").as_bytes(),
    );
    for (mode, expected) in [
        ("permissive", vec!["1", "NULL", "NULL", "2"]),
        ("drop_malformed", vec!["1", "2"]),
    ] {
        let options = format!("format = 'json', mode = '{mode}'");
        let (session, _, ended) =
            run_to_end(dir.path(), "n INT, s VARCHAR", &options, "append", "SELECT n FROM c").await;
        ended.unwrap();
        assert_eq!(query_rows(&session, "SELECT * FROM out").await, expected, "{mode}");
    }
    let options = "format = 'json', mode = 'fail_fast'";
    let (_, _, ended) = run_to_end(dir.path(), "n INT", options, "append", "SELECT n FROM c").await;
    let message = ended.unwrap_err().to_string();
    assert!(
        message.contains("deep.json, line 2") && message.contains("nested deeper than 1000"),
        "{message}"
    );
}

#[tokio::test]
async fn an_error_shows_a_few_hundred_bytes_of_a_huge_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "9".repeat(5_000_000);
    drop_file(dir.path(), "huge.csv", format!("1,a\n{huge}x,b\n").as_bytes());
    let options = "format = 'csv', mode = 'fail_fast'";
    let (_, _, ended) = run_to_end(dir.path(), "n INT, s VARCHAR", options, "append", "SELECT * FROM c").await;
    let message = ended.unwrap_err().to_string();
    assert!(message.len() < 1_000, "{} bytes of message", message.len());
    assert!(
        message.contains("huge.csv, line 2") && message.contains("bytes left out"),
        "{message}"
    );
}

/// A text line that is not UTF-8 is a malformed record (it used to become U+FFFD silently): kept
/// as null with its text in `_corrupt_record`, dropped and counted, or failing at its line.
#[tokio::test]
async fn a_text_line_that_is_not_utf8_is_malformed_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "in.txt", b"first\r\nbad \xc3\x28 bytes\nlast\n");
    let columns = "value VARCHAR, _corrupt_record VARCHAR";
    for mode in ["permissive", "drop_malformed", "fail_fast"] {
        let options = format!("format = 'text', mode = '{mode}'");
        let (session, query, ended) = run_to_end(dir.path(), columns, &options, "append", "SELECT * FROM c").await;
        if mode == "fail_fast" {
            let message = ended.unwrap_err().to_string();
            assert!(
                message.contains("in.txt, line 2: the line is not valid UTF-8 (at byte 4)"),
                "{message}"
            );
            continue;
        }
        ended.unwrap();
        let rows = query_rows(&session, "SELECT * FROM out").await;
        let metrics = &query.last_progress().unwrap().sources[0].metrics;
        if mode == "permissive" {
            assert_eq!(rows, ["first|NULL", "NULL|bad \u{fffd}( bytes", "last|NULL"]);
            assert_eq!(metrics["numMalformedRecords"], "1");
        } else {
            assert_eq!(rows, ["first|NULL", "last|NULL"]);
            assert_eq!(metrics["numDroppedMalformedRecords"], "1");
        }
    }
}
