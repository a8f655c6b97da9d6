//! Which node serves a wallet's call: this one, or a peer reached over a cached gRPC channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::membership::View;
use crate::placement::Placement;

/// Where a wallet's call goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// This node owns the wallet.
    Local,
    /// Another node does.
    Remote(Peer),
    /// No node is ready to own anything yet.
    Unplaced,
}

/// A node calls are forwarded to.
#[derive(Debug, Clone)]
pub struct Peer {
    pub node_id: String,
    pub channel: Channel,
}

/// Routes wallet calls by the view this node has of the cluster.
#[derive(Debug)]
pub struct Router {
    node_id: String,
    view: watch::Receiver<View>,
    /// One lazily connected channel per peer address (none: the address cannot be called; said once).
    channels: parking_lot::Mutex<HashMap<String, Option<Channel>>>,
    /// How peers are verified when they serve TLS (`https://` addresses).
    tls: Option<ClientTlsConfig>,
}

/// How long a forwarded call may take to connect to its peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// While calls are in flight to a peer, it is pinged this often and given this long to answer: a peer
/// cut off mid-call (a partition drops packets, no reset comes) fails its calls within ~3 s, whether or
/// not their callers set a deadline, instead of leaving them to TCP's minutes.
const PING_INTERVAL: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

impl Router {
    /// A router for node `node_id`; `tls` verifies peers that serve TLS (none: peers serve plaintext).
    pub fn new(node_id: impl Into<String>, view: watch::Receiver<View>, tls: Option<ClientTlsConfig>) -> Self {
        Self { node_id: node_id.into(), view, channels: parking_lot::Mutex::default(), tls }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The view routes are taken from now.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Where a call for tenant `tenant`'s wallet `wallet` goes.
    pub fn route(&self, tenant: &str, wallet: &str) -> Route {
        let view = self.view.borrow();
        let Some(owner) = view.placement.owner_of(tenant, wallet) else { return Route::Unplaced };
        if owner == self.node_id {
            return Route::Local;
        }
        let Some(member) = view.member(owner) else { return Route::Unplaced };
        match self.channel(&member.grpc_url) {
            Some(channel) => Route::Remote(Peer { node_id: owner.to_string(), channel }),
            None => Route::Unplaced,
        }
    }

    /// The placement routes are taken from now.
    pub fn placement(&self) -> Arc<Placement> {
        Arc::clone(&self.view.borrow().placement)
    }

    /// Whether this node owns tenant `tenant`'s wallet `wallet` by its view now (no channel looked up).
    pub fn owns(&self, tenant: &str, wallet: &str) -> bool {
        self.view.borrow().placement.owner_of(tenant, wallet) == Some(self.node_id.as_str())
    }

    /// Waits until the placement is no longer `seen`, at most `limit`: after a peer said it does not own a
    /// wallet `seen` placed there. Returns at once if it changed already.
    pub async fn changed_since(&self, seen: &Arc<Placement>, limit: Duration) {
        let mut view = self.view.clone();
        let moved_on = |v: &View| !Arc::ptr_eq(&v.placement, seen);
        let _ = tokio::time::timeout(limit, view.wait_for(moved_on)).await;
    }

    fn channel(&self, url: &str) -> Option<Channel> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(url) {
            return channel.clone();
        }
        let channel = match self.endpoint(url) {
            Ok(endpoint) => Some(endpoint.connect_lazy()),
            Err(error) => {
                tracing::error!(%url, %error, "a peer gossips an address this node cannot call; its wallets cannot be reached");
                None
            }
        };
        channels.insert(url.to_string(), channel.clone());
        channel
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint, String> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT);
        match (&self.tls, url.starts_with("https://")) {
            (Some(tls), true) => endpoint.tls_config(tls.clone()).map_err(|e| e.to_string()),
            (None, false) => Ok(endpoint),
            (Some(_), false) => Err("this node verifies its peers over TLS; the peer serves plaintext".into()),
            (None, true) => Err("the peer serves TLS; this node has no --cluster-ca to verify it with".into()),
        }
    }
}
