//! Tiers and stamp cards in the real `tally` process. Tiers: defined over AdminService and kept in the
//! log, an earn past a threshold moves the customer up at once (a transaction of its own), and
//! `GetWallet` shows the tier, the next one and the progress, after a SIGKILL too. Stamp cards: a POS
//! stamps by hand, a full card issues its reward in the same call. Bad input is refused by field.

use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::{
    AddStampsRequest, DefineStampCardRequest, DefineTiersRequest, EarnRequest, EnrollRequest, GetProgramRequest, GetWalletRequest, Money,
    Order, OrderLine, PublishRulesRequest, SimulateOrderRequest, StampCardDefined, StampCardStatus, TierDefinition, TierWindow,
    TransactionKind,
};
use tally_tests::TallyServer;
use tonic::Code;
use tonic_types::StatusExt;

fn tier(id: &str, name: &str, min: i64, pct: u32) -> TierDefinition {
    TierDefinition { tier_id: id.into(), name: name.into(), min_qualifying_points: min, earn_multiplier_percent: pct }
}

fn define(key: &str, tiers: Vec<TierDefinition>) -> DefineTiersRequest {
    DefineTiersRequest {
        tenant_id: "demo".into(),
        idempotency_key: key.into(),
        tiers,
        window: TierWindow::CalendarYear as i32,
        grace_days: 30,
        set_by: "ops".into(),
    }
}

#[tokio::test]
async fn customers_climb_tiers_and_see_their_progress() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TallyServer::start(dir.path(), &[]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mut wallets = server.client().await;

    let status =
        admin.define_tiers(define("t0", vec![tier("gold", "Gold", 1_000, 0), tier("silver", "Silver", 500, 0)])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "tiers[1].min_qualifying_points");
    let tiers = vec![tier("silver", "Silver", 500, 0), tier("gold", "Gold", 1_000, 150)];
    let program = admin.define_tiers(define("t1", tiers.clone())).await.unwrap().into_inner();
    assert_eq!((program.tiers, program.tier_window, program.tier_grace_days), (tiers, TierWindow::CalendarYear as i32, 30));

    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
    wallets.enroll(enroll).await.unwrap();
    let earn = |key: &str, points| EarnRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-1".into(),
        idempotency_key: key.into(),
        points,
        reason: "order".into(),
        source_ref: key.into(),
        order_amount: None,
    };
    let first = wallets.earn(earn("o-1", 200)).await.unwrap().into_inner();
    let tier_status = first.wallet.unwrap().tier.unwrap();
    assert_eq!((tier_status.level, tier_status.next_tier_name.as_str(), tier_status.progress_percent), (0, "Silver", 40));
    let second = wallets.earn(earn("o-2", 400)).await.unwrap().into_inner();
    let kinds: Vec<i32> = second.transactions.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, [TransactionKind::Earned as i32, TransactionKind::TierChanged as i32]);
    assert_eq!((second.transactions[1].reference.as_str(), second.transactions[1].reason.as_str()), ("silver", "up"));

    server.kill_9();
    let server = TallyServer::start(dir.path(), &[]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    assert_eq!(admin.get_program(GetProgramRequest { tenant_id: "demo".into() }).await.unwrap().into_inner().tiers.len(), 2);
    let mut wallets = server.client().await;
    let wallet = wallets
        .get_wallet(GetWalletRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let t = wallet.tier.unwrap();
    assert_eq!((t.tier_id.as_str(), t.name.as_str(), t.level, t.qualifying_points), ("silver", "Silver", 1, 600));
    assert_eq!((t.next_tier_id.as_str(), t.next_tier_min_points, t.progress_percent), ("gold", 1_000, 20));
    assert!(t.next_review_at.is_some(), "reviewed after the year ends");

    // SimulateOrder applies a tier's multiplier as EarnForOrder does.
    let rules = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]}]"#;
    let publish = PublishRulesRequest {
        tenant_id: "demo".into(),
        idempotency_key: "r1".into(),
        rules_json: rules.into(),
        published_by: "ops".into(),
    };
    admin.publish_rules(publish).await.unwrap();
    let order = Order {
        order_id: "sim-1".into(),
        total: Some(Money { amount_minor: 4_000, currency: "EUR".into() }),
        channel: "web".into(),
        store: String::new(),
        lines: vec![OrderLine { sku: "mug".into(), category: "home".into(), quantity: 1, amount_minor: 4_000 }],
        placed_at: None,
    };
    let simulate = SimulateOrderRequest { tenant_id: "demo".into(), order: Some(order), customer_tier: "gold".into(), previous_orders: 3 };
    let simulated = admin.simulate_order(simulate).await.unwrap().into_inner();
    let awards: Vec<(&str, i64)> = simulated.awards.iter().map(|a| (a.rule_id.as_str(), a.points)).collect();
    assert_eq!((awards, simulated.total_points), (vec![("base", 40), ("tier:gold", 20)], 60));
}

#[tokio::test]
async fn a_pos_stamps_a_card_and_a_full_card_pays_its_reward() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mut wallets = server.client().await;
    let card = StampCardDefined {
        card_id: "coffee".into(),
        name: "Coffee card".into(),
        stamps_required: 5,
        reward_ref: "free-coffee".into(),
        reward_points: 25,
        active: true,
    };
    let define = DefineStampCardRequest { tenant_id: "demo".into(), idempotency_key: "c1".into(), card: Some(card.clone()) };
    assert_eq!(admin.define_stamp_card(define).await.unwrap().into_inner().stamp_cards, [card]);

    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-9".into(), idempotency_key: "e".into(), ..Default::default() };
    wallets.enroll(enroll).await.unwrap();
    let stamp = |key: &str, card: &str, count| AddStampsRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-9".into(),
        idempotency_key: key.into(),
        card_id: card.into(),
        count,
        reason: "till 3".into(),
    };
    let status = wallets.add_stamps(stamp("s0", "tea", 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "card_id");
    let stamped = wallets.add_stamps(stamp("s1", "coffee", 6)).await.unwrap().into_inner();
    let kinds: Vec<(i32, i64, &str)> = stamped.transactions.iter().map(|t| (t.kind, t.points, t.reason.as_str())).collect();
    assert_eq!(kinds, [(TransactionKind::Stamped as i32, 0, "till 3"), (TransactionKind::CardCompleted as i32, 25, "free-coffee")]);
    let w = stamped.wallet.unwrap();
    assert_eq!(w.balance, 25);
    assert_eq!(w.stamp_cards, [StampCardStatus { card_id: "coffee".into(), stamps: 1, stamps_required: 5, completed: 1 }]);
    assert!(wallets.add_stamps(stamp("s1", "coffee", 6)).await.unwrap().into_inner().replayed, "stamps count once per key");
}
