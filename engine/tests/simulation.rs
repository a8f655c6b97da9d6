//! Seeded simulation: many wallets driven through actors over the in-memory store with injected append
//! faults (lost writes and lost acknowledgements), then global checks against the log.
//!
//! A failure prints its seed; replay it with `TALLY_SIM_SEED=<seed> cargo test -p tally-engine --test simulation`.
//! `TALLY_SIM_SEEDS=<n>` runs more seeds (a soak).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_engine::actors::{CommandMeta, CommandOutcome, RegistryConfig, StaticPrograms, WalletError, WalletKey, WalletRegistry};
use tally_engine::clock::ManualClock;
use tally_engine::codec;
use tally_engine::domain::{
    Change, Command, CommandBody, ProgramSettings, ReturnPolicy, TenantId, WalletId, WalletState, WalletStatus, apply,
};
use tally_engine::store::{FaultPlan, InMemoryStore};

const WALLETS: usize = 60;
const CLIENTS: usize = 8;
const COMMANDS_PER_CLIENT: usize = 150;

fn random_command(rng: &mut StdRng, key: String, sources: &[String]) -> Command {
    let body = match rng.random_range(0..100) {
        0 => CommandBody::Enroll { customer_ref: "crm".into() },
        1..=45 => {
            CommandBody::Earn { points: rng.random_range(1..1_000), reason: "order".into(), source_ref: key.clone(), order_amount: None }
        }
        46..=70 => CommandBody::Redeem { points: rng.random_range(1..600), reward_ref: "reward".into() },
        71..=80 => CommandBody::Adjust { points: rng.random_range(-200..200), reason: "fix".into(), staff_ref: "staff".into() },
        81..=98 if !sources.is_empty() => CommandBody::Reverse {
            source_ref: sources[rng.random_range(0..sources.len())].clone(),
            points: rng.random_bool(0.5).then(|| rng.random_range(1..500)),
            reason: "refund".into(),
        },
        _ => CommandBody::Close { reason: "bye".into() },
    };
    Command::new(key, body)
}

fn programs() -> Arc<StaticPrograms> {
    Arc::new(StaticPrograms::with_tenants([
        (TenantId::parse("lenient").unwrap(), ProgramSettings { return_policy: ReturnPolicy::AllowNegative, ..ProgramSettings::default() }),
        (TenantId::parse("strict").unwrap(), ProgramSettings { return_policy: ReturnPolicy::CapAtZero, ..ProgramSettings::default() }),
    ]))
}

async fn check_views(seed: u64, registry: &WalletRegistry, wallets: &[WalletKey], folded: &HashMap<String, WalletState>) {
    for wallet in wallets {
        let stream = codec::wallet_stream(&wallet.tenant, &wallet.wallet);
        let expected = folded.get(stream.as_str());
        match registry.summary(wallet).await {
            Ok(summary) => {
                let expected = expected.expect("a wallet with a summary has events");
                let got = (summary.balance, summary.version, summary.status);
                assert_eq!(got, (expected.balance, expected.version, expected.status), "seed {seed}: {stream}");
            }
            Err(WalletError::Rejected(_)) => {
                assert!(expected.is_none_or(|s| s.status == WalletStatus::NotEnrolled), "seed {seed}: {stream}")
            }
            Err(other) => panic!("seed {seed}: {other}"),
        }
    }
}

async fn run(seed: u64) {
    eprintln!("simulation seed = {seed} (replay with TALLY_SIM_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let faults = FaultPlan { seed, fail_before_write_per_mille: 40, fail_after_write_per_mille: 40 };
    let store = Arc::new(InMemoryStore::with_faults(faults));
    let lenient = TenantId::parse("lenient").unwrap();
    let strict = TenantId::parse("strict").unwrap();
    // A small bound forces constant passivation and recovery under load.
    let config = RegistryConfig { active_wallets_max: 20, ..RegistryConfig::default() };
    let registry = WalletRegistry::start(config, store.clone(), programs(), Arc::new(ManualClock::new(1_700_000_000_000))).await.unwrap();
    let wallets: Vec<WalletKey> = (0..WALLETS)
        .map(|i| WalletKey::new(if i % 2 == 0 { lenient.clone() } else { strict.clone() }, WalletId::parse(&format!("w{i}")).unwrap()))
        .collect();

    for wallet in wallets.iter().filter(|_| rng.random_bool(0.9)) {
        let enroll = Command::new("enroll", CommandBody::Enroll { customer_ref: "crm".into() });
        while let Err(WalletError::Store(_)) = registry.execute(wallet, enroll.clone(), CommandMeta::default()).await {}
    }
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let registry = registry.clone();
            let wallets = wallets.clone();
            let mut rng = StdRng::seed_from_u64(rng.random());
            tokio::spawn(async move {
                let mut acknowledged: Vec<(WalletKey, Command, CommandOutcome)> = Vec::new();
                let mut sources: HashMap<WalletKey, Vec<String>> = HashMap::new();
                let mut unknown_outcomes = 0;
                for n in 0..COMMANDS_PER_CLIENT {
                    let wallet = wallets[rng.random_range(0..wallets.len())].clone();
                    let wallet_sources = sources.entry(wallet.clone()).or_default();
                    let command = random_command(&mut rng, format!("c{client}-{n}"), wallet_sources);
                    // Retry with the same key while the outcome is unknown, as a POS terminal would.
                    for _ in 0..20 {
                        match registry.execute(&wallet, command.clone(), CommandMeta::default()).await {
                            Ok(outcome) => {
                                if let CommandBody::Earn { source_ref, .. } = &command.body {
                                    wallet_sources.push(source_ref.clone());
                                }
                                acknowledged.push((wallet.clone(), command.clone(), outcome));
                                break;
                            }
                            Err(WalletError::Rejected(_)) => break,
                            Err(WalletError::Store(_)) => unknown_outcomes += 1,
                            Err(other) => panic!("seed {seed}: unexpected error {other}"),
                        }
                    }
                }
                (acknowledged, unknown_outcomes)
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    let mut unknown_outcomes = 0;
    for client in clients {
        let (acks, unknown) = client.await.unwrap();
        acknowledged.extend(acks);
        unknown_outcomes += unknown;
    }
    let stats = registry.stats();
    eprintln!("seed {seed}: {} acknowledged, {unknown_outcomes} unknown outcomes retried, {stats:?}", acknowledged.len());
    assert!(unknown_outcomes > 0 && stats.passivations > 0, "seed {seed}: the faults and passivation were exercised");

    // Global checks against the log, the only source of truth.
    let log = store.all_events();
    let mut folded: HashMap<String, WalletState> = HashMap::new();
    let mut keys_seen: HashMap<String, HashSet<String>> = HashMap::new();
    let mut deltas: HashMap<String, i64> = HashMap::new();
    for (i, recorded) in log.iter().enumerate() {
        assert_eq!(recorded.global_position, i as u64 + 1, "seed {seed}: dense global log");
        let stream = recorded.stream_id.as_str().to_owned();
        let state = folded.entry(stream.clone()).or_default();
        assert_eq!(recorded.stream_version, state.version + 1, "seed {seed}: dense stream {stream}");
        let event = codec::decode(recorded.clone()).unwrap();
        let first_of_command = keys_seen.entry(stream.clone()).or_default().insert(event.idempotency_key.clone());
        assert!(first_of_command, "seed {seed}: key {} appended twice to {stream}: a retry was applied again", event.idempotency_key);
        *deltas.entry(stream.clone()).or_default() += event.change.points_delta();
        if let Change::Reversed(r) = &event.change {
            assert_eq!(r.requested_points, r.reversed_points + r.shortfall_points);
        }
        apply(state, &event);
        if stream.starts_with("strict/") {
            assert!(state.balance >= 0, "seed {seed}: cap-at-zero wallet {stream} went negative");
        }
    }
    for (stream, state) in &folded {
        assert_eq!(state.balance, deltas[stream], "seed {seed}: balance of {stream} is the sum of its movements");
    }
    // Every acknowledged command is in the log where its reply said.
    for (wallet, command, outcome) in &acknowledged {
        for stored in &outcome.events {
            let recorded = &log[(stored.position - 1) as usize];
            assert_eq!(recorded.stream_id, codec::wallet_stream(&wallet.tenant, &wallet.wallet), "seed {seed}");
            assert_eq!(recorded.data.idempotency_key, command.idempotency_key, "seed {seed}");
        }
    }
    // The actors' view equals the fold of the log, live and after a restart (recovery from scratch).
    check_views(seed, &registry, &wallets, &folded).await;
    registry.shutdown().await;
    let restarted =
        WalletRegistry::start(RegistryConfig::default(), store.clone(), programs(), Arc::new(ManualClock::new(0))).await.unwrap();
    check_views(seed, &restarted, &wallets, &folded).await;
    assert!(!acknowledged.is_empty(), "seed {seed}: the workload did something");
}

#[test]
fn seeded_simulation() {
    let seeds: Vec<u64> = match std::env::var("TALLY_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("TALLY_SIM_SEED is a u64")],
        Err(_) => {
            let count = std::env::var("TALLY_SIM_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(8u64);
            (0..count).map(|i| 0x5eed_0000 + i).collect()
        }
    };
    for seed in seeds {
        // One thread: scheduling is the same on every run of a seed.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(seed));
    }
}
