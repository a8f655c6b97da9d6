//! Issue 20 item 4: referrals against the real `tally` process. The program says what a referral earns;
//! a customer enrolled with a friend's code converts the referral with their first order the policy
//! counts: their bonus with the order, the friend's reward before the order is answered — once, even
//! when the server is killed (it aborts itself, as `kill -9` would stop it) between the reward's steps
//! and the POS retries the order after a restart.

use std::time::Duration;

use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{
    AttachIdentifierRequest, EarnForOrderRequest, EnrollRequest, GetProgramRequest, GetWalletRequest, IdentifierKind, ListFlowsRequest,
    ListTransactionsRequest, Money, Order, OrderLine, SetReferralPolicyRequest, TransactionKind, Wallet,
};
use tally_tests::{Authed, TallyServer};
use tonic::Code;
use tonic_types::StatusExt;

/// The points between two steps of a referral's reward, as the engine names them (`REFERRAL_CRASH_POINTS`).
const REFERRAL_CRASH_POINTS: [&str; 3] = ["referral_started", "rewarded", "referral_ended"];

fn policy(key: &str, enabled: bool, referrer_points: i64, referee_points: i64, currency: &str) -> SetReferralPolicyRequest {
    SetReferralPolicyRequest {
        tenant_id: "demo".into(),
        idempotency_key: key.into(),
        enabled,
        referrer_points,
        referee_points,
        min_order_minor: 2_000,
        currency: currency.into(),
        set_by: "ops".into(),
        convert_within_days: 30,
        max_rewards_per_referrer: 10,
    }
}

fn field(status: &tonic::Status) -> String {
    status.get_details_bad_request().and_then(|b| b.field_violations.first().map(|v| v.field.clone())).unwrap_or_default()
}

/// Ann with her code, and `referee` enrolled with it.
async fn ann_refers(wallets: &mut WalletServiceClient<Authed>, referee: &str) {
    for (wallet, code) in [("ann", ""), (referee, "ANN-1")] {
        let enroll = EnrollRequest {
            tenant_id: "demo".into(),
            wallet_id: wallet.into(),
            idempotency_key: format!("enroll-{wallet}"),
            referral_code: code.into(),
            ..Default::default()
        };
        wallets.enroll(enroll).await.unwrap();
        if wallet == "ann" {
            let attach = AttachIdentifierRequest {
                tenant_id: "demo".into(),
                wallet_id: "ann".into(),
                kind: IdentifierKind::ReferralCode as i32,
                value: "ann-1".into(),
                idempotency_key: "code".into(),
            };
            wallets.attach_identifier(attach).await.unwrap();
        }
    }
}

fn order(wallet: &str, id: &str, amount_minor: i64) -> EarnForOrderRequest {
    EarnForOrderRequest {
        tenant_id: "demo".into(),
        wallet_id: wallet.into(),
        order: Some(Order {
            order_id: id.into(),
            total: Some(Money { amount_minor, currency: "EUR".into() }),
            lines: vec![OrderLine { sku: "mug".into(), category: "home".into(), quantity: 1, amount_minor }],
            ..Default::default()
        }),
    }
}

async fn wallet(wallets: &mut WalletServiceClient<Authed>, id: &str) -> Wallet {
    let request = GetWalletRequest { tenant_id: "demo".into(), wallet_id: id.into(), ..Default::default() };
    wallets.get_wallet(request).await.unwrap().into_inner()
}

/// A wallet's transactions of `kind`: (points, counterpart, reference).
async fn movements(wallets: &mut WalletServiceClient<Authed>, id: &str, kind: TransactionKind) -> Vec<(i64, String, String)> {
    let request = ListTransactionsRequest { tenant_id: "demo".into(), wallet_id: id.into(), page_size: 100, ..Default::default() };
    let page = wallets.list_transactions(request).await.unwrap().into_inner();
    page.transactions.into_iter().filter(|t| t.kind == kind as i32).map(|t| (t.points, t.counterpart_wallet_id, t.reference)).collect()
}

#[tokio::test]
async fn a_referrals_first_counted_order_rewards_both_customers_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(&dir.path().join("data"), &["--tenant", "demo"]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mut wallets = server.client().await;

    // A policy that gives nobody anything, or names a currency badly, is refused with its field.
    let nothing = admin.set_referral_policy(policy("p-0", true, 0, 0, "")).await.unwrap_err();
    assert_eq!((nothing.code(), field(&nothing).as_str()), (Code::InvalidArgument, "referrer_points"));
    let currency = admin.set_referral_policy(policy("p-0", true, 100, 40, "eur")).await.unwrap_err();
    assert_eq!((currency.code(), field(&currency).as_str()), (Code::InvalidArgument, "currency"));
    let set = admin.set_referral_policy(policy("p-1", true, 100, 40, "EUR")).await.unwrap().into_inner();
    assert_eq!(set.referral_policy.map(|p| (p.enabled, p.referrer_points, p.referee_points)), Some((true, 100, 40)));
    let program = admin.get_program(GetProgramRequest { tenant_id: "demo".into() }).await.unwrap().into_inner();
    assert_eq!(
        program.referral_policy.map(|p| (p.min_order_minor, p.convert_within_days, p.max_rewards_per_referrer)),
        Some((2_000, 30, 10))
    );
    let long = admin.set_referral_policy(SetReferralPolicyRequest { convert_within_days: 3_651, ..policy("p-2", true, 1, 1, "EUR") }).await;
    assert_eq!(field(&long.unwrap_err()), "convert_within_days");

    ann_refers(&mut wallets, "bob").await;
    let small = wallets.earn_for_order(order("bob", "o-1", 1_999)).await.unwrap().into_inner();
    assert!(!small.wallet.unwrap().referral_converted, "too small an order does not count");
    let counted = wallets.earn_for_order(order("bob", "o-2", 2_000)).await.unwrap().into_inner();
    let bonus: Vec<_> = counted.transactions.iter().filter(|t| t.kind == TransactionKind::ReferralConverted as i32).collect();
    assert_eq!(bonus.iter().map(|t| (t.points, t.counterpart_wallet_id.as_str())).collect::<Vec<_>>(), [(40, "ann")]);
    assert!(counted.wallet.unwrap().referral_converted);
    // The friend's reward landed before the order was answered.
    assert_eq!(wallet(&mut wallets, "ann").await.balance, 100);
    assert_eq!(movements(&mut wallets, "ann", TransactionKind::ReferralRewarded).await, [(100, "bob".to_owned(), "o-2".to_owned())]);

    // A retry of the order, and later orders, give nothing more.
    assert!(wallets.earn_for_order(order("bob", "o-2", 2_000)).await.unwrap().into_inner().replayed);
    wallets.earn_for_order(order("bob", "o-3", 9_000)).await.unwrap();
    assert_eq!((wallet(&mut wallets, "ann").await.balance, wallet(&mut wallets, "bob").await.balance), (100, 40));
    let flows = admin.list_flows(ListFlowsRequest { tenant_id: "demo".into(), stuck_only: false }).await.unwrap().into_inner();
    assert!(flows.flows.is_empty(), "{flows:?}");
}

#[tokio::test]
async fn a_server_killed_between_the_rewards_steps_rewards_the_referrer_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let server = TallyServer::start(&data, &["--tenant", "demo"]);
        let mut admin = AdminServiceClient::new(server.channel().await);
        admin.set_referral_policy(policy("p-1", true, 100, 40, "EUR")).await.unwrap();
        let mut wallets = server.client().await;
        ann_refers(&mut wallets, "bob-0").await;
        for (i, _) in REFERRAL_CRASH_POINTS.iter().enumerate().skip(1) {
            ann_refers(&mut wallets, &format!("bob-{i}")).await;
        }
    }
    for (i, point) in REFERRAL_CRASH_POINTS.iter().enumerate() {
        let referee = format!("bob-{i}");
        let mut dying = TallyServer::start_with_env(&data, &["--tenant", "demo"], &[("TALLY_TEST_CRASH_AT", point)]);
        let mut wallets = dying.client().await;
        // Order ids are the tenant's: one per referee.
        let order_id = format!("o-{i}");
        let died = wallets.earn_for_order(order(&referee, &order_id, 2_500)).await;
        assert!(died.as_ref().is_err_and(|e| e.code() == Code::Unavailable || e.code() == Code::Unknown), "{point}: {died:?}");
        let status = dying.wait_exit(Duration::from_secs(30)).expect("the server aborted itself");
        assert!(!status.success(), "{point}: aborted, not stopped cleanly");

        // The POS retries the order after the restart: answered as recorded, the reward finished once.
        let server = TallyServer::start(&data, &["--tenant", "demo"]);
        let mut wallets = server.client().await;
        let retried = wallets.earn_for_order(order(&referee, &order_id, 2_500)).await.unwrap().into_inner();
        assert!(retried.replayed, "{point}");
        let rewards = movements(&mut wallets, "ann", TransactionKind::ReferralRewarded).await;
        assert_eq!(rewards.iter().filter(|(_, referee_id, _)| *referee_id == referee).count(), 1, "{point}: {rewards:?}");
    }
    let server = TallyServer::start(&data, &["--tenant", "demo"]);
    let mut wallets = server.client().await;
    assert_eq!(wallet(&mut wallets, "ann").await.balance, 100 * REFERRAL_CRASH_POINTS.len() as i64);
}
