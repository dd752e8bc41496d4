//! Helpers of the end-to-end tests: a fresh PostgreSQL database per test,
//! input files made by the generator's library, and the oracle of
//! docs/architecture.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use clap::Parser;
use generator::{Generator, Settings};
use std::process::Command as Process;
use streamer::{Cli, Command, Config, RunArgs};
use tokio_postgres::{Client, NoTls};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The server the tests use: `DATABASE_URL`, as `scripts/test.sh` sets it.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run the tests with scripts/test.sh, or set it to a PostgreSQL server")
}

/// `url` pointing at database `name` instead.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    format!("{}/{name}{query}", &base[..host_end])
}

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&admin_url()).await;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
        TestDb { url: with_database(&admin_url(), &name), name }
    }

    /// A name for a database that does not exist yet.
    pub fn unborn() -> TestDb {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        TestDb { url: with_database(&admin_url(), &name), name }
    }

    pub async fn create(&self) {
        connect(&admin_url())
            .await
            .batch_execute(&format!("CREATE DATABASE {}", self.name))
            .await
            .expect("CREATE DATABASE");
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&admin_url(), NoTls).await.ok()?;
                tokio::spawn(conn);
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.ok()
            })
        })
        .join();
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect to the test PostgreSQL");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A stream running in the background on a fresh database and folder.
pub struct LiveStream {
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub client: Client,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<streamer::RunSummary>>,
}

impl LiveStream {
    /// Starts streaming (not `--once`) with `extra` flags; returns once the
    /// streamer watches its folder and has applied its schema.
    pub async fn start(extra: &[&str]) -> LiveStream {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data folder");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(streamer::run(args(&data, &dir.path().join("cp"), &db.url, extra), shutdown.clone()));
        let client = db.client().await;
        wait_for_schema(&client).await;
        LiveStream { db, dir, data, client, shutdown, task }
    }

    /// Publishes file `k` of `g` into the data folder.
    pub fn publish(&self, g: &mut Generator, k: i64) -> PathBuf {
        publish_file(&self.data, g, k)
    }

    /// Stops the stream as SIGTERM would and returns what it did.
    pub async fn stop(&mut self) -> streamer::RunSummary {
        self.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(15), &mut self.task)
            .await
            .expect("the stream stops within 15 s")
            .expect("the stream task does not panic")
            .expect("the stream ends without error")
    }
}

/// Stream settings for a test: no settle time, short backoff, no HTTP,
/// plus `extra` flags; validated.
pub fn args(data: &Path, checkpoints: &Path, url: &str, extra: &[&str]) -> Config {
    run_args(data, checkpoints, url, extra).config().unwrap_or_else(|e| panic!("{e}"))
}

/// [`args`] before validation.
pub fn run_args(data: &Path, checkpoints: &Path, url: &str, extra: &[&str]) -> RunArgs {
    let mut argv: Vec<String> = ["streamer", "--data-dir"].map(String::from).to_vec();
    argv.push(data.display().to_string());
    argv.push("--checkpoint-dir".into());
    argv.push(checkpoints.display().to_string());
    argv.push("--database-url".into());
    argv.push(url.to_owned());
    argv.extend(["--file-settle", "0", "--max-backoff", "200", "--http-addr", "off"].map(String::from));
    argv.extend(extra.iter().map(|s| s.to_string()));
    match Cli::try_parse_from(argv).map(Cli::command) {
        Ok(Command::Run(args)) => args,
        #[allow(unreachable_patterns)]
        Ok(other) => panic!("not a run: {other:?}"),
        Err(e) => panic!("{e}"),
    }
}

pub fn instant(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).expect("valid instant")
}

/// Writes `files` generated files into `dir`; returns their paths in creation order.
pub fn generate(dir: &Path, settings: Settings, files: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("data folder");
    let mut g = Generator::new(settings, "test");
    let t = instant("2026-01-01T00:00:00Z");
    (0..files)
        .map(|k| {
            let f = g.next_file(t + chrono::TimeDelta::seconds(k as i64));
            runtime::publish::publish(dir, &f.name, &f.contents).expect("publish")
        })
        .collect()
}

/// Publishes file `k` of `g` (stamped 2026-01-01 + k s) into `dir`.
pub fn publish_file(dir: &Path, g: &mut Generator, k: i64) -> PathBuf {
    let f = g.next_file(instant("2026-01-01T00:00:00Z") + chrono::TimeDelta::seconds(k));
    runtime::publish::publish(dir, &f.name, &f.contents).expect("publish")
}

/// Publishes the next `n` files of `g` into `dir`, appending them to `files`.
pub fn publish_more(dir: &Path, g: &mut Generator, n: usize, files: &mut Vec<PathBuf>) {
    for _ in 0..n {
        let k = files.len() as i64;
        files.push(publish_file(dir, g, k));
    }
}

/// A row of `events`, as the oracle and the table both give it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Event {
    pub user_name: String,
    pub user_email: String,
    pub event_type: String,
    pub product_id: i32,
    pub product_name: String,
    pub product_category: String,
    /// As PostgreSQL prints NUMERIC(10,2): `12.30`.
    pub price: String,
}

pub type Table = BTreeMap<(i32, i64), Event>;

/// A random generator for a randomised test: seeded from the environment
/// variable `var` when it is set (to repeat a run), else at random; the seed
/// is printed either way.
pub fn seeded_rng(var: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed: u64 = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("seed {seed} ({var}={seed} repeats it)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// The oracle (docs/architecture.md): for each (user_id, event_time) the last valid row
/// in (file order, line order) over `files`; and the count of invalid rows.
pub fn oracle(files: &[PathBuf]) -> (Table, usize) {
    let mut table = Table::new();
    let mut invalid = 0;
    for path in files {
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_path(path).expect("readable test file");
        for record in reader.records() {
            let record = record.expect("well-formed test CSV");
            let fields: [&str; 9] = std::array::from_fn(|i| record.get(i).unwrap_or_default());
            let valid = contract::validate::field_count(record.len()).and_then(|()| contract::validate(fields));
            let Ok(e) = valid else {
                invalid += 1;
                continue;
            };
            table.insert(
                (e.user_id, e.event_time_micros),
                Event {
                    user_name: e.user_name.to_owned(),
                    user_email: e.user_email.to_owned(),
                    event_type: e.event_type.as_str().to_owned(),
                    product_id: e.product_id,
                    product_name: e.product_name.to_owned(),
                    product_category: e.product_category.to_owned(),
                    price: contract::write::format_price(e.price_cents),
                },
            );
        }
    }
    (table, invalid)
}

/// The `events` table, every column.
pub async fn table(client: &Client) -> Table {
    let rows = client
        .query(
            "SELECT user_id, event_time, user_name, user_email, event_type, product_id, product_name, product_category, product_price::text FROM events",
            &[],
        )
        .await
        .expect("SELECT events");
    rows.iter()
        .map(|r| {
            let time: DateTime<Utc> = r.get(1);
            (
                (r.get(0), time.timestamp_micros()),
                Event {
                    user_name: r.get(2),
                    user_email: r.get(3),
                    event_type: r.get(4),
                    product_id: r.get(5),
                    product_name: r.get(6),
                    product_category: r.get(7),
                    price: r.get(8),
                },
            )
        })
        .collect()
}

/// Waits until a streamer has started on this database (its schema exists).
pub async fn wait_for_schema(client: &Client) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while client
        .query_one("SELECT to_regclass('load_history') IS NOT NULL", &[])
        .await
        .map(|r| !r.get::<_, bool>(0))
        .unwrap_or(true)
    {
        assert!(tokio::time::Instant::now() < deadline, "the streamer did not start within 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until the load history holds `n` rows (the table may not exist yet).
pub async fn wait_for_loads(client: &Client, n: i64, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let loaded = match client.query_one("SELECT count(*) FROM load_history", &[]).await {
            Ok(row) => row.get(0),
            Err(_) => 0,
        };
        if loaded >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{loaded} of {n} files loaded within {within:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Copies every regular file of `from` into `to`, keeping modification times.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("folder");
    for entry in std::fs::read_dir(from).expect("folder") {
        let entry = entry.expect("entry");
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            let target = to.join(entry.file_name());
            std::fs::copy(entry.path(), &target).expect("copy");
            let mtime = entry.metadata().and_then(|m| m.modified()).expect("mtime");
            std::fs::File::options().write(true).open(&target).and_then(|f| f.set_modified(mtime)).expect("set mtime");
        }
    }
}

/// Paths of the `*.csv` files of `dir`, by name.
pub fn csv_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    v.sort();
    v
}

/// A PostgreSQL cluster of the test's own, on a free port, that the test may
/// stop and start: from `PG_BIN_DIR` (set by scripts/test.sh) or the newest
/// `/usr/lib/postgresql/*/bin`, run as the `postgres` OS user when root.
pub struct TempCluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    socket_dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

fn running_as_root() -> bool {
    Process::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries (set PG_BIN_DIR)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    dirs.pop().expect("PostgreSQL server binaries under /usr/lib/postgresql (or set PG_BIN_DIR)")
}

impl TempCluster {
    /// A new cluster, started.
    pub fn start() -> TempCluster {
        let cluster = TempCluster::init();
        cluster.up();
        cluster
    }

    /// The folder of the server's Unix socket (`host=` it to skip TCP).
    pub fn socket_dir(&self) -> String {
        self.socket_dir.display().to_string()
    }

    /// Appends `lines` to postgresql.conf (before [`TempCluster::up`]).
    pub fn configure(&self, lines: &str) {
        use std::io::Write as _;
        let mut conf = std::fs::OpenOptions::new().append(true).open(self.data.join("postgresql.conf")).expect("conf");
        writeln!(conf, "{lines}").expect("conf written");
    }

    /// Replaces pg_hba.conf.
    pub fn hba(&self, text: &str) {
        std::fs::write(self.data.join("pg_hba.conf"), text).expect("pg_hba.conf");
    }

    /// Writes a file into the data folder, owned by the server's user with
    /// mode 0600 (what PostgreSQL asks of a key file).
    pub fn private_file(&self, name: &str, contents: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.data.join(name);
        std::fs::write(&path, contents).expect("file written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if running_as_root() {
            let ok = Process::new("chown").arg("postgres").arg(&path).status().map(|s| s.success()).unwrap_or(false);
            assert!(ok, "chown postgres {}", path.display());
        }
        path
    }

    /// A new cluster, made but not started: configure it, then
    /// [`TempCluster::up`].
    pub fn init() -> TempCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = running_as_root();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let data = dir.path().join("data");
        let bin = pg_bin_dir();
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let cluster = TempCluster { socket_dir: dir.path().to_owned(), _dir: dir, data, bin, port };
        let ok = cluster
            .command("initdb", root)
            .args([
                "-D",
                &cluster.data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "initdb failed");
        cluster
    }

    fn command(&self, tool: &str, root: bool) -> Process {
        let path = self.bin.join(tool);
        if root {
            let mut c = Process::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Process::new(path)
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let ok = self
            .command("pg_ctl", running_as_root())
            .args(["-D", &self.data.display().to_string(), "-w", "-t", "60"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "pg_ctl {args:?} failed");
    }

    /// Starts the server (again).
    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.socket_dir.display()
        );
        let log = self.socket_dir.join("server.log").display().to_string();
        self.pg_ctl(&["-o", &opts, "-l", &log, "start"]);
    }

    /// Stops the server: `fast` (clients disconnected, clean shutdown) or
    /// `immediate` (as if the power went out).
    pub fn down(&self, mode: &str) {
        self.pg_ctl(&["-m", mode, "stop"]);
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl", running_as_root())
            .args(["-D", &self.data.display().to_string(), "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Rows in the load history, or `None` while the server cannot answer.
pub async fn loads_now(url: &str) -> Option<i64> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.ok()?;
    tokio::spawn(conn);
    client.query_one("SELECT count(*) FROM load_history", &[]).await.ok().map(|r| r.get(0))
}

/// Sends the streamer's log to the test's output (shown when a test fails;
/// `RUST_LOG` filters it, default `info`).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Each analytics table and its GROUP BY definition over `events`
/// (db/003_analytics.sql): `(table, definition)`.
pub const ANALYTICS_DEFINITIONS: [(&str, &str); 3] = [
    (
        "SELECT window_start, product_category, views, purchases, users, revenue FROM event_metrics_minute",
        "SELECT metrics_window(event_time), product_category, count(*) FILTER (WHERE event_type = 'view'), \
         count(*) FILTER (WHERE event_type = 'purchase'), count(DISTINCT user_id), \
         coalesce(sum(product_price) FILTER (WHERE event_type = 'purchase'), 0)::numeric FROM events GROUP BY 1, 2",
    ),
    (
        "SELECT user_id, product_category, views, purchases FROM user_category_counts",
        "SELECT user_id, product_category, count(*) FILTER (WHERE event_type = 'view'), \
         count(*) FILTER (WHERE event_type = 'purchase') FROM events GROUP BY 1, 2",
    ),
    (
        "SELECT user_id, product_id, views, purchases FROM user_product_counts",
        "SELECT user_id, product_id, count(*) FILTER (WHERE event_type = 'view'), \
         count(*) FILTER (WHERE event_type = 'purchase') FROM events GROUP BY 1, 2",
    ),
];

/// `ALTER DATABASE <the client's database> <change>` (`SET name = 'value'`,
/// `RESET name`): the sessions opened after it (the streamer's) take it.
pub async fn database_set(client: &Client, change: &str) {
    let sql = format!(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I {}', current_database()); END $$",
        change.replace('\'', "''")
    );
    client.batch_execute(&sql).await.expect("database setting");
}

/// Asserts that the metrics and counters equal their GROUP BY definitions
/// row for row (and hold as many rows); returns the rows of each table.
pub async fn assert_analytics_exact(client: &Client) -> [i64; 3] {
    let mut sizes = [0; 3];
    for (i, (table, definition)) in ANALYTICS_DEFINITIONS.iter().enumerate() {
        let only = |a: &str, b: &str| format!("SELECT count(*) FROM (({a}) EXCEPT ALL ({b})) d");
        let extra = count(client, &only(table, definition)).await;
        let missing = count(client, &only(definition, table)).await;
        let rows = count(client, &format!("SELECT count(*) FROM ({table}) t")).await;
        assert_eq!(
            (extra, missing),
            (0, 0),
            "{table}: {extra} rows not in its definition, {missing} missing ({rows} rows)"
        );
        sizes[i] = rows;
    }
    sizes
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0, no client library needed):
/// the status code, the content type and the body; `None` while nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_to_end(&mut raw)).await.ok()?.ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    Some((status, content_type, body.to_owned()))
}

/// [`http_get`], waiting up to 10 s for the server to answer.
pub async fn http_get_ok(port: u16, path: &str) -> (u16, String, String) {
    for _ in 0..200 {
        if let Some(answer) = http_get(port, path).await {
            return answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("nothing answers on port {port}");
}

/// Writes `bytes` to `dir/name` by rename (a hidden temporary name first,
/// creating the folders on the way) with modification time `mtime`: a file
/// published as the generator does, of the time the test chooses.
pub fn put_at(dir: &Path, name: &str, bytes: &[u8], mtime: std::time::SystemTime) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("folders");
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("x")));
    std::fs::write(&tmp, bytes).expect("written");
    std::fs::File::options().write(true).open(&tmp).and_then(|f| f.set_modified(mtime)).expect("mtime");
    std::fs::rename(&tmp, &path).expect("renamed");
    path
}

/// Registers files of `data` in the registry of a migrated database, as the
/// registrar would (the tests that change files after registration).
pub async fn register(url: &str, source: &str, data: &Path, names: &[&str]) {
    let mut client = connect(url).await;
    streamer::sink::schema::migrate(&mut client).await.expect("migrations");
    let ids: Vec<streamer::checkpoint::FileId> = names
        .iter()
        .map(|n| streamer::watch::file_id(n, &std::fs::metadata(data.join(n)).expect("file to register")))
        .collect();
    streamer::registry::register(&client, streamer::registry::REGISTER, source, &ids).await.expect("registered");
}

/// The real `streamer` binary on a folder, with `extra` flags and `env`.
pub fn streamer_bin(data: &Path, cp: &Path, url: &str, extra: &[&str], env: &[(&str, &str)]) -> Process {
    let mut cmd = Process::new(env!("CARGO_BIN_EXE_streamer"));
    cmd.args(["--data-dir", &data.display().to_string(), "--checkpoint-dir", &cp.display().to_string()])
        .args(["--database-url", url, "--file-settle", "0", "--max-backoff", "200", "--http-addr", "off"])
        .args(extra)
        .env_remove("DATABASE_URL")
        .env_remove(streamer::crashpoint::VARIABLE);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A child process killed (and reaped) when dropped: a test that fails
/// part-way leaves no streamer behind holding the test's output open.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the analytics applier has folded every committed batch.
pub async fn wait_for_applied(client: &Client, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let waiting = match client.query_one("SELECT count(*) FROM batches WHERE applied_at IS NULL", &[]).await {
            Ok(row) => row.get::<_, i64>(0),
            Err(_) => 1,
        };
        if waiting == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{waiting} batches not applied within {within:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The peak resident set of a live process, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// A Citus cluster of the test's own: a coordinator and `workers` workers,
/// each a [`TempCluster`] with `citus` preloaded, database `database` on
/// each with the extension, the workers added. `None` (and a message) when
/// the server has no citus.so (`../shared/tools/citus.sh` installs it here).
pub struct CitusCluster {
    pub coordinator: TempCluster,
    pub workers: Vec<TempCluster>,
    database: String,
}

impl CitusCluster {
    /// Whether the servers of [`TempCluster`] can load Citus.
    pub fn available() -> bool {
        pg_bin_dir().parent().is_some_and(|v| v.join("lib/citus.so").exists())
    }

    /// Started, Citus enabled on the coordinator ([`CitusCluster::enable`]).
    pub async fn start(database: &str, workers: usize) -> Option<CitusCluster> {
        let cluster = CitusCluster::without_citus(database, workers).await?;
        cluster.enable().await;
        Some(cluster)
    }

    /// Started, the workers ready, but the coordinator's database a plain
    /// PostgreSQL one (no extension yet): a database to move to Citus.
    pub async fn without_citus(database: &str, workers: usize) -> Option<CitusCluster> {
        if !CitusCluster::available() {
            println!("SKIPPED: Citus is not installed for {} (../shared/tools/citus.sh)", pg_bin_dir().display());
            return None;
        }
        let node = || {
            let n = TempCluster::init();
            // 2PC, in-doubt transactions of a worker that died recovered
            // within a second, and room for the coordinator's connections
            // to the workers (Citus opens several per session and node).
            n.configure(
                "shared_preload_libraries = 'citus'\nmax_prepared_transactions = 100\n\
                 citus.recover_2pc_interval = '1s'\nmax_connections = 300",
            );
            n.up();
            n
        };
        let cluster = CitusCluster {
            coordinator: node(),
            workers: (0..workers).map(|_| node()).collect(),
            database: database.into(),
        };
        for n in std::iter::once(&cluster.coordinator).chain(&cluster.workers) {
            connect(&n.url("postgres"))
                .await
                .batch_execute(&format!("CREATE DATABASE {database}"))
                .await
                .expect("database");
        }
        for w in &cluster.workers {
            connect(&w.url(database)).await.batch_execute("CREATE EXTENSION citus").await.expect("citus");
        }
        Some(cluster)
    }

    /// What an operator does to make the coordinator's database a Citus
    /// one: the extension, the coordinator's address, the workers.
    pub async fn enable(&self) {
        let c = connect(&self.url()).await;
        c.batch_execute("CREATE EXTENSION citus").await.expect("citus");
        c.execute("SELECT citus_set_coordinator_host('127.0.0.1', $1)", &[&i32::from(self.coordinator.port)])
            .await
            .expect("coordinator registered");
        for w in &self.workers {
            c.execute("SELECT citus_add_node('127.0.0.1', $1)", &[&i32::from(w.port)]).await.expect("worker added");
        }
    }

    /// The coordinator's database: what the streamer connects to.
    pub fn url(&self) -> String {
        self.coordinator.url(&self.database)
    }
}

/// Asserts that `events` is distributed and its shards are on `workers` nodes.
pub async fn assert_events_on_workers(client: &Client, workers: i64) {
    let distributed =
        count(client, "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'events'::regclass").await;
    assert_eq!(distributed, 1, "events is distributed");
    let nodes = count(
        client,
        "SELECT count(DISTINCT nodename || nodeport) FROM citus_shards WHERE table_name = 'events'::regclass",
    )
    .await;
    assert_eq!(nodes, workers, "events' shards are on every worker");
}

/// The plan of `statement` with `params`, as text.
pub async fn explain(
    client: &tokio_postgres::Client,
    statement: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> String {
    let rows = client.query(&format!("EXPLAIN (COSTS OFF) {statement}"), params).await.expect("explain");
    rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
}
