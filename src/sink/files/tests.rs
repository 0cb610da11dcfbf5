//! The files sink on its own: replays, leftovers and complete mode, checked on the files.

use std::sync::Arc;

use datafusion::arrow::array::{Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::memory::MemoryStream;

use super::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int32, false),
        Field::new("action", DataType::Utf8, true),
    ]))
}

fn rows(n: &[i32], action: &[Option<&str>]) -> SendableRecordBatchStream {
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int32Array::from(n.to_vec())),
            Arc::new(StringArray::from(action.to_vec())),
        ],
    )
    .unwrap();
    Box::pin(MemoryStream::try_new(vec![batch], schema(), None).unwrap())
}

/// Every file under `dir` except the manifest's, relative, sorted.
fn data_files(dir: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with(storage::METADATA_DIR) {
                    walk(root, &path, out);
                }
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

async fn committed(sink: &FileSink) -> Vec<ManifestEntry> {
    let location = &sink.location;
    storage::read_manifest(&location.store, &location.path, &location.display, None)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_replayed_batch_writes_nothing_even_from_a_new_sink() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let sink = FileSink::try_new(&path, SinkFormat::Json, &[], &schema(), OutputMode::Append).unwrap();
    assert_eq!(
        sink.add_batch(0, OutputMode::Append, rows(&[1, 2], &[Some("a"), None]))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        sink.add_batch(0, OutputMode::Append, rows(&[1, 2], &[Some("a"), None]))
            .await
            .unwrap(),
        0
    );
    // After a restart the sink learns what is committed from the manifest.
    let restarted = FileSink::try_new(&path, SinkFormat::Json, &[], &schema(), OutputMode::Append).unwrap();
    assert_eq!(
        restarted
            .add_batch(0, OutputMode::Append, rows(&[1, 2], &[Some("a"), None]))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        restarted
            .add_batch(1, OutputMode::Append, rows(&[3], &[Some("b")]))
            .await
            .unwrap(),
        1
    );

    let files = data_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    let entries = committed(&restarted).await;
    assert_eq!(entries.iter().map(|e| e.batch_id).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(entries[0].files[0].rows, 2);
    let first = std::fs::read_to_string(dir.path().join(&entries[0].files[0].path)).unwrap();
    assert_eq!(first, "{\"n\":1,\"action\":\"a\"}\n{\"n\":2}\n");
    assert!(entries[0].files[0].path.starts_with("part-00000-"), "{:?}", entries[0]);
}

#[tokio::test]
async fn leftovers_of_a_crashed_batch_are_deleted_when_the_sink_starts_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let sink = FileSink::try_new(&path, SinkFormat::Csv, &[], &schema(), OutputMode::Append).unwrap();
    sink.add_batch(0, OutputMode::Append, rows(&[1], &[Some("a")]))
        .await
        .unwrap();
    // A batch that crashed after writing its data file, and a file that is not the sink's.
    let stray = "part-00001-3f2504e0-4f89-11d3-9a0c-0305e82c3301.csv";
    std::fs::write(dir.path().join(stray), "n,action\n9,x\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();

    let restarted = FileSink::try_new(&path, SinkFormat::Csv, &[], &schema(), OutputMode::Append).unwrap();
    restarted
        .add_batch(1, OutputMode::Append, rows(&[2], &[Some("b")]))
        .await
        .unwrap();
    let files = data_files(dir.path());
    assert!(!files.contains(&stray.to_string()), "{files:?}");
    assert!(files.contains(&"notes.txt".to_string()), "{files:?}");
    assert_eq!(files.len(), 3, "{files:?}");
}

#[tokio::test]
async fn complete_mode_keeps_only_the_latest_table_and_partitions_go_to_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let partition_by = ["action".to_string()];
    let sink = FileSink::try_new(
        &path,
        SinkFormat::Parquet,
        &partition_by,
        &schema(),
        OutputMode::Complete,
    )
    .unwrap();
    let first = rows(&[1, 2, 3], &[Some("open"), None, Some("open")]);
    assert_eq!(sink.add_batch(0, OutputMode::Complete, first).await.unwrap(), 3);
    let files = data_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files[0].starts_with("action=__HIVE_DEFAULT_PARTITION__/part-00000-"),
        "{files:?}"
    );
    assert!(files[1].starts_with("action=open/part-00000-"), "{files:?}");

    let second = rows(&[4], &[Some("a/b")]);
    assert_eq!(sink.add_batch(1, OutputMode::Complete, second).await.unwrap(), 1);
    let files = data_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with("action=a%2Fb/part-00001-"), "{files:?}");
    let entries = committed(&sink).await;
    assert_eq!(entries[1].mode, EntryMode::Complete);
    assert_eq!(storage::visible(&entries).len(), 1);
}

#[test]
fn bad_partition_columns_and_update_mode_are_refused_with_reasons() {
    let error = |partition_by: &[&str], mode| {
        let partition_by: Vec<String> = partition_by.iter().map(|s| s.to_string()).collect();
        FileSink::try_new("out", SinkFormat::Parquet, &partition_by, &schema(), mode)
            .unwrap_err()
            .to_string()
    };
    let message = error(&["day"], OutputMode::Append);
    assert!(
        message.contains("'day'") && message.contains("its columns are: n, action"),
        "{message}"
    );
    let message = error(&["n", "action"], OutputMode::Append);
    assert!(message.contains("at least one must be left"), "{message}");
    let message = error(&[], OutputMode::Update);
    assert!(
        message.contains("'update'") && message.contains("'complete'"),
        "{message}"
    );
}

#[test]
fn only_names_the_sink_gives_count_as_its_files() {
    let uuid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    assert!(is_part_file(&format!("part-00012-{uuid}.parquet"), "parquet"));
    assert!(!is_part_file(&format!("part-00012-{uuid}.parquet"), "csv"));
    assert!(!is_part_file(
        &format!("part-00012-{uuid}-c000.snappy.parquet"),
        "parquet"
    ));
    assert!(!is_part_file("part-0.parquet", "parquet"));
    assert!(!is_part_file("part-x.csv", "csv"));
    assert!(!is_part_file("data.parquet", "parquet"));
}

#[test]
fn own_files_sit_in_the_sink_s_own_partition_directories() {
    let shape = OwnFileShape {
        partition_prefixes: vec!["day=".to_string(), "a%3Db=".to_string()],
        extension: "json",
    };
    let matches = |relative: &str| {
        let path = Path::parse(relative).unwrap();
        shape.matches(&path.parts().collect::<Vec<_>>())
    };
    let name = "part-00001-3f2504e0-4f89-11d3-9a0c-0305e82c3301.json";
    assert!(matches(&format!("day=2024-01-01/a%3Db=x/{name}")));
    assert!(matches(&format!("day=__HIVE_DEFAULT_PARTITION__/a%3Db=/{name}")));
    assert!(!matches(name), "not partitioned");
    assert!(!matches(&format!("day=2024-01-01/{name}")), "one level short");
    assert!(!matches(&format!("a%3Db=x/day=2024-01-01/{name}")), "other order");
    assert!(!matches(&format!("day=1/a%3Db=x/extra/{name}")), "one level deeper");
    assert!(!matches(&format!("_tidewater_metadata/a%3Db=x/{name}")));
}
