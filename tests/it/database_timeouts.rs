//! The database sink against servers that stop answering: a listener that accepts connections and
//! never writes, and a proxy in front of the real PostgreSQL or MariaDB that stalls in the middle
//! of a batch. Every step must end with an error naming the database, the table and the step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tidewater::StreamingSession;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::common::{env_url, push_json, start};

/// A server that accepts connections and never says a word. Dropping it closes them all.
pub(crate) struct SilentServer {
    pub(crate) port: u16,
    _tasks: JoinSet<()>,
}

impl SilentServer {
    pub(crate) async fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        SilentServer { port, _tasks: tasks }
    }
}

/// Starts `INSERT INTO out SELECT word FROM words` into a database sink at `url` with `options`,
/// and returns the error and how long it took.
async fn start_error(url: &str, options: &str) -> (String, Duration) {
    let session = StreamingSession::new();
    session
        .run_script(&format!(
            "CREATE TABLE words (word VARCHAR) WITH (connector = 'memory');
             CREATE TABLE out WITH (connector = 'database', url = '{url}', table = 'out',
               checkpoint_location = 'memory:///checkpoints/out' {options});"
        ))
        .await
        .unwrap();
    let started = Instant::now();
    // Far above any limit under test: reaching it means the sink hangs.
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        session.run_script("INSERT INTO out SELECT word FROM words"),
    )
    .await
    .expect("starting the query hangs");
    let error = result.expect_err("a silent server cannot take a query").to_string();
    (error, started.elapsed())
}

#[tokio::test]
async fn a_server_that_never_answers_fails_the_start_within_the_connect_timeout() {
    let server = SilentServer::start().await;
    let port = server.port;
    for (url, database) in [
        (
            format!("postgres://tidewater:secret@127.0.0.1:{port}/test"),
            format!("PostgreSQL postgres://tidewater:***@127.0.0.1:{port}/test"),
        ),
        (
            format!("mysql://root:secret@127.0.0.1:{port}/test"),
            format!("127.0.0.1:{port}"),
        ),
    ] {
        let (error, took) = start_error(&url, ", connect_timeout = '1 second'").await;
        assert!(
            error.contains(&database) && error.contains("table 'out'"),
            "{url}: {error}"
        );
        assert!(
            error.contains("connecting timed out after 1s") && error.contains("connect_timeout"),
            "{url}: {error}"
        );
        assert!(!error.contains("secret"), "{error}");
        // Not retried: one limit, and a little for the scheduler.
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(4),
            "{url}: {took:?}"
        );
    }
}

#[tokio::test]
async fn the_default_connect_timeout_is_ten_seconds() {
    let server = SilentServer::start().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/test", server.port);
    let (error, took) = start_error(&url, "").await;
    assert!(error.contains("connecting timed out after 10s"), "{error}");
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(14),
        "{took:?}"
    );
}

#[tokio::test]
async fn timeouts_must_be_positive_durations() {
    let session = StreamingSession::new();
    for (option, value) in [("connect_timeout", "0 seconds"), ("statement_timeout", "soon")] {
        let error = session
            .run_script(&format!(
                "CREATE TABLE out WITH (connector = 'database', url = 'sqlite://x.db', table = 't',
                   checkpoint_location = 'memory:///cp', {option} = '{value}')"
            ))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("option '{option}' must be a positive duration")),
            "{error}"
        );
    }
}

/// A TCP proxy to `upstream` that forwards everything until the client sends `trigger`; from then
/// on it forwards nothing in either direction and keeps every connection open, as a server that
/// hung (or a network that silently dropped the connection) does. Dropping it closes them all.
struct StallingProxy {
    port: u16,
    stalled: Arc<AtomicBool>,
    _tasks: JoinSet<()>,
}

impl StallingProxy {
    async fn start(upstream: String, trigger: &'static [u8]) -> StallingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let flag = stalled.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.unwrap();
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                connections.spawn(forward(client_read, server_write, flag.clone(), Some(trigger)));
                connections.spawn(forward(server_read, client_write, flag.clone(), None));
            }
        });
        StallingProxy {
            port,
            stalled,
            _tasks: tasks,
        }
    }
}

/// Copies `from` to `to` until the proxy stalls (or `trigger` shows up in what is read), then
/// holds both ends open, forwarding nothing.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
    trigger: Option<&'static [u8]>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if trigger.is_some_and(|t| buffer[..n].windows(t.len()).any(|w| w == t)) {
            stalled.store(true, Ordering::SeqCst);
        }
        if stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// The `host:port` of the server `url` names.
fn server_of(url: &str) -> String {
    let parsed = url::Url::parse(url).unwrap();
    let port = match parsed.scheme() {
        "postgres" | "postgresql" => 5432,
        _ => 3306,
    };
    format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap_or(port))
}

/// `url` with its host and port replaced by the proxy's.
fn through(url: &str, port: u16) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    parsed.set_host(Some("127.0.0.1")).unwrap();
    parsed.set_port(Some(port)).unwrap();
    parsed.to_string()
}

#[tokio::test]
async fn a_server_that_stalls_in_the_middle_of_a_batch_fails_the_query() {
    let mut servers = Vec::new();
    servers.extend(env_url("TIDEWATER_POSTGRES_URL"));
    servers.extend(env_url("TIDEWATER_MYSQL_URL"));
    for url in servers {
        let _serial = match url.starts_with("mysql") || url.starts_with("mariadb") {
            true => Some(crate::database::MYSQL_SERIAL.lock().await),
            false => None,
        };
        // The batch's rows carry the word; the proxy stalls when it sees it go by, after the
        // transaction has begun and recorded its commit mark.
        let proxy = StallingProxy::start(server_of(&url), b"stall-here").await;
        let proxied = through(&url, proxy.port);
        let table = format!("stalled_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let session = StreamingSession::new();
        let query = start(
            &session,
            &format!(
                "CREATE TABLE words (word VARCHAR) WITH (connector = 'memory');
                 CREATE TABLE out WITH (connector = 'database', url = '{proxied}', table = '{table}',
                   statement_timeout = '2 seconds', checkpoint_location = 'memory:///checkpoints/{table}');
                 INSERT INTO out SELECT word FROM words"
            ),
        )
        .await;
        push_json(&session, "words", &[r#"{"word": "fine"}"#]);
        query.process_all_available().await.unwrap();
        assert!(!proxy.stalled.load(Ordering::SeqCst));

        push_json(&session, "words", &[r#"{"word": "stall-here"}"#]);
        let started = Instant::now();
        let error = tokio::time::timeout(Duration::from_secs(60), query.process_all_available())
            .await
            .expect("the query hangs on a stalled server")
            .unwrap_err()
            .to_string();
        assert!(proxy.stalled.load(Ordering::SeqCst), "the proxy never stalled");
        assert!(
            error.contains(&format!("127.0.0.1:{}", proxy.port))
                && error.contains(&format!("table '{table}'"))
                && error.contains("writing batch 1 timed out after 2s")
                && error.contains("statement_timeout"),
            "{url}: {error}"
        );
        assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());

        // Closing the stalled connections ends their sessions: the batch was rolled back.
        drop(proxy);
        let rows = written_words(&url, &table).await;
        assert_eq!(rows, ["fine"], "{url}");
    }
}

/// The words in `table` (read directly, not through the proxy), and drops the table.
async fn written_words(url: &str, table: &str) -> Vec<String> {
    let select = format!("SELECT CAST(word AS CHAR) AS word FROM {table} ORDER BY word");
    let drop = format!("DROP TABLE {table}");
    // The server notices the closed connections at once, but rolls back and releases the locks
    // in its own time: ask again for a little while.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let result: Result<Vec<String>, sqlx::Error> = if url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let select = select.replace("AS CHAR", "AS TEXT");
            let rows = sqlx::query_scalar(&select).fetch_all(&pool).await;
            if rows.is_ok() {
                sqlx::query(&drop).execute(&pool).await.unwrap();
            }
            rows
        } else {
            let pool = sqlx::MySqlPool::connect(url).await.unwrap();
            let rows = sqlx::query_scalar(&select).fetch_all(&pool).await;
            if rows.is_ok() {
                sqlx::query(&drop).execute(&pool).await.unwrap();
            }
            rows
        };
        match result {
            Ok(rows) => return rows,
            Err(e) if Instant::now() < deadline => {
                println!("reading {table}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("reading {table}: {e}"),
        }
    }
}
