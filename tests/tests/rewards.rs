//! Issue 20: the rewards catalogue against the real `tally` process. A redemption reserves the reward's
//! stock, debits the wallet and takes the stock; a refusal takes nothing and answers with its reason; a
//! retry answers the first outcome. The server is killed (it aborts itself, as `kill -9` would stop it)
//! between every pair of steps; after a restart the same call finishes the redemption exactly once, and
//! the tenant's books balance: every wallet paid exactly what its completed redemptions cost, and the
//! stock restocked is what is on hand plus what was taken, nothing left reserved. 1,000 concurrent
//! redemptions of a reward with 100 in stock complete exactly 100. Cancellations the same: killed between
//! every two of their steps, each gives its points and its unit back exactly once.

use std::time::Duration;

use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{
    CancelRedemptionRequest, DefineRewardRequest, EarnRequest, EnrollRequest, GetWalletRequest, ListFlowsRequest, ListRewardsRequest,
    RedeemRewardRequest, RestockRewardRequest, RewardDefined, RewardStock,
};
use tally_tests::{Authed, TallyServer};
use tonic::Code;
use tonic_types::StatusExt;

/// The points between two steps of a redemption, as the engine names them (`CRASH_POINTS`).
const CRASH_POINTS: [&str; 5] = ["started", "reserved", "debited", "stock_settled", "ended"];
/// The same for a cancellation (`CANCEL_CRASH_POINTS`).
const CANCEL_CRASH_POINTS: [&str; 4] = ["cancel_requested", "refunded", "stock_returned", "cancelled"];

fn reward(id: &str, points: i64, limited_stock: bool, per_customer_max: i64) -> RewardDefined {
    RewardDefined {
        reward_id: id.into(),
        name: format!("A {id}"),
        points,
        limited_stock,
        per_customer_max,
        active: true,
        cancel_window_days: 7,
        ..Default::default()
    }
}

async fn define(admin: &mut AdminServiceClient<Authed>, reward: RewardDefined, stock: i64) {
    let key = format!("define-{}", reward.reward_id);
    let id = reward.reward_id.clone();
    admin.define_reward(DefineRewardRequest { tenant_id: "demo".into(), idempotency_key: key, reward: Some(reward) }).await.unwrap();
    if stock > 0 {
        let restock = RestockRewardRequest {
            tenant_id: "demo".into(),
            idempotency_key: format!("restock-{id}"),
            reward_id: id,
            quantity: stock,
            reason: "delivery".into(),
        };
        admin.restock_reward(restock).await.unwrap();
    }
}

async fn open(wallets: &mut WalletServiceClient<Authed>, wallet: &str, points: i64) {
    let enroll = EnrollRequest {
        tenant_id: "demo".into(),
        wallet_id: wallet.into(),
        idempotency_key: format!("enroll-{wallet}"),
        ..Default::default()
    };
    wallets.enroll(enroll).await.unwrap();
    let earn = EarnRequest {
        tenant_id: "demo".into(),
        wallet_id: wallet.into(),
        idempotency_key: format!("earn-{wallet}"),
        points,
        source_ref: format!("order-{wallet}"),
        ..Default::default()
    };
    wallets.earn(earn).await.unwrap();
}

fn redeem(wallet: &str, reward: &str, redemption: &str) -> RedeemRewardRequest {
    RedeemRewardRequest { tenant_id: "demo".into(), wallet_id: wallet.into(), reward_id: reward.into(), redemption_id: redemption.into() }
}

async fn balance(wallets: &mut WalletServiceClient<Authed>, wallet: &str) -> i64 {
    wallets
        .get_wallet(GetWalletRequest { tenant_id: "demo".into(), wallet_id: wallet.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .balance
}

async fn stock(admin: &mut AdminServiceClient<Authed>, reward: &str) -> RewardStock {
    let rewards = admin.list_rewards(ListRewardsRequest { tenant_id: "demo".into() }).await.unwrap().into_inner().rewards;
    let found = rewards.into_iter().find(|r| r.reward.as_ref().is_some_and(|d| d.reward_id == reward)).expect("reward listed");
    found.stock.expect("a limited reward has stock")
}

/// The reason a FAILED_PRECONDITION names in its PreconditionFailure.
fn reason(status: &tonic::Status) -> String {
    status.get_details_precondition_failure().and_then(|f| f.violations.first().map(|v| v.r#type.clone())).unwrap_or_default()
}

/// A shop: one mug in stock (120 points), an unlimited cap (40 points, one per customer); Ann has 300
/// points, Bob 30.
async fn shop() -> (tempfile::TempDir, TallyServer, AdminServiceClient<Authed>, WalletServiceClient<Authed>) {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(&dir.path().join("data"), &["--tenant", "demo"]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mut wallets = server.client().await;
    define(&mut admin, reward("mug", 120, true, 0), 1).await;
    define(&mut admin, reward("cap", 40, false, 1), 0).await;
    open(&mut wallets, "ann", 300).await;
    open(&mut wallets, "bob", 30).await;
    (dir, server, admin, wallets)
}

#[tokio::test]
async fn a_redemption_takes_stock_and_points_once_and_a_refusal_takes_nothing() {
    let (_dir, _server, mut admin, mut wallets) = shop().await;

    let paid = wallets.redeem_reward(redeem("ann", "mug", "r-1")).await.unwrap().into_inner();
    assert_eq!((paid.points, paid.balance, paid.replayed), (120, 180, false));
    let again = wallets.redeem_reward(redeem("ann", "mug", "r-1")).await.unwrap().into_inner();
    assert!(again.replayed && again.balance == 180 && again.position == paid.position, "{again:?}");
    assert_eq!(balance(&mut wallets, "ann").await, 180);

    let out = wallets.redeem_reward(redeem("ann", "mug", "r-2")).await.unwrap_err();
    assert_eq!((out.code(), reason(&out).as_str()), (Code::FailedPrecondition, "OUT_OF_STOCK"), "{out:?}");
    let poor = wallets.redeem_reward(redeem("bob", "cap", "r-3")).await.unwrap_err();
    assert_eq!((poor.code(), reason(&poor).as_str()), (Code::FailedPrecondition, "INSUFFICIENT_POINTS"), "{poor:?}");
    assert_eq!(
        wallets.redeem_reward(redeem("bob", "cap", "r-3")).await.unwrap_err().code(),
        Code::FailedPrecondition,
        "a refusal is its own answer"
    );
    wallets.redeem_reward(redeem("ann", "cap", "r-4")).await.unwrap();
    let limit = wallets.redeem_reward(redeem("ann", "cap", "r-5")).await.unwrap_err();
    assert_eq!(reason(&limit), "REWARD_LIMIT_REACHED");
    let reused = wallets.redeem_reward(redeem("bob", "mug", "r-1")).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "a redemption id names one redemption");
    let unknown = wallets.redeem_reward(redeem("ann", "vase", "r-6")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let bad = wallets.redeem_reward(redeem("ann", "mug", "r/7")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(bad.get_details_bad_request().unwrap().field_violations[0].field, "redemption_id");

    assert_eq!(balance(&mut wallets, "bob").await, 30, "the refused redemption took nothing");
    assert_eq!(balance(&mut wallets, "ann").await, 140);
    let mug = stock(&mut admin, "mug").await;
    assert_eq!((mug.on_hand, mug.reserved, mug.taken), (0, 0, 1));
    let unlimited = admin
        .restock_reward(RestockRewardRequest {
            tenant_id: "demo".into(),
            idempotency_key: "x".into(),
            reward_id: "cap".into(),
            quantity: 5,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&unlimited), "STOCK_UNLIMITED");
}

#[tokio::test]
async fn a_redemption_brought_back_returns_its_points_and_its_unit_once() {
    let (_dir, server, mut admin, mut wallets) = shop().await;
    wallets.redeem_reward(redeem("ann", "mug", "r-1")).await.unwrap();
    wallets.redeem_reward(redeem("bob", "cap", "r-3")).await.unwrap_err();
    wallets.redeem_reward(redeem("ann", "cap", "r-4")).await.unwrap();

    // A mug brought back: its points and the mug itself return, once.
    let cancel = |wallet: &str, id: &str| CancelRedemptionRequest {
        tenant_id: "demo".into(),
        wallet_id: wallet.into(),
        redemption_id: id.into(),
        reason: "brought back".into(),
    };
    let cancelled = wallets.cancel_redemption(cancel("ann", "r-1")).await.unwrap().into_inner();
    assert_eq!((cancelled.points, cancelled.balance, cancelled.replayed, cancelled.reward_id.as_str()), (120, 260, false, "mug"));
    assert!(wallets.cancel_redemption(cancel("ann", "r-1")).await.unwrap().into_inner().replayed);
    let mug = stock(&mut admin, "mug").await;
    assert_eq!((mug.on_hand, mug.reserved, mug.taken), (1, 0, 0));
    let refused = wallets.cancel_redemption(cancel("bob", "r-3")).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::FailedPrecondition, "REDEMPTION_NOT_COMPLETED"));
    assert_eq!(wallets.cancel_redemption(cancel("bob", "r-1")).await.unwrap_err().code(), Code::NotFound, "another wallet's");
    assert_eq!(wallets.cancel_redemption(cancel("ann", "r-404")).await.unwrap_err().code(), Code::NotFound);
    let history = wallets
        .list_transactions(tally_proto::v1::ListTransactionsRequest {
            tenant_id: "demo".into(),
            wallet_id: "ann".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .transactions;
    let newest = &history[0];
    assert_eq!(
        (newest.kind(), newest.points, newest.reference.as_str()),
        (tally_proto::v1::TransactionKind::RedemptionCancelled, 120, "mug")
    );
    let open = admin.list_flows(ListFlowsRequest { tenant_id: "demo".into(), stuck_only: false }).await.unwrap().into_inner();
    assert!(open.flows.is_empty(), "every redemption ended: {open:?}");

    // The operator's command line.
    let run = |args: &[&str]| {
        let out = server.cli().args(args).args(["--tenant", "demo", "--server", server.url.as_str()]).output().unwrap();
        assert!(out.status.success(), "tally {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let catalogue = run(&["rewards", "list"]);
    assert!(catalogue.lines().any(|l| l.starts_with("mug") && l.contains("120") && l.contains('1')), "{catalogue}");
    assert!(catalogue.lines().any(|l| l.starts_with("cap") && l.contains("unlimited")), "{catalogue}");
    assert_eq!(run(&["flows", "list", "--stuck"]).trim(), "no stuck flows for demo");
}

#[tokio::test]
async fn a_server_killed_between_any_two_steps_finishes_the_redemption_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = TallyServer::start(&data, &["--tenant", "demo"]);
    {
        let mut admin = AdminServiceClient::new(server.channel().await);
        let mut wallets = server.client().await;
        define(&mut admin, reward("mug", 100, true, 0), 20).await;
        open(&mut wallets, "rich", 10_000).await;
        open(&mut wallets, "poor", 60).await;
    }
    server.terminate();
    let mut expected_paid = 0;
    let mut last_position = 0;
    let mut redemptions = Vec::new();
    for (i, point) in CRASH_POINTS.iter().enumerate() {
        for wallet in ["rich", "poor"] {
            let id = format!("r-{i}-{wallet}");
            let mut dying = TallyServer::start_with_env(&data, &["--tenant", "demo"], &[("TALLY_TEST_CRASH_AT", point)]);
            let mut wallets = dying.client().await;
            let answer = wallets.redeem_reward(redeem(wallet, "mug", &id)).await;
            assert!(answer.is_err(), "{point}: the server died before answering");
            let status = dying.wait_exit(Duration::from_secs(30)).expect("the server aborted itself");
            assert!(!status.success(), "{point}: aborted, not stopped cleanly");

            let mut server = TallyServer::start(&data, &["--tenant", "demo"]);
            let mut wallets = server.client().await;
            let retried = wallets.redeem_reward(redeem(wallet, "mug", &id)).await;
            match wallet {
                "rich" => {
                    let done = retried.unwrap_or_else(|e| panic!("{point}: {e:?}")).into_inner();
                    assert_eq!(done.points, 100, "{point}");
                    expected_paid += 100;
                }
                _ => assert_eq!(reason(&retried.unwrap_err()), "INSUFFICIENT_POINTS", "{point}"),
            }
            redemptions.push(id);
            server.terminate();
        }
    }
    // The same for cancellations: four of the rich wallet's mugs brought back, the server dying at each
    // point between the cancellation's steps.
    for (i, point) in CANCEL_CRASH_POINTS.iter().enumerate() {
        let request = CancelRedemptionRequest {
            tenant_id: "demo".into(),
            wallet_id: "rich".into(),
            redemption_id: format!("r-{i}-rich"),
            reason: "brought back".into(),
        };
        let mut dying = TallyServer::start_with_env(&data, &["--tenant", "demo"], &[("TALLY_TEST_CRASH_AT", point)]);
        let mut wallets = dying.client().await;
        assert!(wallets.cancel_redemption(request.clone()).await.is_err(), "{point}: the server died before answering");
        assert!(!dying.wait_exit(Duration::from_secs(30)).expect("the server aborted itself").success());
        let mut server = TallyServer::start(&data, &["--tenant", "demo"]);
        let mut wallets = server.client().await;
        let cancelled = wallets.cancel_redemption(request).await.unwrap_or_else(|e| panic!("{point}: {e:?}")).into_inner();
        assert_eq!(cancelled.points, 100, "{point}");
        last_position = cancelled.position;
        expected_paid -= 100;
        server.terminate();
    }
    let server = TallyServer::start(&data, &["--tenant", "demo"]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mut wallets = server.client().await;
    assert_eq!(
        balance(&mut wallets, "rich").await,
        10_000 - expected_paid,
        "each completed redemption paid once, each cancelled one given back once"
    );
    assert_eq!(balance(&mut wallets, "poor").await, 60, "no refused redemption paid");
    let mug = stock(&mut admin, "mug").await;
    assert_eq!((mug.on_hand, mug.reserved, mug.taken), (20 - 5 + 4, 0, 5 - 4), "stock conserved: {mug:?}");
    // The whole tenant's books, from the log: opening + issued − redeemed (cancellations net) … = closing.
    let out = server
        .cli()
        .args(["audit", "export", "--tenant", "demo", "--up-to-position", &last_position.to_string(), "--server", server.url.as_str()])
        .args(["--out", dir.path().join("ledger.csv").to_str().unwrap()])
        .output()
        .unwrap();
    let verdict = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && verdict.contains("the books balance"), "{verdict}");
    assert!(verdict.contains(&format!("redeemed {}", 100)), "one mug's points net of the four given back: {verdict}");
    let open = admin.list_flows(ListFlowsRequest { tenant_id: "demo".into(), stuck_only: false }).await.unwrap().into_inner();
    assert!(open.flows.is_empty(), "{open:?}");
    assert_eq!(redemptions.len(), 10);
}

#[tokio::test]
async fn a_thousand_concurrent_redemptions_of_a_hundred_in_stock_complete_exactly_a_hundred() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(&dir.path().join("data"), &["--tenant", "demo"]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mut wallets = server.client().await;
    define(&mut admin, reward("mug", 10, true, 0), 100).await;
    for w in 0..20 {
        open(&mut wallets, &format!("w-{w}"), 100_000).await;
    }
    let calls = (0..1_000).map(|i| {
        let mut wallets = wallets.clone();
        tokio::spawn(async move {
            loop {
                match wallets.redeem_reward(redeem(&format!("w-{}", i % 20), "mug", &format!("r-{i}"))).await {
                    // Over the server's in-flight bound or a wallet's queue: nothing applied, retry.
                    Err(status) if matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    answer => return answer.map(|r| r.into_inner().points).map_err(|s| reason(&s)),
                }
            }
        })
    });
    let mut answers = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        answers.push(call.await.unwrap());
    }
    assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 100);
    assert!(answers.iter().filter_map(|a| a.as_ref().err()).all(|reason| reason == "OUT_OF_STOCK"), "only stock refused");
    let mug = stock(&mut admin, "mug").await;
    assert_eq!((mug.on_hand, mug.reserved, mug.taken), (0, 0, 100));
    let mut spent = 0;
    for w in 0..20 {
        spent += 100_000 - balance(&mut wallets, &format!("w-{w}")).await;
    }
    assert_eq!(spent, 100 * 10);
}

#[tokio::test]
async fn tally_bench_redeems_one_hot_reward_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(&dir.path().join("data"), &["--tenant", "demo"]);
    let args = ["bench", "--reward", "mug", "--requests", "200", "--concurrency", "8", "--wallets", "16", "--hot-wallets", "2"];
    let out = server.cli().args(args).args(["--read-percent", "0", "--tenant", "demo", "--server", server.url.as_str()]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!report.contains("errors"), "every redemption completed: {report}");
    let redeemed: i64 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("mutating").and_then(|rest| rest.split_whitespace().next()).and_then(|n| n.parse().ok()))
        .expect("a count of mutating calls");
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mug = stock(&mut admin, "mug").await;
    assert_eq!((mug.taken, mug.reserved), (redeemed, 0), "{report}");
    assert!(redeemed >= 200, "{report}");
}

#[tokio::test]
async fn an_operator_defines_and_stocks_a_reward_from_the_command_line() {
    let (_dir, server, mut admin, _) = shop().await;
    let run = |args: &[&str]| {
        let out = server.cli().arg("rewards").args(args).args(["--tenant", "demo", "--server", server.url.as_str()]).output().unwrap();
        assert!(out.status.success(), "tally rewards {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let define = ["define", "--reward", "vase", "--name", "Vase", "--points", "50", "--limited", "--cancel-days", "3"];
    assert_eq!(run(&define).trim(), "vase: 50 points, limited stock");
    assert!(run(&define).contains("unchanged"), "the same definition again is a retry");
    assert_eq!(
        run(&["restock", "--reward", "vase", "--quantity", "5", "--key", "delivery-1"]).trim(),
        "vase: 5 on hand, 0 reserved, 0 taken"
    );
    assert!(run(&["restock", "--reward", "vase", "--quantity", "5", "--key", "delivery-1"]).contains("a retry: nothing added"));
    let vase = stock(&mut admin, "vase").await;
    assert_eq!((vase.on_hand, vase.reserved, vase.taken), (5, 0, 0));
    let refused = server
        .cli()
        .args(["rewards", "restock", "--reward", "cap", "--quantity", "1", "--key", "k"])
        .args(["--tenant", "demo", "--server", server.url.as_str()])
        .output()
        .unwrap();
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("unlimited"),
        "an unlimited reward has no stock"
    );
}

/// A staff key's cancellations name the staff member, as its other changes do.
#[tokio::test]
async fn a_staff_key_names_its_staff_member_when_it_cancels_a_redemption() {
    use tally_proto::v1::keys_service_client::KeysServiceClient;
    use tally_proto::v1::{CreateKeyRequest, Role};
    let (_dir, server, _admin, mut wallets) = shop().await;
    wallets.redeem_reward(redeem("ann", "mug", "r-1")).await.unwrap();
    let mut keys = KeysServiceClient::new(server.channel().await);
    let request =
        CreateKeyRequest { tenant_id: "demo".into(), roles: vec![Role::Staff as i32], label: "desk".into(), ..Default::default() };
    let token = keys.create_key(request).await.unwrap().into_inner().token;
    let mut desk = WalletServiceClient::new(server.channel_with(tally_tests::Key::new(&token)).await);
    let cancel = CancelRedemptionRequest {
        tenant_id: "demo".into(),
        wallet_id: "ann".into(),
        redemption_id: "r-1".into(),
        reason: "brought back".into(),
    };
    let unnamed = desk.cancel_redemption(cancel.clone()).await.unwrap_err();
    assert_eq!(unnamed.code(), Code::InvalidArgument);
    assert!(unnamed.message().contains("x-staff-id"), "{}", unnamed.message());
    let mut named = tonic::Request::new(cancel);
    named.metadata_mut().insert("x-staff-id", "s-3".parse().unwrap());
    assert_eq!(desk.cancel_redemption(named).await.unwrap().into_inner().points, 120);
}
