//! The `tally` binary: parses settings, sets up logging, wires the concrete backends and runs the chosen
//! subcommand. Everything else lives in the library so tests can drive it the same way.

#![allow(clippy::print_stdout)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use std::path::Path;

use tally_cluster::membership::{GOSSIP_INTERVAL, Membership, MembershipConfig};
use tally_cluster::{Node, Router};
use tally_engine::actors::{
    CANCEL_CRASH_POINTS, CRASH_POINTS, CommandMeta, CrashPoint, Flows, KeyBook, NoSnapshots, Owns, ProgramBook, Programs,
    REFERRAL_CRASH_POINTS, Snapshots, TRANSFER_CRASH_POINTS, WalletKey, WalletRegistry, WalletTimers,
};
use tally_engine::clock::{Clock, SteadyClock, SystemClock};
use tally_engine::domain::program::{ProgramCommand, ProgramCommandBody};
use tally_engine::domain::{ProgramSettings, TenantId};
use tally_engine::limits::{KEYS_REFRESH_MS, PROGRAM_SETTINGS_REFRESH_MS};
use tally_engine::store::{EmbeddedStore, EventStore, PostgresStore, log_identity};
use tally_gateway::access::Access;
use tally_gateway::cli::{
    Cli, ClusterCommand, Command, FlowsCommand, ProjectionsCommand, RewardsCommand, SnapshotsCommand, SnapshotsTarget, StoreCommand,
};
use tally_gateway::config::{ClusterSettings, ServeSettings, StoreUrl, TlsFiles};
use tally_gateway::derived::{self, DerivedError};
use tally_gateway::keys::PLATFORM_KEY_FILE;
use tally_gateway::redact::redact;
use tally_gateway::reporting::ReadSide;
use tally_gateway::routing;
use tally_gateway::service::Engine;
use tally_gateway::telemetry::{LogFormat, Telemetry};
use tally_projections::{PostgresReadModel, Projection, ReadModel, RunnerOptions, SledReadModel};
use tally_snapshots::{PostgresSnapshotStore, SledSnapshotStore, SnapshotStore, Snapshotter};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The trace exporter's connection lives on the runtime.
    let _inside = runtime.enter();
    let mut serving = None;
    let telemetry = match &cli.command {
        Command::Serve(args) => match ServeSettings::resolve(args) {
            Ok(settings) => {
                let telemetry = Telemetry::install(settings.otlp_endpoint.as_deref(), settings.log_format);
                serving = Some(settings);
                telemetry
            }
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        },
        _ => Ok(Telemetry::logs_only(LogFormat::Text)),
    };
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(_) => serve(serving.take().expect("resolved above")).await,
            Command::Wallet(command) => shown(tally_gateway::client::run(command).await?),
            Command::Bench(args) => shown(tally_gateway::bench::run(args).await?),
            Command::Snapshots(command) => snapshots(command).await,
            Command::Store(StoreCommand::Copy { from, to }) => store_copy(&from, &to).await,
            Command::Projections(ProjectionsCommand::Status(target)) => shown(tally_gateway::ops::status(target).await?),
            Command::Projections(ProjectionsCommand::Rebuild { name, target }) => shown(tally_gateway::ops::rebuild(name, target).await?),
            Command::Audit(command) => audit(command).await,
            Command::Flows(FlowsCommand::List { tenant, stuck, target }) => {
                shown(tally_gateway::flowsctl::list_flows(tenant, stuck, target).await?)
            }
            Command::Rewards(RewardsCommand::Define(args)) => shown(tally_gateway::flowsctl::define_reward(*args).await?),
            Command::Rewards(RewardsCommand::Restock { tenant, reward, quantity, key, reason, target }) => {
                shown(tally_gateway::flowsctl::restock(tenant, reward, quantity, key, reason, target).await?)
            }
            Command::Rewards(RewardsCommand::List { tenant, target }) => {
                shown(tally_gateway::flowsctl::list_rewards(tenant, target).await?)
            }
            Command::Cluster(ClusterCommand::Status { wallet, target }) => {
                shown(tally_gateway::clusterctl::status(wallet.as_deref(), target).await?)
            }
            Command::Keys(command) => {
                let direct = match command.store() {
                    Some(url) => Some(KeyBook::open(open_store(url).await?, Arc::new(SystemClock)).await?),
                    None => None,
                };
                emit(&tally_gateway::keyctl::run(command, direct.as_deref()).await?.to_string());
                Ok(())
            }
        }
    });
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The concrete backends `tally serve` runs on, closed in order at shutdown.
enum Backends {
    Embedded {
        log: Arc<EmbeddedStore>,
        snapshots: Option<Arc<SledSnapshotStore>>,
    },
    Postgres {
        log: Arc<PostgresStore>,
    },
    /// A KurrentDB log, with this node's snapshots in sled beside its data directory.
    #[cfg(feature = "kurrentdb")]
    Kurrent {
        snapshots: Option<Arc<SledSnapshotStore>>,
    },
}

impl Backends {
    /// The node's own snapshot store beside its data directory, if it keeps one.
    fn local_snapshots(&self) -> Option<&Arc<SledSnapshotStore>> {
        match self {
            Self::Embedded { snapshots, .. } => snapshots.as_ref(),
            Self::Postgres { .. } => None,
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent { snapshots } => snapshots.as_ref(),
        }
    }

    async fn open(settings: &ServeSettings) -> Result<(Self, Arc<dyn EventStore>, Arc<dyn Snapshots>), Box<dyn std::error::Error>> {
        match &settings.store {
            StoreUrl::Embedded(dir) => {
                let log = Arc::new(EmbeddedStore::open(dir)?);
                let report = log.report();
                tracing::info!(data = %dir.display(), events = report.events, streams = report.streams, "embedded event log ready");
                let (snapshots, port) = local_snapshots(dir, settings)?;
                Ok((Self::Embedded { log: log.clone(), snapshots }, log, port))
            }
            StoreUrl::Postgres(url) => {
                let log =
                    Arc::new(PostgresStore::connect(url).await.map_err(|e| format!("cannot use the event log at {}: {e}", redact(url)))?);
                tracing::info!(store = %redact(url), head = *log.head().borrow(), "postgres event log ready");
                let port: Arc<dyn Snapshots> = match settings.snapshots {
                    Some(policy) => Arc::new(Snapshotter::new(Arc::new(PostgresSnapshotStore::connect(url).await?), policy)),
                    None => Arc::new(NoSnapshots),
                };
                Ok((Self::Postgres { log: log.clone() }, log, port))
            }
            StoreUrl::Kurrent(url) => Self::open_kurrent(url, settings).await,
        }
    }

    #[cfg(feature = "kurrentdb")]
    async fn open_kurrent(
        url: &str,
        settings: &ServeSettings,
    ) -> Result<(Self, Arc<dyn EventStore>, Arc<dyn Snapshots>), Box<dyn std::error::Error>> {
        let log = tally_engine::store::KurrentStore::connect(url)
            .await
            .map_err(|e| format!("cannot use the event log at {}: {e}", redact(url)))?;
        tracing::info!(store = %redact(url), head = *log.head().borrow(), "kurrentdb event log ready");
        let (snapshots, port) = local_snapshots(&settings.data, settings)?;
        Ok((Self::Kurrent { snapshots }, Arc::new(log), port))
    }

    #[cfg(not(feature = "kurrentdb"))]
    async fn open_kurrent(
        url: &str,
        _: &ServeSettings,
    ) -> Result<(Self, Arc<dyn EventStore>, Arc<dyn Snapshots>), Box<dyn std::error::Error>> {
        Err(kurrent_not_built(url).into())
    }

    async fn close(self) {
        match self {
            Self::Embedded { log, snapshots } => {
                log.close().await;
                flush_snapshots(snapshots).await;
            }
            Self::Postgres { log } => log.close(),
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent { snapshots } => flush_snapshots(snapshots).await,
        }
    }
}

/// The sled snapshot store a node keeps itself (to flush at shutdown), and the port wallets use.
type LocalSnapshots = (Option<Arc<SledSnapshotStore>>, Arc<dyn Snapshots>);

/// Snapshots in sled under `dir` (when the settings keep any).
fn local_snapshots(dir: &Path, settings: &ServeSettings) -> Result<LocalSnapshots, Box<dyn std::error::Error>> {
    Ok(match settings.snapshots {
        Some(policy) => {
            let store = Arc::new(open_snapshots(dir)?);
            (Some(store.clone()), Arc::new(Snapshotter::new(store, policy)))
        }
        None => (None, Arc::new(NoSnapshots)),
    })
}

async fn flush_snapshots(snapshots: Option<Arc<SledSnapshotStore>>) {
    if let Some(snapshots) = snapshots
        && let Err(error) = snapshots.flush().await
    {
        tracing::warn!(%error, "snapshots not flushed; wallets will rebuild them from the log");
    }
}

#[cfg(not(feature = "kurrentdb"))]
fn kurrent_not_built(url: &str) -> String {
    format!(
        "cannot use the event log at {}: this tally was built without KurrentDB support (cargo build --features kurrentdb)",
        redact(url)
    )
}

/// Prints a command's output. A reader that went away (`tally bench | head -1`) ends the output quietly,
/// as with other Unix tools, instead of a panic in `println!`.
/// Prints a command's answer; the command succeeded.
fn shown(text: impl std::fmt::Display) -> Result<(), Box<dyn std::error::Error>> {
    emit(&text.to_string());
    Ok(())
}

fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(error) = writeln!(out, "{text}").and_then(|()| out.flush())
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write the output: {error}");
    }
}

/// How projections run here: joined to the calls' traces when traces are exported.
fn runner_options() -> RunnerOptions {
    RunnerOptions { trace_calls: tally_gateway::telemetry::tracing_on(), ..RunnerOptions::default() }
}

/// Starts the projections the settings ask for, each following the log into its read model.
async fn start_read_side(
    settings: &ServeSettings,
    store: &Arc<dyn EventStore>,
    log_id: &str,
) -> Result<ReadSide, Box<dyn std::error::Error>> {
    let mut read = ReadSide::default();
    if settings.local_read_model {
        let dir = settings.data.join("read-models");
        let model = derived::open_or_reset("the local read model", &dir, |d| SledReadModel::open(d))?;
        follow_this_log(&model, "the local read model", log_id, store).await?;
        read.projections.push(Arc::new(Projection::spawn(Arc::clone(store), Arc::new(model), runner_options())));
    }
    if let Some(url) = &settings.reporting_db {
        let model = Arc::new(
            PostgresReadModel::connect(url).await.map_err(|e| format!("cannot use the reporting database at {}: {e}", redact(url)))?,
        );
        follow_this_log(model.as_ref(), "the reporting read model", log_id, store).await?;
        tracing::info!(database = %redact(url), "reporting read model ready");
        read.reporting = Some(Arc::clone(&model));
        read.projections.push(Arc::new(Projection::spawn(Arc::clone(store), model, runner_options())));
    }
    Ok(read)
}

async fn serve(settings: ServeSettings) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(address) = settings.metrics_listen {
        serve_metrics(address)?;
    }
    let (backends, store, snapshots) = Backends::open(&settings).await?;
    let clock = steady_clock(&store, &settings).await?;
    let log_id = log_identity(store.as_ref(), clock.now_ms()).await.map_err(|e| format!("cannot read the log's identity: {e}"))?;
    if let Some(local) = backends.local_snapshots() {
        snapshots_follow_this_log(local, &settings.data, &log_id).await?;
    }
    let read = start_read_side(&settings, &store, &log_id).await?;
    let tenants: Vec<String> = settings.tenants.iter().map(|(t, _)| t.to_string()).collect();
    let refresh = Duration::from_millis(PROGRAM_SETTINGS_REFRESH_MS);
    let program_book = Arc::new(
        ProgramBook::new(Arc::clone(&store), clock.clone(), refresh)
            .with_tenants_max(settings.tenants_max)
            .with_wallets_max(settings.wallets_max),
    );
    bootstrap_programs(&program_book, &settings.tenants).await?;
    let programs: Arc<dyn Programs> = program_book.clone();
    let registry =
        WalletRegistry::start_with_snapshots(settings.registry.clone(), Arc::clone(&store), programs.clone(), clock.clone(), snapshots)
            .await?;
    let tls = settings.tls.as_ref().map(tls_config).transpose()?;
    let keys = KeyBook::open(Arc::clone(&store), clock.clone()).await.map_err(|e| format!("cannot read the log's API keys: {e}"))?;
    let access = access(&settings, &keys).await?;
    let keys_refresher = keys.spawn_refresher(Duration::from_millis(KEYS_REFRESH_MS));
    // Before the port is bound and readiness printed: from then on a SIGTERM means an orderly shutdown.
    let shutdown = shutdown_signal()?;
    let listener =
        tokio::net::TcpListener::bind(settings.listen).await.map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let address = listener.local_addr()?;
    let cluster = match &settings.cluster {
        Some(cluster) => Some(join_cluster(cluster, address, &log_id).await?),
        None => None,
    };
    let (timers, flows) = background(cluster.as_ref(), &store, &registry, Arc::clone(&program_book) as Arc<dyn Programs>, clock.clone());
    tracing::info!(%address, tenants = ?tenants, "serving gRPC");
    let log = log_place(&settings.store);
    if let Some(node) = &cluster {
        node.membership.become_ready().await;
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("tally listening on {scheme}://{address} ({log}, tenants: {})", tenants.join(", "));
    let broken = Arc::new(std::sync::Mutex::new(None::<String>));
    let shutdown = stop_when(shutdown, Arc::clone(&store), Arc::clone(&broken), cluster.as_ref().map(|node| Arc::clone(&node.membership)));
    let identifiers = Arc::new(tally_engine::actors::IdentifierBook::new(Arc::clone(&store)));
    let engine = Engine { registry: registry.clone(), store, programs: program_book, keys, clock, flows: flows.clone(), identifiers };
    let hand_off = cluster.as_ref().map(|node| routing::spawn_hand_off(node.membership.view(), Arc::clone(&node.router), registry.clone()));
    let registry_metrics = settings.metrics_listen.map(|_| tally_gateway::telemetry::spawn_registry_metrics(registry.clone()));
    let edge = tally_gateway::server::Edge { access, rates: settings.rates, tls, cluster: cluster.clone() };
    tally_gateway::server::run(listener, engine, read.clone(), edge, shutdown).await?;
    keys_refresher.abort();
    timers.stop();
    flows.stop();
    for task in [hand_off, registry_metrics].into_iter().flatten() {
        task.abort();
    }
    registry.shutdown().await;
    if let Some(node) = cluster
        && let Ok(membership) = Arc::try_unwrap(node.membership)
    {
        membership.stop().await;
    }
    for projection in &read.projections {
        projection.stop().await;
    }
    backends.close().await;
    if let Some(reason) = broken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
        return Err(format!(
            "stopped: the event log can no longer be written ({reason}); every call acknowledged before that is durable, none after \
             it was acknowledged. Free the disk or fix the device, then start again (the log is verified on open)"
        )
        .into());
    }
    tracing::info!("stopped cleanly: every acknowledged call is durable");
    Ok(())
}

/// Where the log is, as the readiness line says it (a database URL without its password).
fn log_place(store: &StoreUrl) -> String {
    match store {
        StoreUrl::Embedded(dir) => format!("data in {}", dir.display()),
        StoreUrl::Postgres(url) | StoreUrl::Kurrent(url) => format!("log in {}", redact(url)),
    }
}

/// Serves Prometheus metrics at `http://<address>/metrics`.
fn serve_metrics(address: SocketAddr) -> Result<(), String> {
    // Latencies as histograms (summaries cannot be aggregated across nodes): 0.5 ms to 10 s.
    const SECONDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
    // A due wallet runs within a second or two, or hours late after a downtime: 10 ms to a day.
    const LATENESS: &[f64] = &[0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| b.set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full("tally_store_batch_appends".into()), BATCH))
        .and_then(|b| {
            b.set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full("tally_timers_lateness_seconds".into()), LATENESS)
        })
        .map_err(|e| format!("cannot set the histogram buckets: {e}"))?
        .install()
        .map_err(|e| format!("cannot serve metrics on {address}: {e}"))?;
    tracing::info!(%address, "serving Prometheus metrics at /metrics");
    Ok(())
}

/// Whether this node runs a wallet's background work (all of them off a cluster).
fn owns(cluster: Option<&Node>) -> Owns {
    let Some(node) = cluster else { return Arc::new(|_: &WalletKey| true) };
    let router = Arc::clone(&node.router);
    Arc::new(move |key: &WalletKey| router.owns(key.tenant.as_str(), key.wallet.as_str()))
}

/// What runs by itself beside the calls: the wallets' timers and the flows' resumer, on a cluster node
/// only for the wallets it owns.
fn background(
    cluster: Option<&Node>,
    store: &Arc<dyn EventStore>,
    registry: &WalletRegistry,
    programs: Arc<dyn Programs>,
    clock: Arc<dyn Clock>,
) -> (WalletTimers, Flows) {
    let timers = WalletTimers::spawn_for(Arc::clone(store), registry.clone(), Arc::clone(&clock), owns(cluster));
    (timers, start_flows(cluster, store, registry, programs, clock))
}

/// Flows across aggregates, resumed on the node that owns their wallet. `TALLY_TEST_CRASH_AT=<point>`
/// (one of `CRASH_POINTS`, `CANCEL_CRASH_POINTS`, `TRANSFER_CRASH_POINTS`, `REFERRAL_CRASH_POINTS`) aborts the process the first time a flow reaches that point: how the tests
/// kill a server between two steps of a redemption.
fn start_flows(
    cluster: Option<&Node>,
    store: &Arc<dyn EventStore>,
    registry: &WalletRegistry,
    programs: Arc<dyn Programs>,
    clock: Arc<dyn Clock>,
) -> Flows {
    let crash_at = std::env::var("TALLY_TEST_CRASH_AT").ok().filter(|point| {
        CRASH_POINTS.iter().chain(&CANCEL_CRASH_POINTS).chain(&TRANSFER_CRASH_POINTS).chain(&REFERRAL_CRASH_POINTS).any(|p| p == point)
    });
    if let Some(point) = &crash_at {
        tracing::warn!(point, "TALLY_TEST_CRASH_AT is set: the process aborts when a flow reaches this point");
    }
    let crash: CrashPoint = Arc::new(move |point: &str| {
        if crash_at.as_deref() == Some(point) {
            eprintln!("TALLY_TEST_CRASH_AT: aborting at {point}");
            std::process::abort();
        }
        false
    });
    Flows::start_with(Arc::clone(store), clock, registry.clone(), programs, owns(cluster), crash)
}

/// Resolves when the server should stop: on `signal`, or when the log can no longer be written (the
/// reason kept in `broken`), which stops the server as a signal would — health NOT_SERVING, calls in
/// flight finished, a non-zero exit instead of reads served beside dead writes. A cluster node first
/// leaves gracefully: the others route its wallets elsewhere before it stops serving.
async fn stop_when(
    signal: impl Future<Output = ()>,
    store: Arc<dyn EventStore>,
    broken: Arc<std::sync::Mutex<Option<String>>>,
    membership: Option<Arc<Membership>>,
) {
    tokio::select! {
        () = signal => {}
        reason = log_broken(store) => {
            tracing::error!(%reason, "the event log can no longer be written; stopping");
            metrics::gauge!("tally_log_broken").set(1.0);
            *broken.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
        }
    }
    if let Some(membership) = membership {
        tracing::info!("leaving the cluster: peers take over this node's wallets");
        membership.announce_leaving().await;
    }
}

/// Starts gossiping as `cluster` says, this node serving gRPC at `address` on the log `log_id`: its membership (status
/// `joining` until it serves) and the router wallet calls go through.
async fn join_cluster(cluster: &ClusterSettings, address: SocketAddr, log_id: &str) -> Result<Node, Box<dyn std::error::Error>> {
    let config = MembershipConfig {
        node_id: cluster.node_id.clone(),
        // Nodes gossip only with nodes on the same log: two clusters on one network never merge.
        cluster_id: format!("tally-{log_id}"),
        listen: cluster.listen,
        advertise: cluster.advertise_gossip.unwrap_or(SocketAddr::new(cluster.advertise, cluster.listen.port())),
        seeds: cluster.seeds.clone(),
        grpc_url: format!(
            "{}://{}",
            if cluster.ca.is_some() { "https" } else { "http" },
            cluster.advertise_grpc.unwrap_or(SocketAddr::new(cluster.advertise, address.port()))
        ),
        gossip_interval: GOSSIP_INTERVAL,
    };
    let membership = Membership::start(config).await?;
    let tls = match &cluster.ca {
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| format!("cannot read --cluster-ca {}: {e}", ca.display()))?;
            // tonic skips what it cannot parse: with no certificate, every peer would be refused.
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!("--cluster-ca {} holds no PEM certificate", ca.display()).into());
            }
            // A peer that accepts the connection and then says nothing must not hold calls forever.
            Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)).timeout(Duration::from_secs(2)))
        }
        None => None,
    };
    let router = Arc::new(Router::new(cluster.node_id.clone(), membership.view(), tls));
    tracing::info!(node = %cluster.node_id, gossip = %cluster.listen, seeds = ?cluster.seeds, "joined the cluster's gossip");
    Ok(Node { membership: Arc::new(membership), router })
}

/// The server's TLS settings from its files: a file that cannot be read stops the start, naming it.
fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, String> {
    let read = |path: &Path, flag: &str| std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()));
    let identity = Identity::from_pem(read(&files.cert, "--tls-cert")?, read(&files.key, "--tls-key")?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &files.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca, "--tls-client-ca")?));
    }
    Ok(config)
}

/// How calls are authenticated: by the log's keys, the first of which this start makes if there is none
/// (its token written to `<data>/platform.key`), or not at all if the settings say so.
async fn access(settings: &ServeSettings, keys: &Arc<KeyBook>) -> Result<Access, Box<dyn std::error::Error>> {
    if settings.insecure_no_auth {
        tracing::warn!("serving WITHOUT API keys (--insecure-no-auth): every caller is the platform operator");
        return Ok(Access::Open);
    }
    std::fs::create_dir_all(&settings.data).map_err(|e| format!("cannot create {}: {e}", settings.data.display()))?;
    let path = settings.data.join(PLATFORM_KEY_FILE);
    if let Some(key_id) = tally_gateway::keys::bootstrap(keys, &path).await.map_err(|e| format!("cannot create the first API key: {e}"))? {
        tracing::info!(key_id, path = %path.display(), "created the platform API key");
        println!("created the platform API key {key_id}; its token is in {} (mode 0600), where the tally CLI finds it", path.display());
    }
    Ok(Access::Keys(Arc::clone(keys)))
}

/// Resolves with the reason once `store` can no longer append.
async fn log_broken(store: Arc<dyn EventStore>) -> String {
    loop {
        if let Some(reason) = store.broken() {
            return reason;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks that `model` follows this log (`log_id`), recording it if the model has not recorded any. A
/// model built from another log would report that log's figures as this one's: refused.
async fn follow_this_log(model: &dyn ReadModel, what: &str, log_id: &str, store: &Arc<dyn EventStore>) -> Result<(), String> {
    let fail = |e: tally_projections::ProjectionError| format!("cannot check which log {what} follows: {e}");
    let advice = "give it an empty database (or delete its directory) and it is rebuilt from this log";
    match model.followed_log().await.map_err(fail)? {
        Some(followed) if followed == log_id => Ok(()),
        Some(followed) => Err(format!("{what} was built from another log ({followed}), not this one ({log_id}); {advice}")),
        None => {
            // From before logs had identities: adopted, unless it has read more than this log holds.
            let (read, head) = (model.live().await.map_err(fail)?.checkpoint, *store.head().borrow());
            if read > head {
                return Err(format!(
                    "{what} has read {read} events, more than this log holds ({head}): it was built from another log; {advice}"
                ));
            }
            model.follow_log(log_id).await.map_err(fail)
        }
    }
}

/// Snapshots kept beside the data directory are of one log (a node's data directory pointed at another
/// KurrentDB, a restored directory): those of another log could be trusted for streams of the same name,
/// so they are purged — they are derived — and the snapshot store notes the log it now follows.
async fn snapshots_follow_this_log(store: &SledSnapshotStore, data: &Path, log_id: &str) -> Result<(), Box<dyn std::error::Error>> {
    let note = data.join("snapshots.log");
    match std::fs::read_to_string(&note) {
        Ok(followed) if followed.trim() == log_id => return Ok(()),
        Ok(followed) => {
            let purged = store.purge().await?;
            tracing::warn!(
                followed = followed.trim(),
                log = log_id,
                purged,
                "the snapshots were of another log; purged, they are rebuilt from this one"
            );
        }
        // From before snapshot stores noted their log, or a new one: adopted.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("cannot read {}: {error}", note.display()).into()),
    }
    std::fs::write(&note, log_id).map_err(|e| format!("cannot write {}: {e}", note.display()))?;
    Ok(())
}

/// How far the wall clock may drift from the engine's before it counts as a step (NTP slews far less).
const CLOCK_TOLERANCE_MS: i64 = 5_000;

/// The engine's clock: the system clock checked against the log's latest event at start, then moved by
/// the monotonic clock (ADR 0008). A system clock behind the log, or further ahead of it than
/// `--clock-jump-max-hours`, stops the start unless the operator confirms it with `--accept-clock-jump`;
/// a step while running is reported (log and `tally_clock_step_ms`) and not followed.
async fn steady_clock(store: &Arc<dyn EventStore>, settings: &ServeSettings) -> Result<Arc<SteadyClock>, Box<dyn std::error::Error>> {
    let wall = SystemClock.now_ms();
    let head = *store.head().borrow();
    let latest = if head == 0 { None } else { store.read_all(head, 1).await?.first().map(|e| e.data.recorded_at_ms) };
    let mut start = wall;
    if let Some(latest) = latest {
        let hours = |ms: i64| ms as f64 / 3_600_000.0;
        if wall < latest - CLOCK_TOLERANCE_MS {
            let problem = format!("the system clock is {:.1} hours behind the log's latest event", hours(latest - wall));
            if !settings.accept_clock_jump {
                return Err(format!(
                    "{problem}: event times would go back and what is due would wait. Fix the clock, or start with --accept-clock-jump to \
                     go on from the log's time"
                )
                .into());
            }
            tracing::warn!("{problem}; accepted (--accept-clock-jump): the engine goes on from the log's time");
            start = latest;
        } else if wall - latest > settings.clock_jump_max_ms {
            let problem = format!("the system clock is {:.1} hours ahead of the log's latest event", hours(wall - latest));
            if !settings.accept_clock_jump {
                return Err(format!(
                    "{problem} (more than --clock-jump-max-hours): on a wrong clock points would expire and holds time out for good. \
                     If the clock is right (this node was stopped that long, or the log was quiet), start with --accept-clock-jump"
                )
                .into());
            }
            tracing::warn!("{problem}; accepted (--accept-clock-jump)");
        }
    }
    let clock = Arc::new(SteadyClock::new(Arc::new(SystemClock), start, CLOCK_TOLERANCE_MS));
    let watched = Arc::clone(&clock);
    tokio::spawn(async move {
        let mut stepped = false;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let off = watched.check();
            metrics::gauge!("tally_clock_step_ms").set(off.unwrap_or(0) as f64);
            match off {
                Some(off) if !stepped => {
                    tracing::error!(
                        off_ms = off,
                        "the system clock stepped; the engine keeps its own time (restart with a right clock to follow it)"
                    );
                    stepped = true;
                }
                None if stepped => {
                    tracing::info!("the system clock agrees with the engine's again");
                    stepped = false;
                }
                _ => {}
            }
        }
    });
    Ok(clock)
}

/// Creates the programs named by `--tenant` that the log does not have yet. One that exists is left as
/// it is (AdminService changes programs); a different return policy in the settings is reported.
async fn bootstrap_programs(book: &ProgramBook, tenants: &[(TenantId, ProgramSettings)]) -> Result<(), Box<dyn std::error::Error>> {
    for (tenant, wanted) in tenants {
        let state = book.get(tenant).await.map_err(|e| format!("cannot read program {tenant}: {e}"))?;
        if state.created {
            if state.return_policy != wanted.return_policy {
                tracing::warn!(%tenant, stored = ?state.return_policy, configured = ?wanted.return_policy,
                    "the program exists with another return policy; the stored one applies (programs change through AdminService)");
            }
            continue;
        }
        let command = ProgramCommand {
            idempotency_key: "tally-serve-bootstrap".to_owned(),
            body: ProgramCommandBody::Create { name: tenant.to_string(), utc_offset_minutes: 0, return_policy: wanted.return_policy },
        };
        book.execute(tenant, &command, &CommandMeta::default()).await.map_err(|e| format!("cannot create program {tenant}: {e}"))?;
        tracing::info!(%tenant, policy = ?wanted.return_policy, "created program");
    }
    Ok(())
}

/// The node's snapshot store, set aside and started afresh if it cannot be opened (it is derived).
fn open_snapshots(data: &Path) -> Result<SledSnapshotStore, DerivedError> {
    derived::open_or_reset("snapshots", &data.join("snapshots"), |d| SledSnapshotStore::open(d))
}

/// Opens an event log by URL, for offline tools.
async fn open_store(url: &str) -> Result<Arc<dyn EventStore>, Box<dyn std::error::Error>> {
    Ok(match StoreUrl::parse(url)? {
        StoreUrl::Embedded(dir) => Arc::new(EmbeddedStore::open(&dir).map_err(|e| format!("cannot open {url}: {e}"))?),
        StoreUrl::Postgres(url) => Arc::new(PostgresStore::connect(&url).await.map_err(|e| format!("cannot open {}: {e}", redact(&url)))?),
        #[cfg(feature = "kurrentdb")]
        StoreUrl::Kurrent(url) => {
            Arc::new(tally_engine::store::KurrentStore::connect(&url).await.map_err(|e| format!("cannot open {}: {e}", redact(&url)))?)
        }
        #[cfg(not(feature = "kurrentdb"))]
        StoreUrl::Kurrent(url) => return Err(kurrent_not_built(&url).into()),
    })
}

/// `tally audit …`: the commands that work on the log and key files directly here, the others through
/// a server (`auditctl`).
async fn audit(command: tally_gateway::cli::AuditCommand) -> Result<(), Box<dyn std::error::Error>> {
    use tally_gateway::cli::AuditCommand;
    match command {
        AuditCommand::Verify(args) => {
            // Exit 1: the log is broken; exit 2: it could not be checked.
            let store = match open_existing_store(&args.store).await {
                Ok(store) => store,
                Err(error) => {
                    eprintln!("error: {error}");
                    std::process::exit(2);
                }
            };
            let report = tally_gateway::auditctl::verify(store.as_ref(), &args).await;
            emit(&report.text);
            match (report.intact, report.checked) {
                (true, _) => Ok(()),
                (false, true) => Err("the log does not match its hash chains or checkpoint".into()),
                // Could not be checked: told apart from a broken log by the exit code.
                (false, false) => std::process::exit(2),
            }
        }
        AuditCommand::Checkpoint(args) => {
            let store = open_existing_store(&args.store).await?;
            emit(&tally_gateway::auditctl::checkpoint(store.as_ref(), &args).await?);
            Ok(())
        }
        AuditCommand::Keygen { out } => {
            emit(&tally_gateway::auditctl::keygen(&out)?);
            Ok(())
        }
        command @ AuditCommand::Export { .. } => {
            // The export itself goes to --out or standard output; what it came to, to standard error.
            eprintln!("{}", tally_gateway::auditctl::run(command).await?);
            Ok(())
        }
        command => {
            emit(&tally_gateway::auditctl::run(command).await?.to_string());
            Ok(())
        }
    }
}

/// [`open_store`] for a log that must exist already: an embedded one is not created where there is none.
async fn open_existing_store(url: &str) -> Result<Arc<dyn EventStore>, Box<dyn std::error::Error>> {
    if let StoreUrl::Embedded(dir) = StoreUrl::parse(url)?
        && !dir.join("log").is_dir()
    {
        return Err(format!("there is no embedded log in {} (its log/ directory is missing)", dir.display()).into());
    }
    open_store(url).await
}

async fn store_copy(from: &str, to: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (source, destination) = (open_store(from).await?, open_store(to).await?);
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = tally_gateway::copy::copy(source, destination, progress).await?;
    println!(
        "copied {} events ({} were already there) and {} personal data keys in {:.1} s ({:.0} events/s); verified {} events on both sides, checksum {:08x}",
        report.copied,
        report.resumed_after,
        report.keys,
        report.seconds,
        report.copied as f64 / report.seconds.max(1e-9),
        report.total,
        report.checksum
    );
    Ok(())
}

async fn snapshot_store(target: &SnapshotsTarget) -> Result<Box<dyn SnapshotStore>, Box<dyn std::error::Error>> {
    let store = target.store.as_deref().map(StoreUrl::parse).transpose()?;
    Ok(match store {
        Some(StoreUrl::Postgres(url)) => Box::new(PostgresSnapshotStore::connect(&url).await?),
        Some(StoreUrl::Embedded(dir)) => Box::new(open_snapshots(&dir)?),
        // A KurrentDB log keeps each node's snapshots in its data directory.
        Some(StoreUrl::Kurrent(_)) | None => Box::new(open_snapshots(&target.data)?),
    })
}

async fn snapshots(command: SnapshotsCommand) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        SnapshotsCommand::Stats(target) => {
            let stats = snapshot_store(&target).await?.stats().await?;
            let oldest = stats
                .oldest_saved_at_ms
                .map_or_else(|| "-".to_owned(), |ms| prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: 0 }.to_string());
            println!(
                "{} snapshots of {} wallets, {} bytes, oldest written {oldest} (format version {})",
                stats.snapshots,
                stats.streams,
                stats.bytes,
                tally_snapshots::format::FORMAT_VERSION
            );
        }
        SnapshotsCommand::Purge(target) => {
            // A damaged local store is deleted whole, without opening it.
            let local = match target.store.as_deref().map(StoreUrl::parse).transpose()? {
                Some(StoreUrl::Postgres(_)) => None,
                Some(StoreUrl::Embedded(dir)) => Some(dir.join("snapshots")),
                Some(StoreUrl::Kurrent(_)) | None => Some(target.data.join("snapshots")),
            };
            if let Some(dir) = local
                && derived::delete_if_unopenable("snapshots", &dir, |d| SledSnapshotStore::open(d))?.is_none()
            {
                println!("deleted the snapshot store; wallets rebuild their snapshots from the log as they are used");
                return Ok(());
            }
            let purged = snapshot_store(&target).await?.purge().await?;
            println!("deleted {purged} snapshots; wallets rebuild them from the log as they are used");
        }
    }
    Ok(())
}

/// Listens for SIGINT and SIGTERM from the moment it returns; the future resolves on the first of them.
///
/// The handlers are installed here, eagerly, not when the future is first polled: `tally serve` calls this
/// before it binds its port and says it is listening, so a SIGTERM sent as soon as it is ready takes the
/// orderly way out (a signal that comes before the future is polled is not lost). Installed lazily, they
/// were only in place once the server's first poll got to them, and a SIGTERM before that found the
/// default action: the process died by the signal, without draining, stopping wallets or flushing.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &str| signal(kind).map_err(|e| format!("cannot listen for {name}: {e}"));
    let mut interrupt = listen(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = listen(SignalKind::terminate(), "SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
        }
    })
}
