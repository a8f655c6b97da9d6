//! Several nodes sharing one log: who is up ([`membership`], on chitchat's gossip), where each wallet
//! lives ([`placement`]: fixed shards over the ready members by rendezvous hashing), and which node a
//! wallet's call goes to ([`Router`]). Pure placement, no I/O but the gossip socket and peer channels;
//! the gateway forwards calls and the engine is never told about other nodes (ADR 0009).

pub mod membership;
pub mod placement;
mod router;

pub use router::{Peer, Route, Router};

use std::sync::Arc;

/// This node's part in a cluster: its membership, and the router that follows its view.
#[derive(Debug, Clone)]
pub struct Node {
    pub membership: Arc<membership::Membership>,
    pub router: Arc<Router>,
}
