//! Health that tells the truth. The standard gRPC health service answers NOT_SERVING for the server as
//! a whole (`""`) and for the services that write the log — WalletService, AdminService, KeysService —
//! or read it (AuditService) while the log cannot be reached or written, and for ReportingService while its projection has
//! failed; SERVING again once they recover. Each change is a log line with its reason and a gauge
//! (`tally_log_writable`, `tally_reporting_serving`), so a load balancer, an SRE and a dashboard see the
//! same thing. A log that broke for good (a failed fsync) also stops the server (see `main.rs`).

use std::sync::Arc;
use std::time::Duration;

use tally_engine::store::{EventStore, StreamId};
use tally_projections::RunState;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::reporting::ReadSide;

/// The services whose calls write or replay the log, and the server as a whole.
const LOG_WRITERS: &[&str] = &["", "tally.v1.WalletService", "tally.v1.AdminService", "tally.v1.KeysService", "tally.v1.AuditService"];
const REPORTING: &str = "tally.v1.ReportingService";
/// How often the log and the read side are checked.
const EVERY: Duration = Duration::from_secs(1);
/// A log that does not answer a read within this is taken for unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A stream no one writes: reading its version asks the log for one row (none), through the same
/// connections appends use.
const PROBE_STREAM: &str = "tally-health-probe";

/// Follows the log and the read side, and says what it finds through `health` until aborted.
pub fn spawn(health: HealthReporter, store: Arc<dyn EventStore>, read: ReadSide) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let probe = StreamId::new(PROBE_STREAM).expect("a valid stream id");
        let (mut log_ok, mut reporting_ok) = (true, true);
        metrics::gauge!("tally_log_writable").set(1.0);
        metrics::gauge!("tally_reporting_serving").set(1.0);
        loop {
            tokio::time::sleep(EVERY).await;
            let problem = log_problem(store.as_ref(), &probe).await;
            if problem.is_none() != log_ok {
                log_ok = problem.is_none();
                match &problem {
                    Some(reason) => tracing::error!(%reason, "the log cannot be written: health says NOT_SERVING"),
                    None => tracing::warn!("the log can be written again: health says SERVING"),
                }
                metrics::gauge!("tally_log_writable").set(f64::from(u8::from(log_ok)));
                for service in LOG_WRITERS {
                    health.set_service_status(service, status(log_ok)).await;
                }
            }
            let failed = reporting_failure(&read);
            if failed.is_none() != reporting_ok {
                reporting_ok = failed.is_none();
                match &failed {
                    Some(error) => tracing::error!(%error, "the reporting projection has failed: ReportingService says NOT_SERVING"),
                    None => tracing::warn!("the reporting projection runs again: ReportingService says SERVING"),
                }
                metrics::gauge!("tally_reporting_serving").set(f64::from(u8::from(reporting_ok)));
                health.set_service_status(REPORTING, status(reporting_ok)).await;
            }
        }
    })
}

fn status(ok: bool) -> ServingStatus {
    if ok { ServingStatus::Serving } else { ServingStatus::NotServing }
}

/// Why the log cannot be written now, if it cannot.
async fn log_problem(store: &dyn EventStore, probe: &StreamId) -> Option<String> {
    if let Some(reason) = store.broken() {
        return Some(reason);
    }
    match tokio::time::timeout(PROBE_TIMEOUT, store.stream_version(probe)).await {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!("the log did not answer within {PROBE_TIMEOUT:?}")),
    }
}

/// The error the reporting projection stopped on, if it has.
fn reporting_failure(read: &ReadSide) -> Option<String> {
    let model = read.reporting.as_ref()?;
    let name = tally_projections::ReadModel::name(model.as_ref());
    read.projections.iter().map(|p| p.status()).find(|s| s.name == name).and_then(|s| match s.state {
        RunState::Failed { error } => Some(error),
        _ => None,
    })
}
