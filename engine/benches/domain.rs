//! decide + apply per command, the functional core's cost. Target: ≤ 1 µs.

// The allocator the `tally` binary uses, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tally_engine::domain::{Command, CommandBody, Context, Decision, ProgramSettings, TenantId, WalletId, WalletState, apply, decide};

fn enrolled(history: usize) -> WalletState {
    let tenant = TenantId::parse("acme").unwrap();
    let wallet = WalletId::parse("c-1").unwrap();
    let program = ProgramSettings::default();
    let ctx = Context { tenant: &tenant, wallet: &wallet, now_ms: 1, program: &program };
    let mut state = WalletState::default();
    let mut commands = vec![Command::new("enroll", CommandBody::enroll(""))];
    commands.extend((0..history).map(|i| earn(&format!("h-{i}"), 10)));
    for command in commands {
        let Ok(Decision::Append(events)) = decide(&state, &command, &ctx) else { panic!("setup refused") };
        events.iter().for_each(|e| apply(&mut state, e));
    }
    state
}

fn earn(key: &str, points: i64) -> Command {
    Command::new(key, CommandBody::Earn { points, reason: "order".into(), source_ref: key.into(), order_amount: None })
}

fn bench(c: &mut Criterion) {
    let tenant = TenantId::parse("acme").unwrap();
    let wallet = WalletId::parse("c-1").unwrap();
    let program = ProgramSettings::default();
    let ctx = Context { tenant: &tenant, wallet: &wallet, now_ms: 2, program: &program };
    let commands: Vec<Command> = (0..1_000).map(|i| earn(&format!("order-{i}"), 25)).collect();

    let mut group = c.benchmark_group("domain");
    group.bench_function("decide+apply earn (wallet with 1k-2k past commands)", |b| {
        b.iter_custom(|iters| {
            // Fresh wallets of 1,000 past commands, each taking up to 1,000 new ones: timed is only
            // decide + apply, on a warm state of realistic size.
            let mut total = std::time::Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let mut state = enrolled(1_000);
                let n = (iters - done).min(1_000) as usize;
                let batch = &commands[..n];
                let started = std::time::Instant::now();
                for command in batch {
                    if let Ok(Decision::Append(events)) = decide(&state, black_box(command), &ctx) {
                        events.iter().for_each(|e| apply(&mut state, e));
                    }
                }
                total += started.elapsed();
                black_box(&state);
                done += n as u64;
            }
            total
        })
    });
    let redeem = Command::new("r", CommandBody::Redeem { points: 5, reward_ref: "coffee".into() });
    let rich = enrolled(1_000);
    group.bench_function("decide redeem (no apply)", |b| b.iter(|| decide(black_box(&rich), black_box(&redeem), &ctx)));
    let retry = earn("h-500", 10);
    group.bench_function("decide retried command", |b| b.iter(|| decide(black_box(&rich), black_box(&retry), &ctx)));
    group.finish();
}

/// What checking an API key costs every call: a ring of 1,000 keys, the token parsed, the key found, the
/// secret hashed and compared.
fn authenticate(c: &mut Criterion) {
    use tally_engine::domain::access::{KeyCommand, KeyRing, Role, Scope, apply_key, decide_keys, secret_sha256, token};
    let mut ring = KeyRing::default();
    let secret = |n: usize| format!("{n:064x}");
    for n in 0..1_000 {
        let create = KeyCommand::Create {
            key_id: format!("{n:016x}"),
            secret_sha256: secret_sha256(&secret(n)),
            scope: Scope::Tenant(TenantId::parse(&format!("t-{}", n % 50)).unwrap()),
            roles: [Role::Pos].into_iter().collect(),
            label: String::new(),
            expires_at_ms: None,
            created_by: "bench".into(),
            client_cert_sha256: None,
        };
        for change in decide_keys(&ring, &create, 0).unwrap() {
            apply_key(&mut ring, &change, 0).unwrap();
        }
    }
    let presented = token(&format!("{:016x}", 500), &secret(500));
    c.bench_function("authenticate an API key (1,000 keys)", |b| {
        b.iter(|| black_box(ring.authenticate(black_box(&presented), 1)).unwrap())
    });
}

criterion_group!(benches, bench, authenticate);
criterion_main!(benches);
