//! Earning by the program's rules and refunding orders, in the real `tally` process: wallets take their
//! settings from the programs in the log (created over AdminService or by `--tenant` at start-up), an
//! order earns once with its breakdown recorded, refunds take back in proportion, and all of it holds
//! across a SIGKILL.

use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{
    CreateProgramRequest, CreditPackage, DefineCreditPackageRequest, EarnForOrderRequest, EnrollRequest, GetProgramRequest,
    GetWalletRequest, ListTransactionsRequest, Money, Order, OrderLine, PublishRulesRequest, PurchaseCreditsRequest, RefundOrderRequest,
    ReturnPolicy, SetRefundWindowRequest, TransactionKind,
};
use tally_tests::TallyServer;
use tonic::Code;
use tonic_types::StatusExt;

const RULES: &str = r#"[
  {"id":"base","name":"1 point per euro","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]},
  {"id":"welcome","conditions":{"type":"first_order"},"actions":[{"type":"points","amount":100,"reason":"welcome"}]}
]"#;

fn order(id: &str, total_minor: i64) -> Order {
    Order {
        order_id: id.into(),
        total: Some(Money { amount_minor: total_minor, currency: "EUR".into() }),
        channel: "web".into(),
        store: "eu".into(),
        lines: vec![OrderLine { sku: "mug".into(), category: "home".into(), quantity: 1, amount_minor: total_minor }],
        placed_at: None,
    }
}

fn earn(order: Order) -> EarnForOrderRequest {
    EarnForOrderRequest { tenant_id: "acme".into(), wallet_id: "c-1".into(), order: Some(order) }
}

fn refund(key: &str, order_id: &str, amount_minor: Option<i64>) -> RefundOrderRequest {
    RefundOrderRequest {
        tenant_id: "acme".into(),
        wallet_id: "c-1".into(),
        idempotency_key: key.into(),
        order_id: order_id.into(),
        amount_minor,
        reason: "returned".into(),
    }
}

async fn create_acme(admin: &mut AdminServiceClient<tally_tests::Authed>) {
    let create = CreateProgramRequest {
        tenant_id: "acme".into(),
        idempotency_key: "create".into(),
        name: "Acme".into(),
        utc_offset_minutes: 0,
        return_policy: ReturnPolicy::AllowNegative.into(),
    };
    admin.create_program(create).await.unwrap();
}

async fn publish_rules(admin: &mut AdminServiceClient<tally_tests::Authed>) {
    let publish = PublishRulesRequest {
        tenant_id: "acme".into(),
        idempotency_key: "v1".into(),
        rules_json: RULES.into(),
        published_by: "ops".into(),
    };
    admin.publish_rules(publish).await.unwrap();
}

#[tokio::test]
async fn orders_earn_by_the_rules_and_refunds_take_back_in_proportion() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TallyServer::start(dir.path(), &[]);
    let channel = server.channel().await;
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut wallets = WalletServiceClient::new(channel);

    // No program, no wallets.
    let enroll = EnrollRequest {
        tenant_id: "acme".into(),
        wallet_id: "c-1".into(),
        idempotency_key: "e".into(),
        customer_ref: "crm".into(),
        ..Default::default()
    };
    assert_eq!(wallets.enroll(enroll.clone()).await.unwrap_err().code(), Code::NotFound);
    create_acme(&mut admin).await;
    wallets.enroll(enroll).await.unwrap();
    publish_rules(&mut admin).await;

    let earned = wallets.earn_for_order(earn(order("order-1", 3_000))).await.unwrap().into_inner();
    assert_eq!((earned.balance, earned.replayed), (130, false));
    // Issue 15, item 9: the same order id on another wallet of the tenant is refused, naming the wallet.
    let other = EnrollRequest {
        tenant_id: "acme".into(),
        wallet_id: "c-2".into(),
        idempotency_key: "e".into(),
        customer_ref: "crm".into(),
        ..Default::default()
    };
    wallets.enroll(other).await.unwrap();
    let elsewhere = EarnForOrderRequest { wallet_id: "c-2".into(), ..earn(order("order-1", 3_000)) };
    let refused = wallets.earn_for_order(elsewhere).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert!(refused.message().contains("wallet \"c-1\""), "{}", refused.message());
    let tx = &earned.transactions[0];
    assert_eq!((tx.kind, tx.points, tx.reference.as_str(), tx.rules_version), (TransactionKind::Earned as i32, 130, "order-1", 1));
    let awards: Vec<(&str, i64)> = tx.awards.iter().map(|a| (a.rule_id.as_str(), a.points)).collect();
    assert_eq!(awards, [("base", 30), ("welcome", 100)]);

    let again = wallets.earn_for_order(earn(order("order-1", 3_000))).await.unwrap().into_inner();
    assert_eq!((again.replayed, again.balance, again.transactions[0].awards.len()), (true, 130, 2), "an order earns once");
    let status = wallets.earn_for_order(earn(order("order-1", 9_000))).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "same order id, other content: {status:?}");
    let mut bad = order("order-2", 100);
    bad.lines[0].amount_minor = -1;
    let status = wallets.earn_for_order(earn(bad)).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "order.lines[0].amount_minor");

    let partial = wallets.refund_order(refund("r-1", "order-1", Some(1_000))).await.unwrap().into_inner();
    let tx = &partial.transactions[0];
    assert_eq!((tx.kind, tx.points, tx.refund_amount_minor), (TransactionKind::Reversed as i32, -43, 1_000), "130 × 1/3, rounded down");
    let status = wallets.refund_order(refund("r-2", "order-1", Some(2_001))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.get_details_precondition_failure().unwrap().violations[0].r#type, "REFUND_EXCEEDS_ORDER");

    // Acknowledged means durable: after a SIGKILL the wallet and the order's memory are intact.
    server.kill_9();
    let server = TallyServer::start(dir.path(), &[]);
    let mut wallets = WalletServiceClient::new(server.channel().await);
    let rest = wallets.refund_order(refund("r-3", "order-1", None)).await.unwrap().into_inner();
    assert_eq!((rest.transactions[0].points, rest.balance), (-87, 0), "the rest of the order: exactly what it earned, no more");
    let replay = wallets.earn_for_order(earn(order("order-1", 3_000))).await.unwrap().into_inner();
    assert!(replay.replayed);
    let second = wallets.earn_for_order(earn(order("order-2", 1_000))).await.unwrap().into_inner();
    assert_eq!(second.transactions[0].points, 10, "no welcome bonus on the second order");
    let wallet = wallets
        .get_wallet(GetWalletRequest { tenant_id: "acme".into(), wallet_id: "c-1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((wallet.balance, wallet.lifetime_earned, wallet.lifetime_reversed), (10, 140, 130));
    let history = wallets
        .list_transactions(ListTransactionsRequest {
            tenant_id: "acme".into(),
            wallet_id: "c-1".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .transactions;
    let first_earn = history.iter().find(|t| t.reference == "order-1" && t.kind == TransactionKind::Earned as i32).unwrap();
    assert_eq!((first_earn.rules_version, first_earn.awards.len()), (1, 2), "history keeps the breakdown");
}

#[tokio::test]
async fn tenant_settings_create_missing_programs_and_never_override_stored_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &["--tenant", "shop:cap-at-zero"]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let program = admin.get_program(GetProgramRequest { tenant_id: "shop".into() }).await.unwrap().into_inner();
    assert_eq!(program.return_policy, ReturnPolicy::CapAtZero as i32);
    drop(server);

    let server = TallyServer::start(dir.path(), &["--tenant", "shop:allow-negative,other"]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let program = admin.get_program(GetProgramRequest { tenant_id: "shop".into() }).await.unwrap().into_inner();
    assert_eq!(program.return_policy, ReturnPolicy::CapAtZero as i32, "the stored program applies");
    let other = admin.get_program(GetProgramRequest { tenant_id: "other".into() }).await.unwrap().into_inner();
    assert_eq!(other.return_policy, ReturnPolicy::AllowNegative as i32);
}

#[tokio::test]
async fn credit_packages_are_bought_at_the_programs_definition() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &["--tenant", "acme"]);
    let channel = server.channel().await;
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut wallets = WalletServiceClient::new(channel);
    let package = CreditPackage {
        package_id: "p-1000".into(),
        name: "1,000 points".into(),
        price: Some(Money { amount_minor: 899, currency: "EUR".into() }),
        points: 1_000,
        active: true,
    };
    let define = DefineCreditPackageRequest { tenant_id: "acme".into(), idempotency_key: "d1".into(), package: Some(package.clone()) };
    let program = admin.define_credit_package(define).await.unwrap().into_inner();
    assert_eq!(program.credit_packages, std::slice::from_ref(&package));
    let bad = DefineCreditPackageRequest {
        tenant_id: "acme".into(),
        idempotency_key: "d2".into(),
        package: Some(CreditPackage { points: 0, ..package }),
    };
    let status = admin.define_credit_package(bad).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "package.points");

    let enroll = EnrollRequest { tenant_id: "acme".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
    wallets.enroll(enroll).await.unwrap();
    let buy = |purchase: &str, package: &str| PurchaseCreditsRequest {
        tenant_id: "acme".into(),
        wallet_id: "c-1".into(),
        purchase_id: purchase.into(),
        package_id: package.into(),
    };
    let bought = wallets.purchase_credits(buy("pay-1", "p-1000")).await.unwrap().into_inner();
    let tx = &bought.transactions[0];
    assert_eq!((tx.kind, tx.points, tx.reference.as_str()), (TransactionKind::Purchased as i32, 1_000, "pay-1"));
    assert_eq!(tx.order_amount.as_ref().map(|m| m.amount_minor), Some(899), "the price paid");
    let w = bought.wallet.unwrap();
    assert_eq!((w.balance, w.lifetime_purchased, w.lifetime_earned), (1_000, 1_000, 0));
    assert!(wallets.purchase_credits(buy("pay-1", "p-1000")).await.unwrap().into_inner().replayed);
    assert_eq!(wallets.purchase_credits(buy("pay-2", "nope")).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
/// The refund window is set per program and runs from when an order reached the engine (issue 15, item
/// 16): an order backdated by an offline POS can still be refunded for the whole window. (A window that
/// closed is refused as FAILED_PRECONDITION REFUND_WINDOW_CLOSED: `engine/tests/retention.rs`, and the
/// mapping in `gateway/src/status.rs`.)
async fn refund_windows_are_set_per_program_and_run_from_when_the_order_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let channel = server.channel().await;
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut wallets = WalletServiceClient::new(channel);
    create_acme(&mut admin).await;
    publish_rules(&mut admin).await;
    let window =
        |key: &str, days| SetRefundWindowRequest { tenant_id: "acme".into(), idempotency_key: key.into(), days, set_by: "ops".into() };
    let status = admin.set_refund_window(window("w0", 0)).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "days");
    assert_eq!(admin.set_refund_window(window("w1", 2)).await.unwrap().into_inner().refund_window_days, 2);
    let program = admin.get_program(GetProgramRequest { tenant_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(program.refund_window_days, 2);

    let enroll = EnrollRequest {
        tenant_id: "acme".into(),
        wallet_id: "c-1".into(),
        idempotency_key: "e".into(),
        customer_ref: "crm".into(),
        ..Default::default()
    };
    wallets.enroll(enroll).await.unwrap();
    // Placed by an offline POS three days ago: its two-day window runs from when it arrived.
    let mut old = order("order-old", 2_000);
    let three_days_ago = time::OffsetDateTime::now_utc().unix_timestamp() - 3 * 86_400;
    old.placed_at = Some(prost_types::Timestamp { seconds: three_days_ago, nanos: 0 });
    wallets.earn_for_order(earn(old)).await.unwrap();
    wallets.earn_for_order(earn(order("order-new", 1_000))).await.unwrap();
    let refunded = wallets.refund_order(refund("r-1", "order-old", None)).await.unwrap().into_inner();
    // (It earned nothing: no rules were in force when it was placed. The refund is accepted all the same.)
    let tx = &refunded.transactions[0];
    assert_eq!((tx.kind, tx.refund_amount_minor), (TransactionKind::Reversed as i32, 2_000), "backdating shortens no window");
    let refunded = wallets.refund_order(refund("r-2", "order-new", None)).await.unwrap().into_inner();
    assert_eq!(refunded.transactions[0].points, -10, "within the window");
}
