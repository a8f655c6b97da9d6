//! Retention, given/when/then: a wallet remembers an idempotency key for 30 days and a source (an order,
//! an earn) for the program's refund window, then forgets it, so a wallet that lives for years keeps a
//! state the size of its recent past. Within those times nothing changes: retries get their first
//! outcome, an order earns once, refunds find their order.

mod common;

use common::{NOW, POINT_PER_EURO, Wallet, order, rules};
use tally_engine::domain::capture_key;
use tally_engine::domain::program::{ProgramCommand, ProgramCommandBody, ProgramDecision, ProgramState, apply_program, decide_program};
use tally_engine::domain::{Change, Command, CommandBody, Decision, FieldError, ProgramSettings, Rejection, ReturnPolicy, TenantId};
use tally_engine::limits::{RECEIPT_RETENTION_MS, RETENTION_SWEEP_INTERVAL_MS};

const DAY: i64 = 86_400_000;

/// One point per euro, refunds for 30 days.
fn program(refund_window_days: u32) -> ProgramSettings {
    ProgramSettings { rule_versions: rules(POINT_PER_EURO), refund_window_days, ..ProgramSettings::default() }
}

fn earn(key: &str, points: i64, source: &str) -> Command {
    Command::new(key, CommandBody::Earn { points, reason: "bonus".into(), source_ref: source.into(), order_amount: None })
}

fn refund(key: &str, order_id: &str) -> Command {
    Command::new(key, CommandBody::RefundOrder { order_id: order_id.into(), amount_minor: None, reason: "returned".into() })
}

#[test]
fn a_retry_within_thirty_days_gets_the_first_outcome() {
    let mut wallet = Wallet::enrolled(program(30));
    wallet.run(earn("e-1", 10, "promo-1")).unwrap();
    wallet.now += 29 * DAY;
    wallet.run(earn("e-2", 5, "promo-2")).unwrap();
    let Ok(Decision::AlreadyApplied(receipt)) = wallet.decide(&earn("e-1", 10, "promo-1")) else { panic!("retry not recognised") };
    assert_eq!((receipt.first_version, receipt.balance_after, receipt.recorded_at_ms), (2, 10, NOW));
}

#[test]
fn after_thirty_days_a_key_is_forgotten_and_a_retry_is_a_new_command() {
    let mut wallet = Wallet::enrolled(program(30));
    wallet.run(earn("e-1", 10, "promo-1")).unwrap();
    // The first command a day past the retention sweeps it away.
    wallet.now += RECEIPT_RETENTION_MS + RETENTION_SWEEP_INTERVAL_MS;
    wallet.run(earn("e-2", 5, "promo-2")).unwrap();
    assert!(wallet.state.receipt("e-1").is_none());
    assert_eq!(wallet.state.receipt_count(), 1, "only e-2 is remembered");
    let changes = wallet.run(earn("e-1", 10, "promo-1")).unwrap();
    assert!(matches!(&changes[..], [Change::Earned(e)] if e.points == 10));
}

#[test]
fn an_order_earns_once_even_after_its_receipt_is_forgotten() {
    let mut wallet = Wallet::enrolled(program(90));
    wallet.run(order("o-1", 20, "shop", None)).unwrap();
    wallet.now += RECEIPT_RETENTION_MS + RETENTION_SWEEP_INTERVAL_MS;
    wallet.run(earn("e-1", 1, "promo")).unwrap();
    assert!(wallet.state.receipt("o-1").is_none());
    // The same order sent again, as an offline POS would, placed when it was, or stamped with the time
    // of the upload: the order's source still refuses it, and says why.
    for placed_at in [Some(NOW), None] {
        assert_eq!(wallet.run(order("o-1", 20, "shop", placed_at)), Err(Rejection::OrderAlreadyEarned { order_id: "o-1".into() }));
    }
    // Another order placed that long ago is simply too old.
    let late = wallet.decide(&order("o-2", 20, "shop", Some(NOW)));
    assert_eq!(late, Err(FieldError::new("order.placed_at", "is more than 7 days ago").into()));
    assert_eq!(wallet.state.balance, 21);
}

#[test]
fn refunds_are_taken_within_the_window_and_refused_after_it() {
    let mut wallet = Wallet::enrolled(program(30));
    wallet.run(order("o-1", 20, "shop", None)).unwrap();
    wallet.run(order("o-2", 40, "shop", None)).unwrap();
    // On the last day of the window the refund is taken.
    wallet.now += 30 * DAY;
    let changes = wallet.run(refund("r-1", "o-1")).unwrap();
    assert!(matches!(&changes[..], [Change::Reversed(r)] if r.reversed_points == 20));
    // A moment later the window is closed; the wallet still knows the order, and says so.
    wallet.now += 1;
    assert_eq!(
        wallet.run(refund("r-2", "o-2")),
        Err(Rejection::RefundWindowClosed { source_ref: "o-2".into(), closed_at_ms: NOW + 30 * DAY })
    );
    let reverse = Command::new("r-3", CommandBody::Reverse { source_ref: "o-2".into(), points: None, reason: "fraud".into() });
    assert_eq!(wallet.run(reverse), Err(Rejection::RefundWindowClosed { source_ref: "o-2".into(), closed_at_ms: NOW + 30 * DAY }));
    // After the next sweep it has forgotten the order.
    wallet.now += RETENTION_SWEEP_INTERVAL_MS;
    wallet.run(earn("e-1", 1, "promo")).unwrap();
    assert!(wallet.state.source("o-2").is_none());
    assert_eq!(wallet.run(refund("r-4", "o-2")), Err(Rejection::UnknownSource { source_ref: "o-2".into() }));
    // Points were never taken back past the window.
    assert_eq!(wallet.state.balance, 40 + 1);
}

#[test]
fn the_window_runs_from_when_the_order_arrived_and_covers_pending_points() {
    // A 7-day window, but points wait 14 days: refunds are taken until they mature. Both run from when
    // the order reached the engine, whatever its (backdated) placed_at says (issue 15, item 16).
    let mut wallet = Wallet::enrolled(ProgramSettings { pending_days: 14, ..program(7) });
    wallet.run(order("o-1", 20, "shop", Some(NOW - 3 * DAY))).unwrap();
    assert_eq!(wallet.state.source("o-1").unwrap().refundable_until_ms, NOW + 14 * DAY, "arrived + 14 days of pending");
    wallet.run(order("o-2", 20, "shop", Some(NOW - 3 * DAY))).unwrap();
    wallet.now += 14 * DAY - 1;
    let changes = wallet.run(refund("r-1", "o-1")).unwrap();
    assert!(matches!(&changes[..], [Change::Reversed(r)] if r.pending.iter().map(|p| p.points).sum::<i64>() == 20), "{changes:?}");
    wallet.now += 2;
    // o-2 matured (recorded before the refund); the window closed with it.
    assert!(matches!(wallet.run(refund("r-2", "o-2")), Err(Rejection::RefundWindowClosed { .. })));
}

#[test]
fn earns_from_one_source_keep_it_until_the_last_ones_window_closes() {
    let mut wallet = Wallet::enrolled(program(10));
    wallet.run(earn("e-1", 10, "campaign")).unwrap();
    wallet.now += 8 * DAY;
    wallet.run(earn("e-2", 10, "campaign")).unwrap();
    assert_eq!(wallet.state.source("campaign").unwrap().refundable_until_ms, NOW + 18 * DAY);
    wallet.now += 9 * DAY;
    let reverse = Command::new("r-1", CommandBody::Reverse { source_ref: "campaign".into(), points: Some(15), reason: "fraud".into() });
    assert!(wallet.run(reverse).is_ok(), "the later earn keeps the source open");
}

#[test]
fn a_wallet_that_lives_for_years_keeps_only_its_recent_past() {
    let mut wallet = Wallet::enrolled(program(90));
    // Five years, an order every 6 hours, a refund now and then.
    for n in 0..(5 * 365 * 4) {
        wallet.now += 6 * 3_600_000;
        wallet.run(order(&format!("o-{n}"), 10, "shop", None)).unwrap();
        if n % 10 == 9 {
            wallet.run(refund(&format!("r-{n}"), &format!("o-{}", n - 5))).unwrap();
        }
    }
    // 30 days of receipts (orders and refunds), 90 days of orders, each at most a day more.
    assert!((120..=(31 * 4 + 31 * 4 / 10 + 2)).contains(&wallet.state.receipt_count()), "{}", wallet.state.receipt_count());
    assert!((360..=91 * 4).contains(&wallet.state.source_count()), "{}", wallet.state.source_count());
}

#[test]
fn the_refund_window_is_a_program_setting() {
    let tenant = TenantId::parse("acme").unwrap();
    let mut program = ProgramState::default();
    let mut run = |body: ProgramCommandBody, key: &str| {
        let command = ProgramCommand { idempotency_key: key.into(), body };
        match decide_program(&program, &tenant, &command, NOW)? {
            ProgramDecision::Append(events) => events.iter().for_each(|e| apply_program(&mut program, e)),
            ProgramDecision::AlreadyApplied { .. } => {}
        }
        Ok::<_, tally_engine::domain::program::ProgramRejection>(program.clone())
    };
    let create = ProgramCommandBody::Create { name: "Acme".into(), utc_offset_minutes: 0, return_policy: ReturnPolicy::AllowNegative };
    let state = run(create, "create").unwrap();
    assert_eq!(state.settings().refund_window_days, 365, "a year until set");
    let state = run(ProgramCommandBody::SetRefundWindow { days: 30, set_by: "ops".into() }, "w-1").unwrap();
    assert_eq!(state.settings().refund_window_days, 30);
    for days in [0, 3_651] {
        let refused = run(ProgramCommandBody::SetRefundWindow { days, set_by: "ops".into() }, &format!("w-{days}"));
        assert!(matches!(&refused, Err(e) if e.to_string().contains("days")), "{refused:?}");
    }
}

#[test]
fn a_hold_id_used_again_after_its_receipt_is_forgotten_is_a_new_hold_to_capture() {
    let mut wallet = Wallet::enrolled(program(30));
    wallet.run(earn("e-1", 100, "promo")).unwrap();
    let authorize = || {
        let body = CommandBody::AuthorizeRedemption { hold_id: "pos-1".into(), points: 10, reward_ref: "cake".into(), timeout_ms: 7 * DAY };
        Command::new("pos-1", body)
    };
    let capture = || Command::capture_redemption("pos-1", None);
    wallet.run(authorize()).unwrap();
    // Captured six days later: its receipt outlives the authorization's by six days.
    wallet.now += 6 * DAY;
    wallet.run(capture()).unwrap();
    wallet.now = NOW + RECEIPT_RETENTION_MS + RETENTION_SWEEP_INTERVAL_MS;
    wallet.run(earn("e-2", 1, "promo-2")).unwrap();
    assert!(wallet.state.receipt("pos-1").is_none() && wallet.state.receipt(&capture_key("pos-1")).is_some());
    // The POS uses the id again: a new hold, whose capture is decided, not answered from the old one.
    wallet.run(authorize()).unwrap();
    let changes = wallet.run(capture()).unwrap();
    assert!(matches!(&changes[..], [Change::Captured(c)] if c.points == 10), "{changes:?}");
    assert_eq!((wallet.state.balance, wallet.state.held_points), (100 + 1 - 20, 0));
}

#[test]
fn an_earn_from_a_source_past_its_window_starts_it_afresh() {
    let mut wallet = Wallet::enrolled(program(1));
    wallet.run(earn("e-1", 10, "promo")).unwrap();
    // Past the window, in the same command that would forget the source: the old earn stays closed.
    wallet.now += DAY + 1;
    wallet.run(earn("e-2", 5, "promo")).unwrap();
    let source = wallet.state.source("promo").unwrap();
    assert_eq!((source.earned, source.reversible(), source.refundable_until_ms), (5, 5, NOW + 2 * DAY + 1));
    let reverse = Command::new("r-1", CommandBody::Reverse { source_ref: "promo".into(), points: Some(10), reason: "fraud".into() });
    assert!(matches!(wallet.run(reverse), Err(Rejection::ReversalExceedsEarned { reversible: 5, .. })));
}
