//! Lots and expiry, given/when/then: every credit opens a lot (or joins one that expires with it), debits
//! take soonest-expiring points first, what is left of a lot expires at its time — recorded by the
//! timers or before any later command, never early, never late — and held points wait out their hold.
//! Then the engine's timers expiring a lot on their own.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{NOW, Wallet};
use tally_engine::actors::{CommandMeta, RegistryConfig, StaticPrograms, WalletKey, WalletRegistry, WalletTimers};
use tally_engine::clock::{Clock, ManualClock};
use tally_engine::domain::program::{
    ProgramCommand, ProgramCommandBody, ProgramDecision, ProgramRejection, ProgramState, apply_program, decide_program,
};
use tally_engine::domain::{Change, Command, CommandBody, FieldError, ProgramSettings, Rejection, ReturnPolicy, TenantId, WalletId};
use tally_engine::store::InMemoryStore;
use tally_proto::v1::expiry_policy::Rule;
use tally_proto::v1::{
    ExpireAfter, ExpireAfterInactivity, ExpireOnDate, ExpiryPolicy, HoldEnd, HoldReleased, LotOpened, LotPoints, PointsEarned,
    PointsExpired, PointsExpiringSoon, PointsRedeemed,
};

const MINUTE: i64 = 60_000;
const DAY: i64 = 1_440 * MINUTE;

/// Earned points expire 30 days after they are credited.
fn thirty_days() -> ProgramSettings {
    let expiry = ExpiryPolicy { notice_days: 0, rule: Some(Rule::After(ExpireAfter { months: 0, days: 30, at_month_end: false })) };
    ProgramSettings { expiry, ..ProgramSettings::default() }
}

fn earn(key: &str, points: i64) -> Command {
    Command::new(key, CommandBody::Earn { points, reason: "order".into(), source_ref: key.into(), order_amount: None })
}
fn redeem(key: &str, points: i64) -> Command {
    Command::new(key, CommandBody::Redeem { points, reward_ref: "mug".into() })
}
fn run_due(key: &str) -> Command {
    Command::new(key, CommandBody::RunDue)
}
fn lot(lot: u64, points: i64) -> LotPoints {
    LotPoints { lot, points }
}
fn expired(lot: u64, points: i64, at: i64) -> Change {
    Change::Expired(PointsExpired { lot, points, expired_at_ms: at })
}

/// Enrolled at NOW with 100 points earned at NOW (lot 2, expires NOW + 30 days) and 50 earned a day
/// later (lot 3, expires a day after lot 2).
fn two_lots() -> Wallet {
    let mut wallet = Wallet::enrolled(thirty_days());
    wallet.run(earn("o-1", 100)).unwrap();
    wallet.now += DAY;
    wallet.run(earn("o-2", 50)).unwrap();
    wallet
}

#[test]
fn each_credit_opens_a_lot_with_the_policys_expiry() {
    let mut wallet = Wallet::enrolled(thirty_days());
    let changes = wallet.run(earn("o-1", 100)).unwrap();
    let Change::Earned(PointsEarned { lot: Some(opened), .. }) = &changes[0] else { panic!("{changes:?}") };
    assert_eq!(*opened, LotOpened { points: 100, expires_at_ms: NOW + 30 * DAY, lot: 2, notify_at_ms: 0, on_inactivity: false });
    assert_eq!(wallet.state.upcoming_expiries(wallet.now, 5), [(NOW + 30 * DAY, 100)]);
    // No policy: points never expire, and they all go into one lot.
    let mut forever = Wallet::enrolled(ProgramSettings::default());
    forever.run(earn("o-1", 10)).unwrap();
    let changes = forever.run(earn("o-2", 20)).unwrap();
    let Change::Earned(PointsEarned { lot: Some(opened), .. }) = &changes[0] else { panic!("{changes:?}") };
    assert_eq!(
        *opened,
        LotOpened { points: 20, expires_at_ms: 0, lot: 2, notify_at_ms: 0, on_inactivity: false },
        "joins the open lot that never expires either"
    );
    assert_eq!(forever.state.lots().count(), 1);
    assert!(forever.state.upcoming_expiries(NOW, 5).is_empty());
}

#[test]
fn points_that_expire_together_share_a_lot() {
    let month_end = ExpiryPolicy { notice_days: 0, rule: Some(Rule::After(ExpireAfter { months: 0, days: 0, at_month_end: true })) };
    let mut wallet = Wallet::enrolled(ProgramSettings { expiry: month_end, ..ProgramSettings::default() });
    wallet.run(earn("o-1", 10)).unwrap();
    wallet.now += DAY;
    let changes = wallet.run(earn("o-2", 20)).unwrap();
    // NOW is 4 March 2026: both expire when March ends.
    let Change::Earned(PointsEarned { lot: Some(opened), .. }) = &changes[0] else { panic!("{changes:?}") };
    assert_eq!((opened.lot, opened.expires_at_ms), (2, 1_775_001_600_000), "2026-04-01T00:00Z");
    assert_eq!(wallet.state.upcoming_expiries(wallet.now, 5), [(1_775_001_600_000, 30)]);
}

#[test]
fn redemptions_spend_the_soonest_expiring_points_first() {
    let mut wallet = two_lots();
    let changes = wallet.run(redeem("r-1", 120)).unwrap();
    assert_eq!(
        changes,
        [Change::Redeemed(PointsRedeemed {
            inactivity_expires_at_ms: 0,
            points: 120,
            reward_ref: "mug".into(),
            lots: vec![lot(2, 100), lot(3, 20)],
            redemption_id: String::new(),
        })]
    );
    assert_eq!(wallet.state.lots().map(|(id, l)| (id, l.points)).collect::<Vec<_>>(), [(3, 30)], "an emptied lot is gone");
}

#[test]
fn a_lot_expires_at_its_time_not_a_millisecond_before() {
    let mut wallet = two_lots();
    wallet.run(redeem("r-1", 40)).unwrap();
    wallet.now = NOW + 30 * DAY - 1;
    assert_eq!(wallet.decide(&run_due("tally:due:1")), Err(Rejection::NothingDue { next_due_ms: Some(NOW + 30 * DAY) }));
    assert_eq!(wallet.state.available_at(wallet.now), 110);
    wallet.now += 1;
    // Due but not yet recorded: no longer available, whoever asks.
    assert_eq!(wallet.state.available_at(wallet.now), 50);
    assert_eq!(wallet.run(run_due("tally:due:2")).unwrap(), [expired(2, 60, NOW + 30 * DAY)]);
    assert_eq!((wallet.state.balance, wallet.state.lifetime_expired), (50, 60));
    assert_eq!(wallet.state.next_due_ms(), Some(NOW + 31 * DAY));
}

#[test]
fn any_command_records_what_expired_before_it() {
    let mut wallet = two_lots();
    wallet.now = NOW + 31 * DAY + 5;
    // Both lots are past their time: the redemption cannot spend them.
    assert_eq!(wallet.decide(&redeem("r-1", 1)), Err(Rejection::InsufficientPoints { available: 0, requested: 1 }));
    let changes = wallet.run(earn("o-3", 7)).unwrap();
    assert_eq!(changes.len(), 3);
    assert_eq!(changes[..2], [expired(2, 100, NOW + 30 * DAY), expired(3, 50, NOW + 31 * DAY)]);
    assert!(matches!(&changes[2], Change::Earned(PointsEarned { points: 7, .. })));
    assert_eq!(wallet.state.balance, 7);
    // The whole decision is one command: a retry returns it and records nothing more.
    assert!(
        matches!(wallet.decide(&earn("o-3", 7)), Ok(tally_engine::domain::Decision::AlreadyApplied(r)) if r.last_version - r.first_version == 2)
    );
}

#[test]
fn held_points_wait_for_their_hold_and_expire_if_it_is_released_too_late() {
    let mut wallet = two_lots();
    let authorize = Command::new(
        "pos-1",
        CommandBody::AuthorizeRedemption { hold_id: "pos-1".into(), points: 80, reward_ref: "tv".into(), timeout_ms: 7 * DAY },
    );
    wallet.now = NOW + 29 * DAY;
    wallet.run(authorize).unwrap();
    assert_eq!(wallet.state.hold("pos-1").unwrap().lots, [(2, 80)]);
    wallet.now = NOW + 30 * DAY;
    // Only the unheld 20 of lot 2 expire; the 80 held stay with the hold.
    assert_eq!(wallet.run(run_due("tally:due:1")).unwrap(), [expired(2, 20, NOW + 30 * DAY)]);
    assert_eq!((wallet.state.balance, wallet.state.held_points), (130, 80));
    wallet.now = NOW + 31 * DAY;
    assert_eq!(wallet.run(run_due("tally:due:2")).unwrap(), [expired(3, 50, NOW + 31 * DAY)]);
    // Voided after its lot's time: the points go back to lot 2, past its time, and expire in the same
    // command.
    let changes = wallet.run(Command::void_redemption("pos-1")).unwrap();
    let voided = HoldReleased { hold_id: "pos-1".into(), points: 80, reason: HoldEnd::Voided as i32, lots: vec![lot(2, 80)] };
    assert_eq!(changes, [Change::Released(voided), expired(2, 80, NOW + 30 * DAY)]);
    assert_eq!(wallet.decide(&run_due("tally:due:3")), Err(Rejection::NothingDue { next_due_ms: None }));
    assert_eq!((wallet.state.balance, wallet.state.lifetime_expired, wallet.state.lots().count()), (0, 150, 0));
}

#[test]
fn a_refund_takes_its_own_orders_points_first_and_credits_pay_a_debt_first() {
    let mut wallet = two_lots();
    wallet.run(redeem("r-1", 120)).unwrap();
    // Order o-2's lot (3) holds 30; the refund takes those, and the other 20 become a debt.
    let changes = wallet.run(Command::new("ref-1", CommandBody::Reverse { source_ref: "o-2".into(), points: None, reason: String::new() }));
    let Ok([Change::Reversed(reversed)]) = changes.as_deref() else { panic!("{changes:?}") };
    assert_eq!((reversed.reversed_points, reversed.lots.clone()), (50, vec![lot(3, 30)]));
    assert_eq!((wallet.state.balance, wallet.state.debt, wallet.state.lots().count()), (-20, 20, 0));
    let changes = wallet.run(earn("o-3", 25)).unwrap();
    let Change::Earned(PointsEarned { lot: Some(opened), .. }) = &changes[0] else { panic!("{changes:?}") };
    assert_eq!(opened.points, 5, "20 of the 25 paid the debt");
    assert_eq!((wallet.state.balance, wallet.state.debt), (5, 0));
}

#[test]
fn purchased_points_never_expire_and_are_spent_last() {
    let mut program = thirty_days();
    let package = tally_engine::domain::CreditPackageDefined {
        package_id: "p".into(),
        name: "p".into(),
        price: Some(tally_engine::domain::Money { amount_minor: 500, currency: "EUR".into() }),
        points: 40,
        active: true,
    };
    program.packages = Arc::new([("p".to_owned(), package)].into_iter().collect());
    let mut wallet = Wallet::enrolled(program);
    wallet.run(Command::new("pay-1", CommandBody::PurchaseCredits { purchase_id: "pay-1".into(), package_id: "p".into() })).unwrap();
    wallet.run(earn("o-1", 10)).unwrap();
    let changes = wallet.run(redeem("r-1", 15)).unwrap();
    assert_eq!(
        changes,
        [Change::Redeemed(PointsRedeemed {
            inactivity_expires_at_ms: 0,
            points: 15,
            reward_ref: "mug".into(),
            lots: vec![lot(3, 10), lot(2, 5)],
            redemption_id: String::new(),
        })]
    );
    wallet.now += 3_650 * DAY;
    assert_eq!(wallet.decide(&run_due("tally:due:1")), Err(Rejection::NothingDue { next_due_ms: None }));
    assert_eq!(wallet.state.available_at(wallet.now), 35);
}

#[test]
fn closing_forfeits_every_lot() {
    let mut wallet = two_lots();
    let changes = wallet.run(Command::new("close", CommandBody::Close { reason: String::new() })).unwrap();
    let [Change::Closed(closed)] = changes.as_slice() else { panic!("{changes:?}") };
    assert_eq!((closed.forfeited_points, closed.lots.clone()), (150, vec![lot(2, 100), lot(3, 50)]));
    assert_eq!(wallet.state.next_due_ms(), None);
}

fn program(commands: &[ProgramCommandBody]) -> Result<ProgramState, ProgramRejection> {
    let tenant = TenantId::parse("acme").unwrap();
    let mut state = ProgramState::default();
    let create = ProgramCommandBody::Create { name: "Acme".into(), utc_offset_minutes: 60, return_policy: ReturnPolicy::AllowNegative };
    for (i, body) in std::iter::once(create).chain(commands.iter().cloned()).enumerate() {
        let command = ProgramCommand { idempotency_key: format!("k{i}"), body };
        if let ProgramDecision::Append(events) = decide_program(&state, &tenant, &command, NOW)? {
            events.iter().for_each(|e| apply_program(&mut state, e));
        }
    }
    Ok(state)
}

#[test]
fn the_program_sets_the_policy_for_points_credited_from_then_on() {
    let on_date = ExpiryPolicy { notice_days: 0, rule: Some(Rule::OnDate(ExpireOnDate { month: 12, day: 31, years_later: 1 })) };
    let set = |policy: ExpiryPolicy| ProgramCommandBody::SetExpiryPolicy { policy, set_by: "ops".into() };
    let state = program(&[set(on_date)]).unwrap();
    assert_eq!(state.settings().expiry, on_date);
    let mut wallet = Wallet::enrolled(state.settings());
    let changes = wallet.run(earn("o-1", 10)).unwrap();
    let Change::Earned(PointsEarned { lot: Some(opened), .. }) = &changes[0] else { panic!("{changes:?}") };
    assert_eq!(opened.expires_at_ms, 1_830_294_000_000, "the end of 31 December 2027 in UTC+1");
    // Points never expire again for new credits; the lot already given keeps its date.
    wallet.program = program(&[set(on_date), set(ExpiryPolicy::default())]).unwrap().settings();
    wallet.run(earn("o-2", 5)).unwrap();
    assert_eq!(wallet.state.upcoming_expiries(wallet.now, 5), [(1_830_294_000_000, 10)]);
    let bad = ExpiryPolicy { notice_days: 0, rule: Some(Rule::OnDate(ExpireOnDate { month: 2, day: 30, years_later: 11 })) };
    assert_eq!(
        program(&[set(bad)]),
        Err(ProgramRejection::InvalidField(FieldError::new("policy.on_date.years_later", "must be at most 10")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timers_expire_a_lot_on_their_own_and_after_a_restart() {
    let store = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(NOW));
    let programs = Arc::new(StaticPrograms::open(thirty_days()));
    let registry = WalletRegistry::start(RegistryConfig::default(), store.clone(), programs.clone(), clock.clone()).await.unwrap();
    let key = WalletKey::new(TenantId::parse("acme").unwrap(), WalletId::parse("c-1").unwrap());
    let meta = CommandMeta::default;
    registry.execute(&key, Command::new("e", CommandBody::enroll(String::new())), meta()).await.unwrap();
    registry.execute(&key, earn("o-1", 100), meta()).await.unwrap();
    registry.execute(&key, redeem("r-1", 30), meta()).await.unwrap();
    clock.advance_ms(DAY);
    registry.execute(&key, earn("o-2", 50), meta()).await.unwrap();

    let timers = WalletTimers::spawn(store.clone(), registry.clone(), clock.clone() as Arc<dyn Clock>);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(registry.summary(&key).await.unwrap().lifetime_expired, 0, "not due yet");
    clock.advance_ms(29 * DAY);
    let mut summary = registry.summary(&key).await.unwrap();
    for _ in 0..50 {
        if summary.lifetime_expired > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        summary = registry.summary(&key).await.unwrap();
    }
    assert_eq!((summary.lifetime_expired, summary.balance, summary.version), (70, 50, 5), "lot 2's 70, one event");
    assert_eq!(summary.upcoming_expiries, [(NOW + 31 * DAY, 50)]);
    timers.stop();

    // A node that was down when lot 3 came due: new timers rebuild the index from the log.
    clock.advance_ms(2 * DAY);
    let timers = WalletTimers::spawn(store.clone(), registry.clone(), clock.clone() as Arc<dyn Clock>);
    for _ in 0..50 {
        summary = registry.summary(&key).await.unwrap();
        if summary.lifetime_expired == 120 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((summary.lifetime_expired, summary.balance, summary.version), (120, 0, 6));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(registry.summary(&key).await.unwrap().version, 6, "nothing more is due: the timers stay quiet");
    timers.stop();
    registry.shutdown().await;
}

#[test]
fn the_customer_is_told_before_points_expire_once_per_lot() {
    let mut program = thirty_days();
    program.expiry.notice_days = 7;
    let mut wallet = Wallet::enrolled(program);
    let changes = wallet.run(earn("o-1", 100)).unwrap();
    let Change::Earned(PointsEarned { lot: Some(opened), .. }) = &changes[0] else { panic!("{changes:?}") };
    assert_eq!(opened.notify_at_ms, NOW + 23 * DAY);
    assert_eq!(wallet.state.next_due_ms(), Some(NOW + 23 * DAY), "the notice comes before the expiry");
    wallet.now = NOW + 23 * DAY;
    let notice = Change::ExpiringSoon(PointsExpiringSoon { lot: 2, points: 100, expires_at_ms: NOW + 30 * DAY });
    assert_eq!(wallet.run(run_due("tally:due:1")).unwrap(), [notice]);
    assert_eq!((wallet.state.balance, wallet.state.next_due_ms()), (100, Some(NOW + 30 * DAY)), "told once; nothing else changes");
    // A later credit opens a lot of its own, with its own notice.
    wallet.now = NOW + 25 * DAY;
    let changes = wallet.run(earn("o-2", 5)).unwrap();
    let Change::Earned(PointsEarned { lot: Some(opened), .. }) = &changes[0] else { panic!("{changes:?}") };
    assert_eq!((opened.lot, opened.notify_at_ms), (4, NOW + 48 * DAY));
    // Credited inside the notice period already (points expire at the end of 10 March, NOW is 4 March):
    // no notice for that lot.
    let soon = ExpiryPolicy { notice_days: 7, rule: Some(Rule::OnDate(ExpireOnDate { month: 3, day: 10, years_later: 0 })) };
    let mut wallet = Wallet::enrolled(ProgramSettings { expiry: soon, ..ProgramSettings::default() });
    let changes = wallet.run(earn("o-1", 10)).unwrap();
    let Change::Earned(PointsEarned { lot: Some(opened), .. }) = &changes[0] else { panic!("{changes:?}") };
    assert_eq!(opened.notify_at_ms, 0);
}

#[test]
fn under_an_inactivity_policy_everything_expires_once_the_customer_stops() {
    let inactivity = ExpiryPolicy { notice_days: 0, rule: Some(Rule::Inactivity(ExpireAfterInactivity { months: 6 })) };
    let package = tally_engine::domain::CreditPackageDefined {
        package_id: "p".into(),
        name: "p".into(),
        price: Some(tally_engine::domain::Money { amount_minor: 500, currency: "EUR".into() }),
        points: 40,
        active: true,
    };
    let packages = Arc::new([("p".to_owned(), package)].into_iter().collect());
    let mut wallet = Wallet::enrolled(ProgramSettings { expiry: inactivity, packages, ..ProgramSettings::default() });
    let changes = wallet.run(earn("o-1", 100)).unwrap();
    let Change::Earned(earned) = &changes[0] else { panic!("{changes:?}") };
    // 2026-03-04T15:00Z plus six months.
    let september = 1_788_534_000_000;
    assert_eq!((earned.inactivity_expires_at_ms, earned.lot.map(|l| (l.expires_at_ms, l.on_inactivity))), (september, Some((0, true))));
    wallet.run(Command::new("pay-1", CommandBody::PurchaseCredits { purchase_id: "pay-1".into(), package_id: "p".into() })).unwrap();
    // Three months on, a redemption is activity: the deadline moves; a staff adjustment is not.
    wallet.now = NOW + 92 * DAY;
    let changes = wallet.run(redeem("r-1", 10)).unwrap();
    let Change::Redeemed(redeemed) = &changes[0] else { panic!("{changes:?}") };
    let december = 1_796_396_400_000;
    assert_eq!(redeemed.inactivity_expires_at_ms, december, "2026-12-04T15:00Z");
    wallet.now = NOW + 100 * DAY;
    wallet.run(Command::new("a-1", CommandBody::Adjust { points: 5, reason: String::new(), staff_ref: "s".into() })).unwrap();
    assert_eq!(wallet.state.upcoming_expiries(wallet.now, 5), [(december, 95)]);
    wallet.now = december - 1;
    assert_eq!(wallet.decide(&run_due("tally:due:1")), Err(Rejection::NothingDue { next_due_ms: Some(december) }));
    wallet.now = december;
    let changes = wallet.run(run_due("tally:due:2")).unwrap();
    assert_eq!(changes, [expired(2, 95, december)], "the earned lot (the adjustment joined it); the purchase stays");
    assert_eq!((wallet.state.balance, wallet.state.next_due_ms()), (40, None));
    // A goodwill credit to the lapsed wallet restarts its clock: it is spendable, for six months.
    wallet.now = december + 10 * DAY;
    let changes =
        wallet.run(Command::new("a-2", CommandBody::Adjust { points: 30, reason: String::new(), staff_ref: "s".into() })).unwrap();
    let Change::Adjusted(adjusted) = &changes[0] else { panic!("{changes:?}") };
    let june = 1_812_985_200_000;
    assert_eq!(adjusted.inactivity_expires_at_ms, june, "2027-06-14T15:00Z");
    assert_eq!(wallet.state.available_at(wallet.now), 40 + 30);
    assert_eq!(wallet.state.upcoming_expiries(wallet.now, 5), [(june, 30)]);
    // A wallet that never did anything yet has no deadline: a staff credit starts its clock too.
    let mut quiet = Wallet::enrolled(ProgramSettings { expiry: inactivity, ..ProgramSettings::default() });
    let changes = quiet.run(Command::new("a-1", CommandBody::Adjust { points: 30, reason: String::new(), staff_ref: "s".into() })).unwrap();
    let Change::Adjusted(adjusted) = &changes[0] else { panic!("{changes:?}") };
    assert_eq!(adjusted.inactivity_expires_at_ms, september);
    let bad = ExpiryPolicy { notice_days: 0, rule: Some(Rule::Inactivity(ExpireAfterInactivity { months: 0 })) };
    assert_eq!(tally_engine::domain::expiry::validate(&bad).unwrap_err().field, "policy.inactivity.months");
}
