//! `tally cluster status`: the members a node sees, their state and shards, the nodes it declared dead,
//! and where a wallet lives.

use std::fmt::Write as _;

use serde::Serialize;
use tally_proto::v1::cluster_service_client::ClusterServiceClient;
use tally_proto::v1::{GetClusterStatusRequest, NodeStatus};

use crate::cli::Target;
use crate::client::ClientError;
use crate::credentials;

#[derive(Debug, Serialize)]
struct StatusView {
    node_id: String,
    shards: u32,
    members: Vec<MemberView>,
    unreachable: Vec<String>,
    wallet: Option<PlacementView>,
}

#[derive(Debug, Serialize)]
struct MemberView {
    node_id: String,
    address: String,
    status: &'static str,
    shards_owned: u32,
    started_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct PlacementView {
    tenant_id: String,
    wallet_id: String,
    shard: u32,
    owner: String,
}

fn status_name(status: i32) -> &'static str {
    match NodeStatus::try_from(status).unwrap_or(NodeStatus::Unspecified) {
        NodeStatus::Joining => "joining",
        NodeStatus::Ready => "ready",
        NodeStatus::Leaving => "leaving",
        NodeStatus::Unspecified => "unknown",
    }
}

/// The cluster as the node at `target` sees it; `wallet` as `TENANT/WALLET`.
pub async fn status(wallet: Option<&str>, target: Target) -> Result<String, ClientError> {
    let (tenant_id, wallet_id) = match wallet {
        None => (String::new(), String::new()),
        Some(text) => match text.split_once('/') {
            Some((tenant, wallet)) => (tenant.to_owned(), wallet.to_owned()),
            None => return Err(ClientError::Direct(format!("--wallet {text:?}: expected TENANT/WALLET"))),
        },
    };
    let channel = credentials::connect(&target.server, target.key.bearer_for(&target.server)?)
        .await
        .map_err(|source| ClientError::Connect { server: target.server.clone(), source })?;
    let reply = ClusterServiceClient::new(channel)
        .get_cluster_status(GetClusterStatusRequest { tenant_id, wallet_id })
        .await
        .map_err(ClientError::Call)?
        .into_inner();
    let view = StatusView {
        node_id: reply.node_id,
        shards: reply.shards,
        members: reply
            .members
            .into_iter()
            .map(|m| MemberView {
                node_id: m.node_id,
                address: m.address,
                status: status_name(m.status),
                shards_owned: m.shards_owned,
                started_at: m.started_at.map(|t| t.to_string()),
            })
            .collect(),
        unreachable: reply.unreachable,
        wallet: reply.wallet.map(|w| PlacementView { tenant_id: w.tenant_id, wallet_id: w.wallet_id, shard: w.shard, owner: w.owner }),
    };
    if target.json {
        return Ok(serde_json::to_string_pretty(&view).expect("views serialize"));
    }
    let mut out = format!("as node {} sees it: {} members, {} shards\n", view.node_id, view.members.len(), view.shards);
    let _ = write!(out, "{:<20} {:<8} {:>8} {:<28} STARTED", "NODE", "STATUS", "SHARDS", "ADDRESS");
    for m in &view.members {
        let share = f64::from(m.shards_owned) * 100.0 / f64::from(view.shards.max(1));
        let _ = write!(
            out,
            "\n{:<20} {:<8} {:>8} {:<28} {}  ({share:.1}%)",
            m.node_id.escape_debug(),
            m.status,
            m.shards_owned,
            m.address.escape_debug(),
            m.started_at.as_deref().unwrap_or("-")
        );
    }
    if !view.unreachable.is_empty() {
        let _ = write!(out, "\nunreachable (declared dead): {}", view.unreachable.join(", ").escape_debug());
    }
    if let Some(w) = &view.wallet {
        let owner = if w.owner.is_empty() { "no node (none is ready)" } else { w.owner.as_str() };
        let _ = write!(out, "\nwallet {}/{}: shard {}, owned by {}", w.tenant_id, w.wallet_id, w.shard, owner.escape_debug());
    }
    Ok(out)
}
