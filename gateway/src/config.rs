//! Settings of `tally serve`, each declared once in [`ServeOptions`] — flag, `TALLY_*` variable, help and
//! default for clap, TOML key for serde — then layered: flags, variables, the `--config` file, defaults.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use serde::{Deserialize, Deserializer};
use tally_engine::actors::RegistryConfig;
use tally_engine::domain::{ProgramSettings, ReturnPolicy, TenantId};
use tally_snapshots::SnapshotPolicy;

use crate::limits::{KEY_REQUESTS_BURST_DEFAULT, KEY_REQUESTS_PER_S_DEFAULT, TENANT_REQUESTS_BURST_DEFAULT, TENANT_REQUESTS_PER_S_DEFAULT};
use crate::quota::{RateLimit, RateLimits};

pub const DATA_DIR_DEFAULT: &str = "./data";
pub const LISTEN_DEFAULT: &str = "127.0.0.1:50051";
pub const TENANT_DEFAULT: &str = "demo";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid tenant {value:?}: {reason}")]
    Tenant { value: String, reason: String },
    #[error("invalid store URL {url:?}: {reason}")]
    Store { url: String, reason: String },
    /// A combination of settings that would expose the server.
    #[error("{0}")]
    Unsafe(String),
    /// A value the setting does not take.
    #[error("{0}")]
    Invalid(String),
    /// A setting's value is wrong; `origin` says where it was written (`--store`, `TALLY_STORE`, `store in
    /// FILE`), since with four layers the value alone does not tell a person where to fix it.
    #[error("{error} (set by {origin})")]
    Setting { origin: String, error: Box<ConfigError> },
}

/// Where the event log lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded log in this directory.
    Embedded(PathBuf),
    /// A PostgreSQL database, by connection URL.
    Postgres(String),
    /// An EventStoreDB / KurrentDB server, by connection string (`esdb://`, `kurrentdb://`, `+discover`).
    Kurrent(String),
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let error = |reason: &str| ConfigError::Store { url: crate::redact::redact(url), reason: reason.to_owned() };
        match url.split_once("://") {
            Some(("file", path)) if !path.is_empty() => Ok(Self::Embedded(PathBuf::from(path))),
            Some(("file", _)) => Err(error("file:// needs a directory, e.g. file://./data")),
            Some(("postgres" | "postgresql", _)) => Ok(Self::Postgres(url.to_owned())),
            Some(("esdb" | "kurrentdb" | "esdb+discover" | "kurrentdb+discover", _)) => Ok(Self::Kurrent(url.to_owned())),
            Some((scheme, _)) => Err(error(&format!("unknown scheme {scheme:?}; use file://, postgres:// or kurrentdb://"))),
            None => Err(error("expected a URL such as file://./data or postgres://user@host/db")),
        }
    }
}

/// Declares the settings struct and the generic operations on its layers, from the one list of fields, so
/// that adding a setting is adding a field: flags, variable, TOML key, default and merge all follow.
macro_rules! serve_options {
    ($(#[$outer:meta])* pub struct $name:ident { $($(#[$inner:meta])* pub $field:ident: Option<$ty:ty>,)* }) => {
        $(#[$outer])*
        pub struct $name {
            $($(#[$inner])* pub $field: Option<$ty>,)*
        }

        impl $name {
            /// Every setting by field name, which is also its clap id and its TOML key.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Each setting from `self`, or from `lower` where `self` has none: the one merge of two layers.
            #[must_use]
            pub fn or(self, lower: Self) -> Self {
                Self { $($field: self.$field.or(lower.$field)),* }
            }

            /// Whether this layer has a value for the setting `name`.
            pub fn sets(&self, name: &str) -> bool {
                match name {
                    $(stringify!($field) => self.$field.is_some(),)*
                    _ => false,
                }
            }

            /// Moves into a layer of their own the values clap took from `source` (clap reads flags,
            /// variables and defaults in one pass; the file has to go between the last two).
            fn take_from(&mut self, matches: &ArgMatches, source: ValueSource) -> Self {
                let mut taken = Self::default();
                $(
                    if matches.value_source(stringify!($field)) == Some(source) {
                        taken.$field = self.$field.take();
                    }
                )*
                taken
            }
        }
    };
}

/// A default taken from where it is defined (the engine's `RegistryConfig`, `SnapshotPolicy`) as the
/// `&'static str` clap wants: its `default_value_t` would type the value as the field's `Option`.
macro_rules! text {
    ($value:expr) => {{
        static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        TEXT.get_or_init(|| $value.to_string()).as_str()
    }};
}

serve_options! {
    /// Every setting of `tally serve`. A value of this struct is one layer — what the flags say, what the
    /// `TALLY_*` variables say, what the TOML file says, or the defaults — so every field is optional.
    /// The file's keys are the field names; unknown keys are errors, so a typo is never silently ignored.
    /// A default lives in its `default_value`, which clap also shows in `--help`; settings whose default
    /// depends on another (`store`, `local_read_model`) have none here and get it in [`ServeSettings::resolve`].
    #[derive(Debug, Clone, Default, Args, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ServeOptions {
        /// Directory of the event log.
        #[arg(long, env = "TALLY_DATA", value_name = "DIR", default_value = DATA_DIR_DEFAULT)]
        pub data: Option<PathBuf>,
        /// Where the event log lives: file://DIR (the embedded log; default file://<data>) or
        /// postgres://USER@HOST/DB (shared by several nodes; snapshots then live there too).
        #[arg(long, env = "TALLY_STORE", value_name = "URL")]
        pub store: Option<String>,
        /// Address to listen on; port 0 picks a free one.
        #[arg(long, env = "TALLY_LISTEN", value_name = "ADDR", default_value = LISTEN_DEFAULT)]
        pub listen: Option<SocketAddr>,
        /// Programs served, as NAME or NAME:POLICY with POLICY allow-negative (the default) or cap-at-zero.
        /// Repeat the flag or separate with commas. In the file: a [tenants.NAME] table per program, with
        /// an optional return_policy.
        #[arg(
            long = "tenant",
            env = "TALLY_TENANTS",
            value_delimiter = ',',
            value_name = "NAME[:POLICY]",
            default_value = TENANT_DEFAULT
        )]
        #[serde(default, deserialize_with = "tenant_tables")]
        pub tenants: Option<Vec<TenantArg>>,
        /// Most wallets kept in memory; the least recently used beyond it are passivated.
        #[arg(long, env = "TALLY_ACTIVE_WALLETS_MAX", value_name = "N",
              default_value = text!(RegistryConfig::default().active_wallets_max))]
        pub active_wallets_max: Option<usize>,
        /// Seconds without a call after which a wallet leaves memory.
        #[arg(long, env = "TALLY_WALLET_IDLE_SECS", value_name = "SECS",
              default_value = text!(RegistryConfig::default().idle_ms / 1000))]
        pub wallet_idle_secs: Option<u64>,
        /// Snapshot a wallet every N events (and when it leaves memory); 0 turns snapshots off.
        #[arg(long, env = "TALLY_SNAPSHOT_EVERY_EVENTS", value_name = "N",
              default_value = text!(SnapshotPolicy::default().every_events))]
        pub snapshot_every_events: Option<u64>,
        /// Snapshots kept per wallet.
        #[arg(long, env = "TALLY_SNAPSHOT_KEEP", value_name = "K", default_value = text!(SnapshotPolicy::default().keep_last))]
        pub snapshot_keep: Option<usize>,
        /// PostgreSQL database for the reporting read model (wallets, ledger, daily stats, liability) behind
        /// the ReportingService; without it that service answers FAILED_PRECONDITION.
        #[arg(long, env = "TALLY_REPORTING_DB", value_name = "URL")]
        pub reporting_db: Option<String>,
        /// Keep the local wallet-activity read model (sled, in <data>/read-models) [default: true on the
        /// embedded log, false on a postgres:// log, so nodes sharing a log keep nothing locally].
        #[arg(long, env = "TALLY_LOCAL_READ_MODEL", value_name = "BOOL")]
        pub local_read_model: Option<bool>,
        /// Serve Prometheus metrics over HTTP on this address (GET /metrics) [default: off].
        #[arg(long, env = "TALLY_METRICS_LISTEN", value_name = "ADDR")]
        pub metrics_listen: Option<SocketAddr>,
        /// Export traces over OTLP/gRPC to this collector (e.g. http://127.0.0.1:4317) [default: the
        /// standard OTEL_EXPORTER_OTLP_ENDPOINT, else off]. OTEL_TRACES_SAMPLER(_ARG), OTEL_SERVICE_NAME
        /// and OTEL_RESOURCE_ATTRIBUTES apply.
        #[arg(long, env = "TALLY_OTLP_ENDPOINT", value_name = "URL")]
        pub otlp_endpoint: Option<String>,
        /// How log lines are written on stderr: text, or json (one object per line, with trace_id and
        /// span_id inside an exported trace) [default: text].
        #[arg(long, env = "TALLY_LOG_FORMAT", value_name = "FORMAT")]
        pub log_format: Option<String>,
        /// Largest gap, in hours, between the system clock at start and the log's latest event; beyond it
        /// (or with the clock behind the log) the server does not start, since points would expire and
        /// holds time out by a wrong clock — unless --accept-clock-jump confirms the clock is right.
        #[arg(long, env = "TALLY_CLOCK_JUMP_MAX_HOURS", value_name = "HOURS", default_value = "168")]
        pub clock_jump_max_hours: Option<u64>,
        /// Start although the system clock disagrees with the log (see --clock-jump-max-hours): the
        /// operator confirms the clock is right (a node stopped that long, a log that was quiet).
        #[arg(long, env = "TALLY_ACCEPT_CLOCK_JUMP", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        pub accept_clock_jump: Option<bool>,
        /// Serve without API keys: every caller is the platform operator, with every right over every
        /// tenant. For measurements and experiments on one machine: refused unless --listen is a loopback
        /// address.
        #[arg(long, env = "TALLY_INSECURE_NO_AUTH", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        pub insecure_no_auth: Option<bool>,
        /// PEM certificate chain to serve TLS with (with --tls-key). Without TLS the server listens only
        /// on loopback addresses unless --insecure-plaintext says otherwise.
        #[arg(long, env = "TALLY_TLS_CERT", value_name = "FILE")]
        pub tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, env = "TALLY_TLS_KEY", value_name = "FILE")]
        pub tls_key: Option<PathBuf>,
        /// PEM certificate(s) of the CA that signs client certificates: every client must then present
        /// one (mutual TLS) besides its API key.
        #[arg(long, env = "TALLY_TLS_CLIENT_CA", value_name = "FILE")]
        pub tls_client_ca: Option<PathBuf>,
        /// Serve plaintext on a non-loopback address (API keys then cross the network in clear): only
        /// behind a proxy or mesh that terminates TLS.
        #[arg(long, env = "TALLY_INSECURE_PLAINTEXT", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        pub insecure_plaintext: Option<bool>,
        /// Requests per second each tenant API key may make, as RATE or RATE:BURST (BURST: calls at once
        /// after a quiet spell; one second's worth unless given), or off. Beyond it: RESOURCE_EXHAUSTED
        /// with retry-after. Counted per node.
        #[arg(long, env = "TALLY_RATE_PER_KEY", value_name = "RATE[:BURST]",
              default_value = text!(RateLimit::limited(KEY_REQUESTS_PER_S_DEFAULT, KEY_REQUESTS_BURST_DEFAULT)))]
        pub rate_per_key: Option<RateLimit>,
        /// Requests per second all keys of one tenant may make together, as RATE, RATE:BURST or off.
        #[arg(long, env = "TALLY_RATE_PER_TENANT", value_name = "RATE[:BURST]",
              default_value = text!(RateLimit::limited(TENANT_REQUESTS_PER_S_DEFAULT, TENANT_REQUESTS_BURST_DEFAULT)))]
        pub rate_per_tenant: Option<RateLimit>,
        /// Requests per second each platform key may make, as RATE, RATE:BURST or off; platform keys
        /// count against no tenant's rate.
        #[arg(long, env = "TALLY_RATE_PER_PLATFORM_KEY", value_name = "RATE[:BURST]", default_value = "off")]
        pub rate_per_platform_key: Option<RateLimit>,
        /// Most tenants (programs) the platform may have, counted on the log's stream `$tenants` by every
        /// node sharing it; CreateProgram beyond it is RESOURCE_EXHAUSTED.
        #[arg(long, env = "TALLY_TENANTS_MAX", value_name = "N", default_value = text!(tally_engine::limits::TENANTS_DEFAULT_MAX))]
        pub tenants_max: Option<usize>,
        /// Most wallets each tenant may open (closed ones count), counted on the log's stream
        /// `<tenant>/wallets` by every node sharing it; Enroll beyond it is RESOURCE_EXHAUSTED.
        #[arg(long, env = "TALLY_WALLETS_MAX", value_name = "N",
              default_value = text!(tally_engine::limits::WALLETS_PER_TENANT_DEFAULT_MAX))]
        pub wallets_max: Option<u64>,
        /// This node's name in a cluster, stable across restarts (a restarted node takes back its wallets):
        /// 1–64 of A-Z a-z 0-9 - _ . With it the node joins a cluster; it needs --cluster-listen and a
        /// shared log (postgres:// or kurrentdb://).
        #[arg(long, env = "TALLY_NODE_ID", value_name = "ID")]
        pub node_id: Option<String>,
        /// Where this node gossips with the others about who is up (UDP; keep it on the cluster's private
        /// network: gossip is not authenticated). A fixed port.
        #[arg(long, env = "TALLY_CLUSTER_LISTEN", value_name = "ADDR")]
        pub cluster_listen: Option<SocketAddr>,
        /// Gossip addresses of nodes already in the cluster (HOST:PORT, comma-separated); none for the first.
        #[arg(long, env = "TALLY_JOIN", value_delimiter = ',', value_name = "ADDR,...")]
        pub join: Option<Vec<String>>,
        /// The address (IP) other nodes reach this one at, for gossip and forwarded calls; default the
        /// address of --listen, which must then not be 0.0.0.0.
        #[arg(long, env = "TALLY_ADVERTISE", value_name = "IP")]
        pub advertise: Option<std::net::IpAddr>,
        /// Where the other nodes send gossip to reach this one, when that is not --advertise with
        /// --cluster-listen's port (port mapping, NAT, a proxy).
        #[arg(long, env = "TALLY_ADVERTISE_GOSSIP", value_name = "ADDR")]
        pub advertise_gossip: Option<SocketAddr>,
        /// Where the other nodes forward calls to this one, when that is not --advertise with --listen's
        /// port (port mapping, NAT, a proxy).
        #[arg(long, env = "TALLY_ADVERTISE_GRPC", value_name = "ADDR")]
        pub advertise_grpc: Option<SocketAddr>,
        /// PEM certificates of the CA the nodes' --tls-cert chain to. With --tls-cert a node forwards
        /// calls only to a peer whose certificate chains to it and names the address the peer is
        /// reached at (--advertise or --advertise-grpc, as an IP address SAN).
        #[arg(long, env = "TALLY_CLUSTER_CA", value_name = "FILE")]
        pub cluster_ca: Option<PathBuf>,
    }
}

/// One program to serve as it was written: `NAME` or `NAME:POLICY` in a flag or variable, a
/// `[tenants.NAME]` table in the file. Checked in [`ServeSettings::resolve`], not by clap, so that the
/// error can say which layer the mistake is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantArg {
    /// The text as written, for errors.
    pub written: String,
    pub name: String,
    pub return_policy: Option<String>,
}

impl FromStr for TenantArg {
    type Err = Infallible;

    fn from_str(value: &str) -> Result<Self, Infallible> {
        let (name, policy) = match value.split_once(':') {
            Some((name, policy)) => (name, Some(policy.trim().to_owned())),
            None => (value, None),
        };
        Ok(Self { written: value.to_owned(), name: name.trim().to_owned(), return_policy: policy })
    }
}

/// The file's `[tenants.NAME]` tables; none at all leaves the setting to the layer below.
fn tenant_tables<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<TenantArg>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Table {
        return_policy: Option<String>,
    }
    let tables = BTreeMap::<String, Table>::deserialize(deserializer)?;
    Ok((!tables.is_empty()).then(|| {
        tables.into_iter().map(|(name, table)| TenantArg { written: name.clone(), name, return_policy: table.return_policy }).collect()
    }))
}

/// The `--config` flag, the one argument of `tally serve` that is not a setting of the file.
#[derive(Debug, Args)]
struct ConfigFile {
    /// TOML file with settings; flags and TALLY_* variables override it.
    #[arg(long, env = "TALLY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// What `tally serve` was given: the settings file, and clap's reading of [`ServeOptions`] split by where
/// each value came from, ready to be layered around the file.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    pub config: Option<PathBuf>,
    flags: ServeOptions,
    env: ServeOptions,
    defaults: ServeOptions,
}

impl Args for ServeArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        ServeOptions::augment_args(ConfigFile::augment_args(command))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let ConfigFile { config } = ConfigFile::from_arg_matches(matches)?;
        let mut flags = ServeOptions::from_arg_matches(matches)?;
        let env = flags.take_from(matches, ValueSource::EnvVariable);
        let defaults = flags.take_from(matches, ValueSource::DefaultValue);
        Ok(Self { config, flags, env, defaults })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl ServeArgs {
    /// Where the value of setting `name` came from, spelled as a person would look for it: `--store`,
    /// `TALLY_STORE`, `store in FILE`, or the default of `--store`.
    fn origin(&self, name: &str, file: &ServeOptions) -> String {
        let command = ServeOptions::augment_args(clap::Command::new("serve"));
        let arg = command.get_arguments().find(|arg| arg.get_id() == name);
        let flag = format!("--{}", arg.and_then(clap::Arg::get_long).unwrap_or(name));
        let env = arg.and_then(clap::Arg::get_env).map(|env| env.to_string_lossy().into_owned());
        match (&self.config, env) {
            _ if self.flags.sets(name) => flag,
            (_, Some(env)) if self.env.sets(name) => env,
            (Some(path), _) if file.sets(name) => format!("{name} in {}", path.display()),
            _ => format!("the default of {flag}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub data: PathBuf,
    pub store: StoreUrl,
    pub listen: SocketAddr,
    pub tenants: Vec<(TenantId, ProgramSettings)>,
    pub registry: RegistryConfig,
    /// `None` when snapshots are off.
    pub snapshots: Option<SnapshotPolicy>,
    /// Connection URL of the reporting read model's database.
    pub reporting_db: Option<String>,
    /// Whether to keep the sled wallet-activity read model in `<data>/read-models`.
    pub local_read_model: bool,
    pub metrics_listen: Option<SocketAddr>,
    /// Where traces are exported, if set here (the OTEL_ variables are read when traces are set up).
    pub otlp_endpoint: Option<String>,
    pub log_format: crate::telemetry::LogFormat,
    /// Largest gap between the system clock at start and the log's latest event, in milliseconds.
    pub clock_jump_max_ms: i64,
    /// The operator confirmed the clock is right although it disagrees with the log.
    pub accept_clock_jump: bool,
    /// Calls need no API key (loopback only).
    pub insecure_no_auth: bool,
    /// TLS, if served.
    pub tls: Option<TlsFiles>,
    /// Request rates per key and per tenant.
    pub rates: RateLimits,
    /// Most tenants on the platform.
    pub tenants_max: usize,
    /// Most wallets a tenant may open.
    pub wallets_max: u64,
    /// The cluster this node is part of, if any.
    pub cluster: Option<ClusterSettings>,
}

/// How a node takes part in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub node_id: String,
    /// Where it gossips.
    pub listen: SocketAddr,
    /// The IP other nodes reach it at (gossip and gRPC).
    pub advertise: std::net::IpAddr,
    /// Where peers send gossip, if not `advertise` with the gossip port.
    pub advertise_gossip: Option<SocketAddr>,
    /// Where peers forward calls, if not `advertise` with the served port.
    pub advertise_grpc: Option<SocketAddr>,
    /// With TLS: the CA the peers' certificates must chain to.
    pub ca: Option<PathBuf>,
    /// Gossip addresses of nodes to join through.
    pub seeds: Vec<String>,
}

/// The files TLS is served with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must be signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

fn policy(value: &str, name: &str) -> Result<ReturnPolicy, ConfigError> {
    match name {
        "allow-negative" | "allow_negative" => Ok(ReturnPolicy::AllowNegative),
        "cap-at-zero" | "cap_at_zero" => Ok(ReturnPolicy::CapAtZero),
        other => Err(ConfigError::Tenant {
            value: value.to_owned(),
            reason: format!("unknown return policy {other:?}; use allow-negative or cap-at-zero"),
        }),
    }
}

fn tenant(arg: &TenantArg) -> Result<(TenantId, ProgramSettings), ConfigError> {
    let id = TenantId::parse(&arg.name).map_err(|e| ConfigError::Tenant { value: arg.written.clone(), reason: e.to_string() })?;
    let return_policy = arg.return_policy.as_deref().map(|p| policy(&arg.written, p)).transpose()?.unwrap_or(ReturnPolicy::AllowNegative);
    Ok((id, ProgramSettings { return_policy, ..ProgramSettings::default() }))
}

/// The cluster settings, checked together: which setting is wrong, and why.
fn cluster(
    set: &ServeOptions,
    store: &StoreUrl,
    listen: SocketAddr,
    tls: bool,
) -> Result<Option<ClusterSettings>, (&'static str, ConfigError)> {
    let unsafe_ = |reason: &str| ConfigError::Unsafe(reason.to_owned());
    let Some(node_id) = set.node_id.clone() else {
        let clustered = set.cluster_listen.is_some()
            || set.join.as_ref().is_some_and(|j| !j.is_empty())
            || set.advertise.is_some()
            || set.advertise_gossip.is_some()
            || set.advertise_grpc.is_some()
            || set.cluster_ca.is_some();
        if clustered {
            let reason = "--cluster-listen, --join, --advertise* and --cluster-ca need --node-id: the name this node has in the cluster";
            return Err(("node_id", unsafe_(reason)));
        }
        return Ok(None);
    };
    let valid = (1..=64).contains(&node_id.len()) && node_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        return Err(("node_id", unsafe_(&format!("node id {node_id:?}: use 1-64 of A-Z a-z 0-9 - _ ."))));
    }
    if let StoreUrl::Embedded(dir) = store {
        let reason = format!(
            "a cluster needs a log its nodes share: --store postgres://… or kurrentdb://…; the embedded log in {} is one node's own",
            dir.display()
        );
        return Err(("store", ConfigError::Unsafe(reason)));
    }
    cluster_tls(set, tls)?;
    let Some(gossip) = set.cluster_listen else {
        return Err(("cluster_listen", unsafe_("--node-id needs --cluster-listen ADDR: where this node gossips with the others")));
    };
    if gossip.port() == 0 {
        return Err(("cluster_listen", unsafe_("--cluster-listen needs a fixed port: the others find this node by it")));
    }
    let advertise = set.advertise.unwrap_or(listen.ip());
    if advertise.is_unspecified() {
        return Err(("advertise", unsafe_(&format!("other nodes cannot reach {advertise}; give --advertise IP"))));
    }
    for (name, address) in [("advertise_gossip", set.advertise_gossip), ("advertise_grpc", set.advertise_grpc)] {
        if address.is_some_and(|a| a.ip().is_unspecified() || a.port() == 0) {
            let flag = name.replace('_', "-");
            return Err((name, unsafe_(&format!("--{flag} must be an address other nodes can reach: an IP and a port"))));
        }
    }
    // Peers send callers' keys to the advertised address: in clear only on loopback, or when told.
    let peers_dial = set.advertise_grpc.map_or(advertise, |a| a.ip());
    if !tls && !peers_dial.is_loopback() && !set.insecure_plaintext.unwrap_or(false) {
        let reason = format!(
            "peers would forward callers' keys to {peers_dial} in clear; give --tls-cert, --tls-key and --cluster-ca, or \
             --insecure-plaintext if the network between the nodes is private"
        );
        return Err(("advertise", unsafe_(&reason)));
    }
    Ok(Some(ClusterSettings {
        node_id,
        listen: gossip,
        advertise,
        advertise_gossip: set.advertise_gossip,
        advertise_grpc: set.advertise_grpc,
        ca: set.cluster_ca.clone(),
        seeds: set.join.clone().unwrap_or_default(),
    }))
}

/// A cluster's TLS settings hold together: a CA to verify peers by with TLS, none without; no mutual TLS.
fn cluster_tls(set: &ServeOptions, tls: bool) -> Result<(), (&'static str, ConfigError)> {
    let unsafe_ = |reason: &str| ConfigError::Unsafe(reason.to_owned());
    match (tls, &set.cluster_ca) {
        (true, None) => {
            let reason = "a cluster with --tls-cert needs --cluster-ca FILE: the CA the nodes' certificates chain to, so that a \
                          node verifies a peer before it forwards callers' keys to it";
            return Err(("cluster_ca", unsafe_(reason)));
        }
        (false, Some(_)) => return Err(("cluster_ca", unsafe_("--cluster-ca needs --tls-cert: without TLS peers are not verified"))),
        _ => {}
    }
    if set.tls_client_ca.is_some() {
        // The owner would see the forwarding node's certificate, not the caller's.
        let reason = "mutual TLS (--tls-client-ca) in a cluster is not supported yet: a call authenticated by a client \
                      certificate could not be forwarded to its wallet's node";
        return Err(("tls_client_ca", unsafe_(reason)));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<ServeOptions, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
}

/// A setting that has a `default_value` in [`ServeOptions`] always has a value once the layers are merged.
const DEFAULTED: &str = "the setting has a default_value in ServeOptions";

impl ServeSettings {
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => ServeOptions::default(),
        };
        let set = args.flags.clone().or(args.env.clone()).or(file.clone()).or(args.defaults.clone());
        let file = &file;
        let at = |name: &'static str| move |error| ConfigError::Setting { origin: args.origin(name, file), error: Box::new(error) };
        let tenants = set.tenants.as_deref().expect(DEFAULTED).iter().map(tenant).collect::<Result<Vec<_>, _>>().map_err(at("tenants"))?;
        let log_format = set.log_format.as_deref().map(str::parse).transpose().map_err(|e| at("log_format")(ConfigError::Invalid(e)))?;
        let log_format = log_format.unwrap_or_default();
        let data = set.data.clone().expect(DEFAULTED);
        let store = match &set.store {
            Some(url) => StoreUrl::parse(url).map_err(at("store"))?,
            None => StoreUrl::Embedded(data.clone()),
        };
        let listen = set.listen.expect(DEFAULTED);
        let insecure_no_auth = set.insecure_no_auth.unwrap_or(false);
        if insecure_no_auth && !listen.ip().is_loopback() {
            let reason = format!(
                "serving without API keys on {listen}, which is not a loopback address, would let anyone reach every tenant; \
                 use --insecure-no-auth only with --listen 127.0.0.1:PORT"
            );
            return Err(at("insecure_no_auth")(ConfigError::Unsafe(reason)));
        }
        let serves_tls = set.tls_cert.is_some() || set.tls_key.is_some();
        let cluster = cluster(&set, &store, listen, serves_tls).map_err(|(name, error)| at(name)(error))?;
        let tls = match (set.tls_cert, set.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key, client_ca: set.tls_client_ca }),
            (None, None) if set.tls_client_ca.is_some() => {
                let reason = "--tls-client-ca needs --tls-cert and --tls-key: client certificates are asked for over TLS";
                return Err(at("tls_client_ca")(ConfigError::Unsafe(reason.into())));
            }
            (None, None) => None,
            (Some(_), None) => return Err(at("tls_cert")(ConfigError::Unsafe("--tls-cert needs --tls-key".into()))),
            (None, Some(_)) => return Err(at("tls_key")(ConfigError::Unsafe("--tls-key needs --tls-cert".into()))),
        };
        if tls.is_none() && !listen.ip().is_loopback() && !set.insecure_plaintext.unwrap_or(false) {
            let reason = format!(
                "serving plaintext on {listen}, which is not a loopback address, would send API keys and customer data \
                 in clear; give --tls-cert and --tls-key, or --insecure-plaintext if a proxy in front of it terminates TLS"
            );
            return Err(at("listen")(ConfigError::Unsafe(reason)));
        }
        let every_events = set.snapshot_every_events.expect(DEFAULTED);
        let keep_last = set.snapshot_keep.expect(DEFAULTED).max(1);
        Ok(Self {
            snapshots: (every_events > 0).then_some(SnapshotPolicy { every_events, keep_last, ..SnapshotPolicy::default() }),
            data,
            listen,
            tenants,
            reporting_db: set.reporting_db,
            // Nodes on a shared log keep nothing locally unless asked to.
            local_read_model: set.local_read_model.unwrap_or(matches!(store, StoreUrl::Embedded(_))),
            store,
            metrics_listen: set.metrics_listen,
            otlp_endpoint: set.otlp_endpoint,
            log_format,
            clock_jump_max_ms: i64::try_from(set.clock_jump_max_hours.expect(DEFAULTED)).unwrap_or(i64::MAX).saturating_mul(3_600_000),
            accept_clock_jump: set.accept_clock_jump.unwrap_or(false),
            insecure_no_auth,
            tls,
            rates: RateLimits {
                per_key: set.rate_per_key.expect(DEFAULTED).rate(),
                per_tenant: set.rate_per_tenant.expect(DEFAULTED).rate(),
                per_platform_key: set.rate_per_platform_key.expect(DEFAULTED).rate(),
            },
            tenants_max: set.tenants_max.expect(DEFAULTED),
            wallets_max: set.wallets_max.expect(DEFAULTED),
            cluster,
            registry: RegistryConfig {
                active_wallets_max: set.active_wallets_max.expect(DEFAULTED),
                idle_ms: set.wallet_idle_secs.expect(DEFAULTED).saturating_mul(1000),
                ..RegistryConfig::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn serve_args(argv: &[&str]) -> ServeArgs {
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Serve(args) => *args,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile_dir();
        let file = dir.join("tally.toml");
        std::fs::write(&file, "data = \"/from/file\"\nlisten = \"127.0.0.1:7000\"\n[tenants.acme]\nreturn_policy = \"cap-at-zero\"\n")
            .unwrap();
        let config = file.to_str().unwrap();
        let s = ServeSettings::resolve(&serve_args(&["tally", "serve", "--config", config, "--listen", "127.0.0.1:9000"])).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(s.data, PathBuf::from("/from/file"));
        assert_eq!(s.tenants.len(), 1);
        assert_eq!((s.tenants[0].0.as_str(), s.tenants[0].1.return_policy), ("acme", ReturnPolicy::CapAtZero));
        let s = ServeSettings::resolve(&serve_args(&["tally", "serve", "--tenant", "a,b:cap-at-zero"])).unwrap();
        assert_eq!(
            s.tenants.iter().map(|(t, p)| (t.as_str(), p.return_policy)).collect::<Vec<_>>(),
            vec![("a", ReturnPolicy::AllowNegative), ("b", ReturnPolicy::CapAtZero)]
        );
        assert_eq!(s.data, PathBuf::from(DATA_DIR_DEFAULT));
        assert_eq!(s.tenants.len(), 2);
    }

    #[test]
    fn store_urls() {
        assert_eq!(StoreUrl::parse("file:///var/lib/tally").unwrap(), StoreUrl::Embedded(PathBuf::from("/var/lib/tally")));
        assert_eq!(StoreUrl::parse("postgres://tally@db/tally").unwrap(), StoreUrl::Postgres("postgres://tally@db/tally".into()));
        assert_eq!(
            StoreUrl::parse("esdb://localhost:2113?tls=false").unwrap(),
            StoreUrl::Kurrent("esdb://localhost:2113?tls=false".into())
        );
        for (url, says) in [("mysql://x", "unknown scheme"), ("./data", "expected a URL"), ("file://", "needs a directory")] {
            let err = StoreUrl::parse(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
        let s = ServeSettings::resolve(&serve_args(&["tally", "serve", "--data", "/d"])).unwrap();
        assert_eq!(s.store, StoreUrl::Embedded(PathBuf::from("/d")), "the default store is the embedded log in --data");
    }

    #[test]
    fn mistakes_in_settings_are_named() {
        let err = ServeSettings::resolve(&serve_args(&["tally", "serve", "--tenant", "a:lenient"])).unwrap_err();
        assert!(err.to_string().contains("unknown return policy \"lenient\""), "{err}");
        let dir = tempfile_dir();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "listn = \"x\"\n").unwrap();
        let err = ServeSettings::resolve(&serve_args(&["tally", "serve", "--config", file.to_str().unwrap()])).unwrap_err();
        assert!(err.to_string().contains("unknown field `listn`"), "{err}");
    }

    /// `tally serve` with `--config` pointing at a new file holding `toml`.
    fn with_file(toml: &str, argv: &[&str]) -> (ServeArgs, PathBuf) {
        let file = tempfile_dir().join("tally.toml");
        std::fs::write(&file, toml).unwrap();
        let mut full = vec!["tally", "serve", "--config", file.to_str().unwrap()];
        full.extend_from_slice(argv);
        (serve_args(&full), file)
    }

    /// The resolved settings the precedence tests look at, in one comparable line.
    fn summary(s: &ServeSettings) -> String {
        let tenants = s.tenants.iter().map(|(t, p)| format!("{}:{:?}", t.as_str(), p.return_policy)).collect::<Vec<_>>();
        format!(
            "listen={} data={} tenants={} active_wallets_max={} idle_ms={} snapshot_keep={:?} reporting_db={:?}",
            s.listen,
            s.data.display(),
            tenants.join(","),
            s.registry.active_wallets_max,
            s.registry.idle_ms,
            s.snapshots.map(|p| p.keep_last),
            s.reporting_db
        )
    }

    #[test]
    fn without_any_setting_the_defaults_are_the_engines() {
        let s = ServeSettings::resolve(&serve_args(&["tally", "serve"])).unwrap();
        let (registry, policy) = (RegistryConfig::default(), SnapshotPolicy::default());
        assert_eq!(s.listen, LISTEN_DEFAULT.parse().unwrap());
        assert_eq!(s.data, PathBuf::from(DATA_DIR_DEFAULT));
        assert_eq!(s.store, StoreUrl::Embedded(PathBuf::from(DATA_DIR_DEFAULT)));
        assert_eq!(s.tenants.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), vec![TENANT_DEFAULT]);
        assert_eq!((s.registry.active_wallets_max, s.registry.idle_ms), (registry.active_wallets_max, registry.idle_ms));
        assert_eq!(s.snapshots.map(|p| (p.every_events, p.keep_last)), Some((policy.every_events, policy.keep_last)));
        assert!(s.local_read_model, "the embedded log keeps its local read model by default");
        assert_eq!((s.reporting_db, s.metrics_listen), (None, None));
        assert_eq!(
            s.rates,
            RateLimits {
                per_key: RateLimit::limited(KEY_REQUESTS_PER_S_DEFAULT, KEY_REQUESTS_BURST_DEFAULT).rate(),
                per_tenant: RateLimit::limited(TENANT_REQUESTS_PER_S_DEFAULT, TENANT_REQUESTS_BURST_DEFAULT).rate(),
                per_platform_key: None,
            }
        );
    }

    #[test]
    fn rates_are_numbers_or_strings_in_the_file_and_a_bad_one_is_named() {
        let (args, _) = with_file("rate_per_key = 50\nrate_per_tenant = \"200:400\"\nrate_per_platform_key = \"off\"\n", &[]);
        let rates = ServeSettings::resolve(&args).unwrap().rates;
        assert_eq!(rates.per_key, RateLimit::limited(50, 50).rate());
        assert_eq!(rates.per_tenant, RateLimit::limited(200, 400).rate());
        assert_eq!(rates.per_platform_key, None);
        let (args, _) = with_file("rate_per_key = \"fast\"\n", &[]);
        let err = ServeSettings::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("invalid rate \"fast\"") && err.contains("rate_per_key"), "{err}");
        let err = crate::cli::Cli::try_parse_from(["tally", "serve", "--rate-per-tenant", "0"]).unwrap_err().to_string();
        assert!(err.contains("--rate-per-tenant") && err.contains("RATE:BURST"), "{err}");
    }

    #[test]
    fn a_flag_beats_the_file_and_the_file_beats_the_default() {
        let toml = "listen = \"127.0.0.1:7001\"\nactive_wallets_max = 10\nwallet_idle_secs = 7\n\
                    reporting_db = \"postgres://file\"\n[tenants.from-file]\nreturn_policy = \"cap-at-zero\"\n";
        let (args, _) = with_file(toml, &["--listen", "127.0.0.1:7003", "--tenant", "from-flag", "--active-wallets-max", "20"]);
        assert_eq!(
            summary(&ServeSettings::resolve(&args).unwrap()),
            "listen=127.0.0.1:7003 data=./data tenants=from-flag:AllowNegative active_wallets_max=20 idle_ms=7000 \
             snapshot_keep=Some(2) reporting_db=Some(\"postgres://file\")"
        );
        // The file's tenants, all of them, when no flag names any.
        let (args, _) = with_file(toml, &[]);
        assert!(summary(&ServeSettings::resolve(&args).unwrap()).contains(" tenants=from-file:CapAtZero "));
    }

    /// Set for the child process of `a_variable_sits_between_flag_and_file`: the arguments, joined by
    /// U+001F, whose resolved settings it prints. A child because the variables are the process's own,
    /// and a test may not change those of the process running the others.
    const CHILD_ARGV: &str = "TALLY_TEST_CHILD_SERVE_ARGV";

    #[test]
    #[ignore = "run as a child process by a_variable_sits_between_flag_and_file"]
    fn child_prints_resolved_settings() {
        let Ok(argv) = std::env::var(CHILD_ARGV) else { return };
        let s = ServeSettings::resolve(&serve_args(&argv.split('\u{1f}').collect::<Vec<_>>())).unwrap();
        #[allow(clippy::print_stdout)]
        {
            println!("resolved: {}", summary(&s));
        }
    }

    #[test]
    fn a_variable_sits_between_flag_and_file() {
        let file = tempfile_dir().join("tally.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:7001\"\ndata = \"/file\"\nwallet_idle_secs = 7\n[tenants.from-file]\n").unwrap();
        let argv = ["tally", "serve", "--config", file.to_str().unwrap(), "--listen", "127.0.0.1:7003"].join("\u{1f}");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child.args(["config::tests::child_prints_resolved_settings", "--exact", "--ignored", "--nocapture"]);
        // Only the variables set below count, whatever the environment running the tests holds.
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        for variable in command.get_arguments().filter_map(clap::Arg::get_env) {
            child.env_remove(variable);
        }
        let output = child
            .env(CHILD_ARGV, argv)
            .env("TALLY_LISTEN", "127.0.0.1:7002") // under the flag
            .env("TALLY_DATA", "/env") // over the file
            .env("TALLY_TENANTS", "from-env:cap-at-zero") // over the file
            .env("TALLY_ACTIVE_WALLETS_MAX", "30") // over the default
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let resolved = stdout.lines().find_map(|line| line.strip_prefix("resolved: "));
        assert_eq!(
            resolved,
            Some(
                "listen=127.0.0.1:7003 data=/env tenants=from-env:CapAtZero active_wallets_max=30 idle_ms=7000 \
                 snapshot_keep=Some(2) reporting_db=None"
            ),
            "child said:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn unknown_file_keys_are_refused_by_name() {
        for (toml, key) in [
            ("snapshot_kept = 3\n", "snapshot_kept"),
            ("[tenants.acme]\npolicy = \"cap-at-zero\"\n", "policy"),
            // `--config` is a flag, not a setting a file could hold.
            ("config = \"other.toml\"\n", "config"),
        ] {
            let (args, file) = with_file(toml, &[]);
            let err = ServeSettings::resolve(&args).unwrap_err().to_string();
            assert!(err.contains(&format!("unknown field `{key}`")) && err.contains(&file.display().to_string()), "{toml}: {err}");
        }
    }

    #[test]
    fn a_wrong_value_names_the_layer_it_came_from() {
        let (args, file) = with_file("store = \"mysql://file\"\n[tenants.acme]\nreturn_policy = \"lenient\"\n", &[]);
        let err = ServeSettings::resolve(&args).unwrap_err().to_string();
        assert!(err.ends_with(&format!("(set by tenants in {})", file.display())), "{err}");
        let (args, file) = with_file("store = \"mysql://file\"\n", &[]);
        let err = ServeSettings::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("\"mysql://file\"") && err.ends_with(&format!("(set by store in {})", file.display())), "{err}");
        let (args, _) = with_file("store = \"mysql://file\"\n", &["--store", "mysql://flag"]);
        let err = ServeSettings::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("\"mysql://flag\"") && err.ends_with("(set by --store)"), "{err}");
    }

    #[test]
    fn no_auth_is_for_loopback_only() {
        let s = ServeSettings::resolve(&serve_args(&["tally", "serve", "--insecure-no-auth", "--listen", "127.0.0.1:0"])).unwrap();
        assert!(s.insecure_no_auth);
        let s = ServeSettings::resolve(&serve_args(&["tally", "serve", "--insecure-no-auth", "--listen", "[::1]:0"])).unwrap();
        assert!(s.insecure_no_auth);
        let err = ServeSettings::resolve(&serve_args(&["tally", "serve", "--insecure-no-auth", "--listen", "0.0.0.0:50051"])).unwrap_err();
        assert!(err.to_string().contains("not a loopback address") && err.to_string().ends_with("(set by --insecure-no-auth)"), "{err}");
        assert!(!ServeSettings::resolve(&serve_args(&["tally", "serve"])).unwrap().insecure_no_auth, "keys unless told otherwise");
    }

    #[test]
    fn plaintext_is_for_loopback_unless_told_and_tls_needs_both_files() {
        let resolve = |argv: &[&str]| ServeSettings::resolve(&serve_args(&[&["tally", "serve"], argv].concat()));
        let err = resolve(&["--listen", "0.0.0.0:50051"]).unwrap_err().to_string();
        assert!(err.contains("plaintext on 0.0.0.0:50051") && err.ends_with("(set by --listen)"), "{err}");
        assert!(resolve(&["--listen", "0.0.0.0:50051", "--insecure-plaintext"]).unwrap().tls.is_none());
        let tls = resolve(&["--listen", "0.0.0.0:50051", "--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap().tls.unwrap();
        assert_eq!((tls.cert.to_str(), tls.key.to_str(), tls.client_ca), (Some("c.pem"), Some("k.pem"), None));
        assert!(resolve(&["--tls-cert", "c.pem"]).unwrap_err().to_string().contains("--tls-cert needs --tls-key"));
        assert!(resolve(&["--tls-key", "k.pem"]).unwrap_err().to_string().contains("--tls-key needs --tls-cert"));
        assert!(resolve(&["--tls-client-ca", "ca.pem"]).unwrap_err().to_string().contains("needs --tls-cert"));
    }

    #[test]
    fn cluster_settings_are_checked_together() {
        let resolve =
            |argv: &[&str]| ServeSettings::resolve(&serve_args(&[&["tally", "serve", "--store", "postgres://db/tally"], argv].concat()));
        let node = ["--node-id", "n1", "--cluster-listen", "127.0.0.1:7946"];
        let cluster = resolve(&node).unwrap().cluster.unwrap();
        assert_eq!((cluster.node_id.as_str(), cluster.advertise.to_string(), cluster.ca), ("n1", "127.0.0.1".into(), None));
        let err = |argv: &[&str]| resolve(&[&node[..], argv].concat()).unwrap_err().to_string();
        let named = |id: &str, gossip: &str| resolve(&["--node-id", id, "--cluster-listen", gossip]).unwrap_err().to_string();
        assert!(named("n 1", "127.0.0.1:7946").contains("use 1-64 of"));
        assert!(named("n1", "127.0.0.1:0").contains("needs a fixed port"));
        assert!(err(&["--advertise-grpc", "0.0.0.0:50051"]).contains("--advertise-grpc must be an address other nodes can reach"));
        let tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        assert!(err(&tls).contains("needs --cluster-ca FILE"), "peers must be verified before keys are forwarded to them");
        assert!(err(&["--cluster-ca", "ca.pem"]).contains("--cluster-ca needs --tls-cert"));
        assert!(err(&[&tls[..], &["--cluster-ca", "ca.pem", "--tls-client-ca", "ca.pem"]].concat()).contains("mutual TLS"));
        let cluster = resolve(&[&node[..], &tls, &["--cluster-ca", "ca.pem"]].concat()).unwrap().cluster.unwrap();
        assert_eq!(cluster.ca, Some(PathBuf::from("ca.pem")));
        for alone in [&["--join", "10.0.0.1:7946"][..], &["--cluster-ca", "ca.pem"], &["--advertise-grpc", "10.0.0.2:50051"]] {
            let refused = ServeSettings::resolve(&serve_args(&[&["tally", "serve"], alone].concat())).unwrap_err().to_string();
            assert!(refused.contains("need --node-id"), "{alone:?}: {refused}");
        }
        // A proxy's address on the network: keys would travel there in clear unless told.
        assert!(err(&["--advertise-grpc", "10.0.0.2:50051"]).contains("in clear"));
        assert!(resolve(&[&node[..], &["--advertise-grpc", "10.0.0.2:50051", "--insecure-plaintext"]].concat()).is_ok());
    }

    /// Flags, variables and file keys are a public interface: scripts and deployments spell them.
    #[test]
    fn every_setting_keeps_its_flag_variable_and_key_and_is_in_the_help() {
        let spellings = [
            ("data", "--data", "TALLY_DATA"),
            ("store", "--store", "TALLY_STORE"),
            ("listen", "--listen", "TALLY_LISTEN"),
            ("tenants", "--tenant", "TALLY_TENANTS"),
            ("active_wallets_max", "--active-wallets-max", "TALLY_ACTIVE_WALLETS_MAX"),
            ("wallet_idle_secs", "--wallet-idle-secs", "TALLY_WALLET_IDLE_SECS"),
            ("snapshot_every_events", "--snapshot-every-events", "TALLY_SNAPSHOT_EVERY_EVENTS"),
            ("snapshot_keep", "--snapshot-keep", "TALLY_SNAPSHOT_KEEP"),
            ("reporting_db", "--reporting-db", "TALLY_REPORTING_DB"),
            ("local_read_model", "--local-read-model", "TALLY_LOCAL_READ_MODEL"),
            ("metrics_listen", "--metrics-listen", "TALLY_METRICS_LISTEN"),
            ("otlp_endpoint", "--otlp-endpoint", "TALLY_OTLP_ENDPOINT"),
            ("log_format", "--log-format", "TALLY_LOG_FORMAT"),
            ("clock_jump_max_hours", "--clock-jump-max-hours", "TALLY_CLOCK_JUMP_MAX_HOURS"),
            ("accept_clock_jump", "--accept-clock-jump", "TALLY_ACCEPT_CLOCK_JUMP"),
            ("insecure_no_auth", "--insecure-no-auth", "TALLY_INSECURE_NO_AUTH"),
            ("tls_cert", "--tls-cert", "TALLY_TLS_CERT"),
            ("tls_key", "--tls-key", "TALLY_TLS_KEY"),
            ("tls_client_ca", "--tls-client-ca", "TALLY_TLS_CLIENT_CA"),
            ("insecure_plaintext", "--insecure-plaintext", "TALLY_INSECURE_PLAINTEXT"),
            ("rate_per_key", "--rate-per-key", "TALLY_RATE_PER_KEY"),
            ("rate_per_tenant", "--rate-per-tenant", "TALLY_RATE_PER_TENANT"),
            ("rate_per_platform_key", "--rate-per-platform-key", "TALLY_RATE_PER_PLATFORM_KEY"),
            ("tenants_max", "--tenants-max", "TALLY_TENANTS_MAX"),
            ("wallets_max", "--wallets-max", "TALLY_WALLETS_MAX"),
            ("node_id", "--node-id", "TALLY_NODE_ID"),
            ("cluster_listen", "--cluster-listen", "TALLY_CLUSTER_LISTEN"),
            ("join", "--join", "TALLY_JOIN"),
            ("advertise", "--advertise", "TALLY_ADVERTISE"),
            ("advertise_gossip", "--advertise-gossip", "TALLY_ADVERTISE_GOSSIP"),
            ("advertise_grpc", "--advertise-grpc", "TALLY_ADVERTISE_GRPC"),
            ("cluster_ca", "--cluster-ca", "TALLY_CLUSTER_CA"),
        ];
        assert_eq!(ServeOptions::NAMES, spellings.map(|(key, _, _)| key));
        let mut cli = <crate::cli::Cli as clap::CommandFactory>::command();
        let serve = cli.find_subcommand_mut("serve").unwrap();
        let help = serve.render_help().to_string();
        for (key, flag, variable) in spellings {
            let arg = serve.get_arguments().find(|arg| arg.get_id() == key).unwrap();
            assert_eq!((arg.get_long().map(|long| format!("--{long}")).as_deref(), arg.get_env()), (Some(flag), Some(variable.as_ref())));
            assert!(help.contains(&format!("{flag} ")) && help.contains(&format!("[env: {variable}=]")), "{key} in:\n{help}");
        }
    }

    #[test]
    fn the_readme_example_file_is_valid() {
        let readme = include_str!("../../README.md");
        let example = readme.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a toml example in README.md");
        let (args, _) = with_file(example, &[]);
        let s = ServeSettings::resolve(&args).unwrap();
        assert_eq!(s.data, PathBuf::from("/var/lib/tally"));
        assert_eq!(s.tenants.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), vec!["acme", "corner-shop"]);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tally-config-test-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
