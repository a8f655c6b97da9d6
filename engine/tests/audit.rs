//! Issue 19, first increment: a wallet as of any instant or log position is the fold of exactly the
//! events recorded by then, computed independently here, at every event's instant, between events,
//! before the wallet existed and after its last event.

use std::sync::Arc;

use tally_engine::actors::{CommandMeta, RegistryConfig, StaticPrograms, WalletKey, WalletRegistry};
use tally_engine::audit::{AsOf, wallet_as_of};
use tally_engine::clock::ManualClock;
use tally_engine::codec;
use tally_engine::domain::{Command, CommandBody, ProgramSettings, TenantId, WalletId, WalletState, apply};
use tally_engine::store::{EventStore, InMemoryStore, RecordedEvent};

const START_MS: i64 = 1_700_000_000_000;
const HOUR_MS: i64 = 3_600_000;

fn command(n: u32) -> Command {
    // A hold's id is its idempotency key.
    let key = if n % 5 == 3 { format!("h-{n}") } else { format!("k-{n}") };
    let body = match n % 5 {
        0 | 1 => {
            CommandBody::Earn { points: i64::from(10 + n * 7 % 90), reason: "order".into(), source_ref: key.clone(), order_amount: None }
        }
        2 => CommandBody::Redeem { points: i64::from(1 + n % 9), reward_ref: "coffee".into() },
        3 => CommandBody::AuthorizeRedemption { hold_id: format!("h-{n}"), points: 5, reward_ref: String::new(), timeout_ms: 2 * HOUR_MS },
        _ => CommandBody::Adjust { points: -i64::from(n % 4), reason: "goodwill".into(), staff_ref: "s-1".into() },
    };
    Command::new(&key, body)
}

/// What the wallet was after the events `keep` admits, folded here without the replay's early stop.
fn fold(events: &[RecordedEvent], keep: impl Fn(&RecordedEvent) -> bool) -> WalletState {
    let mut state = WalletState::default();
    for recorded in events.iter().filter(|e| keep(e)) {
        apply(&mut state, &codec::decode(recorded.clone()).unwrap());
    }
    state
}

#[tokio::test]
async fn a_wallet_as_of_any_instant_or_position_is_the_fold_of_what_was_recorded_by_then() {
    let store = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let programs = Arc::new(StaticPrograms::open(ProgramSettings::default()));
    let registry = WalletRegistry::start(RegistryConfig::default(), store.clone(), programs, clock.clone()).await.unwrap();
    let key = WalletKey::new(TenantId::parse("acme").unwrap(), WalletId::parse("c-1").unwrap());
    let other = WalletKey::new(TenantId::parse("acme").unwrap(), WalletId::parse("c-2").unwrap());
    for wallet in [&key, &other] {
        registry.execute(wallet, Command::new("enroll", CommandBody::enroll("crm")), CommandMeta::default()).await.unwrap();
    }
    for n in 0..60 {
        clock.advance_ms(HOUR_MS * i64::from(1 + n % 3));
        // Refusals (a redeem beyond the balance) record nothing, as in life.
        let _ = registry.execute(&key, command(n), CommandMeta::default()).await;
        // Another wallet's events interleave in the global log.
        let _ = registry.execute(&other, command(n + 1), CommandMeta::default()).await;
    }
    let stream = codec::wallet_stream(&key.tenant, &key.wallet);
    let events = store.read_stream(&stream, 1, 10_000).await.unwrap();
    assert!(events.len() >= 40, "{} events", events.len());
    let kinds: std::collections::BTreeSet<&str> = events.iter().map(|e| e.data.event_type.as_str()).collect();
    for kind in
        ["tally.v1.PointsEarned", "tally.v1.PointsRedeemed", "tally.v1.PointsHeld", "tally.v1.HoldReleased", "tally.v1.PointsAdjusted"]
    {
        assert!(kinds.contains(kind), "{kind} among {kinds:?}");
    }

    let before = wallet_as_of(&*store, &stream, AsOf::Instant(START_MS - 1)).await.unwrap();
    assert_eq!((before.state, before.stopped_at), (WalletState::default(), None), "nothing before the enrolment");
    for recorded in &events {
        for at_ms in [recorded.data.recorded_at_ms, recorded.data.recorded_at_ms + 1, recorded.data.recorded_at_ms - 1] {
            let replay = wallet_as_of(&*store, &stream, AsOf::Instant(at_ms)).await.unwrap();
            assert_eq!(replay.state, fold(&events, |e| e.data.recorded_at_ms <= at_ms), "as of {at_ms}");
            let last = events.iter().rfind(|e| e.data.recorded_at_ms <= at_ms);
            assert_eq!(replay.stopped_at.as_ref().map(|s| s.stream_version), last.map(|e| e.stream_version));
        }
        let replay = wallet_as_of(&*store, &stream, AsOf::Position(recorded.global_position)).await.unwrap();
        assert_eq!(replay.state, fold(&events, |e| e.global_position <= recorded.global_position));
        let stopped = replay.stopped_at.expect("an event");
        assert_eq!((stopped.stream_version, stopped.global_position), (recorded.stream_version, recorded.global_position));
        assert_eq!(
            (stopped.recorded_at_ms, stopped.event_type.as_str()),
            (recorded.data.recorded_at_ms, recorded.data.event_type.as_str())
        );
    }
    // After its last event: the wallet as its actor holds it now.
    let now = wallet_as_of(&*store, &stream, AsOf::Instant(clock_now(&clock))).await.unwrap();
    let summary = registry.summary(&key).await.unwrap();
    assert_eq!((now.state.balance, now.state.version, now.state.held_points), (summary.balance, summary.version, summary.held_points));
}

fn clock_now(clock: &ManualClock) -> i64 {
    tally_engine::clock::Clock::now_ms(clock)
}
