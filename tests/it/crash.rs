//! Crash recovery end to end: the CLI is killed with SIGKILL while files keep arriving, restarted
//! each time over the same checkpoint, and in the end its output equals that of a run that was
//! never interrupted: same rows, none twice, none lost.
//!
//! The job runs two queries over one stream of files: windowed counts with a watermark in append
//! mode into the files sink, and running totals per client in update mode into a database (SQLite
//! always; PostgreSQL and MariaDB when their URLs are set). Kills come at random moments, and at
//! moments picked by watching the checkpoints and the output directory: right after a batch is
//! logged (the database transaction is then under way), while the files sink writes its files,
//! and after the state is written but before the commit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{drop_file, query_rows};
use tidewater::StreamingSession;

/// Input files; enough that the query is busy most of the time, so kills land mid-batch.
const FILES: usize = 140;
const ROWS_PER_FILE: usize = 2500;
const KILLS: usize = 22;

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// File `i`: rows around `i * 5` minutes, up to 8 minutes older than the latest row before them
/// and never more, so with a 10-minute watermark no row is late however the files are cut into
/// batches: both runs must then give the same windows.
fn events(i: usize, rng: &mut Lcg) -> String {
    let mut text = String::new();
    for _ in 0..ROWS_PER_FILE {
        let seconds = (i as i64) * 300 + rng.next(600) as i64 - 480;
        let time = chrono::DateTime::from_timestamp(1_767_225_600 + seconds, 0).unwrap();
        text.push_str(&format!(
            "{{\"time\": \"{}\", \"action\": \"a{}\", \"client\": \"c{}\", \"amount\": {}}}\n",
            time.format("%Y-%m-%dT%H:%M:%S"),
            rng.next(4),
            rng.next(50),
            rng.next(1000)
        ));
    }
    text
}

struct Paths {
    input: PathBuf,
    output: PathBuf,
    checkpoint: PathBuf,
    /// The totals query's checkpoint and table.
    totals_checkpoint: PathBuf,
    table: String,
    /// The pairs query's output and checkpoint.
    pairs: PathBuf,
    pairs_checkpoint: PathBuf,
}

impl Paths {
    fn new(root: &Path, input: &Path, name: &str) -> Paths {
        Paths {
            input: input.to_path_buf(),
            output: root.join(format!("{name}-out")),
            checkpoint: root.join(format!("{name}-checkpoint")),
            totals_checkpoint: root.join(format!("{name}-totals-checkpoint")),
            table: format!("totals_{name}_{}", std::process::id()),
            pairs: root.join(format!("{name}-pairs")),
            pairs_checkpoint: root.join(format!("{name}-pairs-checkpoint")),
        }
    }
}

/// The database the totals go to, and a client to read them back.
enum Database {
    Sqlite(String),
    Postgres(String),
    MySql(String),
}

impl Database {
    fn url(&self) -> &str {
        match self {
            Database::Sqlite(u) | Database::Postgres(u) | Database::MySql(u) => u,
        }
    }

    /// The totals table, sorted, as `client|n|total`; then the table is dropped.
    async fn take_totals(&self, table: &str) -> Vec<String> {
        let select = format!("SELECT client, n, total FROM {table} ORDER BY client");
        let drop = format!("DROP TABLE {table}");
        let rows: Vec<(String, i64, i64)> = match self {
            Database::Sqlite(url) => {
                let pool = sqlx::SqlitePool::connect(url).await.unwrap();
                let rows = sqlx::query_as(&select).fetch_all(&pool).await.unwrap();
                sqlx::query(&drop).execute(&pool).await.unwrap();
                rows
            }
            Database::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                let rows = sqlx::query_as(&select).fetch_all(&pool).await.unwrap();
                sqlx::query(&drop).execute(&pool).await.unwrap();
                rows
            }
            Database::MySql(url) => {
                let pool = sqlx::MySqlPool::connect(url).await.unwrap();
                let select = select.replacen("client", "CAST(client AS CHAR)", 1);
                let rows = sqlx::query_as(&select).fetch_all(&pool).await.unwrap();
                sqlx::query(&drop).execute(&pool).await.unwrap();
                rows
            }
        };
        rows.into_iter().map(|(u, n, t)| format!("{u}|{n}|{t}")).collect()
    }
}

/// The job: windowed counts with a watermark, append mode, into the files sink; running totals
/// per client of the first event of each client and second, update mode, into `database` (a
/// chain: a deduplication bounded by the watermark, then an aggregation); and the pairs of
/// events of one client and action at most 10 seconds apart, a join of the stream with itself,
/// into the files sink.
fn job(root: &Path, paths: &Paths, database: &Database, trigger: &str) -> PathBuf {
    let sql = format!(
        "CREATE TABLE events (time TIMESTAMP, action VARCHAR, client VARCHAR, amount INT,
           WATERMARK FOR time AS time - INTERVAL '10' MINUTE)
         WITH (connector = 'files', format = 'json', path = '{input}', max_files_per_trigger = '1');
         CREATE TABLE windows WITH (connector = 'files', format = 'parquet', path = '{output}',
           output_mode = 'append', checkpoint_location = '{checkpoint}', state_partitions = '2',
           state_snapshot_interval = '3'{trigger});
         INSERT INTO windows SELECT action, window(time, '10 minutes') AS w, count(*) AS n, sum(amount) AS total
           FROM events GROUP BY action, window(time, '10 minutes');
         CREATE TABLE totals WITH (connector = 'database', url = '{url}', table = '{table}',
           output_mode = 'update', checkpoint_location = '{totals_checkpoint}'{trigger});
         INSERT INTO totals SELECT client, count(*) AS n, sum(amount) AS total
           FROM (SELECT DISTINCT ON (client, time) client, time, amount FROM events) GROUP BY client;
         CREATE TABLE pairs WITH (connector = 'files', format = 'parquet', path = '{pairs}',
           output_mode = 'append', checkpoint_location = '{pairs_checkpoint}', state_partitions = '2'{trigger});
         INSERT INTO pairs SELECT a.client, a.action, a.time AS first, b.time AS second, b.amount
           FROM events a JOIN events b ON a.client = b.client AND a.action = b.action
             AND b.time > a.time AND b.time <= a.time + INTERVAL '10' SECOND;",
        input = paths.input.display(),
        output = paths.output.display(),
        checkpoint = paths.checkpoint.display(),
        url = database.url(),
        table = paths.table,
        totals_checkpoint = paths.totals_checkpoint.display(),
        pairs = paths.pairs.display(),
        pairs_checkpoint = paths.pairs_checkpoint.display(),
    );
    let file = root.join(format!("job-{}-{}.sql", paths.table, trigger.len()));
    std::fs::write(&file, sql).unwrap();
    file
}

/// When to kill the running process.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// After a random time.
    Random,
    /// As soon as a batch is in the offsets log but not in the commits log.
    BatchLogged,
    /// As soon as a batch of the totals query is logged but not committed: its database
    /// transaction is under way or about to be.
    TotalsLogged,
    /// As soon as a data file of an uncommitted batch is in the output directory.
    SinkWriting,
    /// As soon as the state of an uncommitted batch is written.
    StateWritten,
}

fn count_files(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(suffix))
        })
        .count()
    })
}

/// Whether `moment` has come for the process writing to `paths`; `before` is the number of
/// output files when the process started.
fn arrived(moment: Moment, paths: &Paths, before: usize) -> bool {
    let checkpoint = match moment {
        Moment::TotalsLogged => &paths.totals_checkpoint,
        _ => &paths.checkpoint,
    };
    match (moment, uncommitted(checkpoint)) {
        (Moment::Random, _) | (_, None) => false,
        (Moment::TotalsLogged, Some(_)) => true,
        (Moment::BatchLogged, Some(_)) => true,
        (Moment::SinkWriting, Some(_)) => count_files(&paths.output, ".parquet") > before,
        (Moment::StateWritten, Some(batch)) => paths.checkpoint.join(format!("state/0/{batch}.delta")).exists(),
    }
}

/// The batch a checkpoint has logged but not committed, if any.
fn uncommitted(checkpoint: &Path) -> Option<u64> {
    let offsets = last_entry(&checkpoint.join("offsets"));
    offsets.filter(|o| Some(*o) != last_entry(&checkpoint.join("commits")))
}

fn run_to_end(sql: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .arg("run")
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the final run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Highest batch id among the numbered files of a checkpoint log folder.
fn last_entry(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .max()
}

/// The sink's rows as Tidewater reads them back (committed files only), sorted.
async fn output_rows(dir: &Path) -> Vec<String> {
    let session = StreamingSession::new();
    session
        .sql(&format!(
            "CREATE EXTERNAL TABLE result STORED AS PARQUET LOCATION '{}'",
            dir.display()
        ))
        .await
        .unwrap();
    query_rows(
        &session,
        "SELECT action, w['start'], w['end'], n, total FROM result ORDER BY 1, 2",
    )
    .await
}

/// The pairs sink's rows, sorted.
async fn pair_rows(dir: &Path) -> Vec<String> {
    let session = StreamingSession::new();
    session
        .sql(&format!(
            "CREATE EXTERNAL TABLE pairs STORED AS PARQUET LOCATION '{}'",
            dir.display()
        ))
        .await
        .unwrap();
    query_rows(&session, "SELECT * FROM pairs ORDER BY 1, 2, 3, 4, 5").await
}

/// Kills and restarts the job writing totals to `database`, then compares both sinks with an
/// uninterrupted run's.
async fn crash_and_compare(database: impl FnOnce(&Path) -> Database) {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let database = database(root);
    let input = root.join("input");
    std::fs::create_dir(&input).unwrap();
    let mut rng = Lcg(42);
    let files: Vec<String> = (0..FILES).map(|i| events(i, &mut rng)).collect();
    let crashing = Paths::new(root, &input, "crashing");
    let streaming = job(root, &crashing, &database, "");

    let mut next = 0;
    let drop_files = |n: usize, next: &mut usize| {
        for _ in 0..n.min(FILES - *next) {
            drop_file(&input, &format!("events-{:03}.json", *next), files[*next].as_bytes());
            *next += 1;
        }
    };
    let (mut mid_batch, mut sink_written, mut state_written, mut totals_mid_batch) = (0, 0, 0, 0);
    for kill in 0..KILLS {
        // New files keep arriving, a few per run, so each run has a backlog to work through.
        drop_files(6, &mut next);
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidewater"))
            .arg("run")
            .arg(&streaming)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moment = [
            Moment::Random,
            Moment::BatchLogged,
            Moment::SinkWriting,
            Moment::StateWritten,
            Moment::TotalsLogged,
        ][kill % 5];
        let before = count_files(&crashing.output, ".parquet");
        let deadline = std::time::Instant::now() + Duration::from_millis(100 + rng.next(1500));
        while std::time::Instant::now() < deadline && !arrived(moment, &crashing, before) {
            std::thread::sleep(Duration::from_micros(200));
        }
        child.kill().unwrap(); // SIGKILL: no chance to finish anything
        child.wait().unwrap();
        // Where did the kill land? A batch in the offsets log but not in the commits log was cut
        // short; its sink files and state files tell how far it got.
        totals_mid_batch += uncommitted(&crashing.totals_checkpoint).is_some() as u32;
        if let Some(batch) = uncommitted(&crashing.checkpoint) {
            mid_batch += 1;
            sink_written += crashing
                .output
                .join("_tidewater_metadata")
                .join(batch.to_string())
                .exists() as u32;
            state_written += crashing.checkpoint.join(format!("state/0/{batch}.delta")).exists() as u32;
        }
    }
    drop_files(FILES, &mut next);
    eprintln!(
        "{KILLS} kills: {mid_batch} inside a batch of the windows query ({sink_written} after its files were \
         written, {state_written} after state shard 0 was), {totals_mid_batch} inside a batch of the totals query"
    );
    assert!(
        mid_batch >= 5,
        "too few kills landed inside a batch: the test proves little"
    );
    run_to_end(&job(root, &crashing, &database, ", trigger = 'available_now'"));

    let uninterrupted = Paths::new(root, &input, "uninterrupted");
    run_to_end(&job(root, &uninterrupted, &database, ", trigger = 'available_now'"));
    let expected = output_rows(&uninterrupted.output).await;
    assert!(expected.len() > 200, "the job emits many windows: {}", expected.len());
    let got = output_rows(&crashing.output).await;
    let mut distinct = got.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), got.len(), "no window written twice");
    let missing: Vec<&String> = expected.iter().filter(|r| !got.contains(r)).collect();
    let extra: Vec<&String> = got.iter().filter(|r| !expected.contains(r)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} of {} windows differ from the uninterrupted run\n  missing: {:?}\n  instead: {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)],
        &extra[..extra.len().min(5)]
    );

    let expected = pair_rows(&uninterrupted.pairs).await;
    assert!(expected.len() > 1000, "the join finds many pairs: {}", expected.len());
    let got = pair_rows(&crashing.pairs).await;
    assert_eq!(got.len(), expected.len(), "the pairs of the killed runs");
    assert!(
        got == expected,
        "the pairs of the killed runs differ from the uninterrupted run's"
    );

    let expected = database.take_totals(&uninterrupted.table).await;
    assert_eq!(expected.len(), 50, "one row per client");
    let counted: usize = expected
        .iter()
        .map(|r| r.split('|').nth(1).unwrap().parse::<usize>().unwrap())
        .sum();
    assert!(
        counted < FILES * ROWS_PER_FILE,
        "the deduplication removed the repeated (client, second) events: {counted} counted"
    );
    assert_eq!(
        database.take_totals(&crashing.table).await,
        expected,
        "the totals table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_again_and_again_the_files_and_sqlite_sinks_equal_an_uninterrupted_run() {
    crash_and_compare(|root| Database::Sqlite(format!("sqlite://{}", root.join("totals.db").display()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_again_and_again_the_postgres_sink_equals_an_uninterrupted_run() {
    let Some(url) = crate::common::env_url("TIDEWATER_POSTGRES_URL") else {
        return;
    };
    crash_and_compare(|_| Database::Postgres(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_again_and_again_the_mysql_sink_equals_an_uninterrupted_run() {
    let Some(url) = crate::common::env_url("TIDEWATER_MYSQL_URL") else {
        return;
    };
    // The database tests kill MariaDB connections; not these.
    let _serial = crate::database::MYSQL_SERIAL.lock().await;
    crash_and_compare(|_| Database::MySql(url)).await;
}
