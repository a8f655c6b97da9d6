//! Tiers, given/when/then: qualifying points (earned less refunds) within the program's window move a
//! customer up at once; a review at the window's end, after the grace period, keeps the tier or moves
//! it down; a tier's multiplier is its own award; rules see the tier; `GetWallet` shows the progress.

mod common;

use std::sync::Arc;

use common::{NOW, POINT_PER_EURO, Wallet, order, rules};
use tally_engine::domain::program::{
    ProgramCommand, ProgramCommandBody, ProgramDecision, ProgramRejection, ProgramState, apply_program, decide_program,
};
use tally_engine::domain::tiers::{TierView, Tiers, view};
use tally_engine::domain::{Change, Command, CommandBody, FieldError, ProgramSettings, Rejection, ReturnPolicy, TenantId};
use tally_proto::v1::{TierChanged, TierDefinition, TierMove, TierReviewed, TierWindow};

const DAY: i64 = 86_400_000;
/// 2026-04-01T00:00Z, 2026-05-01T00:00Z, 2027-01-01T00:00Z, 2028-01-01T00:00Z.
const APRIL: i64 = 1_775_001_600_000;
const MAY: i64 = 1_777_593_600_000;
const Y2027: i64 = 1_798_761_600_000;
const Y2028: i64 = 1_830_297_600_000;

fn tier(id: &str, min: i64, pct: u32) -> TierDefinition {
    TierDefinition { tier_id: id.into(), name: id.to_uppercase(), min_qualifying_points: min, earn_multiplier_percent: pct }
}

/// Silver from 500 qualifying points, gold (earning 1.5x) from 2,000; one point per euro.
fn program(window: TierWindow, grace_days: u32) -> ProgramSettings {
    let tiers = Tiers { levels: Arc::new([tier("silver", 500, 0), tier("gold", 2_000, 150)]), window, grace_days };
    ProgramSettings { rule_versions: rules(POINT_PER_EURO), tiers, ..ProgramSettings::default() }
}

fn earn(key: &str, points: i64) -> Command {
    Command::new(key, CommandBody::Earn { points, reason: String::new(), source_ref: key.into(), order_amount: None })
}
fn run_due(key: &str) -> Command {
    Command::new(key, CommandBody::RunDue)
}
fn up(from: &str, to: &str, points: i64, next_review: i64) -> Change {
    Change::TierChanged(TierChanged {
        from_tier: from.into(),
        to_tier: to.into(),
        r#move: TierMove::Up as i32,
        qualifying_points: points,
        next_review_at_ms: next_review,
    })
}

#[test]
fn earning_past_a_threshold_moves_up_at_once() {
    let mut wallet = Wallet::enrolled(program(TierWindow::Rolling12Months, 0));
    assert_eq!(wallet.run(earn("o-1", 499)).unwrap().len(), 1, "just below silver");
    let changes = wallet.run(earn("o-2", 1)).unwrap();
    assert_eq!(changes[1..], [up("", "silver", 500, APRIL)], "in the same command, right after the earn");
    // Straight past a level: one move, to the highest reached.
    let mut rich = Wallet::enrolled(program(TierWindow::Rolling12Months, 0));
    assert_eq!(rich.run(earn("o-1", 5_000)).unwrap()[1..], [up("", "gold", 5_000, APRIL)]);
}

#[test]
fn a_rolling_tier_is_reviewed_every_month_and_drops_when_its_points_leave_the_window() {
    let mut wallet = Wallet::enrolled(program(TierWindow::Rolling12Months, 10));
    wallet.run(earn("o-1", 600)).unwrap();
    assert_eq!(wallet.state.tier.as_ref().map(|t| t.next_review_at_ms), Some(APRIL + 10 * DAY), "month end plus grace");
    wallet.now = APRIL + 10 * DAY - 1;
    assert_eq!(wallet.decide(&run_due("tally:due:1")), Err(Rejection::NothingDue { next_due_ms: Some(APRIL + 10 * DAY) }));
    wallet.now += 1;
    let kept = Change::TierReviewed(TierReviewed { tier: "silver".into(), qualifying_points: 600, next_review_at_ms: MAY + 10 * DAY });
    assert_eq!(wallet.run(run_due("tally:due:2")).unwrap(), [kept]);
    // March 2026's points count until the end of February 2027; the review in March 2027 moves down.
    wallet.now = NOW + 365 * DAY + 20 * DAY;
    let changes = wallet.run(run_due("tally:due:3")).unwrap();
    let down = changes.iter().find(|c| matches!(c, Change::TierChanged(_))).expect("a downgrade");
    let Change::TierChanged(down) = down else { unreachable!() };
    assert_eq!(
        (down.from_tier.as_str(), down.to_tier.as_str(), down.r#move, down.qualifying_points),
        ("silver", "", TierMove::Down as i32, 0)
    );
    assert_eq!(wallet.state.tier, None);
    assert!(changes[..changes.len() - 1].iter().all(|c| matches!(c, Change::TierReviewed(_))), "a review a month until then: {changes:?}");
}

#[test]
fn a_calendar_year_tier_holds_through_the_next_year() {
    let mut wallet = Wallet::enrolled(program(TierWindow::CalendarYear, 30));
    wallet.run(earn("o-1", 2_500)).unwrap();
    assert_eq!(wallet.state.tier.as_ref().map(|t| (t.tier_id.as_str(), t.next_review_at_ms)), Some(("gold", Y2027 + 30 * DAY)));
    // Reviewed after the grace period in 2027 against 2026's points: kept.
    wallet.now = Y2027 + 30 * DAY;
    let kept = Change::TierReviewed(TierReviewed { tier: "gold".into(), qualifying_points: 2_500, next_review_at_ms: Y2028 + 30 * DAY });
    assert_eq!(wallet.run(run_due("tally:due:1")).unwrap(), [kept]);
    // 2027 brought 600: the 2028 review moves down to silver.
    wallet.run(earn("o-2", 600)).unwrap();
    wallet.now = Y2028 + 30 * DAY;
    let changes = wallet.run(run_due("tally:due:2")).unwrap();
    let [Change::TierChanged(down)] = changes.as_slice() else { panic!("{changes:?}") };
    assert_eq!((down.to_tier.as_str(), down.r#move, down.qualifying_points), ("silver", TierMove::Down as i32, 600));
}

#[test]
fn refunds_take_qualifying_points_back_but_only_a_review_moves_down() {
    let mut wallet = Wallet::enrolled(program(TierWindow::Rolling12Months, 0));
    wallet.run(earn("o-1", 600)).unwrap();
    let reverse = CommandBody::Reverse { source_ref: "o-1".into(), points: Some(200), reason: String::new() };
    assert_eq!(wallet.run(Command::new("rev", reverse)).unwrap().len(), 1);
    assert_eq!(wallet.state.tier.as_ref().map(|t| t.tier_id.as_str()), Some("silver"));
    wallet.now = APRIL;
    let changes = wallet.run(run_due("tally:due:1")).unwrap();
    let [Change::TierChanged(down)] = changes.as_slice() else { panic!("{changes:?}") };
    assert_eq!((down.to_tier.as_str(), down.qualifying_points), ("", 400));
}

#[test]
fn gold_earns_its_multiplier_as_an_award_of_its_own_and_rules_see_the_tier() {
    let mut wallet = Wallet::enrolled(program(TierWindow::Rolling12Months, 0));
    wallet.run(earn("o-1", 2_000)).unwrap();
    let changes = wallet.run(order("order-1", 40, "home", None)).unwrap();
    let Change::Earned(earned) = &changes[0] else { panic!("{changes:?}") };
    let awards: Vec<(&str, i64)> = earned.order.as_ref().unwrap().awards.iter().map(|a| (a.rule_id.as_str(), a.points)).collect();
    assert_eq!(awards, [("base", 40), ("tier:gold", 20)]);
    assert_eq!(earned.points, 60);
    // Rules' customer_tier conditions see the customer's tier id.
    let json = r#"[{"id":"gold-bonus","conditions":{"type":"customer_tier","value":["gold"]},"actions":[{"type":"points","amount":7}]}]"#;
    wallet.program.rule_versions = rules(json);
    let changes = wallet.run(order("order-2", 1, "home", None)).unwrap();
    let Change::Earned(earned) = &changes[0] else { panic!("{changes:?}") };
    assert_eq!(earned.order.as_ref().unwrap().awards[0].rule_id, "gold-bonus");
}

#[test]
fn the_wallet_shows_its_tier_the_next_one_and_the_progress() {
    let program = program(TierWindow::Rolling12Months, 0);
    let mut wallet = Wallet::enrolled(program.clone());
    let shown = |w: &Wallet| view(&w.state, &program.tiers, w.now, 0).unwrap();
    let expected = |tier: &str, level, points, next: Option<(&str, i64)>, progress, review| TierView {
        tier_id: tier.into(),
        name: tier.to_uppercase(),
        level,
        qualifying_points: points,
        next: next.map(|(id, min)| (id.to_owned(), id.to_uppercase(), min)),
        progress_percent: progress,
        next_review_at_ms: review,
    };
    assert_eq!(shown(&wallet), expected("", 0, 0, Some(("silver", 500)), 0, 0));
    wallet.run(earn("o-1", 125)).unwrap();
    assert_eq!(shown(&wallet).progress_percent, 25);
    wallet.run(earn("o-2", 500)).unwrap();
    // 625 of the way from silver's 500 to gold's 2,000.
    assert_eq!(shown(&wallet), expected("silver", 1, 625, Some(("gold", 2_000)), 8, APRIL));
    wallet.run(earn("o-3", 5_000)).unwrap();
    assert_eq!(shown(&wallet), expected("gold", 2, 5_625, None, 100, APRIL));
    assert_eq!(view(&wallet.state, &Tiers::default(), NOW, 0), None, "a program without tiers shows none");
}

#[test]
fn tier_definitions_are_checked_field_by_field() {
    let tenant = TenantId::parse("acme").unwrap();
    let define = |tiers: Vec<TierDefinition>, window, grace_days| -> Result<ProgramState, ProgramRejection> {
        let mut state = ProgramState::default();
        let create = ProgramCommandBody::Create { name: "A".into(), utc_offset_minutes: 0, return_policy: ReturnPolicy::AllowNegative };
        let body = ProgramCommandBody::DefineTiers { tiers, window, grace_days, set_by: "ops".into() };
        for (i, body) in [create, body].into_iter().enumerate() {
            if let ProgramDecision::Append(events) =
                decide_program(&state, &tenant, &ProgramCommand { idempotency_key: format!("k{i}"), body }, NOW)?
            {
                events.iter().for_each(|e| apply_program(&mut state, e));
            }
        }
        Ok(state)
    };
    let field = |result: Result<ProgramState, ProgramRejection>| match result {
        Err(ProgramRejection::InvalidField(FieldError { field, .. })) => field.into_owned(),
        other => panic!("{other:?}"),
    };
    let rolling = TierWindow::Rolling12Months;
    assert_eq!(field(define(vec![tier("a", 10, 0), tier("b", 10, 0)], rolling, 0)), "tiers[1].min_qualifying_points");
    assert_eq!(field(define(vec![tier("a", 10, 0), tier("a", 20, 0)], rolling, 0)), "tiers[1].tier_id");
    assert_eq!(field(define(vec![tier("a b", 10, 0)], rolling, 0)), "tiers[0].tier_id");
    assert_eq!(field(define(vec![tier("a", -1, 0)], rolling, 0)), "tiers[0].min_qualifying_points");
    assert_eq!(field(define(vec![tier("a", 1, 50)], rolling, 0)), "tiers[0].earn_multiplier_percent");
    assert_eq!(field(define(vec![tier("a", 1, 0)], TierWindow::Unspecified, 0)), "window");
    assert_eq!(field(define(vec![tier("a", 1, 0)], rolling, 28)), "grace_days");
    assert_eq!(field(define((0..17).map(|i| tier(&format!("t{i}"), i, 0)).collect(), rolling, 0)), "tiers");
    let state = define(vec![tier("a", 1, 0)], TierWindow::CalendarYear, 60).unwrap();
    assert_eq!((state.settings().tiers.levels.len(), state.settings().tiers.grace_days), (1, 60));
}
