//! Settings of `tally serve`: flags, then `TALLY_*` environment variables (both through clap), then the
//! optional TOML file, then defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tally_engine::actors::RegistryConfig;
use tally_engine::domain::{ProgramSettings, ReturnPolicy, TenantId};
use tally_snapshots::SnapshotPolicy;

use crate::cli::ServeArgs;

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
        let error = |reason: &str| ConfigError::Store { url: url.to_owned(), reason: reason.to_owned() };
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

/// The TOML file. Unknown keys are errors, so a typo is never silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    store: Option<String>,
    listen: Option<SocketAddr>,
    active_wallets_max: Option<usize>,
    wallet_idle_secs: Option<u64>,
    snapshot_every_events: Option<u64>,
    snapshot_keep: Option<usize>,
    reporting_db: Option<String>,
    local_read_model: Option<bool>,
    metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    tenants: BTreeMap<String, TenantConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantConfig {
    return_policy: Option<String>,
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

fn tenant(value: &str, name: &str, policy_name: Option<&str>) -> Result<(TenantId, ProgramSettings), ConfigError> {
    let id = TenantId::parse(name).map_err(|e| ConfigError::Tenant { value: value.to_owned(), reason: e.to_string() })?;
    let return_policy = policy_name.map(|p| policy(value, p)).transpose()?.unwrap_or(ReturnPolicy::AllowNegative);
    Ok((id, ProgramSettings { return_policy, ..ProgramSettings::default() }))
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
}

impl ServeSettings {
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let tenants = if !args.tenants.is_empty() {
            args.tenants
                .iter()
                .map(|value| {
                    let (name, policy) = match value.split_once(':') {
                        Some((name, policy)) => (name, Some(policy)),
                        None => (value.as_str(), None),
                    };
                    tenant(value, name.trim(), policy.map(str::trim))
                })
                .collect::<Result<Vec<_>, _>>()?
        } else if !file.tenants.is_empty() {
            file.tenants.iter().map(|(name, t)| tenant(name, name, t.return_policy.as_deref())).collect::<Result<Vec<_>, _>>()?
        } else {
            vec![tenant(TENANT_DEFAULT, TENANT_DEFAULT, None)?]
        };
        let defaults = RegistryConfig::default();
        let policy = SnapshotPolicy::default();
        let every_events = args.snapshot_every_events.or(file.snapshot_every_events).unwrap_or(policy.every_events);
        let keep_last = args.snapshot_keep.or(file.snapshot_keep).unwrap_or(policy.keep_last).max(1);
        let data = args.data.clone().or(file.data).unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT));
        let store = match args.store.clone().or(file.store) {
            Some(url) => StoreUrl::parse(&url)?,
            None => StoreUrl::Embedded(data.clone()),
        };
        Ok(Self {
            store: store.clone(),
            snapshots: (every_events > 0).then_some(SnapshotPolicy { every_events, keep_last, ..policy }),
            data,
            listen: args.listen.or(file.listen).unwrap_or_else(|| LISTEN_DEFAULT.parse().expect("valid default address")),
            tenants,
            reporting_db: args.reporting_db.clone().or(file.reporting_db),
            // Nodes on a shared log keep nothing locally unless asked to.
            local_read_model: args.local_read_model.or(file.local_read_model).unwrap_or(matches!(store, StoreUrl::Embedded(_))),
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            registry: RegistryConfig {
                active_wallets_max: args.active_wallets_max.or(file.active_wallets_max).unwrap_or(defaults.active_wallets_max),
                idle_ms: args.wallet_idle_secs.or(file.wallet_idle_secs).map_or(defaults.idle_ms, |s| s.saturating_mul(1000)),
                ..defaults
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
            crate::cli::Command::Serve(args) => args,
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

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tally-config-test-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
