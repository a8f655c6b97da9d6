//! Issue 15, item 2: a wallet that time gave more to do than one append records — holds timed out and
//! lots expired during downtime, a mass expiry on one date — still serves every command: what is due is
//! recorded a chunk at a time (under the engine's key) before the command, and a wallet's open holds are
//! bounded so that closing it fits in one append.

mod common;

use std::sync::Arc;

use common::{NOW, Wallet};
use tally_engine::actors::{CommandMeta, RegistryConfig, StaticPrograms, WalletKey, WalletRegistry};
use tally_engine::clock::ManualClock;
use tally_engine::codec;
use tally_engine::domain::{Change, Command, CommandBody, Decision, ProgramSettings, Rejection, TenantId, WalletId, due_key};
use tally_engine::limits::{APPEND_EVENTS_MAX, DUE_EVENTS_PER_APPEND_MAX, HOLDS_PER_WALLET_MAX};
use tally_engine::store::{EventStore, InMemoryStore};
use tally_proto::v1::expiry_policy::Rule;
use tally_proto::v1::{ExpireAfter, ExpiryPolicy};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// Lots opened an hour apart, each expiring 30 days later: one expiry each.
const LOTS: usize = 300;

fn thirty_days() -> ProgramSettings {
    let expiry = ExpiryPolicy { notice_days: 0, rule: Some(Rule::After(ExpireAfter { months: 0, days: 30, at_month_end: false })) };
    ProgramSettings { expiry, ..ProgramSettings::default() }
}

fn earn(key: &str, points: i64) -> Command {
    Command::new(key, CommandBody::Earn { points, reason: "order".into(), source_ref: key.into(), order_amount: None })
}

fn authorize(hold: &str, points: i64) -> Command {
    Command::new(hold, CommandBody::AuthorizeRedemption { hold_id: hold.into(), points, reward_ref: "mug".into(), timeout_ms: HOUR })
}

/// `LOTS` lots of one point, then as many one-point holds as a wallet may have.
fn commands() -> Vec<(i64, Command)> {
    let earns = (0..LOTS).map(|i| (HOUR, earn(&format!("o-{i}"), 1)));
    let holds = (0..HOLDS_PER_WALLET_MAX).map(|i| (0, authorize(&format!("pos-{i}"), 1)));
    earns.chain(holds).collect()
}

fn busy_wallet() -> Wallet {
    let mut wallet = Wallet::enrolled(thirty_days());
    for (step, command) in commands() {
        wallet.now += step;
        wallet.run(command).unwrap();
    }
    wallet
}

#[test]
fn a_wallet_has_a_bounded_number_of_open_holds_and_closing_releases_them_in_one_append() {
    let mut wallet = busy_wallet();
    let open = HOLDS_PER_WALLET_MAX;
    assert_eq!(wallet.run(authorize("one-more", 1)), Err(Rejection::TooManyOpenHolds { open, max: HOLDS_PER_WALLET_MAX }));
    let Ok(Decision::Append(events)) = wallet.decide(&Command::new("bye", CommandBody::Close { reason: "moved".into() })) else {
        panic!("closing is one append")
    };
    assert_eq!(events.len(), HOLDS_PER_WALLET_MAX + 1);
    assert!(events.len() <= APPEND_EVENTS_MAX);
    // A hold that ends makes room for another.
    wallet.run(Command::void_redemption("pos-0")).unwrap();
    wallet.run(authorize("one-more", 1)).unwrap();
}

#[test]
fn a_command_after_a_long_downtime_records_what_is_due_a_chunk_at_a_time_then_itself() {
    let mut wallet = busy_wallet();
    wallet.now += 60 * DAY;
    let late = earn("late", 5);
    let Ok(Decision::CatchUp(chunk)) = wallet.decide(&late) else { panic!("more is due than one append records") };
    assert_eq!(chunk.len(), DUE_EVENTS_PER_APPEND_MAX);
    assert!(chunk.iter().all(|e| e.idempotency_key == due_key(wallet.now)), "the engine's key, not the caller's");

    let changes = wallet.run(late.clone()).unwrap();
    let released = changes.iter().filter(|c| matches!(c, Change::Released(_))).count();
    let expired: i64 = changes.iter().filter_map(|c| if let Change::Expired(e) = c { Some(e.points) } else { None }).sum();
    assert_eq!((released, expired), (HOLDS_PER_WALLET_MAX, LOTS as i64), "every hold released, every point expired");
    assert!(matches!(changes.last(), Some(Change::Earned(_))), "then the command itself");
    assert_eq!(wallet.state.balance, 5);
    assert!(wallet.state.next_due_ms().is_some_and(|due| due > wallet.now), "nothing due is left undone");
    // The caller's key answers a retry with the command's own outcome.
    assert!(matches!(wallet.decide(&late), Ok(Decision::AlreadyApplied(_))));
}

#[test]
fn run_due_records_one_chunk_at_a_time() {
    let mut wallet = busy_wallet();
    wallet.now += 60 * DAY;
    let mut chunks = Vec::new();
    for n in 0.. {
        wallet.now += 1;
        match wallet.run(Command::run_due(wallet.now)) {
            Ok(changes) => chunks.push(changes.len()),
            Err(Rejection::NothingDue { .. }) => break,
            Err(other) => panic!("run {n}: {other}"),
        }
    }
    assert_eq!(chunks, [DUE_EVENTS_PER_APPEND_MAX, DUE_EVENTS_PER_APPEND_MAX, DUE_EVENTS_PER_APPEND_MAX, 16]);
}

/// Through the actors and a store that enforces the append limit, as the timers and callers meet it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_with_more_due_than_one_append_holds_still_serves_its_callers() {
    let store = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(NOW));
    let programs = Arc::new(StaticPrograms::open(thirty_days()));
    let registry = WalletRegistry::start(RegistryConfig::default(), store.clone(), programs, clock.clone()).await.unwrap();
    let key = WalletKey::new(TenantId::parse("acme").unwrap(), WalletId::parse("c-1").unwrap());
    let meta = CommandMeta::default;
    registry.execute(&key, Command::new("e", CommandBody::enroll(String::new())), meta()).await.unwrap();
    for (step, command) in commands() {
        clock.advance_ms(step);
        registry.execute(&key, command, meta()).await.unwrap();
    }
    clock.advance_ms(60 * DAY);
    let outcome = registry.execute(&key, earn("late", 5), meta()).await.expect("the command goes through");
    assert_eq!(outcome.balance, 5);
    let closed = registry.execute(&key, Command::new("bye", CommandBody::Close { reason: String::new() }), meta()).await;
    assert!(closed.is_ok(), "{closed:?}");

    let stream = codec::wallet_stream(&key.tenant, &key.wallet);
    let events = store.read_stream(&stream, 1, 10_000).await.unwrap();
    let catch_up = events.iter().filter(|e| e.data.idempotency_key.starts_with("tally:due:")).count();
    let with_the_command = events.iter().filter(|e| e.data.idempotency_key == "late").count();
    // 400 transitions: three chunks under the engine's key, the rest recorded with the command.
    assert_eq!(
        (catch_up, with_the_command),
        (3 * DUE_EVENTS_PER_APPEND_MAX, HOLDS_PER_WALLET_MAX + LOTS - 3 * DUE_EVENTS_PER_APPEND_MAX + 1)
    );
}
