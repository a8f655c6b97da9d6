//! A network between cluster nodes that a test can cut, without privileges: each node gossips and takes
//! forwarded calls through proxies of its own (the node advertises the proxies' addresses with
//! `--advertise-gossip` and `--advertise-grpc`), and a cut node's proxies drop what it is sent, the other
//! proxies what it sends. Clients still reach every node directly, as a partition between a cluster's
//! nodes leaves them.
//!
//! Gossip (UDP) is cut both ways: every datagram names its sender's gossip address. Forwarded calls (TCP)
//! are cut on the way into the cut node: connections open at the cut go silent — held open, nothing
//! crosses, as when packets are dropped — and new ones are closed at once. The cut node's own forwards
//! to the others cannot be told apart from a client's on loopback and still pass; it stops sending them
//! once its gossip says the others are gone.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

/// Which nodes are cut off from the others.
type Cut = watch::Receiver<BTreeSet<usize>>;

/// The proxies of a few nodes, by node index.
#[derive(Debug)]
pub struct Network {
    cut: watch::Sender<BTreeSet<usize>>,
    gossip_listen: Vec<SocketAddr>,
    gossip_fronts: Vec<SocketAddr>,
    grpc_fronts: Vec<SocketAddr>,
    grpc_targets: Vec<watch::Sender<Option<SocketAddr>>>,
}

impl Network {
    /// Proxies for `nodes` nodes, all connected.
    pub async fn new(nodes: usize) -> Self {
        let (cut, _) = watch::channel(BTreeSet::new());
        let gossip_listen: Arc<Vec<SocketAddr>> = Arc::new((0..nodes).map(|_| free_udp_port()).collect());
        let (mut gossip_fronts, mut grpc_fronts, mut grpc_targets) = (Vec::new(), Vec::new(), Vec::new());
        for node in 0..nodes {
            let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("a UDP port on loopback"));
            gossip_fronts.push(front.local_addr().expect("bound"));
            tokio::spawn(gossip_proxy(front, node, Arc::clone(&gossip_listen), cut.subscribe()));
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a TCP port on loopback");
            grpc_fronts.push(listener.local_addr().expect("bound"));
            let (target, targets) = watch::channel(None);
            grpc_targets.push(target);
            tokio::spawn(forward_proxy(listener, node, targets, cut.subscribe()));
        }
        Self { cut, gossip_listen: gossip_listen.to_vec(), gossip_fronts, grpc_fronts, grpc_targets }
    }

    /// Where node `node` gossips (its `--cluster-listen`).
    pub fn gossip_listen(&self, node: usize) -> SocketAddr {
        self.gossip_listen[node]
    }

    /// Where the others send node `node` gossip (its `--advertise-gossip`, and a seed to `--join`).
    pub fn gossip(&self, node: usize) -> SocketAddr {
        self.gossip_fronts[node]
    }

    /// Where the others forward calls to node `node` (its `--advertise-grpc`).
    pub fn grpc(&self, node: usize) -> SocketAddr {
        self.grpc_fronts[node]
    }

    /// Node `node` serves gRPC at `address` (known once it has started).
    pub fn serves(&self, node: usize, address: SocketAddr) {
        self.grpc_targets[node].send_replace(Some(address));
    }

    /// Cuts node `node` off from the others.
    pub fn cut(&self, node: usize) {
        self.cut.send_modify(|cut| {
            cut.insert(node);
        });
    }

    /// Reconnects every node.
    pub fn heal(&self) {
        self.cut.send_replace(BTreeSet::new());
    }
}

fn free_udp_port() -> SocketAddr {
    StdUdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a UDP port on loopback")
}

/// Whether traffic between node `node` and `peer` (another node, or something else) is cut now.
fn severed(cut: &Cut, node: usize, peer: Option<usize>) -> bool {
    let cut = cut.borrow();
    cut.contains(&node) || peer.is_some_and(|p| cut.contains(&p))
}

/// Node `node`'s gossip front: each sender gets a socket of its own towards the node, so the node's
/// replies (sent back to where a message came from) return through the proxy to that sender.
async fn gossip_proxy(front: Arc<UdpSocket>, node: usize, listens: Arc<Vec<SocketAddr>>, cut: Cut) {
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buffer = vec![0; 65_536];
    while let Ok((n, from)) = front.recv_from(&mut buffer).await {
        let sender = listens.iter().position(|address| *address == from);
        if severed(&cut, node, sender) {
            continue;
        }
        let session = match sessions.get(&from) {
            Some(session) => Arc::clone(session),
            None => {
                let Ok(session) = UdpSocket::bind("127.0.0.1:0").await else { continue };
                let session = Arc::new(session);
                tokio::spawn(gossip_replies(Arc::clone(&session), Arc::clone(&front), from, node, sender, cut.clone()));
                sessions.insert(from, Arc::clone(&session));
                session
            }
        };
        let _ = session.send_to(&buffer[..n], listens[node]).await;
    }
}

/// The node's replies to one sender, back through the front.
async fn gossip_replies(session: Arc<UdpSocket>, front: Arc<UdpSocket>, to: SocketAddr, node: usize, sender: Option<usize>, cut: Cut) {
    let mut buffer = vec![0; 65_536];
    while let Ok(n) = session.recv(&mut buffer).await {
        if !severed(&cut, node, sender) {
            let _ = front.send_to(&buffer[..n], to).await;
        }
    }
}

/// Node `node`'s front for forwarded calls.
async fn forward_proxy(listener: TcpListener, node: usize, target: watch::Receiver<Option<SocketAddr>>, cut: Cut) {
    while let Ok((inbound, _)) = listener.accept().await {
        let Some(target) = *target.borrow() else { continue };
        if cut.borrow().contains(&node) {
            continue;
        }
        tokio::spawn(connection(inbound, target, node, cut.clone()));
    }
}

/// One connection: copied both ways until it ends or the node is cut; then held open with nothing
/// crossing until the cut heals, and closed.
async fn connection(mut inbound: TcpStream, target: SocketAddr, node: usize, mut cut: Cut) {
    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    let severed = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        _ = cut.wait_for(|cut| cut.contains(&node)) => true,
    };
    if severed {
        let _ = cut.wait_for(|cut| !cut.contains(&node)).await;
    }
}
