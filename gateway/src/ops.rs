//! `tally projections status|rebuild`: the operator's view of a running server's read models, the events
//! they quarantined included.

use std::fmt::Write as _;

use crate::credentials::{self, Authed};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tally_proto::v1::projections_service_client::ProjectionsServiceClient;
use tally_proto::v1::{ListProjectionsRequest, ProjectionStatus, RebuildProjectionRequest};

use crate::cli::Target;
use crate::client::ClientError;

async fn connect(target: &Target) -> Result<ProjectionsServiceClient<Authed>, ClientError> {
    credentials::connect(&target.server, target.key.bearer_for(&target.server)?)
        .await
        .map(ProjectionsServiceClient::new)
        .map_err(|source| ClientError::Connect { server: target.server.clone(), source })
}

#[derive(Debug, Serialize)]
struct StatusView {
    name: String,
    state: String,
    error: String,
    generation: u64,
    checkpoint: u64,
    log_head: u64,
    lag_events: u64,
    lag_ms: u64,
    lag_p50_ms: u64,
    lag_p99_ms: u64,
    events_applied: u64,
    quarantined_events: u64,
    recent_quarantined: Vec<QuarantinedView>,
}

#[derive(Debug, Serialize)]
struct QuarantinedView {
    position: u64,
    stream: String,
    event_type: String,
    reason: String,
}

fn view(s: ProjectionStatus) -> StatusView {
    StatusView {
        name: s.name,
        state: s.state,
        error: s.error,
        generation: s.generation,
        checkpoint: s.checkpoint,
        log_head: s.log_head,
        lag_events: s.lag_events,
        lag_ms: s.lag_ms,
        lag_p50_ms: s.lag_p50_ms,
        lag_p99_ms: s.lag_p99_ms,
        events_applied: s.events_applied,
        quarantined_events: s.quarantined_events,
        recent_quarantined: s
            .recent_quarantined
            .into_iter()
            .map(|q| QuarantinedView { position: q.position, stream: q.stream, event_type: q.event_type, reason: q.reason })
            .collect(),
    }
}

/// One line per projection: state, checkpoint against the head, and lag.
pub async fn status(target: Target) -> Result<String, ClientError> {
    let response = connect(&target).await?.list_projections(ListProjectionsRequest {}).await.map_err(ClientError::Call)?;
    let views: Vec<StatusView> = response.into_inner().projections.into_iter().map(view).collect();
    if target.json {
        return Ok(serde_json::to_string_pretty(&views).expect("views serialize"));
    }
    if views.is_empty() {
        return Ok("this server runs no projections".to_owned());
    }
    let mut out = format!(
        "{:<16} {:<9} {:>4} {:>12} {:>12} {:>10} {:>9} {:>9}",
        "PROJECTION", "STATE", "GEN", "CHECKPOINT", "LOG HEAD", "LAG", "LAG TIME", "P99 LAG"
    );
    for v in &views {
        let _ = write!(
            out,
            "\n{:<16} {:<9} {:>4} {:>12} {:>12} {:>10} {:>7}ms {:>7}ms",
            v.name, v.state, v.generation, v.checkpoint, v.log_head, v.lag_events, v.lag_ms, v.lag_p99_ms
        );
        if !v.error.is_empty() {
            let _ = write!(out, "\n  {}", v.error);
        }
        if v.quarantined_events > 0 {
            let _ = write!(out, "\n  {} events quarantined (skipped; fix the cause and rebuild); latest:", v.quarantined_events);
            for q in &v.recent_quarantined {
                // Stored text may hold anything a log held: shown escaped, never as terminal controls.
                let _ = write!(
                    out,
                    "\n    position {} {} {}: {}",
                    q.position,
                    q.stream.escape_debug(),
                    q.event_type.escape_debug(),
                    q.reason.escape_debug()
                );
            }
        }
    }
    Ok(out)
}

/// Rebuilds a projection, showing progress on a terminal; returns the summary line.
pub async fn rebuild(name: String, target: Target) -> Result<String, ClientError> {
    let mut stream = connect(&target)
        .await?
        .rebuild_projection(RebuildProjectionRequest { name: name.clone() })
        .await
        .map_err(ClientError::Call)?
        .into_inner();
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("rebuilding {name}"));
    let mut last = None;
    while let Some(progress) = stream.message().await.map_err(ClientError::Call)? {
        bar.set_length(progress.log_head.max(progress.checkpoint));
        bar.set_position(progress.checkpoint);
        bar.set_message(progress.phase.clone());
        last = Some(progress);
    }
    bar.finish_and_clear();
    let Some(last) = last else {
        return Err(ClientError::Call(tonic::Status::unknown("the server ended the rebuild without a word")));
    };
    match last.phase.as_str() {
        "done" => Ok(format!(
            "rebuilt {name}: generation {} is live, {} events replayed ({:.0} events/s)",
            last.generation, last.checkpoint, last.events_per_second
        )),
        "cancelled" => {
            Err(ClientError::Call(tonic::Status::cancelled(format!("rebuild of {name} cancelled; the live read model is untouched"))))
        }
        _ => Err(ClientError::Call(tonic::Status::aborted(format!(
            "rebuild of {name} failed: {}; the live read model is untouched",
            last.error
        )))),
    }
}
