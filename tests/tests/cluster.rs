//! Issue 17 against real processes: three `tally serve` nodes on loopback sharing one PostgreSQL log.
//! Calls sent to every node are decided by each wallet's owner (`x-tally-node`), balances are right,
//! a retry on another node is answered from the first outcome, and the log holds each command once. A
//! node that leaves gracefully hands its wallets over; one killed loses nothing; a partition costs
//! retries, never a balance; a cluster on a node's own embedded log is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_proto::v1::cluster_service_client::ClusterServiceClient;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{EarnRequest, EnrollRequest, GetClusterStatusRequest, GetWalletRequest};
use tally_tests::network::Network;
use tally_tests::{Authed, Key, TallyServer, TestDatabase, tally_binary};
use tonic::transport::Channel;

fn free_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A node of the cluster on `database`, joining through `seed` (none: the first node).
fn node(dir: &Path, database: &TestDatabase, name: &str, gossip: SocketAddr, seed: Option<SocketAddr>) -> TallyServer {
    node_with(dir, database, name, gossip, seed, &[])
}

/// [`node`] with `extra` settings.
fn node_with(dir: &Path, database: &TestDatabase, name: &str, gossip: SocketAddr, seed: Option<SocketAddr>, extra: &[&str]) -> TallyServer {
    let (store, gossip) = (format!("--store={}", database.postgres_url), gossip.to_string());
    let mut args = vec![store.as_str(), "--tenant", "acme", "--node-id", name, "--cluster-listen", gossip.as_str()];
    let seed = seed.map(|s| s.to_string());
    if let Some(seed) = &seed {
        args.extend(["--join", seed.as_str()]);
    }
    args.extend(extra);
    TallyServer::start(&dir.join(name), &args)
}

fn decided_by<T>(answer: &Result<tonic::Response<T>, tonic::Status>) -> String {
    let metadata = match answer {
        Ok(response) => response.metadata(),
        Err(status) => status.metadata(),
    };
    metadata.get("x-tally-node").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

fn read(wallet: &str) -> GetWalletRequest {
    GetWalletRequest { tenant_id: "acme".into(), wallet_id: wallet.into(), ..Default::default() }
}

/// Waits until every node sends each of a few wallets to the same owner, and the owners are `nodes` many.
async fn until_converged(clients: &mut [WalletServiceClient<Authed>], nodes: usize) {
    let started = Instant::now();
    loop {
        let mut owners = BTreeSet::new();
        let mut agreed = true;
        for w in 0..24 {
            let mut seen = BTreeSet::new();
            for client in clients.iter_mut() {
                seen.insert(decided_by(&client.get_wallet(read(&format!("probe-{w}"))).await));
            }
            agreed &= seen.len() == 1;
            owners.extend(seen);
        }
        if agreed && owners.len() == nodes && !owners.contains("") {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no agreement on {nodes} owners within 20 s: {owners:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Three nodes on `database`, two joining through the first, and a client of each with the platform key,
/// once every node places wallets alike.
async fn three_nodes(dir: &Path, database: &TestDatabase) -> (Vec<TallyServer>, Vec<WalletServiceClient<Authed>>) {
    let gossip = [free_udp_port(), free_udp_port(), free_udp_port()];
    let nodes = vec![
        node(dir, database, "one", gossip[0], None),
        node(dir, database, "two", gossip[1], Some(gossip[0])),
        node(dir, database, "three", gossip[2], Some(gossip[0])),
    ];
    let key = nodes[0].platform_key();
    let mut clients = Vec::new();
    for server in &nodes {
        clients.push(WalletServiceClient::new(server.channel_with(Key::new(&key)).await));
    }
    until_converged(&mut clients, 3).await;
    (nodes, clients)
}

fn enrollment(wallet: &str) -> EnrollRequest {
    EnrollRequest { tenant_id: "acme".into(), wallet_id: wallet.into(), idempotency_key: "e".into(), ..Default::default() }
}

fn earn(wallet: &str, key: &str, points: i64) -> EarnRequest {
    EarnRequest {
        tenant_id: "acme".into(),
        wallet_id: wallet.into(),
        idempotency_key: key.into(),
        source_ref: key.into(),
        points,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_any_node_are_decided_by_the_wallets_owner_once() {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await;
    let (nodes, mut clients) = three_nodes(dir.path(), &database).await;
    // 30 wallets, each enrolled and earned on through every node in turn.
    let mut deciders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for w in 0..30 {
        let wallet = format!("c-{w}");
        let answer = clients[w % 3].enroll(enrollment(&wallet)).await;
        deciders.entry(wallet.clone()).or_default().insert(decided_by(&answer));
        answer.unwrap();
        for e in 0..6 {
            let answer = clients[(w + e) % 3].earn(earn(&wallet, &format!("earn-{e}"), 10)).await;
            deciders.entry(wallet.clone()).or_default().insert(decided_by(&answer));
            answer.unwrap();
        }
        // What the engine records of a call's metadata reaches the owner: its request id.
        let mut traced = tonic::Request::new(earn(&wallet, "traced", 1));
        traced.metadata_mut().insert("x-request-id", format!("req-{w}").parse().unwrap());
        clients[(w + 2) % 3].earn(traced).await.unwrap();
        // A retry of an earn on another node is answered from the first outcome, not applied again.
        let retried = clients[(w + 1) % 3].earn(earn(&wallet, "earn-0", 10)).await.unwrap().into_inner();
        assert!(retried.replayed, "a retry on another node is a replay");
    }
    for (wallet, nodes) in &deciders {
        assert_eq!(nodes.len(), 1, "{wallet} was decided on {nodes:?}");
    }
    // `tally cluster status`, asked of node two: the members, their shards, and where c-7 lives.
    let output = nodes[0].cli().args(["cluster", "status", "--json", "--wallet", "acme/c-7", "--server", &nodes[1].url]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["node_id"], "two");
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.iter().map(|m| m["node_id"].as_str().unwrap()).collect::<Vec<_>>(), ["one", "three", "two"]);
    assert!(members.iter().all(|m| m["status"] == "ready"));
    let shards: u64 = members.iter().map(|m| m["shards_owned"].as_u64().unwrap()).sum();
    assert_eq!(shards, status["shards"].as_u64().unwrap(), "every shard has one owner");
    assert_eq!(status["wallet"]["owner"].as_str().unwrap(), deciders["c-7"].first().unwrap(), "the owner shown decided its calls");
    let text = nodes[0].cli().args(["cluster", "status", "--server", &nodes[0].url]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("as node one sees it: 3 members, 262144 shards"), "{text}");
    let used: BTreeSet<_> = deciders.values().flatten().collect();
    assert_eq!(used.len(), 3, "wallets spread over the three nodes: {used:?}");
    for w in 0..30 {
        let wallet = clients[(w + 2) % 3].get_wallet(read(&format!("c-{w}"))).await.unwrap().into_inner();
        assert_eq!(wallet.balance, 61, "c-{w}");
    }

    // The log: each wallet's stream has its enrollment and seven earns, at versions 1..=8, no more.
    let (pg, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = pg
        .query(
            "SELECT stream_id, count(*), count(DISTINCT stream_version), max(stream_version) FROM tally_events \
             WHERE stream_id LIKE 'acme/wallet/c-%' GROUP BY stream_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 30);
    for row in rows {
        let (stream, events, versions, last): (String, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!((events, versions, last), (8, 8, 8), "{stream}");
    }
    let traced = pg
        .query("SELECT stream_id, causation_id FROM tally_events WHERE idempotency_key = 'traced' ORDER BY stream_id", &[])
        .await
        .unwrap();
    assert_eq!(traced.len(), 30);
    for row in traced {
        let (stream, request_id): (String, String) = (row.get(0), row.get(1));
        assert_eq!(stream.replace("acme/wallet/c-", "req-"), request_id, "the request id travels with a forwarded call");
    }
}

/// Issue 20 on a cluster: reward redemptions sent to any node run where the wallet lives (the flow is
/// driven by the wallet's owner), all nodes meet at one reward's stock in the shared PostgreSQL log (its
/// batches conflict across nodes and are decided again), a retry on another node is the first answer,
/// and exactly the stock there was is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redemptions_sent_to_any_node_take_one_rewards_stock_exactly() {
    use tally_proto::v1::admin_service_client::AdminServiceClient;
    use tally_proto::v1::{DefineRewardRequest, ListRewardsRequest, RedeemRewardRequest, RestockRewardRequest, RewardDefined};
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await;
    let (nodes, mut clients) = three_nodes(dir.path(), &database).await;
    let mut admin = AdminServiceClient::new(nodes[0].channel_with(Key::new(&nodes[0].platform_key())).await);
    let mug =
        RewardDefined { reward_id: "mug".into(), name: "Mug".into(), points: 10, limited_stock: true, active: true, ..Default::default() };
    admin.define_reward(DefineRewardRequest { tenant_id: "acme".into(), idempotency_key: "mug".into(), reward: Some(mug) }).await.unwrap();
    let restock = RestockRewardRequest {
        tenant_id: "acme".into(),
        idempotency_key: "r".into(),
        reward_id: "mug".into(),
        quantity: 20,
        reason: String::new(),
    };
    admin.restock_reward(restock).await.unwrap();
    for w in 0..12 {
        let wallet = format!("m-{w}");
        clients[w % 3].enroll(enrollment(&wallet)).await.unwrap();
        clients[w % 3].earn(earn(&wallet, "seed", 100)).await.unwrap();
    }
    // 36 redemptions of 20 mugs, three per wallet, each sent to a node in turn, all at once.
    let calls: Vec<_> = (0..36)
        .map(|i| {
            let mut client = clients[i % 3].clone();
            tokio::spawn(async move {
                let request = RedeemRewardRequest {
                    tenant_id: "acme".into(),
                    wallet_id: format!("m-{}", i % 12),
                    redemption_id: format!("red-{i}"),
                    reward_id: "mug".into(),
                };
                let answer = client.redeem_reward(request).await;
                (decided_by(&answer), answer.map(|a| a.into_inner().points).map_err(|s| s.code()))
            })
        })
        .collect();
    let mut paid = 0;
    for (i, call) in calls.into_iter().enumerate() {
        let (decider, answer) = call.await.unwrap();
        let owner = decided_by(&clients[0].get_wallet(read(&format!("m-{}", i % 12))).await);
        assert_eq!(decider, owner, "red-{i} was driven by its wallet's owner");
        match answer {
            Ok(points) => paid += points,
            Err(code) => assert_eq!(code, tonic::Code::FailedPrecondition, "red-{i}: out of stock, nothing else"),
        }
        // A retry on the next node answers the same, without a second redemption.
        let retry = RedeemRewardRequest {
            tenant_id: "acme".into(),
            wallet_id: format!("m-{}", i % 12),
            redemption_id: format!("red-{i}"),
            reward_id: "mug".into(),
        };
        let again = clients[(i + 1) % 3].redeem_reward(retry).await;
        assert_eq!(again.as_ref().map(|a| a.get_ref().replayed).map_err(tonic::Status::code), answer.map(|_| true), "red-{i}");
    }
    assert_eq!(paid, 20 * 10, "exactly the twenty mugs there were");
    let rewards = admin.list_rewards(ListRewardsRequest { tenant_id: "acme".into() }).await.unwrap().into_inner().rewards;
    let stock = rewards[0].stock.clone().unwrap();
    assert_eq!((stock.on_hand, stock.reserved, stock.taken), (0, 0, 20));
    let mut balances = 0;
    for w in 0..12 {
        balances += clients[(w + 1) % 3].get_wallet(read(&format!("m-{w}"))).await.unwrap().into_inner().balance;
    }
    assert_eq!(balances, 12 * 100 - 200, "the points paid are the mugs taken");
}

/// Issue 20 item 3 on a cluster: transfers between wallets that live on different nodes. Each runs on its
/// source's owner, which writes the target's credit too; the target's owner, where the target is live,
/// catches up, so the points show there; a retry on another node is the first answer; every point that
/// left a wallet is in another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_between_wallets_of_different_nodes_show_where_the_target_lives() {
    use tally_proto::v1::SetTransferPolicyRequest;
    use tally_proto::v1::admin_service_client::AdminServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await;
    let (nodes, mut clients) = three_nodes(dir.path(), &database).await;
    let mut admin = AdminServiceClient::new(nodes[0].channel_with(Key::new(&nodes[0].platform_key())).await);
    let policy = SetTransferPolicyRequest {
        tenant_id: "acme".into(),
        idempotency_key: "transfers".into(),
        allowed: true,
        set_by: "ops".into(),
        ..Default::default()
    };
    admin.set_transfer_policy(policy).await.unwrap();
    for w in 0..9 {
        let wallet = format!("t-{w}");
        clients[w % 3].enroll(enrollment(&wallet)).await.unwrap();
        clients[w % 3].earn(earn(&wallet, "seed", 1_000)).await.unwrap();
        // Live on its owner: read there before anything moves.
        assert_eq!(clients[(w + 1) % 3].get_wallet(read(&wallet)).await.unwrap().into_inner().balance, 1_000);
    }
    let mut received = [0i64; 9];
    let mut sent = [0i64; 9];
    for i in 0..18 {
        let (from, to) = (i % 9, (i * 4 + 1) % 9);
        if from == to {
            continue;
        }
        let request = tally_proto::v1::TransferPointsRequest {
            tenant_id: "acme".into(),
            wallet_id: format!("t-{from}"),
            to_wallet_id: format!("t-{to}"),
            points: 10 + i as i64,
            transfer_id: format!("tr-{i}"),
            reason: String::new(),
        };
        let answer = clients[i % 3].transfer_points(request.clone()).await;
        let owner = decided_by(&clients[0].get_wallet(read(&format!("t-{from}"))).await);
        assert_eq!(decided_by(&answer), owner, "tr-{i} runs on its source's owner");
        let answer = answer.unwrap().into_inner();
        assert_eq!(answer.points, 10 + i as i64);
        let again = clients[(i + 1) % 3].transfer_points(request).await.unwrap().into_inner();
        assert!(again.replayed, "tr-{i}: a retry elsewhere is the first answer");
        sent[from] += 10 + i as i64;
        received[to] += 10 + i as i64;
        // Read your writes: the target's owner, asked at the transfer's position, has it at once.
        let at = GetWalletRequest { min_position: answer.position, ..read(&format!("t-{to}")) };
        let target = clients[(i + 2) % 3].get_wallet(at).await.unwrap().into_inner().balance;
        assert_eq!(target, 1_000 - sent[to] + received[to], "tr-{i}: t-{to} read at the transfer's position");
    }
    // The targets' owners show what they received (within the log follower's lag).
    let started = Instant::now();
    loop {
        let mut balances = Vec::new();
        for w in 0..9 {
            balances.push(clients[w % 3].get_wallet(read(&format!("t-{w}"))).await.unwrap().into_inner().balance);
        }
        let expected: Vec<i64> = (0..9).map(|w| 1_000 - sent[w] + received[w]).collect();
        if balances == expected {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the targets' owners still show {balances:?}, not {expected:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node joins (its wallets move to it: the first node gives them up) and then leaves under load (they
/// come back, recovered from the log rather than from what the first node held before).
/// Issue 20 item 4 on a cluster: referrals between wallets that live on different nodes. An order
/// converts its referee's referral on the referee's owner, which writes the referrer's reward too; the
/// referrer's owner, where the referrer is live, catches up and shows it; each reward is given once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_rewards_show_where_the_referrer_lives() {
    use tally_proto::v1::admin_service_client::AdminServiceClient;
    use tally_proto::v1::{AttachIdentifierRequest, EarnForOrderRequest, IdentifierKind, Money, Order, SetReferralPolicyRequest};
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await;
    let (nodes, mut clients) = three_nodes(dir.path(), &database).await;
    let mut admin = AdminServiceClient::new(nodes[0].channel_with(Key::new(&nodes[0].platform_key())).await);
    let policy = SetReferralPolicyRequest {
        tenant_id: "acme".into(),
        idempotency_key: "referrals".into(),
        enabled: true,
        referrer_points: 100,
        referee_points: 40,
        set_by: "ops".into(),
        ..Default::default()
    };
    admin.set_referral_policy(policy).await.unwrap();
    // Every node's program settings show it within a second (PROGRAM_SETTINGS_REFRESH_MS).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for r in 0..3 {
        let referrer = format!("r-{r}");
        clients[r].enroll(enrollment(&referrer)).await.unwrap();
        let code = AttachIdentifierRequest {
            tenant_id: "acme".into(),
            wallet_id: referrer.clone(),
            kind: IdentifierKind::ReferralCode as i32,
            value: format!("CODE-{r}"),
            idempotency_key: "code".into(),
        };
        clients[(r + 1) % 3].attach_identifier(code).await.unwrap();
        // Live on its owner before anything is given.
        assert_eq!(clients[(r + 2) % 3].get_wallet(read(&referrer)).await.unwrap().into_inner().balance, 0);
    }
    for f in 0..9 {
        let referee = format!("f-{f}");
        let enrol = EnrollRequest { referral_code: format!("code-{}", f % 3), ..enrollment(&referee) };
        clients[f % 3].enroll(enrol).await.unwrap();
        let order = EarnForOrderRequest {
            tenant_id: "acme".into(),
            wallet_id: referee.clone(),
            order: Some(Order {
                order_id: format!("o-{f}"),
                total: Some(Money { amount_minor: 2_500, currency: "EUR".into() }),
                ..Default::default()
            }),
        };
        let answer = clients[(f + 1) % 3].earn_for_order(order.clone()).await.unwrap().into_inner();
        assert!(answer.wallet.unwrap().referral_converted, "f-{f}");
        let again = clients[(f + 2) % 3].earn_for_order(order).await.unwrap().into_inner();
        assert!(again.replayed, "f-{f}: a retry elsewhere is the first answer");
    }
    // Each referrer's owner shows three rewards (within the log follower's lag), given once each.
    let started = Instant::now();
    loop {
        let mut balances = Vec::new();
        for (r, client) in clients.iter_mut().enumerate() {
            balances.push(client.get_wallet(read(&format!("r-{r}"))).await.unwrap().into_inner().balance);
        }
        if balances == [300, 300, 300] {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the referrers' owners still show {balances:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in 0..3 {
        let request = tally_proto::v1::ListTransactionsRequest {
            tenant_id: "acme".into(),
            wallet_id: format!("r-{r}"),
            page_size: 100,
            ..Default::default()
        };
        let page = clients[(r + 1) % 3].list_transactions(request).await.unwrap().into_inner();
        let rewarded = page.transactions.iter().filter(|t| t.kind == tally_proto::v1::TransactionKind::ReferralRewarded as i32).count();
        assert_eq!(rewarded, 3, "r-{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_and_leaves_under_load_hands_wallets_over_and_no_call_fails() {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await;
    let gossip = [free_udp_port(), free_udp_port()];
    let one = node(dir.path(), &database, "one", gossip[0], None);
    let key = one.platform_key();
    let mut clients = vec![WalletServiceClient::new(one.channel_with(Key::new(&key)).await)];
    until_converged(&mut clients, 1).await;
    // c-0..c-9 take load through the leave; c-10..c-29 are earned on only while both nodes are up, so
    // those that moved to node two and back are read afterwards with nothing in between to refresh them.
    for w in 0..30 {
        clients[0].enroll(enrollment(&format!("c-{w}"))).await.unwrap();
        clients[0].earn(earn(&format!("c-{w}"), "first", 100)).await.unwrap();
    }
    let mut two = node(dir.path(), &database, "two", gossip[1], Some(gossip[0]));
    clients.push(WalletServiceClient::new(two.channel_with(Key::new(&key)).await));
    until_converged(&mut clients, 2).await;
    let mut moved = 0;
    for w in 10..30 {
        let answer = clients[1].earn(earn(&format!("c-{w}"), "while-two", 5)).await;
        moved += usize::from(decided_by(&answer) == "two");
        answer.unwrap();
    }
    assert!(moved > 0, "some wallets moved to node two");
    // Node one's client keeps earning while node two leaves (SIGTERM).
    let mut caller = clients[0].clone();
    let load = tokio::spawn(async move {
        let mut failed = Vec::new();
        let mut deciders = BTreeSet::new();
        for n in 0..150 {
            let answer = caller.earn(earn(&format!("c-{}", n % 10), &format!("k-{n}"), 1)).await;
            deciders.insert(decided_by(&answer));
            if let Err(status) = answer {
                failed.push(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (failed, deciders)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::spawn_blocking(move || two.terminate()).await.unwrap();
    assert!(status.success(), "node two left cleanly");
    let (failed, deciders) = load.await.unwrap();
    assert!(failed.is_empty(), "{} calls failed while a node left, the first: {:?}", failed.len(), failed.first());
    assert!(deciders.contains("two"), "node two served before it left: {deciders:?}");
    let mut total = 0;
    for w in 0..30 {
        let answer = clients[0].get_wallet(read(&format!("c-{w}"))).await;
        assert_eq!(decided_by(&answer), "one", "node one serves every wallet now");
        total += answer.unwrap().into_inner().balance;
    }
    assert_eq!(total, 3_000 + 150 + 20 * 5, "every earn applied once, and no wallet served from a state older than its log");
}

#[tokio::test]
async fn a_node_outside_a_cluster_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let output = server.cli().args(["cluster", "status", "--server", &server.url]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FAILED_PRECONDITION: this node is not part of a cluster"), "{stderr}");
}

#[test]
fn a_cluster_on_a_nodes_own_embedded_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(tally_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .args(["--node-id", "one", "--cluster-listen", "127.0.0.1:7946"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("a cluster needs a log its nodes share"), "{stderr}");
    assert!(stderr.contains("--store"), "{stderr}");
}

/// What one caller got acknowledged, when its attempts failed, and the longest an acknowledged earn
/// took from its first attempt.
#[derive(Debug, Default)]
struct Earned {
    acknowledged: Vec<(String, String)>,
    failures: Vec<Instant>,
    slowest: Duration,
}

/// One caller's earns on `wallets` wallets named `prefix-N`, until `stop`: each retried with the same key
/// until it is acknowledged (a real client's way); with `deadline` none, the caller trusts the cluster to
/// fail a call whose owner went silent.
async fn keep_earning(
    mut client: WalletServiceClient<Authed>,
    caller: usize,
    (prefix, wallets): (&str, usize),
    deadline: Option<Duration>,
    stop: Arc<AtomicBool>,
) -> Earned {
    let mut earned = Earned::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let (wallet, key) = (format!("{prefix}-{}", (caller * 7 + n) % wallets), format!("caller-{caller}-{n}"));
        let started = Instant::now();
        loop {
            let mut request = tonic::Request::new(earn(&wallet, &key, 1));
            if let Some(deadline) = deadline {
                request.set_timeout(deadline);
            }
            match client.earn(request).await {
                Ok(_) => break,
                Err(status) => {
                    assert!(
                        // CANCELLED: the caller's own deadline passed in tonic's client.
                        matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                        ),
                        "{status:?}"
                    );
                    earned.failures.push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        earned.slowest = earned.slowest.max(started.elapsed());
        earned.acknowledged.push((wallet, key));
        n += 1;
    }
    earned
}

/// A flag that is set `after` from now.
fn stop_after(after: Duration) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&stop);
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        set.store(true, Ordering::Relaxed);
    });
    stop
}

/// kill -9 of one node of three under load from 32 callers: within detection time every wallet is served
/// again, every acknowledged earn is in the log exactly once, and no stream has two events at a version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_and_its_wallets_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await;
    let (mut nodes, mut clients) = three_nodes(dir.path(), &database).await;
    for w in 0..40 {
        clients[w % 3].enroll(enrollment(&format!("c-{w}"))).await.unwrap();
    }
    // 32 callers on the two nodes that stay; node three owns about a third of the wallets.
    let stop = stop_after(Duration::from_secs(12));
    let deadline = Some(Duration::from_secs(3));
    let callers: Vec<_> =
        (0..32).map(|c| tokio::spawn(keep_earning(clients[c % 2].clone(), c, ("c", 40), deadline, Arc::clone(&stop)))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    nodes[2].kill_9();
    let mut acknowledged = Vec::new();
    let mut failures = Vec::new();
    for caller in callers {
        let earned = caller.await.unwrap();
        acknowledged.extend(earned.acknowledged);
        failures.extend(earned.failures);
    }
    let window = failures.iter().max().map(|last| last.saturating_duration_since(killed));
    eprintln!(
        "{} earns acknowledged, {} failed attempts (retried), errors until {window:?} after the kill",
        acknowledged.len(),
        failures.len()
    );
    assert!(window.is_none_or(|w| w < Duration::from_secs(8)), "wallets served again within detection time and a bound: {window:?}");

    // Every acknowledged earn is in the log once; nothing else is; versions are dense.
    let (pg, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = pg
        .query(
            "SELECT stream_id, idempotency_key, count(*) FROM tally_events WHERE idempotency_key LIKE 'caller-%' \
             GROUP BY stream_id, idempotency_key",
            &[],
        )
        .await
        .unwrap();
    let logged: BTreeMap<(String, String), i64> = rows.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
    assert!(logged.values().all(|&n| n == 1), "an earn recorded twice");
    for (wallet, key) in &acknowledged {
        assert!(logged.contains_key(&(format!("acme/wallet/{wallet}"), key.clone())), "{wallet} {key} acknowledged but not in the log");
    }
    assert_eq!(logged.len(), acknowledged.len(), "nothing in the log that was not acknowledged (each call was retried until it was)");
    let gaps = pg
        .query_one(
            "SELECT count(*) FROM (SELECT stream_id, max(stream_version) AS last, count(*) AS n FROM tally_events \
             WHERE stream_id LIKE 'acme/wallet/%' GROUP BY stream_id) s WHERE last <> n",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(gaps.get::<_, i64>(0), 0, "every stream's versions are 1..=n");
}

/// A hold's timeout runs once cluster-wide — on the wallet's owner only — also when the owner was
/// killed before the timeout came: the node that takes its shards over runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_times_out_exactly_once_even_when_its_owner_died() {
    use tally_proto::v1::AuthorizeRedemptionRequest;
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await;
    let (mut nodes, mut clients) = three_nodes(dir.path(), &database).await;
    let mut owned_by_three = 0;
    for w in 0..24 {
        let wallet = format!("h-{w}");
        clients[0].enroll(enrollment(&wallet)).await.unwrap();
        clients[0].earn(earn(&wallet, "seed", 100)).await.unwrap();
        let hold = AuthorizeRedemptionRequest {
            tenant_id: "acme".into(),
            wallet_id: wallet.clone(),
            hold_id: "hold-1".into(),
            points: 10,
            timeout_seconds: 2,
            ..Default::default()
        };
        let answer = clients[1].authorize_redemption(hold).await;
        owned_by_three += usize::from(decided_by(&answer) == "three");
        answer.unwrap();
    }
    assert!(owned_by_three > 0, "node three owns some of the held wallets");
    nodes[2].kill_9();

    let (pg, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let started = Instant::now();
    loop {
        let released: i64 = pg
            .query_one(
                "SELECT count(*) FROM tally_events WHERE event_type = 'tally.v1.HoldReleased' AND stream_id LIKE 'acme/wallet/h-%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if released >= 24 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{released} of 24 holds released after 30 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("every hold released {:?} after its owner was killed ({owned_by_three} were its)", started.elapsed());
    // A little longer: nothing releases a hold twice (another node's timers, a stale index).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let rows = pg
        .query(
            "SELECT stream_id, count(*) FROM tally_events WHERE event_type = 'tally.v1.HoldReleased' \
             AND stream_id LIKE 'acme/wallet/h-%' GROUP BY stream_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 24);
    assert!(rows.iter().all(|r| r.get::<_, i64>(1) == 1), "a hold released twice");
    for w in 0..24 {
        let wallet = clients[0].get_wallet(read(&format!("h-{w}"))).await.unwrap().into_inner();
        assert_eq!((wallet.held_points, wallet.available_points), (0, 100), "h-{w}");
    }
}

/// Node `i` of a cluster whose nodes reach each other only through `network`'s proxies.
fn node_behind(dir: &Path, database: &TestDatabase, network: &Network, i: usize) -> TallyServer {
    let name = ["one", "two", "three"][i];
    let store = format!("--store={}", database.postgres_url);
    let (listen, gossip, grpc) = (network.gossip_listen(i).to_string(), network.gossip(i).to_string(), network.grpc(i).to_string());
    let seed = network.gossip(0).to_string();
    let mut args = vec![store.as_str(), "--tenant", "acme", "--node-id", name, "--cluster-listen", listen.as_str()];
    args.extend(["--advertise-gossip", gossip.as_str(), "--advertise-grpc", grpc.as_str()]);
    if i > 0 {
        args.extend(["--join", seed.as_str()]);
    }
    let server = TallyServer::start(&dir.join(name), &args);
    network.serves(i, server.url.trim_start_matches("http://").parse().unwrap());
    server
}

/// The cluster as the node at the other end of `channel` sees it, and where it places `wallet` (if named).
async fn cluster_status(channel: Channel, key: &str, wallet: &str) -> tally_proto::v1::ClusterStatus {
    let mut client = ClusterServiceClient::with_interceptor(channel, Key::new(key));
    let tenant = if wallet.is_empty() { "" } else { "acme" };
    let request = GetClusterStatusRequest { tenant_id: tenant.into(), wallet_id: wallet.into() };
    client.get_cluster_status(request).await.unwrap().into_inner()
}

/// The members node `server` sees, by name.
async fn members_seen(server: &TallyServer, key: &str) -> Vec<String> {
    cluster_status(server.raw_channel().await, key, "").await.members.into_iter().map(|m| m.node_id).collect()
}

/// Waits until node `server` sees exactly `members`.
async fn until_sees(server: &TallyServer, key: &str, members: &[&str]) -> Duration {
    let started = Instant::now();
    loop {
        let seen = members_seen(server, key).await;
        if seen == members {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "after 15 s a node sees {seen:?}, not {members:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A partition: node three's cluster traffic is cut while clients keep calling every node. Both sides go
/// on serving (each thinks it owns the other's wallets: the log's version check keeps one writer per
/// version), no call waits on the silent side for long — deadline or not — and once the cut heals the
/// nodes agree again, every acknowledged earn is in the log once, and every node reads the same balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_costs_retries_never_a_wrong_balance_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await;
    let network = Network::new(3).await;
    let nodes: Vec<_> = (0..3).map(|i| node_behind(dir.path(), &database, &network, i)).collect();
    let key = nodes[0].platform_key();
    let mut clients = Vec::new();
    for server in &nodes {
        clients.push(WalletServiceClient::new(server.channel_with(Key::new(&key)).await));
    }
    until_converged(&mut clients, 3).await;
    for w in 0..30 {
        clients[w % 3].enroll(enrollment(&format!("p-{w}"))).await.unwrap();
    }
    // Twelve callers, four on each node; every other one without a deadline.
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..12)
        .map(|c| {
            let deadline = (c % 2 == 0).then_some(Duration::from_secs(3));
            tokio::spawn(keep_earning(clients[c % 3].clone(), c, ("p", 30), deadline, Arc::clone(&stop)))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    network.cut(2);
    let apart = until_sees(&nodes[2], &key, &["three"]).await;
    until_sees(&nodes[0], &key, &["one", "two"]).await;
    eprintln!("partition seen from both sides {apart:?} after the cut");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The calls stop before the heal: what each wallet had last was written while the cluster was split,
    // and nothing after the heal refreshes a node's copy of it before it is read.
    stop.store(true, Ordering::Relaxed);
    let (mut acknowledged, mut slowest) = (Vec::new(), Duration::ZERO);
    for caller in callers {
        // Bounded: a call that hung on the silent node would otherwise hold the test until the heal.
        let finished = tokio::time::timeout(Duration::from_secs(15), caller).await;
        let earned = finished.expect("a caller still waits on a node cut off 15 s ago").unwrap();
        acknowledged.extend(earned.acknowledged);
        slowest = slowest.max(earned.slowest);
    }
    network.heal();
    let healed = Instant::now();
    until_converged(&mut clients.clone(), 3).await;
    eprintln!("one view again {:?} after healing", healed.elapsed());
    eprintln!("{} earns acknowledged; the slowest took {slowest:?} with its retries", acknowledged.len());
    assert!(slowest < Duration::from_secs(10), "an earn waited {slowest:?} on a silent node");

    let (pg, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = pg
        .query(
            "SELECT stream_id, idempotency_key, count(*) FROM tally_events WHERE idempotency_key LIKE 'caller-%' \
             GROUP BY stream_id, idempotency_key",
            &[],
        )
        .await
        .unwrap();
    let logged: BTreeMap<(String, String), i64> = rows.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
    assert!(logged.values().all(|&n| n == 1), "an earn recorded twice");
    assert_eq!(logged.len(), acknowledged.len(), "the log holds exactly the acknowledged earns");
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (wallet, key) in &acknowledged {
        assert!(logged.contains_key(&(format!("acme/wallet/{wallet}"), key.clone())), "{wallet} {key} acknowledged, not logged");
        *expected.entry(wallet.clone()).or_default() += 1;
    }
    // Every node reads every wallet's balance as its log has it: no side kept a state from before the heal.
    for w in 0..30 {
        let wallet = format!("p-{w}");
        for client in &mut clients {
            let balance = client.get_wallet(read(&wallet)).await.unwrap().into_inner().balance;
            assert_eq!(balance, expected.get(&wallet).copied().unwrap_or_default(), "{wallet}");
        }
    }
}

/// Certificate and key files (PEM) for a node on loopback, signed by a fresh CA (written as `ca.pem`
/// beside them) under `prefix`.
fn node_certificate(dir: &Path, prefix: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    let write = |name: &str, contents: String| {
        let path = dir.join(format!("{prefix}-{name}"));
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    };
    (write("ca.pem", ca.pem()), write("node.pem", cert.pem()), write("node.key", key.serialize_pem()))
}

/// A connection to `server` (serving TLS), trusting the CA in the file `ca`.
async fn tls_channel(server: &TallyServer, ca: &str) -> Channel {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap())).domain_name("localhost");
    Channel::from_shared(server.url.clone()).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
}

async fn tls_client(server: &TallyServer, ca: &str, key: &str) -> WalletServiceClient<Authed> {
    WalletServiceClient::new(tonic::service::interceptor::InterceptedService::new(tls_channel(server, ca).await, Key::new(key)))
}

/// Nodes that serve TLS forward over TLS, each verifying its peer against `--cluster-ca` first; a node
/// that announces itself by gossip (which is not authenticated) with a certificate of another CA, or
/// serving plaintext, is sent no call — its wallets answer UNAVAILABLE through the others — so the
/// callers' keys never reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_serving_tls_verify_each_other_before_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await;
    let (ca, cert, cert_key) = node_certificate(dir.path(), "cluster");
    let tls = ["--tls-cert", cert.as_str(), "--tls-key", cert_key.as_str(), "--cluster-ca", ca.as_str()];
    let gossip = [free_udp_port(), free_udp_port(), free_udp_port(), free_udp_port()];
    let mut nodes = vec![node_with(dir.path(), &database, "one", gossip[0], None, &tls)];
    for (i, name) in [(1, "two"), (2, "three")] {
        nodes.push(node_with(dir.path(), &database, name, gossip[i], Some(gossip[0]), &tls));
    }
    assert!(nodes.iter().all(|n| n.url.starts_with("https://")));
    let key = nodes[0].platform_key();
    let mut clients = Vec::new();
    for server in &nodes {
        clients.push(tls_client(server, &ca, &key).await);
    }
    until_converged(&mut clients, 3).await;
    let mut deciders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for w in 0..12 {
        let wallet = format!("t-{w}");
        clients[w % 3].enroll(enrollment(&wallet)).await.unwrap();
        for e in 0..3 {
            let answer = clients[(w + e) % 3].earn(earn(&wallet, &format!("earn-{e}"), 10)).await;
            deciders.entry(wallet.clone()).or_default().insert(decided_by(&answer));
            answer.unwrap();
        }
        assert_eq!(clients[(w + 1) % 3].get_wallet(read(&wallet)).await.unwrap().into_inner().balance, 30, "{wallet}");
    }
    assert!(deciders.values().all(|d| d.len() == 1), "each wallet decided on one node: {deciders:?}");
    assert_eq!(deciders.values().flatten().collect::<BTreeSet<_>>().len(), 3, "over TLS, every node decided some");

    // A node with a certificate of another CA joins by gossip and is given shards by placement ...
    let (rogue_ca, rogue_cert, rogue_key) = node_certificate(dir.path(), "rogue");
    let rogue_tls = ["--tls-cert", rogue_cert.as_str(), "--tls-key", rogue_key.as_str(), "--cluster-ca", rogue_ca.as_str()];
    let rogue = node_with(dir.path(), &database, "rogue", gossip[3], Some(gossip[0]), &rogue_tls);
    assert!(rogue.url.starts_with("https://"));
    // ... and so does one that serves plaintext (a downgrade: the others must not call it in clear).
    let plain = node(dir.path(), &database, "plain", free_udp_port(), Some(gossip[0]));
    assert!(plain.url.starts_with("http://"));
    let started = Instant::now();
    for node in &nodes {
        while members_seen_tls(node, &ca, &key).await.len() < 5 {
            assert!(started.elapsed() < Duration::from_secs(20), "the rogue node was never given shards");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // ... but no node forwards to it: its wallets answer UNAVAILABLE through the others, nothing applied.
    let (pg, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let mut refused = 0;
    for w in 0..12 {
        let wallet = format!("t-{w}");
        if !["rogue", "plain"].contains(&owner_by(&nodes[0], &ca, &key, &wallet).await.as_str()) {
            continue;
        }
        let answer = clients[0].earn(earn(&wallet, "after-rogue", 5)).await;
        let status = answer.expect_err("a call for the rogue node's wallet is not forwarded to it");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        refused += 1;
    }
    assert!(refused > 0, "the rogue nodes were placed some of the 12 wallets");
    let applied: i64 = pg.query_one("SELECT count(*) FROM tally_events WHERE idempotency_key = 'after-rogue'", &[]).await.unwrap().get(0);
    assert_eq!(applied, 0, "no call reached the rogue node");
}

/// The members node `server` sees owning shards.
async fn members_seen_tls(server: &TallyServer, ca: &str, key: &str) -> Vec<String> {
    let status = cluster_status(tls_channel(server, ca).await, key, "").await;
    status.members.into_iter().filter(|m| m.shards_owned > 0).map(|m| m.node_id).collect()
}

/// The node `server` places `wallet` on.
async fn owner_by(server: &TallyServer, ca: &str, key: &str, wallet: &str) -> String {
    cluster_status(tls_channel(server, ca).await, key, wallet).await.wallet.unwrap().owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identifier_attached_on_one_node_is_found_from_every_node() {
    use tally_proto::v1::{AttachIdentifierRequest, FindWalletRequest, IdentifierKind};
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await;
    let (_nodes, mut clients) = three_nodes(dir.path(), &database).await;
    let card = |w: usize| format!("CARD-{w:04}");
    for w in 0..6 {
        let wallet = format!("c-{w}");
        clients[w % 3].enroll(enrollment(&wallet)).await.unwrap();
        let attach = AttachIdentifierRequest {
            tenant_id: "acme".into(),
            wallet_id: wallet.clone(),
            kind: IdentifierKind::Card as i32,
            value: card(w),
            idempotency_key: format!("card-{w}"),
        };
        let attached = clients[(w + 1) % 3].attach_identifier(attach).await;
        let owner = decided_by(&clients[0].get_wallet(read(&wallet)).await);
        assert_eq!(decided_by(&attached), owner, "c-{w}: attached by its owner");
    }
    for w in 0..6 {
        for client in clients.iter_mut() {
            let find = FindWalletRequest { tenant_id: "acme".into(), kind: IdentifierKind::Card as i32, value: card(w).to_lowercase() };
            let found = client.find_wallet(find).await.unwrap().into_inner();
            assert_eq!(found.wallet_id, format!("c-{w}"));
            assert_eq!(found.identifiers.len(), 1, "as its owner shows it");
        }
    }
    // One wallet's, whichever node is asked to give it to another.
    let steal = AttachIdentifierRequest {
        tenant_id: "acme".into(),
        wallet_id: "c-1".into(),
        kind: IdentifierKind::Card as i32,
        value: card(0),
        idempotency_key: "steal".into(),
    };
    for client in clients.iter_mut() {
        let refused = client.attach_identifier(steal.clone()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::AlreadyExists);
    }
}
