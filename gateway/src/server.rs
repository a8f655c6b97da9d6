//! The gRPC server: wallet service, standard health checks and server reflection, with the edge limits.
//! Takes the world as arguments (listener, engine, shutdown signal) so tests and the binary wire it alike.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tally_cluster::Node;
use tally_proto::v1::admin_service_server::AdminServiceServer;
use tally_proto::v1::audit_service_server::AuditServiceServer;
use tally_proto::v1::cluster_service_server::ClusterServiceServer;
use tally_proto::v1::keys_service_server::KeysServiceServer;
use tally_proto::v1::projections_service_server::ProjectionsServiceServer;
use tally_proto::v1::reporting_service_server::ReportingServiceServer;
use tally_proto::v1::wallet_service_server::WalletServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

use crate::access::{Access, AuthLayer};
use crate::admin::AdminApi;
use crate::admission::{Admitted, DeadlineLayer};
use crate::audit::AuditApi;
use crate::cluster_status::ClusterApi;
use crate::keys::KeysApi;
use crate::limits::{
    ADMIN_MESSAGE_BYTES_MAX, ADMIN_REQUESTS_IN_FLIGHT_MAX, AUDIT_REQUESTS_IN_FLIGHT_MAX, MESSAGE_BYTES_MAX, RATE_LIMITER_SWEEP_MS,
    REPLY_BYTES_MAX, REPORTING_REQUESTS_IN_FLIGHT_MAX, RESPONSE_FLUSH_MS, SHUTDOWN_GRACE_MS, STREAMS_PER_CONNECTION_MAX,
};
use crate::quota::{Quotas, RateLimits};
use crate::reporting::{ProjectionsApi, ReadSide, ReportingApi};
use crate::routing::RoutedWallets;
use crate::service::{Engine, Gate, WalletApi};
use crate::telemetry::RpcMetricsLayer;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How the edge treats callers: who they are, how fast they may call, over what.
#[derive(Debug)]
pub struct Edge {
    pub access: Access,
    pub rates: RateLimits,
    pub tls: Option<ServerTlsConfig>,
    /// The cluster this node routes wallet calls through; `None`: one node serves every wallet.
    pub cluster: Option<Node>,
}

/// Serves until `shutdown` resolves; then refuses new calls (UNAVAILABLE), stops accepting connections,
/// waits up to `SHUTDOWN_GRACE_MS` for the calls in flight to finish, and returns.
pub async fn run(
    listener: TcpListener,
    engine: Engine,
    read: ReadSide,
    Edge { access, rates, tls, cluster }: Edge,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WalletServiceServer<RoutedWallets>>().await;
    health.set_serving::<ReportingServiceServer<ReportingApi>>().await;
    health.set_serving::<ProjectionsServiceServer<ProjectionsApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    health.set_serving::<KeysServiceServer<KeysApi>>().await;
    health.set_serving::<ClusterServiceServer<ClusterApi>>().await;
    health.set_serving::<AuditServiceServer<AuditApi>>().await;
    // From here on health follows the log and the read side; it stops with this function.
    let monitor = AbortOnDrop(crate::health::spawn(health.clone(), Arc::clone(&engine.store), read.clone()));
    // Both reflection versions: older grpcurl and Python's grpcio-reflection speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tally_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let gate = Arc::new(Gate::default());
    let reporting_gate = Arc::new(Gate::new(REPORTING_REQUESTS_IN_FLIGHT_MAX));
    let admin_gate = Arc::new(Gate::new(ADMIN_REQUESTS_IN_FLIGHT_MAX));
    let reporting = ReportingServiceServer::new(ReportingApi::new(
        read.clone(),
        Arc::clone(&engine.programs) as Arc<dyn tally_engine::actors::Programs>,
        Arc::clone(&engine.store),
    ))
    .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let reporting = Admitted::new(reporting, Arc::clone(&reporting_gate));
    let projections = Admitted::new(ProjectionsServiceServer::new(ProjectionsApi::new(&read)), Arc::clone(&reporting_gate));
    // Replays are a core's work each: a small gate of their own, so they never crowd out reports.
    let audit_gate = Arc::new(Gate::new(AUDIT_REQUESTS_IN_FLIGHT_MAX));
    let audit = Admitted::new(
        AuditServiceServer::new(AuditApi::new(Arc::clone(&engine.store), Arc::clone(&engine.clock)))
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(REPLY_BYTES_MAX),
        Arc::clone(&audit_gate),
    );
    let admin = AdminServiceServer::new(AdminApi::new(Arc::clone(&engine.programs), engine.flows.clone()))
        .max_decoding_message_size(ADMIN_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(ADMIN_MESSAGE_BYTES_MAX);
    let admin = Admitted::new(admin, Arc::clone(&admin_gate));
    let keys = Admitted::new(KeysServiceServer::new(KeysApi::new(Arc::clone(&engine.keys))), Arc::clone(&admin_gate));
    let wallets = WalletServiceServer::new(RoutedWallets::new(
        WalletApi::new(engine, Arc::clone(&gate)),
        cluster.as_ref().map(|node| Arc::clone(&node.router)),
        Arc::clone(&gate),
    ))
    .max_decoding_message_size(MESSAGE_BYTES_MAX)
    .max_encoding_message_size(REPLY_BYTES_MAX);
    let cluster_status = Admitted::new(ClusterServiceServer::new(ClusterApi::new(cluster)), Arc::clone(&admin_gate));
    let quotas = Arc::new(Quotas::new(rates));
    let sweeper = spawn_sweeper(Arc::clone(&quotas));
    let (stop_accepting, stopped) = oneshot::channel::<()>();
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let serve = server
        // Counted and timed outermost: refusals by the layers below count as their callers saw them.
        .layer(RpcMetricsLayer)
        // Deadlines are ours (DEADLINE_EXCEEDED, carried into the wallets), not `Server::timeout`'s.
        .layer(DeadlineLayer)
        // Who is calling and whether it is within its rates, before anything else is done for the call.
        .layer(AuthLayer::new(access, Arc::clone(&quotas)))
        .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(wallets)
        .add_service(reporting)
        .add_service(projections)
        .add_service(admin)
        .add_service(keys)
        .add_service(cluster_status)
        .add_service(audit)
        // Without TCP_NODELAY on accepted sockets, small replies wait for delayed ACKs (~40 ms).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async {
            let _ = stopped.await;
        });
    tokio::pin!(serve);
    // The sweeper stops with this function, however it returns.
    let _sweeper = AbortOnDrop(sweeper);
    tokio::select! {
        result = &mut serve => return result.map_err(Into::into),
        () = shutdown => {}
    }
    tracing::info!("shutting down: refusing new calls, finishing the ones in flight");
    // Stopped before we speak, so a check it was running cannot say SERVING after us.
    let mut monitor = monitor;
    monitor.0.abort();
    let _ = (&mut monitor.0).await;
    for service in [
        "",
        "tally.v1.WalletService",
        "tally.v1.AdminService",
        "tally.v1.KeysService",
        "tally.v1.ReportingService",
        "tally.v1.AuditService",
    ] {
        health.set_service_status(service, tonic_health::ServingStatus::NotServing).await;
    }
    drain([&gate, &reporting_gate, &admin_gate, &audit_gate], stop_accepting).await;
    // Let the last responses reach their clients; idle client connections do not hold us up.
    if let Ok(result) = tokio::time::timeout(Duration::from_millis(RESPONSE_FLUSH_MS), &mut serve).await {
        result?;
    }
    Ok(())
}

/// Closes the gates, stops accepting connections, and waits up to `SHUTDOWN_GRACE_MS` for the calls in
/// flight.
async fn drain(gates: [&Gate; 4], stop_accepting: oneshot::Sender<()>) {
    for gate in gates {
        gate.close();
    }
    let _ = stop_accepting.send(());
    let drained = futures::future::join_all(gates.map(Gate::drained));
    if tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), drained).await.is_err() {
        tracing::warn!(grace_ms = SHUTDOWN_GRACE_MS, "calls still in flight after the grace period; closing anyway");
    }
}

/// Forgets idle keys and tenants from the rate limiters every `RATE_LIMITER_SWEEP_MS`.
fn spawn_sweeper(quotas: Arc<Quotas>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(RATE_LIMITER_SWEEP_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            quotas.sweep();
        }
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
