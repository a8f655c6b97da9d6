//! Black-box tests of Tally: real processes, real clients, crashes. The tests live in `tests/`; this
//! library holds what they share, and `src/bin/` the helper processes they start and kill.

pub mod network;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Sends `authorization: Bearer <token>` with every call (nothing without a token).
#[derive(Debug, Clone, Default)]
pub struct Key(Option<MetadataValue<Ascii>>);

impl Key {
    pub fn new(token: &str) -> Self {
        Self(Some(format!("Bearer {token}").parse().expect("a token is ASCII")))
    }

    /// No key at all.
    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Key {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to `tally serve` that sends a key with every call.
pub type Authed = InterceptedService<Channel, Key>;

/// Events per append in the crash appender: a crash must never leave part of one visible.
pub const CRASH_EVENTS_PER_APPEND: u64 = 3;

/// The payload the crash appender writes for a stream version, so a reader can check every byte.
pub fn crash_payload(stream: &str, version: u64) -> Vec<u8> {
    format!("{stream}:{version}").into_bytes()
}

/// The real `tally` binary, built (once per test process) by cargo exactly as a user would build it.
pub fn tally_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // Build as a person's `cargo build` would: the variables cargo set for this test (its package's
        // name, version and directory) would make ring's build script, which watches them, rebuild the
        // TLS stack — and so the binary — on every test run.
        let ours = |name: &str| {
            ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
        };
        let mut build = escargot::CargoBuild::new();
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(ours) {
                build = build.env_remove(name);
            }
        }
        let run = build
            .package("tally-gateway")
            .bin("tally")
            .current_release()
            .run()
            .unwrap_or_else(|e| panic!("building the tally binary failed: {e}"));
        run.path().to_owned()
    })
}

/// A `tally serve` process on a free loopback port. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct TallyServer {
    child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    /// Everything the process wrote to stderr so far (also echoed to the test's stderr as it comes).
    stderr: Arc<Mutex<String>>,
    /// The thread copying stderr; it ends when the process (and so its end of the pipe) is gone.
    stderr_reader: Option<JoinHandle<()>>,
}

impl TallyServer {
    /// Starts `tally serve` on `data` and waits until it listens. The server logs at `warn` (or as
    /// `TALLY_TEST_SERVE_LOG` says, e.g. `info,tally_engine=debug`); its stderr shows with a failing test.
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data, extra, &[])
    }

    /// [`TallyServer::start`] with environment variables `env` set for the process (`RUST_LOG` too).
    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(tally_binary());
        // The test's own OpenTelemetry settings only: none inherited from the machine running it.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", std::env::var("TALLY_TEST_SERVE_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tally serve starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = {
            let (pipe, stderr) = (child.stderr.take().expect("piped stderr"), Arc::clone(&stderr));
            // Spawned threads inherit the test's output capture: the lines show with a failing test.
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("[tally serve] {line}");
                    let mut all = stderr.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    all.push_str(&line);
                    all.push('\n');
                }
            })
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("tally listening on ") {
                    let url = rest.split_whitespace().next().unwrap_or_default().to_owned();
                    let _ = tx.send(url);
                }
            }
        });
        let Ok(url) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let status = child.wait().map_or_else(|e| format!("unknown ({e})"), describe);
            let _ = stderr_reader.join();
            let stderr = stderr.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            panic!("tally serve did not report its address within 60 s (exit status: {status}); its stderr:\n{stderr}")
        };
        Self { child: Some(child), url, data: data.to_owned(), stderr, stderr_reader: Some(stderr_reader) }
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// A wallet client with the platform key.
    pub async fn client(&self) -> WalletServiceClient<Authed> {
        WalletServiceClient::new(self.channel().await)
    }

    /// A connection with the platform key the first start wrote to `<data>/platform.key`.
    pub async fn channel(&self) -> Authed {
        self.channel_with(Key::new(&self.platform_key())).await
    }

    /// A connection sending `key`.
    pub async fn channel_with(&self, key: Key) -> Authed {
        InterceptedService::new(self.raw_channel().await, key)
    }

    /// A connection without any key.
    pub async fn raw_channel(&self) -> Channel {
        Channel::from_shared(self.url.clone()).expect("valid url").connect().await.expect("connect to tally")
    }

    /// The `tally` command line, sending the platform key (`TALLY_KEY_FILE`).
    pub fn cli(&self) -> Command {
        let mut command = Command::new(tally_binary());
        command.env("TALLY_KEY_FILE", self.data.join("platform.key"));
        command
    }

    /// The platform key's token, as the first start wrote it.
    pub fn platform_key(&self) -> String {
        let path = self.data.join("platform.key");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())).trim().to_owned()
    }

    /// Waits up to `limit` for the process to exit by itself; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = std::time::Instant::now();
        let child = self.child.as_mut().expect("server running");
        loop {
            if let Some(status) = child.try_wait().expect("process status") {
                self.child = None;
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the process gets no chance to flush or clean up.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        }
    }

    /// SIGTERM, then waits for the process to exit by itself. When it does not exit with status 0, the
    /// status (exit code or killing signal) and the process's whole stderr are printed, so a failing
    /// test says why.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM sent");
        let status = child.wait().expect("tally exits after SIGTERM");
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        if !status.success() {
            eprintln!("tally serve (pid {pid}) did not exit cleanly after SIGTERM: {}; its stderr:\n{}", describe(status), self.stderr());
        }
        status
    }
}

/// An exit status in words: the exit code, or the signal that ended the process.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => {
            let name = nix::sys::signal::Signal::try_from(signal).map_or_else(|_| "unknown".to_owned(), |s| s.as_str().to_owned());
            format!("killed by signal {signal} ({name}){}", if status.core_dumped() { ", core dumped" } else { "" })
        }
        (None, None) => format!("{status:?}"),
    }
}

impl Drop for TallyServer {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Where tests find PostgreSQL: a superuser connection to an existing database, from which each test
/// creates its own throwaway database. `.ci/run` starts the installed server if it is down.
pub const TEST_PG_URL_VAR: &str = "TALLY_TEST_PG_URL";

/// `host=/var/run/postgresql user=$USER dbname=postgres` (user `root` when `USER` is unset).
pub fn test_pg_url_default() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "root".to_owned());
    format!("host=/var/run/postgresql user={user} dbname=postgres")
}

/// A database of its own for one test, dropped afterwards.
#[derive(Debug)]
pub struct TestDatabase {
    /// Connection string for the new database (`key=value` form).
    pub url: String,
    /// The same as a `postgresql://` URL, as `tally serve --store` takes it.
    pub postgres_url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection to the server's administrative database (for what a test does to this one).
    pub async fn admin(&self) -> tokio_postgres::Client {
        connect(&self.admin_url).await
    }

    /// Creates `tally_test_<uuid>`. Fails the test with a clear message if no server can be reached.
    pub async fn create() -> Self {
        let admin_url = std::env::var(TEST_PG_URL_VAR).unwrap_or_else(|_| test_pg_url_default());
        let admin = connect(&admin_url).await;
        let name = format!("tally_test_{}", uuid::Uuid::new_v4().simple());
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let mut config: tokio_postgres::Config = admin_url.parse().expect("valid admin url");
        config.dbname(&name);
        let url = pg_config_string(&config);
        let postgres_url = pg_url(&config);
        Self { url, postgres_url, name, admin_url }
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {url:?}: {e}. Start it (`bash .ci/run` does: pg_ctlcluster <version> main start) \
             or point {TEST_PG_URL_VAR} at a server where this user may create databases."
        )
    });
    tokio::spawn(connection);
    client
}

/// Renders a config back into `key=value` form (tokio-postgres has no Display for it).
fn pg_config_string(config: &tokio_postgres::Config) -> String {
    let mut parts = Vec::new();
    for host in config.get_hosts() {
        match host {
            tokio_postgres::config::Host::Tcp(h) => parts.push(format!("host={h}")),
            tokio_postgres::config::Host::Unix(path) => parts.push(format!("host={}", path.display())),
        }
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!("password={}", String::from_utf8_lossy(password)));
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("dbname={db}"));
    }
    parts.join(" ")
}

/// Renders a config as a `postgresql://` URL (Unix-socket hosts go in the query string).
fn pg_url(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or("postgres");
    let password = config.get_password().map(|p| format!(":{}", String::from_utf8_lossy(p))).unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Unix(path)) => format!("postgresql:///{db}?host={}&user={user}&port={port}", path.display()),
        Some(tokio_postgres::config::Host::Tcp(host)) => format!("postgresql://{user}{password}@{host}:{port}/{db}"),
        None => format!("postgresql://{user}{password}@localhost:{port}/{db}"),
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Dropping needs its own runtime: Drop may run inside or outside one.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(connection);
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.ok()
            })
        })
        .join();
    }
}

/// A codec that sends bytes as they are and throws the reply's bytes away: calls any RPC with any body.
#[derive(Debug, Default)]
pub struct Raw;

#[derive(Debug)]
pub struct RawEncoder;

#[derive(Debug)]
pub struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        bytes::Buf::advance(src, n);
        Ok(Some(()))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Calls `rpc` (`package.Service/Method`) with `body` as its encoded request; the reply's status.
pub async fn raw_call<T>(grpc: &mut tonic::client::Grpc<T>, rpc: &str, body: Vec<u8>) -> Result<(), tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.into().to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_maybe_shared(format!("/{rpc}")).expect("a valid path");
    grpc.unary(tonic::Request::new(body), path, Raw).await.map(|_| ())
}

/// A free loopback TCP port (bound, then released for a server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a TCP port on loopback").port()
}

/// The text `GET /metrics` answers at `address` (a server's `--metrics-listen`).
pub async fn scrape_metrics(address: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = String::new();
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("the metrics listener accepts");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: tally\r\nConnection: close\r\n\r\n").await.expect("request sent");
    stream.read_to_string(&mut body).await.expect("answer read");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}
