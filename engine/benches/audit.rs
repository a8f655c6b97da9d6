//! Issue 19: a wallet of 100,000 events replayed as of an instant from the embedded log — read, decoded
//! and folded (target ≤ 100 ms as of any instant; the latest instant is the most work).

// The allocator the `tally` binary uses, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tally_engine::audit::{AsOf, wallet_as_of};
use tally_engine::codec;
use tally_engine::domain::{Command, CommandBody, Context, Decision, ProgramSettings, TenantId, WalletId, WalletState, apply, decide};
use tally_engine::limits::APPEND_EVENTS_MAX;
use tally_engine::store::{EmbeddedStore, EventMetadata, EventStore, ExpectedVersion};

const EVENTS: u64 = 100_000;
const START_MS: i64 = 1_767_225_600_000;
const MINUTE_MS: i64 = 60_000;

/// The wallet's n-th command: earns, redemptions, holds (released or captured) and adjustments.
fn command(n: u64) -> Command {
    let key = format!("k-{n}");
    let body = match n % 6 {
        0 | 1 => {
            CommandBody::Earn { points: 10 + (n * 7 % 90) as i64, reason: "order".into(), source_ref: key.clone(), order_amount: None }
        }
        2 => CommandBody::Redeem { points: 1 + (n % 9) as i64, reward_ref: "coffee".into() },
        3 => CommandBody::AuthorizeRedemption { hold_id: key.clone(), points: 5, reward_ref: "mug".into(), timeout_ms: 30 * MINUTE_MS },
        4 => CommandBody::CaptureRedemption { hold_id: format!("k-{}", n - 1), points: None },
        _ => CommandBody::Adjust { points: 3, reason: "goodwill".into(), staff_ref: "s-1".into() },
    };
    Command::new(&key, body)
}

/// Writes a wallet of `EVENTS` events, one command a minute (about 70 days), and returns the instant of
/// its last event.
fn write_wallet(runtime: &tokio::runtime::Runtime, store: &EmbeddedStore, stream: &tally_engine::store::StreamId) -> i64 {
    let (tenant, wallet, program) = (TenantId::parse("acme").unwrap(), WalletId::parse("c-1").unwrap(), ProgramSettings::default());
    let (mut state, mut batch, mut now_ms, mut n) = (WalletState::default(), Vec::new(), START_MS, 0);
    let mut next = Command::new("enroll", CommandBody::enroll(""));
    let metadata = EventMetadata::default();
    while state.version < EVENTS {
        let ctx = Context { tenant: &tenant, wallet: &wallet, now_ms, program: &program };
        if let Ok(Decision::Append(events)) = decide(&state, &next, &ctx) {
            for event in events {
                apply(&mut state, &event);
                batch.push(codec::encode(&event, &metadata));
            }
        }
        if batch.len() >= APPEND_EVENTS_MAX - 16 {
            let expected = ExpectedVersion::Exact(state.version - batch.len() as u64);
            runtime.block_on(store.append(stream, expected, std::mem::take(&mut batch))).unwrap();
        }
        n += 1;
        now_ms += MINUTE_MS;
        next = command(n);
    }
    if !batch.is_empty() {
        let expected = ExpectedVersion::Exact(state.version - batch.len() as u64);
        runtime.block_on(store.append(stream, expected, batch)).unwrap();
    }
    now_ms
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let stream = codec::wallet_stream(&TenantId::parse("acme").unwrap(), &WalletId::parse("c-1").unwrap());
    let end_ms = write_wallet(&runtime, &store, &stream);
    let events = runtime.block_on(store.stream_version(&stream)).unwrap();
    assert!(events >= EVENTS, "{events} events");

    let mut group = c.benchmark_group("audit");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    for (name, at_ms) in [("its last instant", end_ms), ("half way", START_MS + (end_ms - START_MS) / 2)] {
        group.bench_function(format!("wallet of {events} events as of {name}"), |b| {
            b.iter(|| runtime.block_on(wallet_as_of(&store, &stream, AsOf::Instant(black_box(at_ms)))).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
