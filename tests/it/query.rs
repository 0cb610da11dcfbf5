//! The StreamingQuery handle: identity, status, progress in Spark's JSON shape, stopping,
//! waiting, failures, and the session's list of active queries.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use tidewater::StreamingSession;
use tidewater::datafusion::object_store::memory::InMemory;
use tidewater::datafusion::object_store::path::Path;
use tidewater::datafusion::object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result as ObjectResult,
};

use crate::common::{push_json, start};

async fn memory_query(session: &StreamingSession, name: &str) -> tidewater::StreamingQuery {
    start(
        session,
        &format!(
            "CREATE TABLE {name}_in (n INT) WITH (connector = 'memory');
             CREATE TABLE {name} WITH (connector = 'memory', query_name = '{name}');
             INSERT INTO {name} SELECT n + 1 AS m FROM {name}_in"
        ),
    )
    .await
}

#[tokio::test]
async fn progress_uses_spark_field_names() {
    let session = StreamingSession::new();
    let query = memory_query(&session, "counts").await;
    push_json(&session, "counts_in", &[r#"{"n": 1}"#, r#"{"n": 2}"#]);
    query.process_all_available().await.unwrap();
    let progress = query.last_progress().unwrap();
    let json = serde_json::to_value(&progress).unwrap();
    for field in [
        "id",
        "runId",
        "name",
        "timestamp",
        "batchId",
        "numInputRows",
        "inputRowsPerSecond",
        "processedRowsPerSecond",
        "durationMs",
        "eventTime",
        "stateOperators",
        "sources",
        "sink",
    ] {
        assert!(json.get(field).is_some(), "missing {field} in {json}");
    }
    assert_eq!(json["batchId"], 0);
    assert_eq!(json["numInputRows"], 2);
    assert_eq!(json["name"], "counts");
    assert_eq!(json["id"], query.id());
    assert_eq!(json["runId"], query.run_id());
    // A memory stream's offset: its first batch, of this instance of the stream.
    assert_eq!(json["sources"][0]["endOffset"]["batches"], 1);
    assert!(json["sources"][0]["endOffset"]["stream"].is_string());
    assert_eq!(json["sources"][0]["startOffset"], serde_json::Value::Null);
    assert_eq!(json["sink"]["numOutputRows"], 2);
    assert!(json["durationMs"]["triggerExecution"].is_u64());
    assert!(chrono::DateTime::parse_from_rfc3339(json["timestamp"].as_str().unwrap()).is_ok());
    query.stop().await.unwrap();
}

/// An in-memory object store whose writes of offsets log entries take `delay`: a checkpoint on a
/// distant store, as far as the offsets log is concerned.
#[derive(Debug)]
struct SlowOffsets {
    inner: InMemory,
    delay: Duration,
}

impl std::fmt::Display for SlowOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlowOffsets({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for SlowOffsets {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> ObjectResult<PutResult> {
        if location.as_ref().contains("/offsets/") {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> ObjectResult<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, options: GetOptions) -> ObjectResult<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, ObjectResult<Path>>,
    ) -> BoxStream<'static, ObjectResult<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, ObjectResult<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> ObjectResult<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> ObjectResult<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn progress_reports_the_wait_for_the_offsets_log_as_wal_commit() {
    let session = StreamingSession::new();
    let delay = Duration::from_millis(500);
    let store = SlowOffsets {
        inner: InMemory::new(),
        delay,
    };
    let url = url::Url::parse("slow://checkpoints").unwrap();
    session.context().register_object_store(&url, Arc::new(store));
    let query = start(
        &session,
        "CREATE TABLE wal_in (n INT) WITH (connector = 'memory');
         CREATE TABLE wal WITH (connector = 'memory', checkpoint_location = 'slow://checkpoints/wal');
         INSERT INTO wal SELECT n + 1 AS m FROM wal_in",
    )
    .await;
    push_json(&session, "wal_in", &[r#"{"n": 1}"#]);
    query.process_all_available().await.unwrap();
    let progress = query.last_progress().unwrap();
    let phase = |name: &str| progress.duration_ms[name];
    // The batch is read and processed in a few milliseconds, then waits for its offsets entry
    // before the sink may see it; that wait is not the sink's.
    assert!(phase("walCommit") >= 250, "{:?}", progress.duration_ms);
    assert!(phase("addBatch") < 250, "{:?}", progress.duration_ms);
    assert!(
        phase("walCommit") <= phase("triggerExecution"),
        "{:?}",
        progress.duration_ms
    );
    query.stop().await.unwrap();
}

#[tokio::test]
async fn status_stop_and_await_termination() {
    let session = StreamingSession::new();
    let query = memory_query(&session, "st").await;
    query.process_all_available().await.unwrap();
    assert!(query.is_active());
    assert!(!query.status().is_trigger_active || query.status().message.contains("offsets"));
    // Still running: waiting times out.
    assert!(!query.await_termination(Some(Duration::from_millis(50))).await.unwrap());
    assert_eq!(session.active_queries().len(), 1);
    query.stop().await.unwrap();
    assert!(!query.is_active());
    assert_eq!(query.status().message, "Stopped");
    assert!(query.await_termination(Some(Duration::from_millis(1))).await.unwrap());
    assert!(session.active_queries().is_empty());
}

#[tokio::test]
async fn two_active_queries_cannot_share_a_name() {
    let session = StreamingSession::new();
    let query = memory_query(&session, "dup").await;
    let error = session
        .run_script("CREATE TABLE other WITH (connector = 'memory', query_name = 'dup'); INSERT INTO other SELECT n FROM dup_in")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("already running"), "{error}");
    query.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_query_surfaces_its_error_instead_of_hanging() {
    let session = StreamingSession::new();
    let query = start(
        &session,
        "CREATE TABLE src (s VARCHAR) WITH (connector = 'memory');
         CREATE TABLE out WITH (connector = 'memory');
         INSERT INTO out SELECT CAST(s AS INT) AS n FROM src",
    )
    .await;
    push_json(&session, "src", &[r#"{"s": "12"}"#, r#"{"s": "twelve"}"#]);
    let error = query.process_all_available().await.unwrap_err();
    assert!(error.to_string().contains("batch 0"), "{error}");
    assert!(query.exception().is_some());
    assert!(query.await_termination(None).await.is_err());
    assert!(query.status().message.starts_with("Terminated with exception"));
}

#[tokio::test]
async fn available_now_and_once_end_by_themselves() {
    let session = StreamingSession::new();
    session
        .run_script("CREATE TABLE src (n INT) WITH (connector = 'memory'); CREATE TABLE out WITH (connector = 'memory', trigger = 'once');")
        .await
        .unwrap();
    push_json(&session, "src", &[r#"{"n": 1}"#]);
    push_json(&session, "src", &[r#"{"n": 2}"#]);
    let query = start(&session, "INSERT INTO out SELECT n FROM src").await;
    assert!(query.await_termination(Some(Duration::from_secs(30))).await.unwrap());
    // Once: everything available in a single batch.
    assert_eq!(query.recent_progress().len(), 1);
    assert_eq!(query.last_progress().unwrap().num_input_rows, 2);
}

#[tokio::test(start_paused = true)]
async fn rate_source_generates_rows_per_second_on_a_processing_time_trigger() {
    let session = StreamingSession::new();
    let query = start(
        &session,
        "CREATE TABLE ticks WITH (connector = 'rate', rows_per_second = '10');
         CREATE TABLE out WITH (connector = 'memory', trigger = '1 second');
         INSERT INTO out SELECT value FROM ticks",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    query.stop().await.unwrap();
    // Paused time. Triggers fall on whole seconds of the wall clock, so the first one after the
    // start comes within a second; from then on each trigger, a second after the one before,
    // sees exactly 10 new rows.
    let progress = query.recent_progress();
    let with_rows: Vec<u64> = progress.iter().map(|p| p.num_input_rows).filter(|n| *n > 0).collect();
    assert!(
        with_rows.len() >= 3 && with_rows[1..].iter().all(|n| *n == 10),
        "{progress:?}"
    );
    let rows: u64 = with_rows.iter().sum();
    assert!((21..=35).contains(&rows), "{progress:?}");
    let values = crate::common::query_rows(
        &session,
        "SELECT min(value), max(value), count(DISTINCT value) FROM out",
    )
    .await;
    assert_eq!(values, [format!("0|{}|{rows}", rows - 1)]);
}

#[tokio::test(start_paused = true)]
async fn a_rate_stream_declares_a_watermark_in_sql_and_closes_windows_with_it() {
    let session = StreamingSession::new();
    // Fixed columns, so the clause stands alone in the list (and the column's case is free).
    let query = start(
        &session,
        "CREATE TABLE ticks (WATERMARK FOR Timestamp AS Timestamp - INTERVAL '0' SECOND)
           WITH (connector = 'rate', rows_per_second = '10');
         CREATE TABLE per_second WITH (connector = 'memory', output_mode = 'append', trigger = '1 second');
         INSERT INTO per_second SELECT window(timestamp, '1 second') AS w, count(*) AS n
         FROM ticks GROUP BY window(timestamp, '1 second')",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    query.stop().await.unwrap();
    let counts = crate::common::query_rows(&session, "SELECT n FROM per_second ORDER BY w").await;
    // Append mode emits only the windows the watermark closed: at least one of the four seconds,
    // none with more than the ten rows a second makes.
    assert!(!counts.is_empty(), "{:?}", query.recent_progress());
    assert!(counts.iter().all(|n| n.parse::<u32>().unwrap() <= 10), "{counts:?}");
    assert!(query.last_progress().unwrap().event_time.contains_key("watermark"));
}
