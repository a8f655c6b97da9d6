//! Points expiry and pending points in the real `tally` process: the program's expiry policy is set over AdminService and
//! kept in the log, every credit says when its points expire, `GetWallet` and `tally wallet show` list
//! the coming expiries, debits name the lots they took, and a bad policy is refused by field.
//! (Expiry itself runs on the engine's timers; `engine/tests/expiry.rs` drives them with a virtual clock.)

use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::expiry_policy::Rule;
use tally_proto::v1::{
    EarnForOrderRequest, EarnRequest, EnrollRequest, ExpireAfter, ExpireOnDate, ExpiryPolicy, GetProgramRequest, GetWalletRequest,
    LotPoints, Money, Order, OrderLine, PublishRulesRequest, RedeemRequest, RefundOrderRequest, SetExpiryPolicyRequest,
    SetPendingPeriodRequest, TransactionKind,
};
use tally_tests::TallyServer;
use tonic::Code;
use tonic_types::StatusExt;

fn set(key: &str, policy: ExpiryPolicy) -> SetExpiryPolicyRequest {
    SetExpiryPolicyRequest { tenant_id: "demo".into(), idempotency_key: key.into(), policy: Some(policy), set_by: "ops-1".into() }
}

/// The end of 31 December of the year after `year`, UTC (the demo program's clock).
fn end_of_next_year(year: i32) -> i64 {
    let date = time::Date::from_calendar_date(year + 2, time::Month::January, 1).unwrap();
    date.midnight().assume_utc().unix_timestamp()
}

#[tokio::test]
async fn the_programs_expiry_policy_dates_every_credit_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TallyServer::start(dir.path(), &[]);
    let channel = server.channel().await;
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut wallets = server.client().await;

    let bad = ExpiryPolicy { notice_days: 0, rule: Some(Rule::After(ExpireAfter { months: 0, days: 0, at_month_end: false })) };
    let status = admin.set_expiry_policy(set("x0", bad)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "policy.after");

    let policy = ExpiryPolicy { notice_days: 0, rule: Some(Rule::OnDate(ExpireOnDate { month: 12, day: 31, years_later: 1 })) };
    let program = admin.set_expiry_policy(set("x1", policy)).await.unwrap().into_inner();
    assert_eq!(program.expiry_policy.as_ref(), Some(&policy));

    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
    wallets.enroll(enroll).await.unwrap();
    let earn = EarnRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-1".into(),
        idempotency_key: "o-1".into(),
        points: 120,
        reason: "order".into(),
        source_ref: "o-1".into(),
        order_amount: None,
    };
    let earned = wallets.earn(earn).await.unwrap().into_inner();
    let expires = earned.transactions[0].expires_at.expect("a dated credit");
    let year = time::OffsetDateTime::now_utc().year();
    // Right at midnight on 31 December the credit may fall in the next year.
    assert!([end_of_next_year(year), end_of_next_year(year + 1)].contains(&expires.seconds), "{expires:?}");

    let redeem = RedeemRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-1".into(),
        idempotency_key: "r-1".into(),
        points: 20,
        reward_ref: "mug".into(),
    };
    let redeemed = wallets.redeem(redeem).await.unwrap().into_inner();
    assert_eq!(redeemed.transactions[0].kind, TransactionKind::Redeemed as i32);
    assert_eq!(redeemed.transactions[0].lots, [LotPoints { lot: 2, points: 20 }], "taken from the earn's lot");

    // Kill and restart: the policy is in the log, and so are the wallet's lots.
    server.kill_9();
    let server = TallyServer::start(dir.path(), &[]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let program = admin.get_program(GetProgramRequest { tenant_id: "demo".into() }).await.unwrap().into_inner();
    assert_eq!(program.expiry_policy, Some(policy));
    let mut wallets = server.client().await;
    let wallet = wallets
        .get_wallet(GetWalletRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wallet.upcoming_expiries.len(), 1);
    assert_eq!((wallet.upcoming_expiries[0].expires_at, wallet.upcoming_expiries[0].points), (Some(expires), 100));
    assert_eq!((wallet.balance, wallet.available_points, wallet.lifetime_expired), (100, 100, 0));

    let output = server.cli().args(["wallet", "show", "--wallet", "c-1", "--server", &server.url]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let shown = String::from_utf8(output.stdout).unwrap();
    assert!(shown.lines().any(|l| l.trim_start().starts_with("expiring  100 on ")), "{shown}");
}

#[tokio::test]
async fn points_from_orders_wait_out_the_pending_period_and_a_refund_cancels_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mut wallets = server.client().await;
    let rules = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]}]"#;
    let publish = PublishRulesRequest {
        tenant_id: "demo".into(),
        idempotency_key: "r1".into(),
        rules_json: rules.into(),
        published_by: "ops".into(),
    };
    admin.publish_rules(publish).await.unwrap();
    let too_long = SetPendingPeriodRequest { tenant_id: "demo".into(), idempotency_key: "p0".into(), days: 400, set_by: "ops".into() };
    let status = admin.set_pending_period(too_long).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "days");
    let period = SetPendingPeriodRequest { tenant_id: "demo".into(), idempotency_key: "p1".into(), days: 14, set_by: "ops".into() };
    assert_eq!(admin.set_pending_period(period).await.unwrap().into_inner().pending_days, 14);

    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-2".into(), idempotency_key: "e".into(), ..Default::default() };
    wallets.enroll(enroll).await.unwrap();
    let order = Order {
        order_id: "o-1".into(),
        total: Some(Money { amount_minor: 5_000, currency: "EUR".into() }),
        channel: "web".into(),
        store: String::new(),
        lines: vec![OrderLine { sku: "mug".into(), category: "home".into(), quantity: 1, amount_minor: 5_000 }],
        placed_at: None,
    };
    let earned =
        wallets.earn_for_order(EarnForOrderRequest { tenant_id: "demo".into(), wallet_id: "c-2".into(), order: Some(order) }).await;
    let earned = earned.unwrap().into_inner();
    let available_at = earned.transactions[0].available_at.expect("pending until the window closes");
    let in_14_days = time::OffsetDateTime::now_utc().unix_timestamp() + 14 * 86_400;
    assert!((in_14_days - 60..=in_14_days).contains(&available_at.seconds), "{available_at:?}");
    let w = earned.wallet.unwrap();
    assert_eq!((w.balance, w.pending_points, w.available_points), (50, 50, 0));

    let refund = RefundOrderRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-2".into(),
        idempotency_key: "ref-1".into(),
        order_id: "o-1".into(),
        amount_minor: Some(2_000),
        reason: "returned".into(),
    };
    let refunded = wallets.refund_order(refund).await.unwrap().into_inner();
    assert_eq!(refunded.transactions[0].points, -20);
    let w = refunded.wallet.unwrap();
    assert_eq!((w.balance, w.pending_points, w.available_points), (30, 30, 0), "the refund cancelled pending points");
}
