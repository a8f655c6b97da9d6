//! The program aggregate: rules are versioned by events, so the rules in force at any instant are
//! known exactly, and the persisted form replays to the same program.

use tally_engine::codec;
use tally_engine::domain::program::{
    ProgramCommand, ProgramCommandBody, ProgramDecision, ProgramEvent, ProgramRejection, ProgramState, apply_program, decide_program,
};
use tally_engine::domain::rules::{Customer, Order, Period, Rule, evaluate};
use tally_engine::domain::{CommandFingerprint, ReturnPolicy, TenantId};
use tally_engine::store::{EventMetadata, EventStore, ExpectedVersion, InMemoryStore, RecordedEvent};

const MARCH_1: i64 = 1_772_323_200_000;
const DAY_MS: i64 = 86_400_000;

fn create(key: &str) -> ProgramCommand {
    ProgramCommand {
        idempotency_key: key.into(),
        body: ProgramCommandBody::Create {
            name: "Acme Rewards".into(),
            utc_offset_minutes: 60,
            return_policy: ReturnPolicy::AllowNegative,
        },
    }
}

fn publish(key: &str, points_per_euro: i64) -> ProgramCommand {
    let rules_json =
        format!(r#"[{{"id":"base","actions":[{{"type":"points_per_currency_unit","points":{points_per_euro},"unit_minor":100}}]}}]"#);
    ProgramCommand { idempotency_key: key.into(), body: ProgramCommandBody::PublishRules { rules_json, published_by: "ops".into() } }
}

/// Decides and applies; returns the events appended.
fn run(state: &mut ProgramState, command: &ProgramCommand, now_ms: i64) -> Result<Vec<ProgramEvent>, ProgramRejection> {
    let tenant = TenantId::parse("acme").unwrap();
    match decide_program(state, &tenant, command, now_ms)? {
        ProgramDecision::Append(events) => {
            events.iter().for_each(|e| apply_program(state, e));
            Ok(events)
        }
        ProgramDecision::AlreadyApplied { .. } => Ok(Vec::new()),
    }
}

fn points_on(state: &ProgramState, at_ms: i64) -> Option<i64> {
    let version = state.rules_at(at_ms)?;
    let rules = version.rules.as_ref().unwrap();
    let order = Order {
        order_id: "o".into(),
        total_minor: 1_000,
        currency: "EUR".into(),
        channel: "web".into(),
        store: "s".into(),
        lines: Vec::new(),
        placed_at_ms: Some(at_ms),
    };
    let none = |_: &Rule, _: Period| 0;
    let customer = Customer { tier: None, previous_orders: 0, rule_points_in_period: &none };
    Some(evaluate(rules, &order, &customer, at_ms, state.utc_offset_minutes).unwrap().total_points)
}

#[test]
fn the_rules_in_force_at_any_instant_are_known_exactly() {
    let mut program = ProgramState::default();
    run(&mut program, &create("c"), MARCH_1).unwrap();
    run(&mut program, &publish("v1", 1), MARCH_1 + DAY_MS).unwrap();
    run(&mut program, &publish("v2", 2), MARCH_1 + 10 * DAY_MS).unwrap();
    assert_eq!(points_on(&program, MARCH_1), None, "no rules before the first version");
    assert_eq!(points_on(&program, MARCH_1 + DAY_MS), Some(10), "a version is in force from its own instant");
    assert_eq!(points_on(&program, MARCH_1 + 10 * DAY_MS - 1), Some(10));
    assert_eq!(points_on(&program, MARCH_1 + 10 * DAY_MS), Some(20));
    assert_eq!(program.current_rules().map(|v| (v.version, v.published_by.as_str())), Some((2, "ops")));
    assert_eq!((program.name.as_str(), program.utc_offset_minutes, program.version), ("Acme Rewards", 60, 3));
}

#[test]
fn program_commands_are_refused_with_reasons() {
    let mut program = ProgramState::default();
    assert_eq!(run(&mut program, &publish("v1", 1), MARCH_1), Err(ProgramRejection::NotCreated));
    run(&mut program, &create("c"), MARCH_1).unwrap();
    assert!(run(&mut program, &create("c"), MARCH_1).unwrap().is_empty(), "a retry changes nothing");
    assert_eq!(run(&mut program, &create("c2"), MARCH_1), Err(ProgramRejection::AlreadyCreated));
    assert!(matches!(run(&mut program, &publish("c", 1), MARCH_1), Err(ProgramRejection::IdempotencyKeyReused { .. })));
    let bad = ProgramCommand {
        idempotency_key: "bad".into(),
        body: ProgramCommandBody::PublishRules {
            rules_json: r#"[{"id":"r","actions":[{"type":"points","amount":-1}]}]"#.into(),
            published_by: "ops".into(),
        },
    };
    let Err(ProgramRejection::InvalidRules(error)) = run(&mut program, &bad, MARCH_1) else { panic!("invalid rules accepted") };
    assert_eq!(error.path, "[0].actions[0].amount");
    let far_east = ProgramCommand {
        idempotency_key: "tz".into(),
        body: ProgramCommandBody::Create { name: "x".into(), utc_offset_minutes: 900, return_policy: ReturnPolicy::CapAtZero },
    };
    let Err(ProgramRejection::InvalidField(field)) = run(&mut ProgramState::default(), &far_east, MARCH_1) else {
        panic!("bad offset accepted")
    };
    assert_eq!(field.field, "utc_offset_minutes");
    assert_eq!(program.version, 1, "nothing refused was applied");
}

#[test]
fn a_retry_answers_with_its_first_outcome_and_versions_stay_in_time_order() {
    let tenant = TenantId::parse("acme").unwrap();
    let mut program = ProgramState::default();
    run(&mut program, &create("c"), MARCH_1).unwrap();
    run(&mut program, &publish("v1", 1), MARCH_1 + DAY_MS).unwrap();
    // A node whose clock is behind publishes the next version "earlier": it still comes after v1.
    run(&mut program, &publish("v2", 2), MARCH_1).unwrap();
    assert_eq!(program.rule_versions[1].effective_from_ms, MARCH_1 + DAY_MS);
    assert_eq!(points_on(&program, MARCH_1 + DAY_MS), Some(20));
    assert_eq!(decide_program(&program, &tenant, &publish("v1", 1), MARCH_1), Ok(ProgramDecision::AlreadyApplied { rules_version: 1 }));
}

/// `event` stored with `fnv64` in the envelope's old field and `digest` beside it (none: as a build before
/// the 128-bit digest wrote it), read back through the codec.
fn stored(event: &ProgramEvent, fnv64: u64, digest: Option<[u8; 16]>) -> ProgramEvent {
    let mut data = codec::encode_program(event, &EventMetadata::default());
    (data.command_fingerprint, data.command_digest) = (fnv64, digest);
    let stream_id = codec::program_stream(&TenantId::parse("acme").unwrap());
    codec::decode_program(RecordedEvent { stream_id, stream_version: 1, global_position: 1, data, links: None }).unwrap()
}

/// What a build before the digest recorded for `create(_)`: FNV-1a 64 of its layout.
const CREATE_FNV64: u64 = 0x9d3e_5467_029a_7823;

#[test]
fn program_fingerprint_layouts_never_change() {
    // Golden values computed outside this code (the layout by hand, `b3sum --length 16`).
    let digest = [0x8a, 0xa8, 0x09, 0xe8, 0x41, 0x97, 0x20, 0x59, 0x53, 0x7b, 0x48, 0x71, 0x84, 0xf2, 0x90, 0x6d];
    assert_eq!(create("c").fingerprint(), CommandFingerprint::Blake3(digest));
    assert_eq!(create("c").legacy_fingerprint(), CommandFingerprint::Fnv64(CREATE_FNV64));
}

#[test]
fn a_program_receipt_from_before_the_digest_is_still_compared_by_its_64_bits() {
    let tenant = TenantId::parse("acme").unwrap();
    let ProgramDecision::Append(events) = decide_program(&ProgramState::default(), &tenant, &create("c"), MARCH_1).unwrap() else {
        panic!("create accepted")
    };
    let mut program = ProgramState::default();
    for event in &events {
        let old = stored(event, CREATE_FNV64, None);
        assert_eq!(old.command_fingerprint, CommandFingerprint::Fnv64(CREATE_FNV64));
        apply_program(&mut program, &old);
    }
    assert_eq!(decide_program(&program, &tenant, &create("c"), MARCH_1), Ok(ProgramDecision::AlreadyApplied { rules_version: 0 }));
    let other = ProgramCommand { idempotency_key: "c".into(), ..publish("x", 1) };
    assert_eq!(decide_program(&program, &tenant, &other, MARCH_1), Err(ProgramRejection::IdempotencyKeyReused { key: "c".into() }));
    // A new command records the digest.
    let events = run(&mut program, &publish("v1", 1), MARCH_1).unwrap();
    assert_eq!(events[0].command_fingerprint, publish("v1", 1).fingerprint());
    assert!(matches!(events[0].command_fingerprint, CommandFingerprint::Blake3(_)));
}

#[test]
fn a_new_program_receipt_is_compared_by_all_128_bits_of_its_digest() {
    let tenant = TenantId::parse("acme").unwrap();
    let ProgramDecision::Append(events) = decide_program(&ProgramState::default(), &tenant, &create("c"), MARCH_1).unwrap() else {
        panic!("create accepted")
    };
    let CommandFingerprint::Blake3(digest) = events[0].command_fingerprint else { panic!("new events record the digest") };
    let mut honest = ProgramState::default();
    apply_program(&mut honest, &stored(&events[0], 0, Some(digest)));
    assert_eq!(decide_program(&honest, &tenant, &create("c"), MARCH_1), Ok(ProgramDecision::AlreadyApplied { rules_version: 0 }));
    // A log whose digest differs from the retry's in one half only (bytes 0..8 or 8..16), with the retry's
    // true FNV-1a beside it: the digest is the one compared.
    for byte in [0, 7, 8, 15] {
        let mut forged = digest;
        forged[byte] ^= 0x80;
        let mut program = ProgramState::default();
        apply_program(&mut program, &stored(&events[0], CREATE_FNV64, Some(forged)));
        assert_eq!(
            decide_program(&program, &tenant, &create("c"), MARCH_1),
            Err(ProgramRejection::IdempotencyKeyReused { key: "c".into() }),
            "byte {byte}"
        );
    }
}

#[tokio::test]
async fn the_persisted_program_replays_to_the_same_state() {
    let store = InMemoryStore::new();
    let tenant = TenantId::parse("acme").unwrap();
    let stream = codec::program_stream(&tenant);
    let mut live = ProgramState::default();
    for (command, at) in [(create("c"), MARCH_1), (publish("v1", 1), MARCH_1 + DAY_MS), (publish("v2", 3), MARCH_1 + 2 * DAY_MS)] {
        let events = run(&mut live, &command, at).unwrap();
        let data = events.iter().map(|e| codec::encode_program(e, &EventMetadata::default())).collect();
        store.append(&stream, ExpectedVersion::Exact(live.version - events.len() as u64), data).await.unwrap();
    }
    let mut replayed = ProgramState::default();
    for recorded in store.read_stream(&stream, 1, 100).await.unwrap() {
        apply_program(&mut replayed, &codec::decode_program(recorded).unwrap());
    }
    assert_eq!(replayed, live);
    assert_eq!(stream.as_str(), "acme/program");
}

fn order_command(id: &str, total_minor: i64) -> tally_engine::domain::Command {
    let order = Order {
        order_id: id.into(),
        total_minor,
        currency: "EUR".into(),
        channel: String::new(),
        store: String::new(),
        lines: Vec::new(),
        placed_at_ms: None,
    };
    tally_engine::domain::Command::new(id, tally_engine::domain::CommandBody::EarnForOrder { order })
}

/// Wallets take their settings from the programs in the log: at once on the node that published, within
/// the refresh interval on another node sharing the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallets_earn_by_the_rules_their_program_publishes() {
    use std::sync::Arc;
    use std::time::Duration;
    use tally_engine::actors::{CommandMeta, ProgramBook, RegistryConfig, WalletError, WalletKey, WalletRegistry};
    use tally_engine::clock::{Clock, ManualClock};
    use tally_engine::domain::{Command, CommandBody, WalletId};

    let store = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(MARCH_1));
    let book = Arc::new(ProgramBook::new(store.clone(), clock.clone() as Arc<dyn Clock>, Duration::from_secs(3600)));
    let registry = WalletRegistry::start(RegistryConfig::default(), store.clone(), book.clone(), clock.clone()).await.unwrap();
    let key = WalletKey::new(TenantId::parse("acme").unwrap(), WalletId::parse("c-1").unwrap());
    let enroll = Command::new("enroll", CommandBody::enroll(String::new()));
    let tenant = key.tenant.clone();
    let meta = EventMetadata::default();

    let unknown = registry.execute(&key, enroll.clone(), CommandMeta::default()).await;
    assert!(matches!(unknown, Err(WalletError::UnknownTenant(_))), "no program yet: {unknown:?}");
    book.execute(&tenant, &create("c"), &meta).await.unwrap();
    registry.execute(&key, enroll, CommandMeta::default()).await.unwrap();
    let earned = |outcome: tally_engine::actors::CommandOutcome| outcome.events[0].event.change.points_delta();

    assert_eq!(earned(registry.execute(&key, order_command("o-1", 1_000), CommandMeta::default()).await.unwrap()), 0, "no rules yet");
    clock.advance_ms(60_000);
    book.execute(&tenant, &publish("v1", 2), &meta).await.unwrap();
    clock.advance_ms(60_000);
    assert_eq!(earned(registry.execute(&key, order_command("o-2", 1_000), CommandMeta::default()).await.unwrap()), 20, "seen at once");

    // Another node sharing the log: what it publishes, the first node (refreshing hourly) does not see yet;
    // what the first publishes, it sees once its cache is older than its refresh interval.
    let other = Arc::new(ProgramBook::new(store.clone(), clock.clone() as Arc<dyn Clock>, Duration::from_millis(50)));
    let other_registry = WalletRegistry::start(RegistryConfig::default(), store.clone(), other.clone(), clock.clone()).await.unwrap();
    let key2 = WalletKey::new(tenant.clone(), WalletId::parse("c-2").unwrap());
    let enroll2 = Command::new("enroll", CommandBody::enroll(String::new()));
    other_registry.execute(&key2, enroll2, CommandMeta::default()).await.unwrap();
    other.execute(&tenant, &publish("v2", 5), &meta).await.unwrap();
    clock.advance_ms(60_000);
    assert_eq!(earned(other_registry.execute(&key2, order_command("o-4", 1_000), CommandMeta::default()).await.unwrap()), 50);
    let stale = registry.execute(&key, order_command("o-3", 1_000), CommandMeta::default()).await.unwrap();
    assert_eq!(earned(stale), 20, "cached for an hour");
    book.execute(&tenant, &publish("v3", 7), &meta).await.unwrap();
    clock.advance_ms(60_000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(earned(other_registry.execute(&key2, order_command("o-5", 1_000), CommandMeta::default()).await.unwrap()), 70);
    registry.shutdown().await;
    other_registry.shutdown().await;
}

#[test]
fn at_most_a_hundred_rules_versions_a_day_counted_on_recorded_times() {
    use tally_engine::limits::{RULES_VERSIONS_PER_WINDOW_MAX, RULES_VERSIONS_WINDOW_MS};
    let mut program = ProgramState::default();
    run(&mut program, &create("c"), MARCH_1).unwrap();
    // One version a minute, from MARCH_1 on.
    let minute = 60_000;
    for n in 0..RULES_VERSIONS_PER_WINDOW_MAX {
        let at = MARCH_1 + i64::try_from(n).unwrap() * minute;
        run(&mut program, &publish(&format!("v{n}"), 1), at).unwrap();
    }
    let later = MARCH_1 + 20 * 60 * minute;
    let refused = run(&mut program, &publish("one-more", 1), later).unwrap_err();
    // Room again when the first version leaves the rolling day.
    let retry_after_ms = MARCH_1 + RULES_VERSIONS_WINDOW_MS - later;
    assert_eq!(refused, ProgramRejection::TooManyRulesVersions { max: 100, window_ms: RULES_VERSIONS_WINDOW_MS, retry_after_ms },);
    assert_eq!(
        refused.to_string(),
        "100 rules versions were published in the last 24 hours, the most allowed; the next may be published in 14400 s"
    );
    assert!(run(&mut program, &publish("v0", 1), later).unwrap().is_empty(), "a retry of an accepted publish is still answered");
    assert!(run(&mut program, &publish("one-more", 1), later + retry_after_ms - 1).is_err());
    run(&mut program, &publish("one-more", 1), later + retry_after_ms).unwrap();
    assert!(run(&mut program, &publish("and-another", 1), later + retry_after_ms).is_err(), "the second left a minute later");
    run(&mut program, &publish("and-another", 1), later + retry_after_ms + minute).unwrap();
    // Other program commands are not counted.
    let pending =
        ProgramCommand { idempotency_key: "p".into(), body: ProgramCommandBody::SetPendingPeriod { days: 3, set_by: "ops".into() } };
    run(&mut program, &pending, later + retry_after_ms + minute).unwrap();
    assert_eq!(program.rule_versions.len(), RULES_VERSIONS_PER_WINDOW_MAX + 2);
}

/// Issue 16 item 7: the platform's tenants are counted on `$tenants` with expected versions, so nodes
/// sharing a log never create more than the bound between them; a program created again is not counted
/// twice.
#[tokio::test]
async fn nodes_sharing_a_log_create_no_more_tenants_than_the_bound() {
    use std::sync::Arc;
    use std::time::Duration;
    use tally_engine::actors::{ProgramBook, ProgramError};
    use tally_engine::clock::{Clock, ManualClock};

    let store = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(MARCH_1)) as Arc<dyn Clock>;
    let node = |max| ProgramBook::new(store.clone(), clock.clone(), Duration::from_secs(1)).with_tenants_max(max);
    let (one, two) = (node(2), node(2));
    let meta = EventMetadata::default();
    let tenant = |name: &str| TenantId::parse(name).unwrap();
    one.execute(&tenant("acme"), &create("c"), &meta).await.unwrap();
    two.execute(&tenant("globex"), &create("c"), &meta).await.unwrap();
    let refused = one.execute(&tenant("initech"), &create("c"), &meta).await.unwrap_err();
    assert!(matches!(refused, ProgramError::Rejected(ProgramRejection::TooManyTenants { max: 2 })), "{refused:?}");
    assert!(matches!(
        two.execute(&tenant("initech"), &create("c"), &meta).await,
        Err(ProgramError::Rejected(ProgramRejection::TooManyTenants { .. }))
    ));
    // Existing tenants go on: a retry of a creation, and their other commands.
    assert!(one.execute(&tenant("globex"), &create("c"), &meta).await.unwrap().replayed.is_some());
    one.execute(&tenant("acme"), &publish("v1", 2), &meta).await.unwrap();
    assert_eq!(store.read_stream(&codec::tenants_stream(), 1, 10).await.unwrap().len(), 2, "each tenant once");
    let larger = node(3);
    larger.execute(&tenant("initech"), &create("c"), &meta).await.unwrap();
}

/// Issue 16 item 7: a tenant's wallets are counted on `<tenant>/wallets` with expected versions, so two
/// nodes enrolling at once never open more than the bound between them; a retried or repeated enrollment
/// is not counted again, and a burst is counted in few appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_a_log_open_no_more_wallets_than_the_bound() {
    use std::sync::Arc;
    use std::time::Duration;
    use tally_engine::actors::{CommandMeta, ProgramBook, RegistryConfig, WalletError, WalletKey, WalletRegistry};
    use tally_engine::clock::{Clock, ManualClock};
    use tally_engine::domain::{Command, CommandBody, Rejection, WalletId};

    const MAX: u64 = 40;
    let store = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(MARCH_1)) as Arc<dyn Clock>;
    let acme = TenantId::parse("acme").unwrap();
    let node = || async {
        let book = Arc::new(ProgramBook::new(store.clone(), clock.clone(), Duration::from_secs(1)).with_wallets_max(MAX));
        WalletRegistry::start(RegistryConfig::default(), store.clone(), book.clone(), clock.clone()).await.unwrap()
    };
    let (one, two) = (node().await, node().await);
    ProgramBook::new(store.clone(), clock.clone(), Duration::from_secs(1))
        .execute(&acme, &create("c"), &EventMetadata::default())
        .await
        .unwrap();
    let enroll = |registry: WalletRegistry, tenant: &TenantId, i: usize| {
        let key = WalletKey::new(tenant.clone(), WalletId::parse(&format!("c-{i}")).unwrap());
        let command = Command::new(format!("enroll-{i}"), CommandBody::enroll(String::new()));
        async move { registry.execute(&key, command, CommandMeta::default()).await }
    };

    // 60 wallets at once, each enrolled on both nodes (a client retrying on another node, or two clients).
    let calls = (0..60).flat_map(|i| [enroll(one.clone(), &acme, i), enroll(two.clone(), &acme, i)]);
    let results = futures::future::join_all(calls).await;
    let (mut opened, mut refused) = (std::collections::HashSet::new(), 0);
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(_) => {
                opened.insert(i / 2);
            }
            Err(WalletError::TooManyWallets { max: MAX }) => refused += 1,
            // The same wallet enrolled by the other node first: a retry under the same key is answered.
            Err(WalletError::Rejected(Rejection::AlreadyEnrolled)) => {
                opened.insert(i / 2);
            }
            Err(other) => panic!("call {i}: {other:?}"),
        }
    }
    let counted = store.stream_version(&codec::wallets_stream(&acme)).await.unwrap();
    assert!(counted <= MAX, "{counted} counted");
    assert!(opened.len() as u64 <= counted, "{} wallets opened, {counted} counted", opened.len());
    assert!(refused > 0);
    let enrolled = (0..60).filter(|i| opened.contains(i)).count();
    // Each wallet counted at most twice (once by each node, before it saw the other's count): at least half
    // the bound opens, however the race goes (30 or more is usual; 29 was seen on a loaded machine).
    assert!(enrolled as u64 >= MAX / 2, "two nodes racing for one wallet count it at most twice: {enrolled}");

    // At the bound, nothing more opens, on either node, but enrolled wallets are answered again.
    let extra = || enroll(one.clone(), &acme, 1_000);
    let first = *opened.iter().next().unwrap();
    if counted == MAX {
        assert!(matches!(extra().await, Err(WalletError::TooManyWallets { max: MAX })));
    }
    let again = enroll(two.clone(), &acme, first).await;
    assert!(
        matches!(again, Ok(_) | Err(WalletError::Rejected(Rejection::AlreadyEnrolled))),
        "an enrolled wallet is answered, not counted: {again:?}"
    );
    assert_eq!(store.stream_version(&codec::wallets_stream(&acme)).await.unwrap(), counted, "nothing counted again");

    // Another tenant has its own count.
    let globex = TenantId::parse("globex").unwrap();
    ProgramBook::new(store.clone(), clock.clone(), Duration::from_secs(1))
        .execute(&globex, &create("c"), &EventMetadata::default())
        .await
        .unwrap();
    enroll(two.clone(), &globex, 0).await.unwrap();
    assert_eq!(store.stream_version(&codec::wallets_stream(&globex)).await.unwrap(), 1);
    one.shutdown().await;
    two.shutdown().await;
}

/// A burst of enrollments on one node is counted in one append per round trip of the log (a real fsync
/// here), not one each, and each event names its wallet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_enrollments_is_counted_in_few_appends() {
    use std::sync::Arc;
    use std::time::Duration;
    use tally_engine::actors::{CommandMeta, ProgramBook, RegistryConfig, WalletKey, WalletRegistry};
    use tally_engine::clock::{Clock, ManualClock};
    use tally_engine::domain::{Command, CommandBody, WalletId};
    use tally_engine::store::EmbeddedStore;

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let clock = Arc::new(ManualClock::new(MARCH_1)) as Arc<dyn Clock>;
    let acme = TenantId::parse("acme").unwrap();
    let book = Arc::new(ProgramBook::new(store.clone(), clock.clone(), Duration::from_secs(1)));
    book.execute(&acme, &create("c"), &EventMetadata::default()).await.unwrap();
    let registry = WalletRegistry::start(RegistryConfig::default(), store.clone(), book.clone(), clock.clone()).await.unwrap();
    let calls = (0..500).map(|i| {
        let key = WalletKey::new(acme.clone(), WalletId::parse(&format!("c-{i}")).unwrap());
        let command = Command::new("enroll", CommandBody::enroll(String::new()));
        let registry = registry.clone();
        async move { registry.execute(&key, command, CommandMeta::default()).await }
    });
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }
    let counted = store.read_stream(&codec::wallets_stream(&acme), 1, 1_000).await.unwrap();
    assert_eq!(counted.len(), 500);
    let mut named: Vec<_> = counted
        .iter()
        .map(|e| {
            assert_eq!(e.data.event_type, codec::WALLET_ADMITTED_EVENT_TYPE);
            <tally_proto::v1::WalletAdmitted as prost::Message>::decode(e.data.payload.as_slice()).unwrap().wallet_id
        })
        .collect();
    named.sort();
    named.dedup();
    assert_eq!(named.len(), 500, "each wallet once");
    let appends = counted.windows(2).filter(|w| w[0].global_position + 1 != w[1].global_position).count() + 1;
    assert!(appends < 250, "{appends} appends for 500 wallets");
    registry.shutdown().await;
}

/// In a cluster every node enrolls some of a tenant's wallets (their owners differ), so a sign-up burst
/// makes the nodes race for `<tenant>/wallets`: each still gets its wallets counted, none refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_enrolling_one_tenants_wallets_at_once_all_get_counted() {
    use std::sync::Arc;
    use std::time::Duration;
    use tally_engine::actors::{CommandMeta, ProgramBook, RegistryConfig, WalletKey, WalletRegistry};
    use tally_engine::clock::{Clock, ManualClock};
    use tally_engine::domain::{Command, CommandBody, WalletId};
    use tally_engine::store::EmbeddedStore;

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let clock = Arc::new(ManualClock::new(MARCH_1)) as Arc<dyn Clock>;
    let acme = TenantId::parse("acme").unwrap();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let book = Arc::new(ProgramBook::new(store.clone(), clock.clone(), Duration::from_secs(1)));
        nodes.push(WalletRegistry::start(RegistryConfig::default(), store.clone(), book, clock.clone()).await.unwrap());
    }
    ProgramBook::new(store.clone(), clock.clone(), Duration::from_secs(1))
        .execute(&acme, &create("c"), &EventMetadata::default())
        .await
        .unwrap();
    let calls = (0..600).map(|i| {
        let key = WalletKey::new(acme.clone(), WalletId::parse(&format!("c-{i}")).unwrap());
        let registry = nodes[i % 3].clone();
        async move { registry.execute(&key, Command::new("enroll", CommandBody::enroll(String::new())), CommandMeta::default()).await }
    });
    for (i, result) in futures::future::join_all(calls).await.into_iter().enumerate() {
        result.unwrap_or_else(|e| panic!("c-{i}: {e}"));
    }
    assert_eq!(store.stream_version(&codec::wallets_stream(&acme)).await.unwrap(), 600);
    for node in nodes {
        node.shutdown().await;
    }
}

#[test]
fn a_reward_definitions_window_is_part_of_the_command() {
    let reward = |cancel_window_days| tally_engine::domain::RewardDefined {
        reward_id: "mug".into(),
        name: "Mug".into(),
        points: 100,
        active: true,
        cancel_window_days,
        ..Default::default()
    };
    let define =
        |days| ProgramCommand { idempotency_key: "mug-v1".into(), body: ProgramCommandBody::DefineReward { reward: reward(days) } };
    assert_ne!(define(0).fingerprint(), define(7).fingerprint());
    assert!(!define(7).matches(&define(0).fingerprint()), "a window added under the same key is another command");
    assert!(!define(14).matches(&define(7).fingerprint()), "another window is another command");
    assert!(define(7).matches(&define(7).fingerprint()));
}
