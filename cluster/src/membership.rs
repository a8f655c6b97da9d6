//! Who is in the cluster, from chitchat (scuttlebutt gossip with a phi-accrual failure detector; ADR 0009).
//!
//! Each node publishes two keys: `grpc` (where its gateway serves) and `status` (`joining`, `ready`,
//! `leaving`). The [`View`] every node computes from what it hears — members that are live, ready and
//! not leaving, each node id at its newest generation — and the [`Placement`] over them are published on a
//! watch channel whenever they change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::transport::{Transport, UdpTransport};
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, spawn_chitchat};
use tokio::sync::watch;

use crate::placement::Placement;

/// Gossip every half second: a dead node is declared within ~4 s (phi 8 over half-second heartbeats).
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(500);
/// A dead node's state is forgotten after this (it may come back with a new generation before).
const DEAD_NODE_GRACE: Duration = Duration::from_secs(15 * 60);

/// Changes that arrive together are published as one view.
const COALESCE: Duration = Duration::from_millis(100);
/// Gossip rounds a leaving node waits, still forwarding, so that every peer has heard it (a peer updates
/// its live nodes at its own next round; beyond a few nodes a change spreads over several rounds).
const LEAVE_ROUNDS: u32 = 4;

const KEY_GRPC: &str = "grpc";
const KEY_STATUS: &str = "status";
/// How many times the node's own view of who is up has changed: each time it may have begun serving
/// wallets another node kept (its view lost members) or stopped (it gained some), so the others re-read
/// theirs from the log — also when their own views did not change (gossip lost one way only).
const KEY_VIEWS: &str = "views";

/// Where a node is in its life, as it tells the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Up, not yet taking wallets.
    Joining,
    /// Owns its share of the wallets.
    Ready,
    /// Shutting down: its shards go elsewhere.
    Leaving,
}

impl NodeStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Ready => "ready",
            Self::Leaving => "leaving",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "joining" => Some(Self::Joining),
            "ready" => Some(Self::Ready),
            "leaving" => Some(Self::Leaving),
            _ => None,
        }
    }
}

/// How a node joins: what it is called, where it gossips, and whom it asks first.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Stable across restarts: a restarted node takes its shards back.
    pub node_id: String,
    /// Nodes with another cluster id ignore each other.
    pub cluster_id: String,
    /// Where this node gossips (UDP).
    pub listen: SocketAddr,
    /// Where peers reach this node's gossip; usually `listen`.
    pub advertise: SocketAddr,
    /// Other nodes' gossip addresses (`host:port`); none for the first node.
    pub seeds: Vec<String>,
    /// Where this node's gateway serves gRPC, as peers should dial it (`http://host:port`).
    pub grpc_url: String,
    pub gossip_interval: Duration,
}

/// A node as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: String,
    pub grpc_url: String,
    pub status: NodeStatus,
    /// When the node started (ns since the epoch): a restart is a higher generation.
    pub generation: u64,
    /// How many times its view of the members has changed.
    pub views: u64,
}

impl Member {
    /// The member without what it says of its own view.
    fn node(&self) -> (&str, &str, NodeStatus, u64) {
        (&self.node_id, &self.grpc_url, self.status, self.generation)
    }
}

/// The cluster as this node sees it now.
#[derive(Debug, Clone)]
pub struct View {
    /// Every live node, each id at its newest generation, sorted by id; this node included.
    pub members: Vec<Member>,
    /// Shards over the members that are `Ready`.
    pub placement: Arc<Placement>,
}

impl View {
    fn of(members: Vec<Member>) -> Self {
        let owners = members.iter().filter(|m| m.status == NodeStatus::Ready).map(|m| m.node_id.clone());
        Self { placement: Arc::new(Placement::new(owners)), members }
    }

    /// The member called `node_id`, if live.
    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == node_id)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cluster membership: {0}")]
pub struct MembershipError(String);

/// This node's membership: its gossip running in the background, and the view it keeps.
pub struct Membership {
    handle: ChitchatHandle,
    view: watch::Receiver<View>,
    node_id: String,
    gossip_interval: Duration,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl Membership {
    /// Starts gossiping on UDP as `Joining`.
    pub async fn start(config: MembershipConfig) -> Result<Self, MembershipError> {
        Self::start_on(config, &UdpTransport).await
    }

    /// Starts gossiping over `transport` (tests inject faults here).
    pub async fn start_on(config: MembershipConfig, transport: &dyn Transport) -> Result<Self, MembershipError> {
        let generation =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default();
        let chitchat_id = ChitchatId::new(config.node_id.clone(), generation, config.advertise);
        let failure_detector_config = FailureDetectorConfig {
            // Seeded with the real gossip rate, so detection is fast from the first heartbeat.
            initial_interval: config.gossip_interval,
            max_interval: config.gossip_interval * 4,
            dead_node_grace_period: DEAD_NODE_GRACE,
            ..FailureDetectorConfig::default()
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id,
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.listen,
            seed_nodes: config.seeds.clone(),
            failure_detector_config,
            marked_for_deletion_grace_period: DEAD_NODE_GRACE,
            catchup_callback: None,
            // A node is a member once it says where it serves and in what state.
            extra_liveness_predicate: Some(Box::new(|state: &NodeState| {
                state.get(KEY_GRPC).is_some() && state.get(KEY_STATUS).and_then(NodeStatus::parse).is_some()
            })),
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let initial =
            vec![(KEY_GRPC.to_string(), config.grpc_url.clone()), (KEY_STATUS.to_string(), NodeStatus::Joining.as_str().to_string())];
        let handle = spawn_chitchat(chitchat_config, initial, transport)
            .await
            .map_err(|e| MembershipError(format!("cannot gossip on {}: {e:#}", config.listen)))?;
        let live = handle.chitchat().lock().await.live_nodes_watcher();
        let (publish, view) = watch::channel(View::of(members_of(&live.borrow())));
        let publish = Arc::new(publish);
        tokio::spawn(follow(live, Arc::clone(&publish), config.node_id.clone(), handle.chitchat()));
        // Gossip that stopped by itself (a socket error) leaves this node blind: it would go on owning
        // shards the others gave away. It owns nothing from then on, and says so.
        let stopped = handle.termination_watcher();
        tokio::spawn(async move {
            let outcome = stopped.await;
            if !publish.is_closed() {
                tracing::error!(?outcome, "cluster gossip stopped; this node now owns no wallets and forwards nothing");
                let _ = publish.send(View::of(Vec::new()));
            }
        });
        Ok(Self { handle, view, node_id: config.node_id, gossip_interval: config.gossip_interval })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The cluster as this node sees it, updated on every change.
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Tells the others where this node is in its life.
    pub async fn set_status(&self, status: NodeStatus) {
        self.handle.with_chitchat(|chitchat| chitchat.self_node_state().set(KEY_STATUS, status.as_str())).await;
    }

    /// Says `Ready` and waits (at most a few gossip rounds) until this node's own view has it ready, so
    /// its first calls are not refused as unplaced.
    pub async fn become_ready(&self) {
        self.set_status(NodeStatus::Ready).await;
        let mut view = self.view();
        let me_ready = |v: &View| v.member(&self.node_id).is_some_and(|m| m.status == NodeStatus::Ready);
        let _ = tokio::time::timeout(self.gossip_interval * 4, view.wait_for(me_ready)).await;
    }

    /// Nodes the failure detector declared dead and has not forgotten yet, by id — less those live again
    /// (a restarted node's old generation stays "dead" for a while).
    pub async fn unreachable(&self) -> Vec<String> {
        let mut dead: Vec<String> =
            self.handle.with_chitchat(|chitchat| chitchat.dead_nodes().map(|id| id.node_id.to_string()).collect()).await;
        let view = self.view.borrow().clone();
        dead.retain(|id| view.member(id).is_none());
        dead.sort();
        dead.dedup();
        dead
    }

    /// How long without a heartbeat before `node_id` would be declared dead, as the detector has learnt.
    pub async fn detection_timeout(&self, node_id: &str) -> Option<Duration> {
        self.handle
            .with_chitchat(|chitchat| {
                let id = chitchat.node_states().keys().filter(|id| &*id.node_id == node_id).max_by_key(|id| id.generation_id)?.clone();
                chitchat.failure_detection_timeout(&id)
            })
            .await
    }

    /// The first half of a graceful leave: says `Leaving` and waits `LEAVE_ROUNDS` gossip rounds, so
    /// every peer has heard it and routes this node's wallets elsewhere; this node keeps serving
    /// (forwarding) meanwhile.
    pub async fn announce_leaving(&self) {
        self.set_status(NodeStatus::Leaving).await;
        tokio::time::sleep(self.gossip_interval * LEAVE_ROUNDS).await;
    }

    /// Stops gossiping: peers then see this node leave at once (it said so) or, if it did not announce
    /// it, after the failure detector's timeout.
    pub async fn stop(self) {
        if let Err(error) = self.handle.shutdown().await {
            tracing::warn!(%error, "cluster gossip stopped with an error");
        }
    }
}

/// Republishes the view when the live nodes change, gathering the changes of the next 100 ms (they come
/// in bursts); the placement is computed off the async workers (~100 ms for 100 nodes).
async fn follow(
    mut live: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    publish: Arc<watch::Sender<View>>,
    me: String,
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
) {
    let mut views: u64 = 0;
    while live.changed().await.is_ok() {
        tokio::time::sleep(COALESCE).await;
        let members = {
            let live = live.borrow_and_update();
            let mine = live.keys().filter(|id| *id.node_id == *me).count();
            if mine > 1 {
                tracing::error!(node = %me, generations = mine, "another process gossips with this node's id: they would own the same wallets");
            }
            members_of(&live)
        };
        let nodes_changed = !publish.borrow().members.iter().map(Member::node).eq(members.iter().map(Member::node));
        if nodes_changed {
            views += 1;
            chitchat.lock().await.self_node_state().set(KEY_VIEWS, views.to_string());
        }
        if publish.borrow().members != members {
            let Ok(view) = tokio::task::spawn_blocking(move || View::of(members)).await else { return };
            tracing::info!(
                members = ?view.members.iter().map(|m| (m.node_id.as_str(), m.status.as_str())).collect::<Vec<_>>(),
                "cluster view changed"
            );
            if publish.send(view).is_err() {
                return;
            }
        }
    }
}

/// Live nodes as members: the newest generation of each node id, those that say where and how they are.
fn members_of(live: &BTreeMap<ChitchatId, NodeState>) -> Vec<Member> {
    let mut newest: BTreeMap<&str, Member> = BTreeMap::new();
    for (id, state) in live {
        let (Some(grpc_url), Some(status)) = (state.get(KEY_GRPC), state.get(KEY_STATUS).and_then(NodeStatus::parse)) else {
            continue;
        };
        let views = state.get(KEY_VIEWS).and_then(|v| v.parse().ok()).unwrap_or(0);
        let member =
            Member { node_id: id.node_id.to_string(), grpc_url: grpc_url.to_string(), status, generation: id.generation_id, views };
        match newest.get(&*id.node_id) {
            Some(known) if known.generation >= member.generation => {}
            _ => {
                newest.insert(&id.node_id, member);
            }
        }
    }
    newest.into_values().collect()
}
