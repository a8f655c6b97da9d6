//! Property tests over random command sequences for the wallet domain.

use std::collections::HashMap;

use proptest::prelude::*;
use tally_engine::codec;
use tally_engine::domain::identifiers::{IDENTIFIERS_PER_WALLET_MAX, IdentifierKind};
use tally_engine::domain::program::RuleVersion;
use tally_engine::domain::rules::{Order, OrderLine, parse_rules};
use tally_engine::domain::{
    Change, Command, CommandBody, Context, Decision, DueView, Event, ProgramSettings, ReturnPolicy, TenantId, WalletId, WalletState,
    WalletStatus, apply, decide,
};
use tally_engine::domain::{
    ReferralPolicySet, TransferPart, TransferPolicySet, TransferStep, capture_key, due_key, referral_reward_key, reward_cancel_key,
    reward_debit_key, transfer_key, void_key,
};
use tally_engine::limits::RECEIPT_RETENTION_MS;

const MINUTE: i64 = 60_000;
const DAY: i64 = 24 * 60 * MINUTE;

/// A program whose rules pay per euro, a capped daily bonus, a first-order bonus and a stamp per order
/// on a five-stamp coffee card.
fn program(return_policy: ReturnPolicy, expiry: ExpiryPolicy, pending_days: u32, refund_window_days: u32, tiers: Tiers) -> ProgramSettings {
    let json = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]},
        {"id":"daily","actions":[{"type":"points","amount":40}],"caps":{"per_customer":{"points":100,"period":"day"}}},
        {"id":"welcome","conditions":{"type":"first_order"},"actions":[{"type":"points","amount":25}]},
        {"id":"stamp","actions":[{"type":"stamps","card":"coffee","count":1}]}]"#;
    let version = RuleVersion {
        version: 1,
        effective_from_ms: 0,
        published_by: "p".into(),
        rules_json: json.into(),
        rules: parse_rules(json).map(Into::into),
    };
    let package = |id: &str, active| CreditPackageDefined {
        package_id: id.into(),
        name: id.into(),
        price: Some(tally_engine::domain::Money { amount_minor: 999, currency: "EUR".into() }),
        points: 150,
        active,
    };
    let packages = [("p-on".to_owned(), package("p-on", true)), ("p-off".to_owned(), package("p-off", false))].into_iter().collect();
    ProgramSettings {
        return_policy,
        utc_offset_minutes: 0,
        rule_versions: std::sync::Arc::new([version]),
        packages: std::sync::Arc::new(packages),
        expiry,
        pending_days,
        refund_window_days,
        tiers,
        stamp_cards: std::sync::Arc::new([("coffee".to_owned(), coffee_card())].into_iter().collect()),
        rewards: std::sync::Arc::new(rewards()),
        transfers: TransferPolicySet::default(),
        referrals: ReferralPolicySet::default(),
    }
}

/// Referrals rewarding nobody, both sides on any order, or on an order of 50 EUR or more, the referee only.
fn referral_policy() -> impl Strategy<Value = ReferralPolicySet> {
    let on = |referrer_points, referee_points, min_order_minor, currency: &str| ReferralPolicySet {
        enabled: true,
        referrer_points,
        referee_points,
        min_order_minor,
        currency: currency.into(),
        set_by: "p".into(),
        ..ReferralPolicySet::default()
    };
    // Within 3 days of the enrolment; one reward per referrer.
    let bounded = ReferralPolicySet { convert_within_days: 3, max_rewards_per_referrer: 1, ..on(50, 25, 0, "") };
    prop_oneof![Just(ReferralPolicySet::default()), Just(on(50, 25, 0, "")), Just(on(0, 40, 5_000, "EUR")), Just(bounded)]
}

/// Transfers not allowed, allowed without caps, or with a cap per transfer and per day.
fn transfer_policy() -> impl Strategy<Value = TransferPolicySet> {
    let allowed = |max_points_per_transfer, max_points_per_day| TransferPolicySet {
        allowed: true,
        max_points_per_transfer,
        max_points_per_day,
        set_by: "p".into(),
    };
    prop_oneof![Just(TransferPolicySet::default()), Just(allowed(0, 0)), Just(allowed(250, 400))]
}

/// What a transfer may bring in: points without a date (earned, on inactivity; or purchased, never
/// expiring) or with one, before or after the history's start (points past their time expire at once).
fn transfer_parts() -> impl Strategy<Value = Vec<TransferPart>> {
    let start = 1_772_636_400_000;
    let part =
        (1..200i64, prop_oneof![Just(0i64), Just(start - DAY), Just(start + 10 * DAY), Just(start + 90 * DAY)], any::<bool>()).prop_map(
            |(points, expires_at_ms, inactive)| TransferPart { points, expires_at_ms, on_inactivity: inactive && expires_at_ms == 0 },
        );
    prop::collection::vec(part, 1..4)
}

/// A catalogue drawn across its checks: a plain one, one limited to two per customer, one for the top
/// tier only, one inactive, one whose window closed.
fn rewards() -> std::collections::BTreeMap<String, tally_engine::domain::RewardDefined> {
    let reward = |id: &str, points, per_customer_max, min_tier_id: &str, active, available_until_ms| {
        let reward = tally_engine::domain::RewardDefined {
            reward_id: id.into(),
            name: id.into(),
            points,
            limited_stock: true,
            per_customer_max,
            available_from_ms: 0,
            available_until_ms,
            min_tier_id: min_tier_id.into(),
            active,
            cancel_window_days: 7,
        };
        (id.to_owned(), reward)
    };
    [
        reward("mug", 120, 0, "", true, 0),
        reward("tote", 60, 2, "", true, 0),
        reward("lounge", 90, 0, "gold", true, 0),
        reward("retired", 10, 0, "", false, 0),
        reward("summer", 30, 0, "", true, 1),
    ]
    .into_iter()
    .collect()
}

fn coffee_card() -> StampCardDefined {
    StampCardDefined {
        card_id: "coffee".into(),
        name: "Coffee".into(),
        stamps_required: 5,
        reward_ref: "free-coffee".into(),
        reward_points: 50,
        active: true,
    }
}

/// No tiers, or silver and gold (with a multiplier) over either window.
fn tiers() -> impl Strategy<Value = Tiers> {
    let levels = || -> std::sync::Arc<[TierDefinition]> {
        let tier = |id: &str, min, pct| TierDefinition {
            tier_id: id.into(),
            name: id.into(),
            min_qualifying_points: min,
            earn_multiplier_percent: pct,
        };
        std::sync::Arc::new([tier("silver", 300, 0), tier("gold", 1_500, 150)])
    };
    prop_oneof![
        Just(Tiers::default()),
        (0..20u32).prop_map(move |grace_days| Tiers { levels: levels(), window: TierWindow::Rolling12Months, grace_days }),
        (0..40u32).prop_map(move |grace_days| Tiers { levels: levels(), window: TierWindow::CalendarYear, grace_days }),
    ]
}

fn order(id: u8, total_minor: i64) -> Order {
    Order {
        order_id: format!("order-{id}"),
        total_minor,
        currency: "EUR".into(),
        channel: "web".into(),
        store: String::new(),
        lines: vec![OrderLine { sku: "x".into(), category: "y".into(), quantity: 1, amount_minor: total_minor }],
        placed_at_ms: None,
    }
}
use tally_engine::domain::StampCard;
use tally_engine::domain::tiers::Tiers;
use tally_engine::store::{EventMetadata, RecordedEvent, StreamId};
use tally_proto::v1::expiry_policy::Rule;
use tally_proto::v1::{
    CreditPackageDefined, ExpireAfter, ExpireAfterInactivity, ExpireOnDate, ExpiryPolicy, LotPoints, PointsAdjusted, PointsEarned,
    PointsPurchased, PointsTransferReturned, PointsTransferredIn, ReferralConverted, ReferralRewarded, RewardRedemptionCancelled,
};
use tally_proto::v1::{StampCardCompleted, StampCardDefined, TierDefinition, TierMove, TierWindow};

fn body() -> impl Strategy<Value = CommandBody> {
    let source = (0..4u8).prop_map(|s| format!("order-{s}"));
    prop_oneof![
        1 => Just(CommandBody::enroll("")),
        6 => (1..500i64, source.clone()).prop_map(|(points, source_ref)| CommandBody::Earn {
            points,
            reason: "order".into(),
            source_ref,
            order_amount: None
        }),
        4 => (1..400i64).prop_map(|points| CommandBody::Redeem { points, reward_ref: "reward".into() }),
        2 => (-300..300i64).prop_map(|points| CommandBody::Adjust { points, reason: "fix".into(), staff_ref: "staff".into() }),
        4 => (source, proptest::option::of(1..300i64)).prop_map(|(source_ref, points)| CommandBody::Reverse {
            source_ref,
            points,
            reason: "refund".into()
        }),
        1 => Just(CommandBody::Close { reason: "bye".into() }),
        1 => Just(CommandBody::EraseCustomer { reason: "asked".into() }),
        4 => (0..4u8, 0..20_000i64).prop_map(|(id, total)| CommandBody::EarnForOrder { order: order(id, total) }),
        3 => (0..4u8, proptest::option::of(1..8_000i64)).prop_map(|(id, amount_minor)| CommandBody::RefundOrder {
            order_id: format!("order-{id}"),
            amount_minor,
            reason: "returned".into()
        }),
        3 => (0..4u8, 1..300i64, 1..10i64).prop_map(|(id, points, minutes)| CommandBody::AuthorizeRedemption {
            hold_id: format!("hold-{id}"),
            points,
            reward_ref: "r".into(),
            timeout_ms: minutes * MINUTE
        }),
        2 => (0..4u8, proptest::option::of(1..300i64)).prop_map(|(id, points)| CommandBody::CaptureRedemption { hold_id: format!("hold-{id}"), points }),
        1 => (0..4u8).prop_map(|id| CommandBody::VoidRedemption { hold_id: format!("hold-{id}") }),
        1 => Just(CommandBody::RunDue),
        3 => (0..6u8, prop_oneof![Just("mug"), Just("tote"), Just("lounge"), Just("retired"), Just("summer"), Just("none")])
            .prop_map(|(id, reward)| CommandBody::RedeemReward { redemption_id: format!("red-{id}"), reward_id: reward.into() }),
        2 => (0..6u8).prop_map(|id| CommandBody::CancelRewardRedemption { redemption_id: format!("red-{id}"), reason: "returned".into() }),
        2 => (1..12i64).prop_map(|count| CommandBody::AddStamps { card_id: "coffee".into(), count, reason: "pos".into() }),
        2 => (0..6u8, prop_oneof![Just("p-on"), Just("p-off"), Just("p-none")]).prop_map(|(id, package)| CommandBody::PurchaseCredits {
            purchase_id: format!("pay-{id}"),
            package_id: package.into()
        }),
        3 => (0..6u8, 1..400i64, prop_oneof![4 => Just("w2"), 1 => Just("w")]).prop_map(|(id, points, to)| CommandBody::TransferOut {
            transfer_id: format!("tr-{id}"),
            to_wallet_id: to.into(),
            points,
            reason: "gift".into()
        }),
        2 => (0..6u8, transfer_parts()).prop_map(|(id, parts)| CommandBody::TransferIn {
            transfer_id: format!("in-{id}"),
            from_wallet_id: "w2".into(),
            parts,
            reason: "gift".into()
        }),
        1 => (0..6u8, transfer_parts()).prop_map(|(id, parts)| CommandBody::ReturnTransfer {
            transfer_id: format!("tr-{id}"),
            parts,
            code: "WALLET_CLOSED".into()
        }),
        1 => (prop_oneof![2 => Just("w2"), 2 => Just("w4"), 1 => Just("w")], 1..100i64).prop_map(|(referee, points)| CommandBody::RewardReferral {
            referee_wallet_id: referee.into(),
            order_id: "o-9".into(),
            points
        }),
        1 => prop_oneof![Just("w"), Just("w2"), Just("w3")].prop_map(|referrer| CommandBody::Enroll {
            customer_ref: String::new(),
            sealed: None,
            referrer_wallet_id: referrer.into()
        }),
        2 => (0..20u8, any::<bool>()).prop_map(|(n, attach)| {
            let lookup = format!("{n:064x}");
            if attach {
                CommandBody::AttachIdentifier { kind: IdentifierKind::Card, lookup }
            } else {
                CommandBody::DetachIdentifier { kind: IdentifierKind::Card, lookup, reason: "lost".into() }
            }
        }),
    ]
}

/// Orders are keyed by their id and holds by theirs; everything else by the step's key.
fn command(key: u8, body: CommandBody) -> Command {
    let key = match &body {
        CommandBody::EarnForOrder { order } => order.order_id.clone(),
        CommandBody::AuthorizeRedemption { hold_id, .. } => hold_id.clone(),
        CommandBody::PurchaseCredits { purchase_id, .. } => purchase_id.clone(),
        CommandBody::CaptureRedemption { hold_id, .. } => capture_key(hold_id),
        CommandBody::VoidRedemption { hold_id } => void_key(hold_id),
        CommandBody::RunDue => due_key(i64::from(key)),
        CommandBody::RedeemReward { redemption_id, .. } => reward_debit_key(redemption_id),
        CommandBody::CancelRewardRedemption { redemption_id, .. } => reward_cancel_key(redemption_id),
        CommandBody::TransferOut { transfer_id, .. } => transfer_key(transfer_id, TransferStep::Out),
        CommandBody::TransferIn { transfer_id, .. } => transfer_key(transfer_id, TransferStep::In),
        CommandBody::ReturnTransfer { transfer_id, .. } => transfer_key(transfer_id, TransferStep::Return),
        CommandBody::RewardReferral { referee_wallet_id, .. } => referral_reward_key(referee_wallet_id),
        _ => format!("k{key}"),
    };
    Command::new(key, body)
}

/// Keys come from a small pool so that retries (same key, same body) and reuse (same key, other body)
/// both happen often; a step may also re-send an earlier command verbatim.
fn steps() -> impl Strategy<Value = Vec<(Option<usize>, u8, CommandBody)>> {
    prop::collection::vec((proptest::option::weighted(0.15, 0..64usize), 0..40u8, body()), 1..80)
}

fn policy() -> impl Strategy<Value = ReturnPolicy> {
    prop_oneof![Just(ReturnPolicy::AllowNegative), Just(ReturnPolicy::CapAtZero)]
}

fn expiry() -> impl Strategy<Value = ExpiryPolicy> {
    let after =
        |months, days, at_month_end| ExpiryPolicy { notice_days: 0, rule: Some(Rule::After(ExpireAfter { months, days, at_month_end })) };
    prop_oneof![
        Just(ExpiryPolicy::default()),
        Just(after(0, 2, false)),
        Just(ExpiryPolicy { notice_days: 2, ..after(0, 5, false) }),
        Just(ExpiryPolicy { notice_days: 10, ..after(0, 0, true) }),
        Just(ExpiryPolicy { notice_days: 0, rule: Some(Rule::Inactivity(ExpireAfterInactivity { months: 1 })) }),
        Just(ExpiryPolicy { notice_days: 0, rule: Some(Rule::OnDate(ExpireOnDate { month: 3, day: 10, years_later: 0 })) }),
    ]
}

/// How far the clock moves before each step: holds time out after minutes, lots expire after days,
/// receipts are forgotten after a month.
fn ticks() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(
        prop_oneof![4 => Just(MINUTE), 4 => Just(60 * MINUTE), 4 => Just(DAY), 4 => Just(3 * DAY), 1 => Just(20 * DAY)],
        81,
    )
}

/// The lots a debit of `points` must take: unheld points, soonest expiry first (undated ones last),
/// then oldest first — written out again here as the oracle.
fn soonest_first(state: &WalletState, points: i64) -> Vec<LotPoints> {
    // Dated lots first, then those that expire with the wallet's inactivity, then never-expiring ones.
    let undated = |on_inactivity: bool| if on_inactivity { i64::MAX - 1 } else { i64::MAX };
    let mut lots: Vec<(i64, u64, i64)> = state
        .lots()
        .filter(|(_, lot)| lot.points > 0)
        .map(|(id, lot)| (lot.expires_at_ms.unwrap_or(undated(lot.on_inactivity)), id, lot.points))
        .collect();
    lots.sort_unstable();
    let mut left = points;
    let mut taken = Vec::new();
    for (_, lot, available) in lots {
        if left == 0 {
            break;
        }
        taken.push(LotPoints { lot, points: available.min(left) });
        left -= available.min(left);
    }
    taken
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_every_invariant(
        steps in steps(), policy in policy(), expiry in expiry(), pending_days in prop_oneof![Just(0u32), Just(2), Just(10)], ticks in ticks(),
        tiers in tiers(), refund_window_days in prop_oneof![Just(1u32), Just(5), Just(365)], transfers in transfer_policy(),
        referral in referral_policy(), referred in any::<bool>()
    ) {
        let tenant = TenantId::parse("t").unwrap();
        let wallet = WalletId::parse("w").unwrap();
        let program = ProgramSettings {
            transfers: transfers.clone(),
            referrals: referral.clone(),
            ..program(policy, expiry, pending_days, refund_window_days, tiers)
        };
        let level = |state: &WalletState| state.tier.as_ref().and_then(|t| program.tiers.find(&t.tier_id)).map_or(0, |(level, _)| level);
        let mut pending_credits: HashMap<u64, (String, i64)> = HashMap::new();
        let mut lot_expiry: HashMap<u64, i64> = HashMap::new();
        let mut now_ms = 1_772_636_400_000;
        let mut state = WalletState::default();
        // What the timers keep of this wallet (dropped whenever it is idle, as they do).
        let mut due_view: Option<DueView> = None;
        let mut log: Vec<Event> = Vec::new();
        let mut accepted: Vec<(Command, WalletState, i64)> = Vec::new();
        let referrer = if referred { "w3" } else { "" };
        let enrolled_first =
            Command::new("enroll", CommandBody::Enroll { customer_ref: String::new(), sealed: None, referrer_wallet_id: referrer.into() });
        let mut sent = vec![enrolled_first];
        for (resend, key, body) in steps {
            let command = match resend {
                Some(i) if !accepted.is_empty() => accepted[i % accepted.len()].0.clone(),
                _ => command(key, body),
            };
            sent.push(command);
        }
        for (step, command) in sent.iter().enumerate() {
            now_ms += ticks[step];
            let ctx = Context { tenant: &tenant, wallet: &wallet, now_ms, program: &program };
            match decide(&state, command, &ctx) {
                Ok(Decision::Append(events)) => {
                    // A retry is answered from its receipt for as long as the receipt is kept.
                    if let Some((_, _, at)) = accepted.iter().rev().find(|(c, _, _)| c == command) {
                        prop_assert!(now_ms - at > RECEIPT_RETENTION_MS, "a retry {} ms after was decided again", now_ms - at);
                    }
                    for event in &events {
                        // Debits take unheld points soonest expiry first (a reversal its own order's first).
                        match &event.change {
                            Change::Redeemed(e) => prop_assert_eq!(&e.lots, &soonest_first(&state, e.points)),
                            Change::Held(e) => prop_assert_eq!(&e.lots, &soonest_first(&state, e.points)),
                            Change::Adjusted(e) if e.points < 0 => prop_assert_eq!(&e.lots, &soonest_first(&state, -e.points)),
                            // A transfer takes available points soonest expiry first, and records them by kind.
                            Change::TransferredOut(e) => {
                                prop_assert_eq!(&e.lots, &soonest_first(&state, e.points));
                                prop_assert_eq!(e.parts.iter().map(|p| p.points).sum::<i64>(), e.points);
                                prop_assert!(transfers.allowed && e.to_wallet_id != "w", "a transfer the program or its target forbids");
                                prop_assert!(transfers.max_points_per_transfer == 0 || e.points <= transfers.max_points_per_transfer);
                                for part in &e.parts {
                                    let kind_held = state.lots().any(|(_, lot)| {
                                        lot.points > 0 && lot.expires_at_ms.unwrap_or(0) == part.expires_at_ms && lot.on_inactivity == part.on_inactivity
                                    });
                                    prop_assert!(kind_held, "a part of a kind the wallet did not hold: {:?}", part);
                                }
                            }
                            _ => {}
                        }
                        let before_tier = state.tier.clone();
                        let before_deadline = state.inactivity_expires_at_ms;
                        apply(&mut state, event);
                        let view = due_view.get_or_insert_with(DueView::default);
                        view.apply(event, state.version);
                        prop_assert_eq!(view.next_due_ms(), state.next_due_ms(), "the timers' due time is the wallet's: {:?}", event);
                        if view.is_idle() {
                            prop_assert_eq!(state.next_due_ms(), None);
                            due_view = None;
                        }
                        match &event.change {
                            Change::Earned(PointsEarned { lot: Some(lot), .. })
                            | Change::Adjusted(PointsAdjusted { lot: Some(lot), .. })
                            | Change::Purchased(PointsPurchased { lot: Some(lot), .. })
                            | Change::CardCompleted(StampCardCompleted { lot: Some(lot), .. })
                            | Change::ReferralConverted(ReferralConverted { lot: Some(lot), .. })
                            | Change::ReferralRewarded(ReferralRewarded { lot: Some(lot), .. })
                                if lot.points > 0 =>
                            {
                                let expires = *lot_expiry.entry(lot.lot).or_insert(lot.expires_at_ms);
                                prop_assert_eq!(expires, lot.expires_at_ms, "points join only a lot that expires with them");
                                prop_assert!(lot.expires_at_ms == 0 || lot.expires_at_ms > now_ms);
                            }
                            // Points a cancellation or a transfer brings join only a lot that expires with them, and
                            // may be past their time already (they expire with it).
                            Change::RewardCancelled(RewardRedemptionCancelled { lot: Some(lot), .. })
                            | Change::TransferredIn(PointsTransferredIn { lot: Some(lot), .. })
                            | Change::TransferReturned(PointsTransferReturned { lot: Some(lot), .. })
                                if lot.points > 0 =>
                            {
                                let expires = *lot_expiry.entry(lot.lot).or_insert(lot.expires_at_ms);
                                prop_assert_eq!(expires, lot.expires_at_ms, "points given back join only a lot that expires with them");
                            }
                            Change::Earned(PointsEarned { pending: Some(p), source_ref, .. }) if p.points > 0 => {
                                prop_assert!(p.available_at_ms > now_ms, "pending only while the window is open");
                                pending_credits.insert(state.version, (source_ref.clone(), p.available_at_ms));
                            }
                            // Nothing matures early, and only what was pending.
                            Change::Matured(m) => {
                                let (source, at) = pending_credits.get(&m.pending).expect("a pending credit matures");
                                prop_assert_eq!((source, *at), (&m.source_ref, m.available_at_ms));
                                prop_assert!(m.available_at_ms <= now_ms);
                                if let Some(lot) = &m.lot {
                                    let expires = *lot_expiry.entry(lot.lot).or_insert(lot.expires_at_ms);
                                    prop_assert_eq!(expires, lot.expires_at_ms);
                                }
                            }
                            // Tiers go down only at a review that was due.
                            Change::TierChanged(t) if t.r#move == TierMove::Down as i32 => {
                                prop_assert!(before_tier.as_ref().is_some_and(|b| b.next_review_at_ms != 0 && b.next_review_at_ms <= now_ms));
                            }
                            // A refund takes only its own order's pending points, within the refund window.
                            Change::Reversed(r) => {
                                let earned = log.iter().filter_map(|e| match &e.change {
                                    Change::Earned(x) if x.source_ref == r.source_ref => Some(x.refundable_until_ms),
                                    _ => None,
                                });
                                prop_assert!(earned.max().is_some_and(|until| until >= now_ms), "refund after the window");
                                for taken in &r.pending {
                                    prop_assert_eq!(&pending_credits[&taken.lot].0, &r.source_ref);
                                }
                            }
                            // Nothing expires early, and each expiry names its lot's own time.
                            Change::Expired(e) => {
                                match lot_expiry.get(&e.lot) {
                                    // A lot without a date expires at the wallet's inactivity deadline.
                                    Some(0) => prop_assert_eq!(Some(e.expired_at_ms), before_deadline),
                                    expires => prop_assert_eq!(Some(&e.expired_at_ms), expires),
                                }
                                prop_assert!(e.expired_at_ms <= now_ms);
                            }
                            _ => {}
                        }
                        // The balance is always its lots (held ones included) less the debt.
                        let lots: i64 = state.lots().map(|(_, lot)| lot.points + lot.held).sum();
                        prop_assert_eq!(state.balance, lots + state.pending_points - state.debt, "{:?}", state);
                        prop_assert_eq!(state.pending_points, state.pending().map(|(_, p)| p.points).sum::<i64>());
                        prop_assert!(state.debt >= 0 && state.lots().all(|(_, lot)| lot.points >= 0 && lot.held >= 0));
                        prop_assert_eq!(state.held_points, state.lots().map(|(_, lot)| lot.held).sum::<i64>());
                        prop_assert!(policy != ReturnPolicy::CapAtZero || state.balance >= 0, "cap-at-zero went negative: {state:?}");
                        if let Change::Reversed(r) = &event.change {
                            prop_assert_eq!(r.requested_points, r.reversed_points + r.shortfall_points);
                            prop_assert!(policy != ReturnPolicy::AllowNegative || r.shortfall_points == 0);
                        }
                    }
                    log.extend(events);
                    accepted.push((command.clone(), state.clone(), now_ms));
                    // Nothing expires late: once a command is decided, no lot past its expiry keeps points,
                    // and no hold past its timeout stays open. (Nothing more comes due in a closed wallet,
                    // which keeps no lots, holds nor pending points.)
                    prop_assert!(state.lots().all(|(_, lot)| lot.points == 0 || state.lot_expiry(lot).is_none_or(|at| at > now_ms)));
                    prop_assert!(state.holds().all(|(_, hold)| hold.expires_at_ms > now_ms));
                    prop_assert!(state.pending().all(|(_, p)| p.available_at_ms > now_ms));
                    let closed = state.status == WalletStatus::Closed;
                    prop_assert!(closed || state.tier.as_ref().is_none_or(|t| t.next_review_at_ms == 0 || t.next_review_at_ms > now_ms));
                    prop_assert!(!closed || (state.lots().next().is_none() && state.holds().next().is_none() && state.pending_points == 0));
                    // A closed wallet or an erased customer is found by nothing; no wallet carries more than it may.
                    prop_assert!(!(closed || state.customer_erased) || state.identifiers().next().is_none());
                    prop_assert!(state.identifiers().count() <= IDENTIFIERS_PER_WALLET_MAX);
                    // Upgrades are immediate: the tier is never below what the window's points reach.
                    let reached = program.tiers.reached(program.tiers.qualifying_points(&state, now_ms, 0)).map_or(0, |(level, _)| level);
                    prop_assert!(level(&state) >= reached, "tier {:?} below level {reached}", state.tier);
                    // An immediate retry returns the outcome just recorded and changes nothing.
                    let retry = decide(&state, command, &ctx);
                    let Ok(Decision::AlreadyApplied(receipt)) = retry else { panic!("retry of {command:?} gave {retry:?}") };
                    prop_assert_eq!(receipt.balance_after, state.balance);
                    prop_assert_eq!(receipt.last_version, state.version);
                }
                Ok(Decision::AlreadyApplied(receipt)) => {
                    // A later retry returns the first outcome, not the current balance.
                    let (_, after, _) = accepted.iter().rev().find(|(c, _, _)| c == command).expect("only accepted commands are replayed");
                    prop_assert_eq!(receipt.balance_after, after.balance);
                    prop_assert_eq!(receipt.last_version, after.version);
                }
                // A history this short never has more due at once than one append records.
                Ok(Decision::CatchUp(events)) => prop_assert!(false, "{} transitions due at once", events.len()),
                Err(_) => {}
            }
        }

        // The balance is the sum of the recorded movements.
        prop_assert_eq!(state.balance, log.iter().map(|e| e.change.points_delta()).sum::<i64>());
        // A referral is recorded once, before the first order, by another wallet.
        let referrals: Vec<&str> = log
            .iter()
            .filter_map(|e| if let Change::ReferralRecorded(r) = &e.change { Some(r.referrer_wallet_id.as_str()) } else { None })
            .collect();
        prop_assert!(referrals.len() <= 1 && !referrals.contains(&"w"), "{referrals:?}");
        prop_assert_eq!(state.referred_by.as_str(), referrals.first().copied().unwrap_or_default());
        if let Some(at) = log.iter().position(|e| matches!(e.change, Change::ReferralRecorded(_))) {
            prop_assert!(!log[..at].iter().any(|e| matches!(&e.change, Change::Earned(x) if x.order.is_some())), "referred after an order");
        }
        // A referral converts once, with the first order the policy counts (its Earned in the same
        // append, before it), for the referrer it was recorded with, giving the referee the policy's bonus.
        let orders = |upto: usize| {
            log[..upto].iter().filter(|e| matches!(&e.change, Change::Earned(x) if x.order.is_some())).cloned().collect::<Vec<_>>()
        };
        let conversions: Vec<usize> =
            log.iter().enumerate().filter(|(_, e)| matches!(e.change, Change::ReferralConverted(_))).map(|(i, _)| i).collect();
        prop_assert!(conversions.len() <= 1, "converted {} times", conversions.len());
        prop_assert_eq!(state.referral_converted, conversions.len() == 1);
        let window = i64::from(referral.convert_within_days) * DAY;
        let counts = |e: &Event| match &e.change {
            Change::Earned(PointsEarned { order: Some(_), order_amount: Some(m), .. })
                if window == 0 || e.recorded_at_ms <= log[0].recorded_at_ms + window =>
            {
                m.amount_minor >= referral.min_order_minor && (referral.currency.is_empty() || referral.currency == m.currency)
            }
            _ => false,
        };
        match conversions.first() {
            Some(&at) => {
                let Change::ReferralConverted(c) = &log[at].change else { unreachable!() };
                prop_assert!(referral.enabled && referred && c.referrer_wallet_id == "w3");
                prop_assert_eq!(c.referrer_points, referral.referrer_points);
                prop_assert!(c.referee_points == referral.referee_points || c.referee_points == 0, "{c:?}");
                let order = log[..at]
                    .iter()
                    .rev()
                    .find(|e| matches!(&e.change, Change::Earned(x) if x.order.is_some() && x.source_ref == c.order_id))
                    .expect("the converting order");
                prop_assert!(counts(order), "converted by an order the policy does not count");
                // Within the window from the enrolment (an order that waited: when it landed).
                prop_assert!(window == 0 || order.recorded_at_ms <= log[0].recorded_at_ms + window, "converted after the window");
                let Change::Earned(earned) = &order.change else { unreachable!() };
                if c.on_maturity {
                    // Under a pending period: once the order's period ended, never before.
                    prop_assert!(pending_days > 0 && earned.referral_converts_at_ms != 0);
                    prop_assert!(earned.referral_converts_at_ms <= log[at].recorded_at_ms);
                } else {
                    prop_assert!(pending_days == 0 && order.idempotency_key == log[at].idempotency_key, "converted by another command's order");
                    prop_assert!(orders(at).iter().filter(|e| counts(e)).count() == 1, "an earlier order counted already");
                }
            }
            None if pending_days == 0 => {
                prop_assert!(!referral.enabled || !referred || !orders(log.len()).iter().any(counts), "a counted order converted nothing")
            }
            None => {}
        }
        // An order waits under a pending period only: it converts, lapses or is still waiting, once.
        for event in &log {
            if let Change::ReferralLapsed(l) = &event.change {
                let waited = log.iter().any(|e| matches!(&e.change, Change::Earned(x) if x.source_ref == l.order_id && x.referral_converts_at_ms != 0));
                prop_assert!(waited && pending_days > 0, "lapsed an order that did not wait: {l:?}");
                // Only a refund makes a waiting order lapse (the policy stays on here), whatever the
                // refund window: the order is still known when its wait ends.
                let refunded = log.iter().any(|e| matches!(&e.change, Change::Reversed(r) if r.source_ref == l.order_id));
                prop_assert!(refunded && l.reason.starts_with("refunded"), "lapsed without a refund: {l:?}");
            }
        }
        // The referrer's reward: once per referee while its receipt is kept, never for the wallet itself.
        let rewarded: Vec<(&str, i64)> = log
            .iter()
            .filter_map(|e| match &e.change {
                Change::ReferralRewarded(r) => Some((r.referee_wallet_id.as_str(), e.recorded_at_ms)),
                _ => None,
            })
            .collect();
        prop_assert!(rewarded.iter().all(|(referee, _)| *referee != "w"), "{rewarded:?}");
        for referee in ["w2", "w4"] {
            let times: Vec<i64> = rewarded.iter().filter(|(r, _)| *r == referee).map(|(_, at)| *at).collect();
            prop_assert!(times.windows(2).all(|w| w[1] - w[0] > RECEIPT_RETENTION_MS), "rewarded twice: {rewarded:?}");
        }
        // The program's cap: refused, recorded so, beyond it.
        let given = log.iter().filter(|e| matches!(&e.change, Change::ReferralRewarded(r) if r.refused.is_empty())).count() as i64;
        prop_assert!(referral.max_rewards_per_referrer == 0 || given <= referral.max_rewards_per_referrer, "{given} rewards");
        prop_assert_eq!(state.referrals_rewarded, given);
        // The identifiers carried are those the log attached and did not detach, each detached only once attached.
        let mut carried = std::collections::BTreeMap::new();
        for event in &log {
            match &event.change {
                Change::IdentifierAttached(e) => prop_assert!(carried.insert(e.lookup.clone(), e.kind).is_none(), "attached twice"),
                Change::IdentifierDetached(e) => prop_assert!(carried.remove(&e.lookup).is_some(), "detached unattached"),
                _ => {}
            }
        }
        prop_assert_eq!(state.identifiers().map(|(l, k)| (l.to_owned(), k)).collect::<Vec<_>>(), carried.into_iter().collect::<Vec<_>>());
        // No source ever gives back more than it earned.
        let mut per_source: HashMap<&str, (i64, i64)> = HashMap::new();
        for event in &log {
            match &event.change {
                Change::Earned(e) => per_source.entry(&e.source_ref).or_default().0 += e.points,
                Change::Reversed(r) => per_source.entry(&r.source_ref).or_default().1 += r.requested_points,
                _ => {}
            }
        }
        for (source, (earned, reversed)) in per_source {
            prop_assert!(reversed <= earned, "{source}: reversed {reversed} of {earned}");
        }
        // Refunds never exceed an order's total. An order id earns again only once the wallet forgot
        // both its receipt and its source; refunds then count against the new order.
        let mut refunded: HashMap<&str, (i64, i64)> = HashMap::new();
        let mut earned_orders: HashMap<&str, (i64, i64)> = HashMap::new();
        for event in &log {
            match &event.change {
                Change::Earned(e) if e.order.is_some() => {
                    let at = event.recorded_at_ms;
                    if let Some((earned_at, until)) = earned_orders.insert(&e.source_ref, (at, e.refundable_until_ms)) {
                        prop_assert!(at > until && at - earned_at > RECEIPT_RETENTION_MS, "{} earned again at {at}", e.source_ref);
                    }
                    refunded.insert(&e.source_ref, (e.order_amount.as_ref().map_or(0, |m| m.amount_minor), 0));
                }
                Change::Reversed(r) => refunded.entry(&r.source_ref).or_default().1 += r.refund_amount_minor,
                _ => {}
            }
        }
        for (order, (total, refunds)) in refunded {
            prop_assert!(refunds <= total, "{order}: refunded {refunds} of {total}");
        }
        // Held points are the open holds, and follow from the log; spent holds count as redeemed.
        let open: i64 = state.holds().map(|(_, h)| h.points).sum();
        prop_assert_eq!(state.held_points, open);
        let held_by_log: i64 = log
            .iter()
            .map(|e| match &e.change {
                Change::Held(h) => h.points,
                Change::Captured(c) => -(c.points + c.released_points),
                Change::Released(r) => -r.points,
                _ => 0,
            })
            .sum();
        prop_assert_eq!(state.held_points, held_by_log);
        let redeemed: i64 = log
            .iter()
            .map(|e| match &e.change {
                Change::Redeemed(r) => r.points,
                Change::Captured(c) => c.points,
                // A cancelled catalogue redemption is a redemption of negative points.
                Change::RewardCancelled(c) => -c.points,
                _ => 0,
            })
            .sum();
        prop_assert_eq!(state.lifetime_redeemed, redeemed);
        // A catalogue redemption is cancelled at most once, and only one the wallet paid: its cancellation
        // (in parts, consecutive events) gives back exactly what it cost.
        let mut outstanding: HashMap<&str, i64> = HashMap::new();
        for (i, e) in log.iter().enumerate() {
            match &e.change {
                Change::Redeemed(r) if !r.redemption_id.is_empty() => {
                    outstanding.insert(r.redemption_id.as_str(), r.points);
                }
                Change::RewardCancelled(c) => {
                    let left = outstanding.get_mut(c.redemption_id.as_str());
                    prop_assert!(left.is_some(), "{} given back without being paid", c.redemption_id);
                    let left = left.expect("checked");
                    *left -= c.points;
                    prop_assert!(*left >= 0, "{} given back more than it cost", c.redemption_id);
                    let next_part = matches!(log.get(i + 1).map(|n| &n.change), Some(Change::RewardCancelled(n)) if n.redemption_id == c.redemption_id);
                    if !next_part {
                        prop_assert_eq!(*left, 0, "{} given back whole", c.redemption_id);
                        outstanding.remove(c.redemption_id.as_str());
                    }
                }
                _ => {}
            }
        }
        // Purchases: only active packages, at their points, and kept apart from earnings.
        let purchased: Vec<_> = log.iter().filter_map(|e| if let Change::Purchased(p) = &e.change { Some(p) } else { None }).collect();
        prop_assert!(purchased.iter().all(|p| p.package_id == "p-on" && p.points == 150));
        prop_assert_eq!(state.lifetime_purchased, purchased.iter().map(|p| p.points).sum::<i64>());
        // Every stamp is on the current card or on a completed one, and each completed card paid its reward.
        let given: i64 = log
            .iter()
            .map(|e| match &e.change {
                Change::Stamped(s) => s.count,
                Change::Earned(PointsEarned { order: Some(o), .. }) => o.awards.iter().flat_map(|a| &a.stamps).map(|s| s.count).sum(),
                _ => 0,
            })
            .sum();
        let card = state.stamp_cards().find(|(id, _)| *id == "coffee").map_or(StampCard::default(), |(_, c)| *c);
        prop_assert!((0..5).contains(&card.stamps), "{card:?}");
        prop_assert_eq!(card.stamps + 5 * card.completed, given);
        let rewarded: i64 = log.iter().map(|e| if let Change::CardCompleted(c) = &e.change { c.reward_points } else { 0 }).sum();
        prop_assert_eq!(rewarded, 50 * card.completed);
        // No more leaves in any 24 hours than the daily cap (a transfer given back not counted).
        if transfers.max_points_per_day > 0 {
            let returned: std::collections::HashSet<&str> = log
                .iter()
                .filter_map(|e| if let Change::TransferReturned(r) = &e.change { Some(r.transfer_id.as_str()) } else { None })
                .collect();
            let out: Vec<(i64, &str, i64)> = log
                .iter()
                .filter_map(|e| match &e.change {
                    Change::TransferredOut(o) => Some((e.recorded_at_ms, o.transfer_id.as_str(), o.points)),
                    _ => None,
                })
                .collect();
            for (at, _, _) in &out {
                let day: i64 =
                    out.iter().filter(|(t, id, _)| *t <= *at && *t > at - DAY && !returned.contains(id)).map(|(_, _, points)| points).sum();
                prop_assert!(day <= transfers.max_points_per_day, "{day} points out in the day before {at}");
            }
        }
        let expired: i64 = log.iter().map(|e| if let Change::Expired(x) = &e.change { x.points } else { 0 }).sum();
        prop_assert_eq!(state.lifetime_expired, expired);
        if state.status == WalletStatus::Closed {
            prop_assert_eq!(state.held_points, 0, "closing releases every hold");
            // Nothing after close but its customer's erasure, which a closed wallet still records.
            let last = log.iter().rev().find(|e| !matches!(e.change, Change::CustomerErased(_)));
            prop_assert!(matches!(last.map(|e| &e.change), Some(Change::Closed(_))), "nothing after close");
        }

        // Replaying the persisted form from scratch gives the same state as live handling.
        let stream = StreamId::new("t/wallet/w").unwrap();
        let mut replayed = WalletState::default();
        for (i, event) in log.iter().enumerate() {
            let recorded = RecordedEvent {
                stream_id: stream.clone(),
                stream_version: i as u64 + 1,
                global_position: i as u64 + 1,
                data: codec::encode(event, &EventMetadata::default()),
                links: None,
            };
            let decoded = codec::decode(recorded).unwrap();
            prop_assert_eq!(&decoded, event);
            apply(&mut replayed, &decoded);
        }
        prop_assert_eq!(replayed, state);
    }
}
