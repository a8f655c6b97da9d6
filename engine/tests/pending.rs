//! Pending points, given/when/then: points an order earns wait out the program's pending period (its
//! return window, counted from when the order reached the engine) before they can be spent; a refund meanwhile
//! cancels them; they mature at their time — recorded by the timers or before any later command — into
//! a lot, paying any debt first. Then the engine's timers maturing them on their own.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{NOW, POINT_PER_EURO, Wallet, order, rules};
use tally_engine::actors::{CommandMeta, RegistryConfig, StaticPrograms, WalletKey, WalletRegistry, WalletTimers};
use tally_engine::clock::{Clock, ManualClock};
use tally_engine::domain::program::{
    ProgramCommand, ProgramCommandBody, ProgramDecision, ProgramRejection, ProgramState, apply_program, decide_program,
};
use tally_engine::domain::{Change, Command, CommandBody, FieldError, ProgramSettings, Rejection, ReturnPolicy, TenantId, WalletId};
use tally_engine::store::InMemoryStore;
use tally_proto::v1::{LotOpened, LotPoints, PendingPoints, PointsEarned, PointsMatured};

const DAY: i64 = 86_400_000;

/// One point per euro; points from orders wait 14 days.
fn program() -> ProgramSettings {
    ProgramSettings { rule_versions: rules(POINT_PER_EURO), pending_days: 14, ..ProgramSettings::default() }
}

fn refund(key: &str, order_id: &str, euros: Option<i64>) -> Command {
    Command::new(key, CommandBody::RefundOrder { order_id: order_id.into(), amount_minor: euros.map(|e| e * 100), reason: String::new() })
}
fn redeem(key: &str, points: i64) -> Command {
    Command::new(key, CommandBody::Redeem { points, reward_ref: "mug".into() })
}
fn run_due(key: &str) -> Command {
    Command::new(key, CommandBody::RunDue)
}
fn earned(changes: &[Change]) -> &PointsEarned {
    changes.iter().find_map(|c| if let Change::Earned(e) = c { Some(e) } else { None }).expect("an earn")
}

#[test]
fn points_from_an_order_are_pending_until_the_return_window_closes() {
    let mut wallet = Wallet::enrolled(program());
    let changes = wallet.run(order("o-1", 100, "home", None)).unwrap();
    let e = earned(&changes);
    assert_eq!(
        (e.lot.as_ref(), e.pending.as_ref()),
        (None, Some(&PendingPoints { points: 100, available_at_ms: NOW + 14 * DAY, expires_at_ms: 0 }))
    );
    assert_eq!((wallet.state.balance, wallet.state.pending_points, wallet.state.available_at(NOW)), (100, 100, 0));
    assert_eq!(wallet.decide(&redeem("r-1", 1)), Err(Rejection::InsufficientPoints { available: 0, requested: 1 }));
    // Plain earns (the caller's own points) are available at once.
    let plain = CommandBody::Earn { points: 5, reason: String::new(), source_ref: "gift".into(), order_amount: None };
    wallet.run(Command::new("gift", plain)).unwrap();
    assert_eq!(wallet.state.available_at(NOW), 5);

    wallet.now = NOW + 14 * DAY - 1;
    assert_eq!(wallet.decide(&run_due("tally:due:1")), Err(Rejection::NothingDue { next_due_ms: Some(NOW + 14 * DAY) }));
    wallet.now += 1;
    assert_eq!(wallet.state.available_at(wallet.now), 105, "available from that instant, recorded or not");
    let matured = wallet.run(run_due("tally:due:2")).unwrap();
    let expected = PointsMatured {
        pending: 2,
        source_ref: "o-1".into(),
        points: 100,
        available_at_ms: NOW + 14 * DAY,
        // Joins the gift's lot: neither expires.
        lot: Some(LotOpened { points: 100, expires_at_ms: 0, lot: 3, notify_at_ms: 0, on_inactivity: false }),
    };
    assert_eq!(matured, [Change::Matured(expected)]);
    assert_eq!((wallet.state.balance, wallet.state.pending_points, wallet.state.available_at(wallet.now)), (105, 0, 105));
}

#[test]
fn a_refund_inside_the_window_cancels_pending_points_first() {
    let mut wallet = Wallet::enrolled(program());
    wallet.run(order("o-1", 100, "home", None)).unwrap();
    let changes = wallet.run(refund("ref-1", "o-1", Some(30))).unwrap();
    let [Change::Reversed(reversed)] = changes.as_slice() else { panic!("{changes:?}") };
    assert_eq!((reversed.reversed_points, &reversed.pending, &reversed.lots), (30, &vec![LotPoints { lot: 2, points: 30 }], &vec![]));
    assert_eq!((wallet.state.balance, wallet.state.pending_points), (70, 70));
    // Under CAP_AT_ZERO too: the order's own pending points can always be taken back.
    let mut capped = Wallet::enrolled(ProgramSettings { return_policy: ReturnPolicy::CapAtZero, ..program() });
    capped.run(order("o-1", 100, "home", None)).unwrap();
    let changes = capped.run(refund("ref-1", "o-1", None)).unwrap();
    let [Change::Reversed(reversed)] = changes.as_slice() else { panic!("{changes:?}") };
    assert_eq!((reversed.reversed_points, reversed.shortfall_points), (100, 0));
    assert_eq!((capped.state.balance, capped.state.pending_points, capped.state.next_due_ms()), (0, 0, None), "nothing left to mature");
}

/// Issue 15, item 16: a backdated `placed_at` (any caller may send one, up to 7 days back) chooses the
/// rules version and cap periods, never a shorter wait: the window runs from when the order arrived.
#[test]
fn the_window_counts_from_when_the_order_reached_the_engine() {
    let mut wallet = Wallet::enrolled(ProgramSettings { pending_days: 2, ..program() });
    let changes = wallet.run(order("o-1", 10, "home", Some(NOW - 3 * DAY))).unwrap();
    assert_eq!(earned(&changes).pending.as_ref().map(|p| p.available_at_ms), Some(NOW + 2 * DAY), "backdating skips no wait");
    assert_eq!(wallet.state.available_at(NOW), 0);
    let changes = wallet.run(order("o-2", 10, "home", Some(NOW - DAY))).unwrap();
    assert_eq!(earned(&changes).pending.as_ref().map(|p| p.available_at_ms), Some(NOW + 2 * DAY));
}

#[test]
fn matured_points_pay_a_debt_first_and_a_command_records_the_maturity_first() {
    let mut wallet = Wallet::enrolled(program());
    let gift = CommandBody::Earn { points: 50, reason: String::new(), source_ref: "gift".into(), order_amount: None };
    wallet.run(Command::new("gift", gift)).unwrap();
    wallet.run(redeem("r-1", 50)).unwrap();
    let reverse = CommandBody::Reverse { source_ref: "gift".into(), points: None, reason: String::new() };
    wallet.run(Command::new("rev", reverse)).unwrap();
    assert_eq!(wallet.state.debt, 50);
    wallet.run(order("o-1", 80, "home", None)).unwrap();
    wallet.now += 15 * DAY;
    let changes = wallet.run(redeem("r-2", 30)).unwrap();
    let Change::Matured(matured) = &changes[0] else { panic!("{changes:?}") };
    assert_eq!(matured.lot.as_ref().map(|l| l.points), Some(30), "50 of the 80 paid the debt");
    assert!(matches!(&changes[1], Change::Redeemed(r) if r.points == 30));
    assert_eq!((wallet.state.balance, wallet.state.debt), (0, 0));
}

#[test]
fn the_program_sets_the_period_for_points_earned_from_then_on() {
    let tenant = TenantId::parse("acme").unwrap();
    let run = |bodies: Vec<ProgramCommandBody>| -> Result<ProgramState, ProgramRejection> {
        let mut state = ProgramState::default();
        let create = ProgramCommandBody::Create { name: "A".into(), utc_offset_minutes: 0, return_policy: ReturnPolicy::AllowNegative };
        for (i, body) in std::iter::once(create).chain(bodies).enumerate() {
            if let ProgramDecision::Append(events) =
                decide_program(&state, &tenant, &ProgramCommand { idempotency_key: format!("k{i}"), body }, NOW)?
            {
                events.iter().for_each(|e| apply_program(&mut state, e));
            }
        }
        Ok(state)
    };
    let state = run(vec![ProgramCommandBody::SetPendingPeriod { days: 30, set_by: "ops".into() }]).unwrap();
    assert_eq!(state.settings().pending_days, 30);
    assert_eq!(
        run(vec![ProgramCommandBody::SetPendingPeriod { days: 366, set_by: "ops".into() }]),
        Err(ProgramRejection::InvalidField(FieldError::new("days", "must be at most 365")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timers_mature_pending_points_on_their_own() {
    let store = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(NOW));
    let programs = Arc::new(StaticPrograms::open(program()));
    let registry = WalletRegistry::start(RegistryConfig::default(), store.clone(), programs.clone(), clock.clone()).await.unwrap();
    let key = WalletKey::new(TenantId::parse("acme").unwrap(), WalletId::parse("c-1").unwrap());
    registry.execute(&key, Command::new("e", CommandBody::enroll(String::new())), CommandMeta::default()).await.unwrap();
    registry.execute(&key, order("o-1", 40, "home", None), CommandMeta::default()).await.unwrap();
    let timers = WalletTimers::spawn(store.clone(), registry.clone(), clock.clone() as Arc<dyn Clock>);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(registry.summary(&key).await.unwrap().pending_points, 40, "not due yet");
    clock.advance_ms(14 * DAY);
    let mut summary = registry.summary(&key).await.unwrap();
    for _ in 0..50 {
        if summary.version == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        summary = registry.summary(&key).await.unwrap();
    }
    assert_eq!((summary.version, summary.pending_points, summary.available_points, summary.balance), (3, 0, 40, 40));
    timers.stop();
    registry.shutdown().await;
}
