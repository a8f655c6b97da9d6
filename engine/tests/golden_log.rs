//! Issue 19 item 5: the golden log. `tests/golden/log-v1/` is an embedded event log written by the build of
//! 2026-12-01 from `script` below — a program with rules, tiers, a stamp card, a credit package, pending
//! points, an expiry policy and a refund window, and wallets that went through every kind of wallet event
//! over two years of recorded time — and `tests/golden/log-v1.expected.json` holds what that build
//! replayed from it. Every later build must open the log as it is, decode every event, and replay every
//! stream to exactly those states: a format or fold change that alters the past fails here.
//!
//! The fixture is never rewritten. When the engine's state grows a field, the expected file may gain it
//! (`TALLY_GOLDEN_EXPECTED=write`), and the review of that diff must show additions only. When the
//! persisted format grows, a new fixture (written with `TALLY_GOLDEN_WRITE=DIR`) joins this one:
//! `log-v2` (also 2026-12-01) has sealed enrolments (`WalletEnrolledV2`, their keys in its `keys/`
//! folder) and an erasure (`CustomerErased`, that key gone), while `log-v1`'s enrolments are version 1,
//! read through the upcaster.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tally_engine::actors::{CommandMeta, ProgramBook, RegistryConfig, WalletKey, WalletRegistry};
use tally_engine::clock::{Clock, ManualClock};
use tally_engine::codec;
use tally_engine::domain::program::{ProgramCommand, ProgramCommandBody, ProgramState, apply_program};
use tally_engine::domain::rules::{Order, OrderLine};
use tally_engine::domain::{
    Command, CommandBody, ExpiryPolicy, Money, ReturnPolicy, StampCardDefined, TenantId, WalletId, WalletState, apply,
};
use tally_engine::personal;
use tally_engine::store::{EmbeddedStore, EventMetadata, EventStore, StreamId};
use tally_proto::v1::expiry_policy::Rule;
use tally_proto::v1::{ExpireAfter, TierDefinition, TierWindow};

/// 2026-01-05T09:00Z, a Monday.
const START_MS: i64 = 1_767_603_600_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn expected_file(name: &str) -> PathBuf {
    fixture(name).with_extension("expected.json")
}

const RULES_V1: &str = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]},
 {"id":"coffee","conditions":{"type":"category","value":"coffee"},"actions":[{"type":"stamps","card":"coffee","count":1}]},
 {"id":"weekend","conditions":{"type":"day_of_week","value":[6,7]},"actions":[{"type":"points","amount":30}],
  "caps":{"per_customer":{"points":60,"period":"week"}}}]"#;
const RULES_V2: &str = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":2,"unit_minor":100}]},
 {"id":"coffee","conditions":{"type":"category","value":"coffee"},"actions":[{"type":"stamps","card":"coffee","count":1}]}]"#;

fn program_commands() -> Vec<ProgramCommand> {
    let command = |key: &str, body| ProgramCommand { idempotency_key: key.into(), body };
    let tier = |id: &str, min, pct| TierDefinition {
        tier_id: id.into(),
        name: id.into(),
        min_qualifying_points: min,
        earn_multiplier_percent: pct,
    };
    vec![
        command(
            "create",
            ProgramCommandBody::Create {
                name: "Golden Rewards".into(),
                utc_offset_minutes: 60,
                return_policy: ReturnPolicy::AllowNegative,
            },
        ),
        command("rules-1", ProgramCommandBody::PublishRules { rules_json: RULES_V1.into(), published_by: "ops".into() }),
        command(
            "expiry",
            ProgramCommandBody::SetExpiryPolicy {
                policy: ExpiryPolicy { notice_days: 30, rule: Some(Rule::After(ExpireAfter { months: 6, days: 0, at_month_end: true })) },
                set_by: "ops".into(),
            },
        ),
        command("pending", ProgramCommandBody::SetPendingPeriod { days: 7, set_by: "ops".into() }),
        command("refunds", ProgramCommandBody::SetRefundWindow { days: 60, set_by: "ops".into() }),
        command(
            "tiers",
            ProgramCommandBody::DefineTiers {
                tiers: vec![tier("silver", 300, 0), tier("gold", 1_000, 150)],
                window: TierWindow::Rolling12Months,
                grace_days: 14,
                set_by: "ops".into(),
            },
        ),
        command(
            "card",
            ProgramCommandBody::DefineStampCard {
                card: StampCardDefined {
                    card_id: "coffee".into(),
                    name: "Coffee".into(),
                    stamps_required: 3,
                    reward_ref: "free-coffee".into(),
                    reward_points: 25,
                    active: true,
                },
            },
        ),
        command(
            "package",
            ProgramCommandBody::DefinePackage {
                package_id: "p-500".into(),
                name: "500 points".into(),
                price: Money { amount_minor: 499, currency: "EUR".into() },
                points: 500,
                active: true,
            },
        ),
    ]
}

fn order(id: &str, total_minor: i64, coffees: i64) -> Command {
    let mut lines =
        vec![OrderLine { sku: "bread".into(), category: "bakery".into(), quantity: 1, amount_minor: total_minor - coffees * 250 }];
    if coffees > 0 {
        lines.push(OrderLine { sku: "espresso".into(), category: "coffee".into(), quantity: coffees, amount_minor: coffees * 250 });
    }
    let order = Order {
        order_id: id.into(),
        total_minor,
        currency: "EUR".into(),
        channel: "store".into(),
        store: "s-1".into(),
        lines,
        placed_at_ms: None,
    };
    Command::new(id, CommandBody::EarnForOrder { order })
}

fn earn(key: &str, points: i64) -> Command {
    Command::new(key, CommandBody::Earn { points, reason: "welcome".into(), source_ref: key.into(), order_amount: None })
}

fn hold(id: &str, points: i64, timeout_ms: i64) -> Command {
    Command::new(id, CommandBody::AuthorizeRedemption { hold_id: id.into(), points, reward_ref: "mug".into(), timeout_ms })
}

/// One step of a wallet's life: time passes, a command, or a change of the program.
enum Step {
    Wait(i64),
    Do(&'static str, Command),
    Publish(ProgramCommand),
}

/// Each wallet's script: between them every kind of wallet event.
fn wallet_scripts() -> Vec<(&'static str, Vec<Step>)> {
    use Step::{Do, Publish, Wait};
    let enroll = |customer: &str| Command::new("enroll", CommandBody::enroll(customer));
    vec![
        (
            "alice",
            vec![
                Do("alice", enroll("crm-alice")),
                Do("alice", earn("welcome", 100)),
                Wait(HOUR_MS),
                Do("alice", order("o-1", 4_750, 3)),
                Wait(8 * DAY_MS),
                Do("alice", order("o-2", 30_000, 1)),
                Do("alice", Command::new("r-1", CommandBody::Redeem { points: 40, reward_ref: "tote".into() })),
                Do("alice", hold("h-1", 50, HOUR_MS)),
                Do("alice", Command::capture_redemption("h-1", Some(30))),
                Do("alice", hold("h-2", 20, HOUR_MS)),
                Do("alice", Command::void_redemption("h-2")),
                Do("alice", hold("h-3", 10, HOUR_MS)),
                Wait(2 * HOUR_MS),
                Do("alice", Command::new("adjust-1", CommandBody::Adjust { points: 15, reason: "sorry".into(), staff_ref: "s-7".into() })),
                Do(
                    "alice",
                    Command::new("buy-1", CommandBody::PurchaseCredits { purchase_id: "buy-1".into(), package_id: "p-500".into() }),
                ),
                Wait(10 * DAY_MS),
                Do(
                    "alice",
                    Command::new(
                        "refund-1",
                        CommandBody::RefundOrder { order_id: "o-2".into(), amount_minor: Some(10_000), reason: "returned".into() },
                    ),
                ),
                Do(
                    "alice",
                    Command::new("stamps-1", CommandBody::AddStamps { card_id: "coffee".into(), count: 2, reason: "promo".into() }),
                ),
                Wait(170 * DAY_MS),
                Do("alice", Command::run_due(0)),
                Wait(30 * DAY_MS),
                Do("alice", Command::run_due(0)),
                Wait(200 * DAY_MS),
                Do("alice", Command::run_due(0)),
            ],
        ),
        (
            "bob",
            vec![
                Do("bob", enroll("")),
                Do("bob", earn("gift", 1_200)),
                Do(
                    "bob",
                    Command::new("rev-1", CommandBody::Reverse { source_ref: "gift".into(), points: Some(200), reason: "typo".into() }),
                ),
                Wait(30 * DAY_MS),
                Do("bob", order("o-3", 1_250, 5)),
                Wait(400 * DAY_MS),
                Do("bob", Command::run_due(0)),
                Do("bob", Command::new("close", CommandBody::Close { reason: "customer asked".into() })),
            ],
        ),
        (
            "carol",
            vec![
                Do("carol", enroll("crm-carol")),
                Do("carol", order("o-4", 9_900, 0)),
                Do(
                    "carol",
                    Command::new(
                        "refund-2",
                        CommandBody::RefundOrder { order_id: "o-4".into(), amount_minor: None, reason: "cancelled".into() },
                    ),
                ),
                Do("carol", earn("e-1", 80)),
                Wait(8 * DAY_MS),
                Do("carol", Command::new("adjust-2", CommandBody::Adjust { points: -5, reason: "fix".into(), staff_ref: "s-7".into() })),
                Do("carol", Command::new("r-2", CommandBody::Redeem { points: 75, reward_ref: "cap".into() })),
                Publish(ProgramCommand {
                    idempotency_key: "rules-2".into(),
                    body: ProgramCommandBody::PublishRules { rules_json: RULES_V2.into(), published_by: "ops".into() },
                }),
                Wait(DAY_MS),
                Do("carol", order("o-5", 2_000, 1)),
                Wait(DAY_MS),
                Do("carol", Command::new("forget", CommandBody::EraseCustomer { reason: "GDPR art. 17, ticket 9".into() })),
            ],
        ),
    ]
}

/// Writes the golden log into `dir` (empty or absent) with this build.
async fn script(dir: &Path) {
    let store = Arc::new(EmbeddedStore::open(dir).unwrap());
    let clock = Arc::new(ManualClock::new(START_MS));
    let book = Arc::new(ProgramBook::new(store.clone(), clock.clone() as Arc<dyn Clock>, Duration::from_secs(3600)));
    let registry = WalletRegistry::start(RegistryConfig::default(), store.clone(), book.clone(), clock.clone()).await.unwrap();
    let tenant = TenantId::parse("golden").unwrap();
    let ops = EventMetadata { principal: "00000000000000aa".into(), principal_roles: "operator".into(), ..EventMetadata::default() };
    for command in program_commands() {
        book.execute(&tenant, &command, &ops).await.unwrap();
        clock.advance_ms(60_000);
    }
    let till = CommandMeta {
        principal: "00000000000000bb".into(),
        principal_roles: "pos".into(),
        correlation_id: "req-1".into(),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        ..CommandMeta::default()
    };
    // One wallet after another, each starting where the clock was left.
    for (name, steps) in wallet_scripts() {
        for step in steps {
            match step {
                Step::Wait(ms) => clock.advance_ms(ms),
                Step::Publish(command) => _ = book.execute(&tenant, &command, &ops).await.unwrap(),
                Step::Do(wallet, command) => {
                    let command = if matches!(command.body, CommandBody::RunDue) { Command::run_due(clock.now_ms()) } else { command };
                    let key = WalletKey::new(tenant.clone(), WalletId::parse(wallet).unwrap());
                    registry.execute(&key, command, till.clone()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
        }
    }
    registry.shutdown().await;
    store.close().await;
}

/// Every stream of the log replayed: wallets to their state and their customer as answers show it (opened
/// with the keys kept beside the log), the program to its settings, the rest as decoded; and every
/// event's type, in log order.
async fn replay(store: &dyn EventStore) -> Value {
    let events = store.read_all(1, 1_000_000).await.unwrap();
    let mut wallets: BTreeMap<String, WalletState> = BTreeMap::new();
    let mut programs: BTreeMap<String, ProgramState> = BTreeMap::new();
    let mut others: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut types = Vec::new();
    for recorded in events {
        let stream = recorded.stream_id.as_str().to_owned();
        types.push(format!("{} {} v{}", recorded.data.event_type, stream, recorded.stream_version));
        if codec::wallet_of(&stream).is_some() {
            apply(wallets.entry(stream).or_default(), &codec::decode(recorded).unwrap());
        } else if stream.ends_with("/program") {
            apply_program(programs.entry(stream).or_default(), &codec::decode_program(recorded).unwrap());
        } else if stream == codec::tenants_stream().as_str() {
            others.entry(stream).or_default().push(codec::decode_tenant(recorded).unwrap().to_string());
        } else if stream.contains("/order/") {
            others.entry(stream).or_default().push(codec::decode_claim(recorded).unwrap().wallet_id);
        } else {
            others.entry(stream).or_default().push(format!("{} bytes", recorded.data.payload.len()));
        }
    }
    let programs: BTreeMap<String, Value> = programs.into_iter().map(|(stream, p)| (stream, program_view(&p))).collect();
    let mut customers = BTreeMap::new();
    for (stream, state) in &wallets {
        let key = store.personal_keys(&[StreamId::new(stream).unwrap()]).await.unwrap().pop().flatten();
        customers.insert(stream.clone(), personal::shown_customer(state, stream, key.as_ref()).unwrap());
    }
    let mut wallets = serde_json::to_value(&wallets).unwrap();
    for state in wallets.as_object_mut().unwrap().values_mut() {
        let state = state.as_object_mut().unwrap();
        // Fields later builds added to the state are compared only where they differ from their default:
        // the fixtures' expected states were written before them, and the past must replay the same.
        for (field, default) in ADDED_AFTER_THE_FIXTURES {
            if state.get(*field).is_some_and(|value| *value == default()) {
                state.remove(*field);
            }
        }
    }
    json!({ "events": types, "wallets": wallets, "customers": customers, "programs": programs, "others": others })
}

/// A state field and its default.
type Added = (&'static str, fn() -> Value);

/// `WalletState` fields added after the fixtures were written, with their default.
const ADDED_AFTER_THE_FIXTURES: &[Added] = &[
    ("rewards_redeemed", || json!({})),
    ("catalogue_redemptions", || json!({})),
    ("transfers_out", || json!({})),
    ("identifiers", || json!({})),
    ("referred_by", || json!("")),
    ("referral_converted", || json!(false)),
    ("referral_due", || json!({})),
    ("referrals_rewarded", || json!(0)),
];

fn program_view(p: &ProgramState) -> Value {
    json!({
        "version": p.version,
        "name": p.name,
        "utc_offset_minutes": p.utc_offset_minutes,
        "return_policy": p.return_policy as i32,
        "rule_versions": p.rule_versions.iter().map(|v| json!([v.version, v.effective_from_ms, v.published_by, &*v.rules_json, v.rules.is_ok()])).collect::<Vec<_>>(),
        "packages": p.packages.values().map(|c| format!("{c:?}")).collect::<Vec<_>>(),
        "expiry": format!("{:?}", p.expiry),
        "pending_days": p.pending_days,
        "refund_window_days": p.refund_window_days,
        "tiers": format!("{:?}", p.tiers),
        "stamp_cards": p.stamp_cards.values().map(|c| format!("{c:?}")).collect::<Vec<_>>(),
    })
}

/// Opens the golden log `name` (a copy: opening may write to a log, the fixture never changes), replays
/// it, and compares with what the build that wrote it replayed; its log chain's head is pinned.
async fn check(name: &str, head: (u64, &str)) -> Value {
    let copy = tempfile::tempdir().unwrap();
    common::copy_dir(&fixture(name), copy.path());
    let store = EmbeddedStore::open(copy.path()).unwrap();
    assert_eq!(store.report().torn_tail, None, "the golden log is whole");
    let replayed = replay(&store).await;
    let actual = serde_json::to_string_pretty(&replayed).unwrap() + "\n";
    if std::env::var("TALLY_GOLDEN_EXPECTED").as_deref() == Ok("write") {
        std::fs::write(expected_file(name), &actual).unwrap();
    }
    let expected = std::fs::read_to_string(expected_file(name)).unwrap();
    if actual != expected {
        let diff = actual.lines().zip(expected.lines()).enumerate().find(|(_, (a, e))| a != e);
        panic!("{name} replays differently; first difference at line {:?}", diff.map(|(i, (a, e))| (i + 1, a.to_owned(), e.to_owned())));
    }
    // The log chain, pinned, so the chain algorithm and the canonical encoding never drift
    // (proto/README.md documents both).
    let verified = tally_engine::audit::verify::verify_log(&store, |_| {}).await.unwrap().unwrap();
    let hex = |hash: [u8; 32]| hash.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(verified.head.map(|(position, hash)| (position, hex(hash))), Some((head.0, head.1.to_owned())), "{name}");
    replayed
}

/// The kinds of wallet event a golden log's replay holds.
fn kinds(replayed: &Value) -> std::collections::BTreeSet<String> {
    replayed["events"].as_array().unwrap().iter().filter_map(|e| Some(e.as_str()?.split(' ').next()?.to_owned())).collect()
}

const EVERY_LATER_KIND: [&str; 16] = [
    "tally.v1.PointsEarned",
    "tally.v1.PointsRedeemed",
    "tally.v1.PointsAdjusted",
    "tally.v1.EarnReversed",
    "tally.v1.WalletClosed",
    "tally.v1.PointsHeld",
    "tally.v1.HoldCaptured",
    "tally.v1.HoldReleased",
    "tally.v1.PointsPurchased",
    "tally.v1.PointsExpired",
    "tally.v1.PointsMatured",
    "tally.v1.PointsExpiringSoon",
    "tally.v1.TierChanged",
    "tally.v1.TierReviewed",
    "tally.v1.StampsAdded",
    "tally.v1.StampCardCompleted",
];

#[tokio::test]
async fn the_golden_log_opens_and_replays_to_the_states_it_was_written_with() {
    if let Ok(dir) = std::env::var("TALLY_GOLDEN_WRITE") {
        let dir = Path::new(&dir);
        assert!(std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none()), "{} must be empty or absent", dir.display());
        script(dir).await;
        let store = EmbeddedStore::open(dir).unwrap();
        let written = serde_json::to_string_pretty(&replay(&store).await).unwrap();
        std::fs::write(dir.with_extension("expected.json"), written + "\n").unwrap();
        eprintln!("wrote a golden log to {} and its states beside it", dir.display());
        return;
    }
    // Written by the build of 2026-12-01, before personal data was sealed: its enrolments are version 1
    // (the reference in clear), read through the upcaster.
    let v1 = check("log-v1", (79, "822cedc4e1a9a3cc438542660da3364bbe3b0983254b2911dae74bdcd8dee422")).await;
    let kinds = kinds(&v1);
    for kind in EVERY_LATER_KIND.iter().chain(&["tally.v1.WalletEnrolled"]) {
        assert!(kinds.contains(*kind), "log-v1 has no {kind}: {kinds:?}");
    }
    assert_eq!(v1["customers"]["golden/wallet/alice"], json!(["crm-alice", false]), "version 1, in clear");
}

/// Written by the build of 2026-12-01 that seals personal data: version 2 enrolments, their keys in the
/// fixture's `keys/` folder, and one customer erased (their key gone).
#[tokio::test]
async fn the_golden_log_v2_opens_and_replays_to_the_states_it_was_written_with() {
    let v2 = check("log-v2", GOLDEN_V2_HEAD).await;
    let kinds = kinds(&v2);
    for kind in EVERY_LATER_KIND.iter().chain(&["tally.v1.WalletEnrolledV2", "tally.v1.CustomerErased"]) {
        assert!(kinds.contains(*kind), "log-v2 has no {kind}: {kinds:?}");
    }
    assert!(!kinds.contains("tally.v1.WalletEnrolled"), "nothing writes version 1 any more");
    assert_eq!(v2["customers"]["golden/wallet/alice"], json!(["crm-alice", false]), "sealed, opened with its key");
    assert_eq!(v2["customers"]["golden/wallet/carol"], json!(["", true]), "erased");
}

const GOLDEN_V2_HEAD: (u64, &str) = (80, "4132ce3d671c56d7453a013dbb10033fe5fc706ad74a6bfbcbfea3ab35446a7b");
