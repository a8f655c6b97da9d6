//! `ClusterService`: the cluster as this node sees it — members, their state and shards, the nodes
//! declared dead, and where a given wallet lives. For the platform operator (`tally cluster status`).

use tally_cluster::Node;
use tally_cluster::membership::NodeStatus;
use tally_cluster::placement::{SHARDS, shard_of};
use tally_engine::domain::{TenantId, WalletId};
use tally_proto::v1::cluster_service_server::ClusterService;
use tally_proto::v1::{self as pb, ClusterMember, ClusterStatus, GetClusterStatusRequest, WalletPlacement};
use tonic::{Request, Response, Status};

use crate::status;

#[derive(Debug, Clone)]
pub struct ClusterApi {
    node: Option<Node>,
}

impl ClusterApi {
    pub fn new(node: Option<Node>) -> Self {
        Self { node }
    }
}

fn status_of(status: NodeStatus) -> pb::NodeStatus {
    match status {
        NodeStatus::Joining => pb::NodeStatus::Joining,
        NodeStatus::Ready => pb::NodeStatus::Ready,
        NodeStatus::Leaving => pb::NodeStatus::Leaving,
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn get_cluster_status(&self, request: Request<GetClusterStatusRequest>) -> Result<Response<ClusterStatus>, Status> {
        let Some(node) = &self.node else {
            return Err(Status::failed_precondition("this node is not part of a cluster (it was started without --node-id)"));
        };
        let r = request.into_inner();
        let wallet = if r.wallet_id.is_empty() && r.tenant_id.is_empty() {
            None
        } else {
            let tenant = TenantId::parse(&r.tenant_id).map_err(|e| status::from_field_error(&e))?;
            let wallet = WalletId::parse(&r.wallet_id).map_err(|e| status::from_field_error(&e))?;
            Some((tenant, wallet))
        };
        let view = node.router.view();
        let placement = &view.placement;
        let shares = placement.shards_per_member();
        let owned = |id: &str| placement.members().iter().position(|m| m == id).map_or(0, |i| shares[i]);
        let members = view
            .members
            .iter()
            .map(|m| ClusterMember {
                node_id: m.node_id.clone(),
                address: m.grpc_url.clone(),
                status: status_of(m.status) as i32,
                shards_owned: owned(&m.node_id),
                started_at: Some(status::timestamp(i64::try_from(m.generation / 1_000_000).unwrap_or(i64::MAX))),
            })
            .collect();
        let wallet = wallet.map(|(tenant, wallet)| WalletPlacement {
            shard: shard_of(tenant.as_str(), wallet.as_str()).index(),
            owner: placement.owner_of(tenant.as_str(), wallet.as_str()).unwrap_or_default().to_owned(),
            tenant_id: tenant.to_string(),
            wallet_id: wallet.to_string(),
        });
        Ok(Response::new(ClusterStatus {
            node_id: node.router.node_id().to_owned(),
            shards: SHARDS,
            members,
            unreachable: node.membership.unreachable().await,
            wallet,
        }))
    }
}
