//! The snapshot format: golden bytes, round trips, and refusal of anything damaged.

use proptest::prelude::*;
use std::sync::Arc;

use tally_engine::domain::identifiers::IdentifierKind;
use tally_engine::domain::program::RuleVersion;
use tally_engine::domain::rules::{Order, OrderLine, parse_rules};
use tally_engine::domain::{
    Command, CommandBody, Context, Decision, Event, ProgramSettings, TenantId, TransferStep, WalletId, WalletState, apply, decide,
    transfer_key,
};
use tally_snapshots::format::{self, FORMAT_VERSION, FormatError};

fn history(bodies: &[CommandBody]) -> Vec<Event> {
    let tenant = TenantId::parse("acme").unwrap();
    let wallet = WalletId::parse("c-1").unwrap();
    let program = program();
    let mut state = WalletState::default();
    let mut events = Vec::new();
    // Sealed as the wallet's actor seals it, under a fixed key: the golden bytes hold the sealed data.
    let key = tally_engine::store::PersonalKey::from_bytes(&[3; 32]).unwrap();
    let customer = tally_proto::v1::PersonalData { customer_ref: "crm-1".into(), ..Default::default() };
    let sealed = tally_engine::personal::seal(&key, "acme/wallet/c-1", &customer);
    // Referred by c-9's code, in the enrolment's own append.
    let enroll = CommandBody::Enroll { customer_ref: "crm-1".into(), sealed: Some(sealed), referrer_wallet_id: "c-9".into() };
    for (i, body) in std::iter::once(&enroll).chain(bodies).enumerate() {
        let ctx = Context { tenant: &tenant, wallet: &wallet, now_ms: 1_767_225_600_000 + i as i64, program: &program };
        let key = match body {
            CommandBody::EarnForOrder { order } => order.order_id.clone(),
            CommandBody::AuthorizeRedemption { hold_id, .. } => hold_id.clone(),
            CommandBody::PurchaseCredits { purchase_id, .. } => purchase_id.clone(),
            CommandBody::RedeemReward { redemption_id, .. } => tally_engine::domain::reward_debit_key(redemption_id),
            CommandBody::CancelRewardRedemption { redemption_id, .. } => tally_engine::domain::reward_cancel_key(redemption_id),
            CommandBody::TransferOut { transfer_id, .. } => transfer_key(transfer_id, TransferStep::Out),
            CommandBody::TransferIn { transfer_id, .. } => transfer_key(transfer_id, TransferStep::In),
            CommandBody::RewardReferral { referee_wallet_id, .. } => tally_engine::domain::referral_reward_key(referee_wallet_id),
            _ => format!("k-{i}"),
        };
        if let Ok(Decision::Append(new)) = decide(&state, &Command::new(key, body.clone()), &ctx) {
            new.iter().for_each(|e| apply(&mut state, e));
            events.extend(new);
        }
    }
    events
}

/// A program with a per-customer capped rule, points that expire at the end of the month, a return
/// window and a tier, so snapshots carry rule usage, lots with an expiry, pending points and the tier.
fn program() -> ProgramSettings {
    let json = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]},
        {"id":"weekly","actions":[{"type":"points","amount":50}],"caps":{"per_customer":{"points":80,"period":"week"}}}]"#;
    let rules = parse_rules(json).unwrap();
    let version =
        RuleVersion { version: 1, effective_from_ms: 0, published_by: "test".into(), rules_json: json.into(), rules: Ok(rules.into()) };
    let package = tally_engine::domain::CreditPackageDefined {
        package_id: "p-500".into(),
        name: "500 points".into(),
        price: Some(tally_engine::domain::Money { amount_minor: 499, currency: "EUR".into() }),
        points: 500,
        active: true,
    };
    let packages = Arc::new([("p-500".to_owned(), package)].into_iter().collect());
    let expiry = tally_engine::domain::ExpiryPolicy {
        rule: Some(tally_proto::v1::expiry_policy::Rule::After(tally_proto::v1::ExpireAfter { months: 0, days: 0, at_month_end: true })),
        notice_days: 7,
    };
    let silver = tally_proto::v1::TierDefinition {
        tier_id: "silver".into(),
        name: "Silver".into(),
        min_qualifying_points: 100,
        earn_multiplier_percent: 120,
    };
    let tiers = tally_engine::domain::tiers::Tiers {
        levels: Arc::new([silver]),
        window: tally_proto::v1::TierWindow::CalendarYear,
        grace_days: 30,
    };
    let coffee = tally_engine::domain::StampCardDefined {
        card_id: "coffee".into(),
        name: "Coffee".into(),
        stamps_required: 5,
        reward_ref: "free-coffee".into(),
        reward_points: 0,
        active: true,
    };
    let stamp_cards = Arc::new([("coffee".to_owned(), coffee)].into_iter().collect());
    let mug = tally_engine::domain::RewardDefined {
        reward_id: "mug".into(),
        name: "Mug".into(),
        points: 30,
        limited_stock: true,
        per_customer_max: 3,
        ..Default::default()
    };
    let mug = tally_engine::domain::RewardDefined { active: true, ..mug };
    ProgramSettings {
        rule_versions: Arc::new([version]),
        packages,
        expiry,
        pending_days: 30,
        tiers,
        stamp_cards,
        rewards: Arc::new([("mug".to_owned(), mug)].into_iter().collect()),
        transfers: tally_engine::domain::TransferPolicySet { allowed: true, max_points_per_day: 500, ..Default::default() },
        referrals: tally_engine::domain::ReferralPolicySet {
            enabled: true,
            referrer_points: 50,
            referee_points: 25,
            min_order_minor: 1_000,
            currency: "EUR".into(),
            set_by: "ops".into(),
            ..Default::default()
        },
        ..ProgramSettings::default()
    }
}

fn order(id: &str, total_minor: i64) -> CommandBody {
    let line = OrderLine { sku: "latte".into(), category: "drinks".into(), quantity: 1, amount_minor: total_minor };
    CommandBody::EarnForOrder {
        order: Order {
            order_id: id.into(),
            total_minor,
            currency: "EUR".into(),
            channel: "pos".into(),
            store: "s-1".into(),
            lines: vec![line],
            placed_at_ms: None,
        },
    }
}

fn fold(events: &[Event]) -> WalletState {
    let mut state = WalletState::default();
    events.iter().for_each(|e| apply(&mut state, e));
    state
}

fn golden_history() -> Vec<Event> {
    let earn = |points, source: &str| CommandBody::Earn { points, reason: "order".into(), source_ref: source.into(), order_amount: None };
    history(&[
        earn(120, "order-1"),
        earn(80, "order-2"),
        CommandBody::Redeem { points: 50, reward_ref: "mug".into() },
        CommandBody::Reverse { source_ref: "order-1".into(), points: Some(20), reason: "refund".into() },
        CommandBody::Adjust { points: -5, reason: "fix".into(), staff_ref: "staff-1".into() },
        order("order-3", 2_550),
        order("order-4", 1_000),
        CommandBody::RefundOrder { order_id: "order-3".into(), amount_minor: Some(1_000), reason: "returned".into() },
        CommandBody::AuthorizeRedemption { hold_id: "pos-1".into(), points: 20, reward_ref: "cake".into(), timeout_ms: 60_000 },
        CommandBody::PurchaseCredits { purchase_id: "pay-1".into(), package_id: "p-500".into() },
        CommandBody::AddStamps { card_id: "coffee".into(), count: 7, reason: "pos".into() },
        CommandBody::RedeemReward { redemption_id: "red-1".into(), reward_id: "mug".into() },
        CommandBody::RedeemReward { redemption_id: "red-2".into(), reward_id: "mug".into() },
        CommandBody::CancelRewardRedemption { redemption_id: "red-2".into(), reason: "returned".into() },
        CommandBody::TransferOut { transfer_id: "tr-1".into(), to_wallet_id: "c-2".into(), points: 40, reason: "gift".into() },
        CommandBody::TransferIn {
            transfer_id: "tr-2".into(),
            from_wallet_id: "c-3".into(),
            parts: vec![tally_engine::domain::TransferPart { points: 15, expires_at_ms: 1_798_761_600_000, on_inactivity: false }],
            reason: "gift".into(),
        },
        CommandBody::AttachIdentifier { kind: IdentifierKind::Phone, lookup: "ab".repeat(32) },
        CommandBody::AttachIdentifier { kind: IdentifierKind::Card, lookup: "cd".repeat(32) },
        CommandBody::DetachIdentifier { kind: IdentifierKind::Card, lookup: "cd".repeat(32), reason: "card lost".into() },
        CommandBody::RewardReferral { referee_wallet_id: "c-4".into(), order_id: "o-77".into(), points: 50 },
    ])
}

#[test]
fn the_format_matches_its_golden_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/wallet_state_v10.bin");
    let state = fold(&golden_history());
    // Lots: January's earnings (month end), the purchase (never), part of January's held; the points a
    // transfer brought, at their own date.
    assert_eq!(
        state.lots().map(|(_, lot)| (lot.expires_at_ms, lot.held)).collect::<Vec<_>>(),
        [(Some(1_769_904_000_000), 20), (None, 0), (Some(1_798_761_600_000), 0)]
    );
    // The orders' points wait out the return window (order-3 less its refund).
    assert_eq!(state.pending().map(|(_, p)| p.points).collect::<Vec<_>>(), [55, 48]);
    assert_eq!(state.tier.as_ref().map(|t| t.tier_id.as_str()), Some("silver"));
    assert_eq!(state.stamp_cards().map(|(id, c)| (id, c.stamps, c.completed)).collect::<Vec<_>>(), [("coffee", 2, 1)]);
    assert_eq!((state.orders_placed, state.source("order-3").unwrap().refunded_minor), (2, 1_000), "every command was accepted");
    assert_eq!((state.held_points, state.lifetime_purchased), (20, 500));
    assert_eq!(state.rewards_redeemed("mug"), 1, "two catalogue redemptions, one cancelled");
    assert!(state.catalogue_redemption("red-2").is_some_and(|r| r.cancelled));
    assert_eq!(state.transferred_out_since(1_767_225_600_100), 40, "a transfer out is remembered for the daily cap");
    assert_eq!(state.identifiers().collect::<Vec<_>>(), [("ab".repeat(32).as_str(), IdentifierKind::Phone as i32)]);
    assert_eq!(state.referred_by, "c-9");
    // Orders of 10 EUR or more wait out their pending period to convert the referral.
    assert!(!state.referral_converted && state.referral_due().count() == 2, "{:?}", state.referral_due().collect::<Vec<_>>());
    let kinds: Vec<&str> = golden_history().iter().map(|e| e.change.event_type()).collect();
    assert!(kinds.contains(&"tally.v1.ReferralRewarded"), "{kinds:?}");
    assert_eq!(
        state.rule_points(
            "weekly",
            2,
            tally_engine::domain::rules::period_key(tally_engine::domain::rules::Period::Week, 1_767_225_600_000, 0)
        ),
        80
    );
    let bytes = format::encode(&state);
    if std::env::var_os("TALLY_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &bytes).unwrap();
    }
    let golden = std::fs::read(path).expect("golden file present (TALLY_UPDATE_GOLDEN=1 writes it, for a new FORMAT_VERSION only)");
    assert_eq!(bytes, golden, "the snapshot format changed: bump FORMAT_VERSION and add a new golden file");
    assert_eq!(format::decode(&golden).unwrap(), fold(&golden_history()));
}

#[test]
fn snapshots_of_an_older_format_are_refused() {
    let files = [
        (1, "wallet_state_v1.bin"),
        (2, "wallet_state_v2.bin"),
        (3, "wallet_state_v3.bin"),
        (4, "wallet_state_v4.bin"),
        (5, "wallet_state_v5.bin"),
        (6, "wallet_state_v6.bin"),
        (7, "wallet_state_v7.bin"),
        (8, "wallet_state_v8.bin"),
        (9, "wallet_state_v9.bin"),
    ];
    for (version, file) in files {
        let old = std::fs::read(format!("{}/tests/golden/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert_eq!(format::decode(&old), Err(FormatError::UnknownVersion(version)), "the wallet then replays its stream");
    }
}

#[test]
fn damage_is_refused_not_trusted() {
    let bytes = format::encode(&fold(&golden_history()));
    for at in [14, bytes.len() / 2, bytes.len() - 1] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x10;
        assert_eq!(format::decode(&flipped), Err(FormatError::Checksum), "flip at {at}");
    }
    assert_eq!(format::decode(&bytes[..bytes.len() - 3]), Err(FormatError::Checksum));
    assert_eq!(format::decode(&bytes[..5]), Err(FormatError::Truncated(5)));
    let mut future = bytes.clone();
    future[..2].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert_eq!(format::decode(&future), Err(FormatError::UnknownVersion(FORMAT_VERSION + 1)));
    let mut wrong_version = bytes;
    wrong_version[2] ^= 1;
    assert!(matches!(format::decode(&wrong_version), Err(FormatError::VersionMismatch { .. })));
}

fn body() -> impl Strategy<Value = CommandBody> {
    let source = (0..5u8).prop_map(|s| format!("order-{s}"));
    prop_oneof![
        5 => (1..1000i64, source.clone()).prop_map(|(points, source_ref)| CommandBody::Earn { points, reason: "o".into(), source_ref, order_amount: None }),
        3 => (1..500i64).prop_map(|points| CommandBody::Redeem { points, reward_ref: "r".into() }),
        1 => (-100..100i64).prop_map(|points| CommandBody::Adjust { points, reason: "a".into(), staff_ref: "s".into() }),
        2 => (source, proptest::option::of(1..200i64)).prop_map(|(source_ref, points)| CommandBody::Reverse { source_ref, points, reason: "r".into() }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Snapshot at any point + the events after it == full replay, byte for byte after encoding.
    #[test]
    fn snapshot_plus_tail_equals_full_replay(bodies in prop::collection::vec(body(), 0..120), cut in any::<prop::sample::Index>()) {
        let events = history(&bodies);
        let at = cut.index(events.len() + 1);
        let snapshot = format::encode(&fold(&events[..at]));
        let mut state = format::decode(&snapshot).unwrap();
        prop_assert_eq!(state.version, at as u64);
        events[at..].iter().for_each(|e| apply(&mut state, e));
        let full = fold(&events);
        prop_assert_eq!(format::encode(&state), format::encode(&full));
        prop_assert_eq!(state, full);
    }
}
