//! Given/when/then for earning by the program's rules (`EarnForOrder`) and refunding orders
//! (`RefundOrder`): breakdowns, rules versions, caps across orders, idempotency by order id, placement
//! times, and proportional refunds that never take back more than the order earned.

mod common;

use common::{NOW, Wallet};
use tally_engine::domain::program::RuleVersion;
use tally_engine::domain::rules::{Order, OrderLine, Period, RuleError, parse_rules, period_key};
use tally_engine::domain::{Change, Command, CommandBody, Decision, FieldError, ProgramSettings, Rejection, ReturnPolicy};
use tally_proto::v1::{CapPeriod, EarnReversed, EarnedByRule, PointsEarned};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

const BASE: &str = r#"{"id":"base","name":"1 point per euro","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]}"#;
const WELCOME: &str =
    r#"{"id":"welcome","conditions":{"type":"first_order"},"actions":[{"type":"points","amount":100,"reason":"welcome"}]}"#;
const DAILY_COFFEE: &str = r#"{"id":"coffee","conditions":{"type":"category","value":"coffee"},
    "actions":[{"type":"points","amount":20}],"caps":{"per_customer":{"points":30,"period":"day"}}}"#;

fn version(number: u32, from_ms: i64, json: &str) -> RuleVersion {
    RuleVersion {
        version: number,
        effective_from_ms: from_ms,
        published_by: "test".into(),
        rules_json: json.into(),
        rules: parse_rules(json).map(Into::into),
    }
}

fn program(versions: Vec<RuleVersion>) -> ProgramSettings {
    ProgramSettings { rule_versions: versions.into(), ..ProgramSettings::default() }
}

fn rules(docs: &[&str]) -> ProgramSettings {
    program(vec![version(1, 0, &format!("[{}]", docs.join(",")))])
}

fn order(id: &str, total_minor: i64) -> Order {
    Order {
        order_id: id.into(),
        total_minor,
        currency: "EUR".into(),
        channel: "pos".into(),
        store: "s-1".into(),
        lines: vec![OrderLine { sku: "latte".into(), category: "coffee".into(), quantity: 1, amount_minor: total_minor }],
        placed_at_ms: None,
    }
}

fn earn(order: Order) -> Command {
    Command::new(order.order_id.clone(), CommandBody::EarnForOrder { order })
}

fn refund(key: &str, order_id: &str, amount_minor: Option<i64>) -> Command {
    Command::new(key, CommandBody::RefundOrder { order_id: order_id.into(), amount_minor, reason: "returned".into() })
}

/// The tests' own views of what a wallet did.
trait Outcomes {
    fn earned(&mut self, order: Order) -> PointsEarned;
    fn refunded(&mut self, command: Command) -> EarnReversed;
}

impl Outcomes for Wallet {
    fn earned(&mut self, order: Order) -> PointsEarned {
        match self.run_one(earn(order)) {
            Ok(Change::Earned(e)) => e,
            other => panic!("not an earn: {other:?}"),
        }
    }

    fn refunded(&mut self, command: Command) -> EarnReversed {
        match self.run_one(command) {
            Ok(Change::Reversed(e)) => e,
            other => panic!("not a reversal: {other:?}"),
        }
    }
}

fn field(field: &'static str, reason: &str) -> Rejection {
    Rejection::InvalidField(FieldError::new(field, reason))
}

#[test]
fn an_order_earns_what_the_rules_award_with_the_breakdown_recorded() {
    let mut wallet = Wallet::enrolled(rules(&[BASE, WELCOME]));
    let earned = wallet.earned(order("order-1", 2_599));
    assert_eq!((earned.points, earned.source_ref.as_str()), (125, "order-1"));
    assert_eq!(earned.order_amount.as_ref().map(|m| (m.amount_minor, m.currency.as_str())), Some((2_599, "EUR")));
    let facts = earned.order.expect("order facts recorded");
    assert_eq!((facts.rules_version, facts.placed_at_ms, facts.channel.as_str(), facts.store.as_str()), (1, NOW, "pos", "s-1"));
    let award = |rule: &str, points, reason: &str| EarnedByRule {
        rule_id: rule.into(),
        points,
        capped_points: 0,
        reason: reason.into(),
        stamps: Vec::new(),
        cap_period: CapPeriod::Unspecified as i32,
        cap_period_key: 0,
    };
    assert_eq!(facts.awards, vec![award("base", 25, "1 point per euro"), award("welcome", 100, "welcome")]);
    assert_eq!((wallet.state.balance, wallet.state.lifetime_earned, wallet.state.orders_placed), (125, 125, 1));

    // The welcome bonus is for the first order only: the wallet counts its orders.
    assert_eq!(wallet.earned(order("order-2", 1_000)).points, 10);
    assert_eq!(wallet.state.orders_placed, 2);
}

#[test]
fn an_order_no_rule_rewards_is_still_recorded_and_counted() {
    let mut wallet = Wallet::enrolled(ProgramSettings::default());
    let earned = wallet.earned(order("order-1", 5_000));
    assert_eq!((earned.points, earned.order.as_ref().map(|o| o.rules_version)), (0, Some(0)), "no rules in force");
    let mut wallet = Wallet { program: rules(&[WELCOME]), ..wallet };
    assert_eq!(wallet.earned(order("order-2", 5_000)).points, 0, "the second order is not a first order");
}

#[test]
fn the_same_order_earns_once() {
    let mut wallet = Wallet::enrolled(rules(&[BASE]));
    wallet.earned(order("order-1", 1_000));
    assert!(matches!(wallet.decide(&earn(order("order-1", 1_000))), Ok(Decision::AlreadyApplied(r)) if r.balance_after == 10));
    assert_eq!(
        wallet.decide(&earn(order("order-1", 9_000))),
        Err(Rejection::IdempotencyKeyReused { key: "order-1".into() }),
        "same order id, other content"
    );
    let other_key = Command::new("k-1", CommandBody::EarnForOrder { order: order("order-2", 1_000) });
    assert_eq!(wallet.decide(&other_key), Err(field("idempotency_key", "must be the order id: an order earns once")));
}

#[test]
fn per_customer_caps_count_across_orders_and_reset_with_the_period() {
    let mut wallet = Wallet::enrolled(rules(&[DAILY_COFFEE]));
    let first = wallet.earned(order("o-1", 400));
    assert_eq!(first.points, 20);
    let award = &first.order.unwrap().awards[0];
    assert_eq!((award.cap_period, award.cap_period_key), (CapPeriod::Day as i32, period_key(Period::Day, NOW, 0)));
    let second = wallet.earned(order("o-2", 400));
    assert_eq!((second.points, second.order.unwrap().awards[0].capped_points), (10, 10), "30 a day: 20 + 10");
    assert_eq!(wallet.earned(order("o-3", 400)).points, 0);
    wallet.now += DAY;
    assert_eq!(wallet.earned(order("o-4", 400)).points, 20, "a new day, a new allowance");
    // An order placed yesterday (a POS that was offline) counts against yesterday's allowance.
    let late = Order { placed_at_ms: Some(NOW + HOUR), ..order("o-5", 400) };
    assert_eq!(wallet.earned(late).points, 0);
}

#[test]
fn placement_time_picks_the_rules_version_and_is_bounded() {
    let v1 = version(1, 0, &format!("[{BASE}]"));
    let v2 = version(2, NOW - HOUR, r#"[{"id":"double","actions":[{"type":"points_per_currency_unit","points":2,"unit_minor":100}]}]"#);
    let mut wallet = Wallet::enrolled(program(vec![v1, v2]));
    let earlier = wallet.earned(Order { placed_at_ms: Some(NOW - 2 * HOUR), ..order("o-1", 1_000) });
    assert_eq!((earlier.points, earlier.order.unwrap().rules_version), (10, 1), "placed before version 2");
    let now = wallet.earned(order("o-2", 1_000));
    assert_eq!((now.points, now.order.unwrap().rules_version), (20, 2));
    let too_old = Order { placed_at_ms: Some(NOW - 8 * DAY), ..order("o-3", 1_000) };
    assert_eq!(wallet.decide(&earn(too_old)), Err(field("order.placed_at", "is more than 7 days ago")));
    let future = Order { placed_at_ms: Some(NOW + HOUR), ..order("o-4", 1_000) };
    assert_eq!(wallet.decide(&earn(future)), Err(field("order.placed_at", "is in the future")));
    let skewed = Order { placed_at_ms: Some(NOW + 60_000), ..order("o-5", 1_000) };
    assert_eq!(wallet.earned(skewed).points, 20, "a minute of clock skew is fine");
}

#[test]
fn a_rules_version_that_no_longer_reads_stops_earning_rather_than_guessing() {
    let broken = RuleVersion { rules: Err(RuleError { path: "[0]".into(), message: "gone".into() }), ..version(1, 0, "[]") };
    let wallet = Wallet::enrolled(program(vec![broken]));
    assert_eq!(wallet.decide(&earn(order("o-1", 1_000))), Err(Rejection::RulesUnreadable { version: 1, reason: "[0]: gone".into() }));
}

#[test]
fn orders_are_validated_with_the_path_of_the_bad_field() {
    let wallet = Wallet::enrolled(rules(&[BASE]));
    let mut bad_line = order("o-1", 100);
    bad_line.lines.push(OrderLine { sku: "x".into(), category: String::new(), quantity: 0, amount_minor: 1 });
    let cases = [
        (Order { currency: "eur".into(), ..order("o-1", 100) }, "order.total.currency"),
        (Order { total_minor: -1, ..order("o-1", 100) }, "order.total.amount_minor"),
        (bad_line, "order.lines[1].quantity"),
        (Order { lines: vec![order("o-1", 1).lines[0].clone(); 201], ..order("o-1", 100) }, "order.lines"),
        (Order { store: "s\n1".into(), ..order("o-1", 100) }, "order.store"),
    ];
    for (order, path) in cases {
        match wallet.decide(&earn(order)) {
            Err(Rejection::InvalidField(e)) => assert_eq!(e.field, path),
            other => panic!("{path}: {other:?}"),
        }
    }
}

#[test]
fn refunds_take_back_in_proportion_and_exactly_all_at_the_end() {
    let mut wallet = Wallet::enrolled(rules(&[r#"{"id":"flat","actions":[{"type":"points","amount":10}]}"#]));
    wallet.earned(order("order-1", 300));
    let first = wallet.refunded(refund("r-1", "order-1", Some(100)));
    assert_eq!((first.requested_points, first.reversed_points, first.refund_amount_minor), (3, 3, 100), "10 × 100/300, rounded down");
    assert_eq!(wallet.refunded(refund("r-2", "order-1", Some(100))).reversed_points, 3, "6 due after 200 of 300, 3 taken already");
    assert_eq!(wallet.refunded(refund("r-3", "order-1", None)).reversed_points, 4, "the rest: all 10 taken back");
    assert_eq!((wallet.state.balance, wallet.state.lifetime_reversed), (0, 10));
    assert_eq!(
        wallet.decide(&refund("r-4", "order-1", Some(1))),
        Err(Rejection::RefundExceedsOrder { order_id: "order-1".into(), refundable_minor: 0, requested_minor: 1 })
    );
}

#[test]
fn refunds_never_take_back_more_than_the_order_earned_even_after_manual_reversals() {
    let mut wallet = Wallet::enrolled(rules(&[BASE]));
    wallet.earned(order("order-1", 10_000));
    let manual = Command::new("rev-1", CommandBody::Reverse { source_ref: "order-1".into(), points: Some(80), reason: "staff".into() });
    wallet.run(manual).unwrap();
    assert_eq!(wallet.refunded(refund("r-1", "order-1", Some(5_000))).reversed_points, 0, "50 due, 80 already taken back");
    assert_eq!(wallet.refunded(refund("r-2", "order-1", None)).reversed_points, 20, "100 in all");
    assert_eq!(wallet.state.source("order-1").map(|s| (s.reversed, s.refunded_minor)), Some((100, 10_000)));
}

#[test]
fn refunds_follow_the_return_policy_and_name_what_is_wrong() {
    let program = ProgramSettings { return_policy: ReturnPolicy::CapAtZero, ..rules(&[BASE]) };
    let mut wallet = Wallet::enrolled(program);
    wallet.earned(order("order-1", 10_000));
    wallet.run(Command::new("spend", CommandBody::Redeem { points: 90, reward_ref: "mug".into() })).unwrap();
    let refund_all = wallet.refunded(refund("r-1", "order-1", None));
    assert_eq!((refund_all.requested_points, refund_all.reversed_points, refund_all.shortfall_points), (100, 10, 90));
    assert_eq!(wallet.state.balance, 0);

    let plain = Command::new("e-1", CommandBody::Earn { points: 5, reason: "x".into(), source_ref: "manual-1".into(), order_amount: None });
    wallet.run(plain).unwrap();
    assert_eq!(wallet.decide(&refund("r-2", "manual-1", None)), Err(Rejection::NotAnOrder { source_ref: "manual-1".into() }));
    assert_eq!(wallet.decide(&refund("r-3", "nope", None)), Err(Rejection::UnknownSource { source_ref: "nope".into() }));
    assert_eq!(wallet.decide(&refund("r-4", "order-1", Some(0))), Err(field("amount_minor", "must be within 1..=1000000000000000")));
}

#[test]
fn period_keys_follow_the_programs_calendar() {
    // 2026-03-04 is day 20516 since 1970-01-01, in ISO week starting Monday 2026-03-02.
    assert_eq!(period_key(Period::Day, NOW, 0), 20_516);
    assert_eq!(period_key(Period::Week, NOW, 0), (20_514 + 3) / 7);
    assert_eq!(period_key(Period::Month, NOW, 0), 56 * 12 + 2);
    assert_eq!(period_key(Period::Year, NOW, 0), 2026);
    assert_eq!(period_key(Period::Lifetime, NOW, 0), 0);
    // 23:30 UTC on 31 December is already next year in UTC+1, and a leap day is in February.
    let new_year_eve = 1_767_223_800_000; // 2025-12-31T23:30:00Z
    assert_eq!((period_key(Period::Year, new_year_eve, 0), period_key(Period::Year, new_year_eve, 60)), (2025, 2026));
    assert_eq!(period_key(Period::Month, 1_709_164_800_000, 0), 54 * 12 + 1, "2024-02-29");
    assert_eq!(
        period_key(Period::Week, 1_772_409_600_000 - 1, 0) + 1,
        period_key(Period::Week, 1_772_409_600_000, 0),
        "Monday starts a week"
    );
}
