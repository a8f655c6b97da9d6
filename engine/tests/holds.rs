//! POS two-phase redemption, given/when/then: a hold takes points out of the available balance, a
//! capture spends them (all or part), a void or an expiry gives them back, and closing the wallet
//! releases what is still held. Then the engine's timers expiring a hold on their own.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{NOW, Wallet};
use tally_engine::actors::{CommandMeta, RegistryConfig, StaticPrograms, WalletKey, WalletRegistry, WalletTimers};
use tally_engine::clock::{Clock, ManualClock};
use tally_engine::domain::{Change, Command, CommandBody, Decision, FieldError, ProgramSettings, Rejection, TenantId, WalletId};
use tally_engine::store::InMemoryStore;
use tally_proto::v1::{HoldCaptured, HoldEnd, HoldReleased, LotPoints, PointsHeld, PointsRedeemed, WalletClosed};

const MINUTE: i64 = 60_000;

/// Enrolled, with 100 points.
fn funded() -> Wallet {
    let mut wallet = Wallet::enrolled(ProgramSettings::default());
    let earn = CommandBody::Earn { points: 100, reason: String::new(), source_ref: "o-1".into(), order_amount: None };
    wallet.run(Command::new("earn", earn)).unwrap();
    wallet
}

fn authorize(hold: &str, points: i64) -> Command {
    Command::new(
        hold,
        CommandBody::AuthorizeRedemption { hold_id: hold.into(), points, reward_ref: "coffee".into(), timeout_ms: 15 * MINUTE },
    )
}
fn capture(hold: &str, points: Option<i64>) -> Command {
    Command::capture_redemption(hold, points)
}
fn void(hold: &str) -> Command {
    Command::void_redemption(hold)
}
/// What the timers send: record whatever is due.
fn run_due(key: &str) -> Command {
    Command::new(key, CommandBody::RunDue)
}
fn redeem(key: &str, points: i64) -> Command {
    Command::new(key, CommandBody::Redeem { points, reward_ref: "mug".into() })
}
/// `points` of lot 2: the funding earn's.
fn lot2(points: i64) -> Vec<LotPoints> {
    vec![LotPoints { lot: 2, points }]
}
fn released(hold: &str, points: i64, reason: HoldEnd) -> Change {
    Change::Released(HoldReleased { hold_id: hold.into(), points, reason: reason as i32, lots: lot2(points) })
}

#[test]
fn a_hold_takes_points_out_of_the_available_balance_and_a_capture_spends_them() {
    let mut wallet = funded();
    let held = wallet.run(authorize("pos-1", 60)).unwrap();
    let expected =
        PointsHeld { hold_id: "pos-1".into(), points: 60, reward_ref: "coffee".into(), expires_at_ms: NOW + 15 * MINUTE, lots: lot2(60) };
    assert_eq!(held, [Change::Held(expected)]);
    assert_eq!((wallet.state.balance, wallet.state.held_points, wallet.state.available_at(NOW)), (100, 60, 40));
    assert_eq!(wallet.decide(&redeem("r-1", 41)), Err(Rejection::InsufficientPoints { available: 40, requested: 41 }));
    assert_eq!(wallet.decide(&authorize("pos-2", 41)), Err(Rejection::InsufficientPoints { available: 40, requested: 41 }));

    let captured = wallet.run(capture("pos-1", Some(50))).unwrap();
    let expected = HoldCaptured {
        inactivity_expires_at_ms: 0,
        hold_id: "pos-1".into(),
        points: 50,
        released_points: 10,
        reward_ref: "coffee".into(),
        lots: lot2(50),
        released_lots: lot2(10),
    };
    assert_eq!(captured, [Change::Captured(expected)]);
    assert_eq!((wallet.state.balance, wallet.state.held_points, wallet.state.lifetime_redeemed), (50, 0, 50));
    assert!(matches!(wallet.decide(&capture("pos-1", Some(50))), Ok(Decision::AlreadyApplied(_))), "a repeated capture");
    assert_eq!(wallet.decide(&void("pos-1")), Err(Rejection::NoOpenHold { hold_id: "pos-1".into() }), "captured already");
}

#[test]
fn a_void_or_an_expiry_gives_the_points_back() {
    let mut wallet = funded();
    wallet.run(authorize("pos-1", 30)).unwrap();
    wallet.run(authorize("pos-2", 30)).unwrap();
    assert_eq!(wallet.run(void("pos-1")).unwrap(), [released("pos-1", 30, HoldEnd::Voided)]);
    assert!(matches!(wallet.decide(&void("pos-1")), Ok(Decision::AlreadyApplied(_))), "a repeated void");

    assert_eq!(wallet.decide(&run_due("tally:due:1")), Err(Rejection::NothingDue { next_due_ms: Some(NOW + 15 * MINUTE) }));
    wallet.now += 15 * MINUTE;
    // Once its time has passed, the hold no longer counts and cannot be captured, even before the
    // timers record its expiry.
    assert_eq!(wallet.state.available_at(wallet.now), 100);
    assert_eq!(wallet.decide(&capture("pos-2", None)), Err(Rejection::HoldExpired { hold_id: "pos-2".into() }));
    assert_eq!(wallet.run(run_due("tally:due:2")).unwrap(), [released("pos-2", 30, HoldEnd::Expired)]);
    assert_eq!((wallet.state.balance, wallet.state.held_points), (100, 0));
    assert_eq!(wallet.decide(&run_due("tally:due:3")), Err(Rejection::NothingDue { next_due_ms: None }));
}

#[test]
fn any_command_records_an_expired_hold_first() {
    let mut wallet = funded();
    wallet.run(authorize("pos-1", 30)).unwrap();
    wallet.now += 15 * MINUTE;
    let changes = wallet.run(redeem("r-1", 100)).unwrap();
    let redeemed = Change::Redeemed(PointsRedeemed {
        inactivity_expires_at_ms: 0,
        points: 100,
        reward_ref: "mug".into(),
        redemption_id: String::new(),
        lots: lot2(100),
    });
    assert_eq!(changes, [released("pos-1", 30, HoldEnd::Expired), redeemed]);
    assert_eq!((wallet.state.balance, wallet.state.held_points), (0, 0));
}

#[test]
fn holds_are_checked_and_keyed_by_their_id() {
    let wallet = funded();
    assert_eq!(wallet.decide(&capture("nope", None)), Err(Rejection::NoOpenHold { hold_id: "nope".into() }));
    let keyed_otherwise = Command::new(
        "k",
        CommandBody::AuthorizeRedemption { hold_id: "pos-1".into(), points: 1, reward_ref: String::new(), timeout_ms: MINUTE },
    );
    assert_eq!(
        wallet.decide(&keyed_otherwise),
        Err(Rejection::InvalidField(FieldError::new("idempotency_key", "must be the hold id: a hold is authorized once")))
    );
    let forever = Command::new(
        "pos-1",
        CommandBody::AuthorizeRedemption { hold_id: "pos-1".into(), points: 1, reward_ref: String::new(), timeout_ms: 8 * 86_400_000 },
    );
    assert_eq!(wallet.decide(&forever), Err(Rejection::InvalidField(FieldError::new("timeout_seconds", "must be within 1..=604800"))));
    let mut held = funded();
    held.run(authorize("pos-1", 10)).unwrap();
    assert_eq!(
        held.decide(&capture("pos-1", Some(11))),
        Err(Rejection::CaptureExceedsHold { hold_id: "pos-1".into(), held: 10, requested: 11 })
    );
    let adjust = Command::new("a", CommandBody::Adjust { points: -95, reason: String::new(), staff_ref: "s".into() });
    assert_eq!(held.decide(&adjust), Err(Rejection::InsufficientPoints { available: 90, requested: 95 }), "staff cannot take held points");
}

#[test]
fn closing_the_wallet_releases_open_holds_first() {
    let mut wallet = funded();
    wallet.run(authorize("pos-b", 20)).unwrap();
    wallet.run(authorize("pos-a", 10)).unwrap();
    let changes = wallet.run(Command::new("close", CommandBody::Close { reason: "gdpr".into() })).unwrap();
    assert_eq!(
        changes,
        [
            released("pos-a", 10, HoldEnd::WalletClosed),
            released("pos-b", 20, HoldEnd::WalletClosed),
            Change::Closed(WalletClosed { reason: "gdpr".into(), forfeited_points: 100, lots: lot2(100), pending: vec![] }),
        ]
    );
    assert_eq!((wallet.state.held_points, wallet.state.balance, wallet.state.version), (0, 0, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timers_expire_an_uncaptured_hold_on_their_own_and_after_a_restart() {
    let store = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(NOW));
    let programs = Arc::new(StaticPrograms::open(ProgramSettings::default()));
    let registry = WalletRegistry::start(RegistryConfig::default(), store.clone(), programs.clone(), clock.clone()).await.unwrap();
    let key = WalletKey::new(TenantId::parse("acme").unwrap(), WalletId::parse("c-1").unwrap());
    let meta = CommandMeta::default;
    registry.execute(&key, Command::new("e", CommandBody::enroll(String::new())), meta()).await.unwrap();
    let earn = CommandBody::Earn { points: 100, reason: String::new(), source_ref: "o".into(), order_amount: None };
    registry.execute(&key, Command::new("o", earn), meta()).await.unwrap();
    registry.execute(&key, authorize("pos-1", 40), meta()).await.unwrap();
    registry.execute(&key, authorize("pos-2", 40), meta()).await.unwrap();
    registry.execute(&key, capture("pos-2", None), meta()).await.unwrap();

    // A node that went down with the hold open: new timers rebuild the index from the log.
    let timers = WalletTimers::spawn(store.clone(), registry.clone(), clock.clone() as Arc<dyn Clock>);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(registry.summary(&key).await.unwrap().held_points, 40, "not due yet");
    clock.advance_ms(15 * MINUTE);
    let mut held = 40;
    for _ in 0..50 {
        held = registry.summary(&key).await.unwrap().held_points;
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(held, 0, "expired within the timers' second");
    let summary = registry.summary(&key).await.unwrap();
    assert_eq!((summary.balance, summary.version), (60, 6), "one release, nothing else");
    timers.stop();
    registry.shutdown().await;
}

/// Issue 15, item 1: a retry after a hold whose id prefixes the retried key is still a retry.
#[test]
fn a_hold_forgets_no_receipt_but_its_own_capture_and_void() {
    let mut wallet = Wallet::enrolled(ProgramSettings::default());
    let earn = Command::new(
        "basket-1/earn",
        CommandBody::Earn { points: 100, reason: "order".into(), source_ref: "basket-1/earn".into(), order_amount: None },
    );
    wallet.run(earn.clone()).unwrap();
    wallet.run(authorize("basket-1", 10)).unwrap();
    assert!(matches!(wallet.decide(&earn), Ok(Decision::AlreadyApplied(_))), "the earn's retry is answered from its receipt");
    assert_eq!(wallet.state.balance, 100);
}

/// Issue 15, item 1: client keys and the keys the engine makes never share a space.
#[test]
fn client_keys_and_engine_keys_never_meet() {
    let mut wallet = funded();
    let key_error = |message: &str| Err(Rejection::InvalidField(FieldError::new("idempotency_key", message)));
    let earn =
        |key: &str| Command::new(key, CommandBody::Earn { points: 5, reason: String::new(), source_ref: "s".into(), order_amount: None });
    let reserved = "must not start with \"tally:\": such keys are the engine's";
    assert_eq!(wallet.decide(&earn("tally:capture:pos-1")), key_error(reserved));
    assert_eq!(wallet.decide(&earn("tally:due:1")), key_error(reserved));
    // A capture, a void and the timers' step take only the engine's keys.
    let client_keyed = Command::new("pos-1/capture", CommandBody::CaptureRedemption { hold_id: "pos-1".into(), points: None });
    assert_eq!(wallet.decide(&client_keyed), key_error("must be \"tally:capture:pos-1\""));
    let void = Command::new("tally:capture:pos-1", CommandBody::VoidRedemption { hold_id: "pos-1".into() });
    assert_eq!(wallet.decide(&void), key_error("must be \"tally:void:pos-1\""));
    assert_eq!(wallet.decide(&Command::new("k", CommandBody::RunDue)), key_error("must be an engine key for due transitions"));
    // Keys that only look like the engine's are a client's like any other.
    wallet.run(earn("pos-1/capture")).unwrap();
    wallet.run(authorize("pos-1", 10)).unwrap();
    assert!(matches!(wallet.decide(&earn("pos-1/capture")), Ok(Decision::AlreadyApplied(_))));
    wallet.run(capture("pos-1", None)).unwrap();
    assert!(matches!(wallet.decide(&capture("pos-1", None)), Ok(Decision::AlreadyApplied(_))));
}

/// Issue 15, item 8: a refund takes back what its source funded, held points included: the hold ends
/// first (reason REFUNDED), so the POS cannot capture what was refunded (it once kept both).
#[test]
fn a_refund_ends_the_holds_that_keep_its_points_and_the_capture_is_refused() {
    for policy in [tally_engine::domain::ReturnPolicy::CapAtZero, tally_engine::domain::ReturnPolicy::AllowNegative] {
        let mut wallet = Wallet::enrolled(ProgramSettings { return_policy: policy, ..ProgramSettings::default() });
        let earn = |key: &str, points| {
            Command::new(key, CommandBody::Earn { points, reason: "order".into(), source_ref: key.into(), order_amount: None })
        };
        wallet.run(earn("order-1", 100)).unwrap();
        wallet.run(earn("order-2", 30)).unwrap();
        wallet.run(authorize("pos-1", 100)).unwrap();
        let refund =
            Command::new("refund-1", CommandBody::Reverse { source_ref: "order-1".into(), points: None, reason: "returned".into() });
        let changes = wallet.run(refund).unwrap();
        assert!(
            matches!(&changes[0], Change::Released(HoldReleased { hold_id, points: 100, reason, .. })
                if hold_id == "pos-1" && *reason == HoldEnd::Refunded as i32),
            "{policy:?}: {changes:?}"
        );
        let Change::Reversed(reversed) = &changes[1] else { panic!("{changes:?}") };
        assert_eq!((reversed.reversed_points, reversed.shortfall_points), (100, 0), "{policy:?}");
        assert_eq!(wallet.run(capture("pos-1", None)), Err(Rejection::NoOpenHold { hold_id: "pos-1".into() }));
        assert_eq!((wallet.state.balance, wallet.state.held_points), (30, 0), "{policy:?}");
    }
}

/// A refund that what is available covers leaves the holds alone.
#[test]
fn a_refund_that_available_points_cover_leaves_holds_alone() {
    let mut wallet = funded();
    wallet.run(authorize("pos-1", 10)).unwrap();
    let reverse = Command::new("r", CommandBody::Reverse { source_ref: "o-1".into(), points: Some(5), reason: String::new() });
    let changes = wallet.run(reverse).unwrap();
    assert!(matches!(changes.as_slice(), [Change::Reversed(_)]), "{changes:?}");
    assert!(wallet.state.hold("pos-1").is_some());
}
