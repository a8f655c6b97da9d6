//! The `tally` binary: parses settings, sets up logging, wires the concrete backends and runs the chosen
//! subcommand. Everything else lives in the library so tests can drive it the same way.

#![allow(clippy::print_stdout)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use std::path::Path;

use tally_engine::actors::{NoSnapshots, Snapshots, StaticPrograms, WalletRegistry};
use tally_engine::clock::SystemClock;
use tally_engine::store::{EmbeddedStore, EventStore};
use tally_gateway::cli::{Cli, Command, SnapshotsCommand};
use tally_gateway::config::ServeSettings;
use tally_gateway::service::Engine;
use tally_snapshots::{SledSnapshotStore, SnapshotStore, Snapshotter};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(ServeSettings::resolve(&args)?).await,
            Command::Wallet(command) => {
                println!("{}", tally_gateway::client::run(command).await?);
                Ok(())
            }
            Command::Bench(args) => {
                println!("{}", tally_gateway::bench::run(args).await?);
                Ok(())
            }
            Command::Snapshots(command) => snapshots(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: ServeSettings) -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(EmbeddedStore::open(&settings.data)?);
    let report = store.report();
    tracing::info!(data = %settings.data.display(), events = report.events, streams = report.streams, "event log ready");
    let tenants: Vec<String> = settings.tenants.iter().map(|(t, _)| t.to_string()).collect();
    let programs = Arc::new(StaticPrograms::with_tenants(settings.tenants.clone()));
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let snapshot_store = match settings.snapshots {
        Some(_) => Some(Arc::new(open_snapshots(&settings.data)?)),
        None => None,
    };
    let snapshots: Arc<dyn Snapshots> = match (&snapshot_store, settings.snapshots) {
        (Some(store), Some(policy)) => Arc::new(Snapshotter::new(store.clone(), policy)),
        _ => Arc::new(NoSnapshots),
    };
    let clock = Arc::new(SystemClock);
    let registry =
        WalletRegistry::start_with_snapshots(settings.registry.clone(), Arc::clone(&dyn_store), programs.clone(), clock, snapshots).await?;
    let listener =
        tokio::net::TcpListener::bind(settings.listen).await.map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, tenants = ?tenants, "serving gRPC");
    println!("tally listening on http://{address} (data in {}, tenants: {})", settings.data.display(), tenants.join(", "));
    let engine = Engine { registry: registry.clone(), store: dyn_store, programs };
    tally_gateway::server::run(listener, engine, shutdown_signal()).await?;
    registry.shutdown().await;
    store.close().await;
    if let Some(snapshot_store) = snapshot_store
        && let Err(error) = snapshot_store.flush().await
    {
        tracing::warn!(%error, "snapshots not flushed; wallets will rebuild them from the log");
    }
    tracing::info!("stopped cleanly: every acknowledged call is on disk");
    Ok(())
}

fn open_snapshots(data: &Path) -> Result<SledSnapshotStore, String> {
    let dir = data.join("snapshots");
    SledSnapshotStore::open(&dir)
        .map_err(|e| format!("cannot open snapshots in {}: {e} (is a server running on this data directory?)", dir.display()))
}

async fn snapshots(command: SnapshotsCommand) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        SnapshotsCommand::Stats { data } => {
            let stats = open_snapshots(&data)?.stats().await?;
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
        SnapshotsCommand::Purge { data } => {
            let purged = open_snapshots(&data)?.purge().await?;
            println!("deleted {purged} snapshots; wallets rebuild them from the log as they are used");
        }
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
        _ = terminate.recv() => tracing::info!("received SIGTERM"),
    }
}
