//! Years of loyalty activity in seconds: thousands of wallets of one program (rules with caps and stamps,
//! a return window, points that expire, tiers, POS holds, credit packages) driven through the domain on a
//! virtual clock, with the engine's timers stood in for by `RunDue` whenever a wallet says something is
//! due. Checked as it runs and at the end: the points add up (available + pending + held == the live
//! lots and pending credits, less any debt), nothing matures or expires early or later than one tick,
//! tiers move down only at their reviews and up only with an earn, refunds never take back more than was
//! earned, full cards pay exactly their rewards, and every wallet's log replays to the same state — and,
//! for a sample of wallets, to the state it had at random instants along the way (`audit::wallet_as_of`).
//!
//! A failure prints its seed; replay it with `TALLY_YEARS_SEED=<seed> cargo test -p tally-engine --test loyalty_years`
//! (`TALLY_YEARS_DEBUG=1` prints every refused command).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_engine::audit::{AsOf, wallet_as_of};
use tally_engine::codec;
use tally_engine::domain::program::RuleVersion;
use tally_engine::domain::rules::{Order, OrderLine, parse_rules};
use tally_engine::domain::tiers::Tiers;
use tally_engine::domain::{
    Change, Command, CommandBody, Context, CreditPackageDefined, Decision, Event, Money, ProgramSettings, Rejection, ReturnPolicy,
    StampCardDefined, TenantId, TierMove, WalletId, WalletState, WalletStatus, apply, decide,
};
use tally_engine::limits::{APPEND_EVENTS_MAX, RECEIPT_RETENTION_MS, RETENTION_SWEEP_INTERVAL_MS};
use tally_engine::store::{EventMetadata, EventStore, ExpectedVersion, InMemoryStore, RecordedEvent, StreamId};
use tally_proto::v1::expiry_policy::Rule;
use tally_proto::v1::{ExpireAfter, ExpiryPolicy, TierDefinition, TierWindow};

const WALLETS: usize = 2_000;
/// Wallets whose past states are sampled and replayed as of their instants.
const AUDITED_WALLETS: usize = 50;
const YEARS: i64 = 3;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// Longest step of the virtual clock: nothing may happen later than this after its time.
const TICK_MAX: i64 = 6 * HOUR;
/// 2026-01-01T00:00Z.
const START: i64 = 1_767_225_600_000;

fn program() -> ProgramSettings {
    let json = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]},
        {"id":"weekend","conditions":{"type":"day_of_week","value":[6,7]},"actions":[{"type":"points","amount":30}],
         "caps":{"per_customer":{"points":60,"period":"week"}}},
        {"id":"coffee","conditions":{"type":"category","value":"coffee"},"actions":[{"type":"stamps","card":"coffee","count":1}]}]"#;
    let rules = RuleVersion {
        version: 1,
        effective_from_ms: 0,
        published_by: "sim".into(),
        rules_json: json.into(),
        rules: parse_rules(json).map(Into::into),
    };
    let tier = |id: &str, min, pct| TierDefinition {
        tier_id: id.into(),
        name: id.into(),
        min_qualifying_points: min,
        earn_multiplier_percent: pct,
    };
    let package = CreditPackageDefined {
        package_id: "p-1000".into(),
        name: "1,000 points".into(),
        price: Some(Money { amount_minor: 999, currency: "EUR".into() }),
        points: 1_000,
        active: true,
    };
    let coffee = StampCardDefined {
        card_id: "coffee".into(),
        name: "Coffee".into(),
        stamps_required: 8,
        reward_ref: "free-coffee".into(),
        reward_points: 40,
        active: true,
    };
    ProgramSettings {
        return_policy: ReturnPolicy::AllowNegative,
        utc_offset_minutes: 60,
        rule_versions: Arc::new([rules]),
        packages: Arc::new([("p-1000".to_owned(), package)].into_iter().collect()),
        expiry: ExpiryPolicy { notice_days: 30, rule: Some(Rule::After(ExpireAfter { months: 12, days: 0, at_month_end: true })) },
        pending_days: 14,
        refund_window_days: 60,
        tiers: Tiers {
            levels: Arc::new([tier("silver", 1_000, 0), tier("gold", 4_000, 125)]),
            window: TierWindow::Rolling12Months,
            grace_days: 7,
        },
        stamp_cards: Arc::new([("coffee".to_owned(), coffee)].into_iter().collect()),
        rewards: Arc::default(),
        transfers: tally_engine::domain::TransferPolicySet::default(),
        referrals: tally_engine::domain::ReferralPolicySet::default(),
    }
}

/// One wallet's life: its state, its log, and what the checks remember.
#[derive(Default)]
struct Life {
    state: WalletState,
    log: Vec<Event>,
    orders: u32,
    holds: u32,
    keys: u32,
    /// When points were last given back to each lot by a hold (held points wait out their hold).
    returned: HashMap<u64, i64>,
}

fn random_command(rng: &mut StdRng, life: &mut Life) -> Command {
    life.keys += 1;
    let key = format!("k{}", life.keys);
    if life.state.status == WalletStatus::NotEnrolled {
        return Command::new(key, CommandBody::enroll(""));
    }
    match rng.random_range(0..100) {
        0..=44 => {
            life.orders += 1;
            let id = format!("order-{}", life.orders);
            let coffee = rng.random_bool(0.4);
            let amount = rng.random_range(200..40_000);
            let line =
                OrderLine { sku: "x".into(), category: if coffee { "coffee" } else { "shop" }.into(), quantity: 1, amount_minor: amount };
            let order = Order {
                order_id: id.clone(),
                total_minor: amount,
                currency: "EUR".into(),
                channel: "web".into(),
                store: String::new(),
                lines: vec![line],
                placed_at_ms: None,
            };
            Command::new(id, CommandBody::EarnForOrder { order })
        }
        45..=54 if life.orders > 0 => CommandBody::RefundOrder {
            order_id: format!("order-{}", rng.random_range(1..=life.orders)),
            amount_minor: rng.random_bool(0.5).then(|| rng.random_range(100..10_000)),
            reason: "returned".into(),
        }
        .keyed(key),
        55..=69 => CommandBody::Redeem { points: rng.random_range(50..2_000), reward_ref: "reward".into() }.keyed(key),
        70..=77 => {
            life.holds += 1;
            let hold_id = format!("hold-{}", life.holds);
            let timeout_ms = rng.random_range(1..48) * HOUR;
            Command::new(
                hold_id.clone(),
                CommandBody::AuthorizeRedemption { hold_id, points: rng.random_range(50..800), reward_ref: "pos".into(), timeout_ms },
            )
        }
        78..=83 if life.holds > 0 => {
            let hold_id = format!("hold-{}", rng.random_range(1..=life.holds));
            CommandBody::CaptureRedemption { hold_id, points: None }.keyed(key)
        }
        84..=86 if life.holds > 0 => {
            CommandBody::VoidRedemption { hold_id: format!("hold-{}", rng.random_range(1..=life.holds)) }.keyed(key)
        }
        87..=89 => Command::new(key.clone(), CommandBody::PurchaseCredits { purchase_id: key, package_id: "p-1000".into() }),
        90..=93 => CommandBody::AddStamps { card_id: "coffee".into(), count: rng.random_range(1..4), reason: "pos".into() }.keyed(key),
        94..=97 => CommandBody::Adjust { points: rng.random_range(-100..300), reason: "fix".into(), staff_ref: "staff".into() }.keyed(key),
        _ if rng.random_bool(0.02) => CommandBody::Close { reason: "bye".into() }.keyed(key),
        _ => CommandBody::Redeem { points: 1, reward_ref: "sticker".into() }.keyed(key),
    }
}

trait Keyed {
    fn keyed(self, key: String) -> Command;
}

impl Keyed for CommandBody {
    fn keyed(self, key: String) -> Command {
        Command::new(key, self)
    }
}

/// Decides and applies `command` at `now_ms`, checking each event as it is applied.
/// Whether it was accepted.
fn run(life: &mut Life, wallet: &WalletId, command: &Command, now_ms: i64, program: &ProgramSettings, stats: &mut Stats) -> bool {
    let tenant = TenantId::parse("sim").unwrap();
    let ctx = Context { tenant: &tenant, wallet, now_ms, program };
    let decision = decide(&life.state, command, &ctx);
    if std::env::var_os("TALLY_YEARS_DEBUG").is_some() && !matches!(decision, Ok(Decision::Append(_))) {
        eprintln!("{} -> {decision:?}", command.kind());
    }
    match &decision {
        Err(Rejection::RefundWindowClosed { .. }) => stats.refunds_too_late += 1,
        Err(Rejection::UnknownSource { .. }) => stats.refunds_forgotten += 1,
        _ => {}
    }
    let Ok(Decision::Append(events)) = decision else { return false };
    let earned_in_command = events.iter().any(|e| matches!(e.change, Change::Earned(_)));
    for event in &events {
        let before = life.state.clone();
        apply(&mut life.state, event);
        let state = &life.state;
        match &event.change {
            Change::Expired(e) => {
                stats.expired += 1;
                let due = e.expired_at_ms.max(life.returned.get(&e.lot).copied().unwrap_or(0));
                assert!(e.expired_at_ms <= now_ms && now_ms - due <= TICK_MAX, "expiry at {} recorded at {now_ms}", e.expired_at_ms);
                let lot = before.lots().find(|(id, _)| *id == e.lot).map(|(_, lot)| *lot).expect("an open lot expires");
                assert_eq!(lot.expires_at_ms, Some(e.expired_at_ms), "a lot expires at its own time");
            }
            Change::ExpiringSoon(e) => {
                stats.notices += 1;
                let lot = before.lots().find(|(id, _)| *id == e.lot).map(|(_, lot)| *lot).expect("an open lot is noticed");
                let notify_at = lot.notify_at_ms.expect("told once");
                assert!(
                    notify_at <= now_ms && now_ms - notify_at <= TICK_MAX && now_ms < e.expires_at_ms,
                    "notice due {notify_at}, run {now_ms}"
                );
                assert_eq!(e.expires_at_ms, notify_at + 30 * DAY);
            }
            Change::Matured(e) => {
                stats.matured += 1;
                assert!(e.available_at_ms <= now_ms && now_ms - e.available_at_ms <= TICK_MAX);
            }
            Change::TierChanged(e) if e.r#move == TierMove::Down as i32 => {
                stats.tier_down += 1;
                let review = before.tier.as_ref().map(|t| t.next_review_at_ms).expect("a held tier moves down");
                assert!(review <= now_ms && now_ms - review <= TICK_MAX, "review due {review}, run {now_ms}");
            }
            Change::TierChanged(_) => {
                stats.tier_up += 1;
                assert!(earned_in_command, "tiers move up only with an earn");
            }
            Change::CardCompleted(e) => {
                stats.cards += e.cards;
                assert_eq!(e.reward_points, 40 * e.cards);
            }
            Change::Released(e) => {
                stats.released += 1;
                e.lots.iter().for_each(|l| _ = life.returned.insert(l.lot, now_ms));
            }
            Change::Captured(e) => e.released_lots.iter().for_each(|l| _ = life.returned.insert(l.lot, now_ms)),
            _ => {}
        }
        let lots: i64 = state.lots().map(|(_, lot)| lot.points + lot.held).sum();
        assert_eq!(state.balance, lots + state.pending_points - state.debt, "the points add up");
    }
    // Between commands nothing due is left undone, and the points a customer sees add up.
    let state = &life.state;
    assert!(state.next_due_ms().is_none_or(|due| due > now_ms));
    let lots: i64 = state.lots().map(|(_, lot)| lot.points + lot.held).sum();
    assert_eq!(state.available_at(now_ms) + state.pending_points + state.held_points, lots + state.pending_points - state.debt);
    stats.events += events.len();
    life.log.extend(events);
    true
}

#[derive(Debug, Default)]
struct Stats {
    commands: usize,
    events: usize,
    expired: usize,
    matured: usize,
    released: usize,
    notices: usize,
    tier_up: usize,
    tier_down: usize,
    cards: i64,
    /// Refunds after the order's refund window, while the wallet still knew the order, and after.
    refunds_too_late: usize,
    refunds_forgotten: usize,
}

fn simulate(seed: u64) {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let program = program();
    let ids: Vec<WalletId> = (0..WALLETS).map(|i| WalletId::parse(&format!("w{i}")).unwrap()).collect();
    let mut lives: Vec<Life> = (0..WALLETS).map(|_| Life::default()).collect();
    // The timers' stand-in: wallets by their next due time.
    let mut due: BTreeSet<(i64, usize)> = BTreeSet::new();
    let mut due_of: HashMap<usize, i64> = HashMap::new();
    let mut stats = Stats::default();
    let (mut samples, mut sampler) = (Vec::new(), StdRng::seed_from_u64(seed ^ 0xa0d1));
    let mut now = START;
    let mut ticks = 0u64;
    while now < START + YEARS * 365 * DAY {
        now += rng.random_range(HOUR..=TICK_MAX);
        ticks += 1;
        let mut touched: Vec<usize> = Vec::new();
        while let Some(&(at, w)) = due.first().filter(|(at, _)| *at <= now) {
            due.remove(&(at, w));
            due_of.remove(&w);
            lives[w].keys += 1;
            let command = Command::run_due(now);
            // The wallet's own next due time is exact: the timers never wake it for nothing.
            assert!(run(&mut lives[w], &ids[w], &command, now, &program, &mut stats), "wallet {w} woken at {now} for nothing");
            touched.push(w);
        }
        for _ in 0..rng.random_range(1..12) {
            let w = rng.random_range(0..WALLETS);
            let command = random_command(&mut rng, &mut lives[w]);
            stats.commands += 1;
            run(&mut lives[w], &ids[w], &command, now, &program, &mut stats);
            touched.push(w);
        }
        for w in touched {
            if let Some(old) = due_of.remove(&w) {
                due.remove(&(old, w));
            }
            if let Some(at) = lives[w].state.next_due_ms() {
                due.insert((at, w));
                due_of.insert(w, at);
            }
        }
        // What a sampled wallet was at an instant before the next tick (at least an hour away).
        // (Drawn from a generator of its own, so the simulation's own draws stay as they were.)
        if sampler.random_bool(0.25) {
            let w = sampler.random_range(0..AUDITED_WALLETS);
            samples.push((w, now + sampler.random_range(0..HOUR), lives[w].state.clone()));
        }
    }
    audit_samples(&lives[..AUDITED_WALLETS], &samples);

    // Refunds never take back more than an order earned; every wallet's log replays to its state.
    for (w, life) in lives.iter().enumerate() {
        let mut per_source: HashMap<&str, (i64, i64)> = HashMap::new();
        for event in &life.log {
            match &event.change {
                Change::Earned(e) => per_source.entry(&e.source_ref).or_default().0 += e.points,
                Change::Reversed(r) => per_source.entry(&r.source_ref).or_default().1 += r.reversed_points,
                _ => {}
            }
        }
        assert!(per_source.values().all(|(earned, reversed)| reversed <= earned), "wallet {w} refunded more than it earned");
        let stream = StreamId::new(&format!("sim/wallet/w{w}")).unwrap();
        let mut replayed = WalletState::default();
        for (i, event) in life.log.iter().enumerate() {
            let recorded = RecordedEvent {
                stream_id: stream.clone(),
                stream_version: i as u64 + 1,
                global_position: i as u64 + 1,
                data: codec::encode(event, &EventMetadata::default()),
                links: None,
            };
            apply(&mut replayed, &codec::decode(recorded).unwrap());
        }
        assert!(replayed == life.state, "wallet {w} replays to another state");
        // The state keeps only the recent past: receipts of the last 30 days, sources still refundable.
        let last = life.log.last().map_or(0, |e| e.recorded_at_ms);
        let swept_since = last - RETENTION_SWEEP_INTERVAL_MS;
        let recent: HashSet<&str> = life
            .log
            .iter()
            .filter(|e| e.recorded_at_ms >= swept_since - RECEIPT_RETENTION_MS)
            .map(|e| e.idempotency_key.as_str())
            .collect();
        assert!(life.state.receipt_count() <= recent.len(), "wallet {w} keeps old receipts");
        let refundable: HashSet<&str> = life
            .log
            .iter()
            .filter_map(|e| match &e.change {
                Change::Earned(x) if x.refundable_until_ms >= swept_since => Some(x.source_ref.as_str()),
                _ => None,
            })
            .collect();
        assert!(life.state.source_count() <= refundable.len(), "wallet {w} keeps sources past their refund window");
    }
    eprintln!("seed {seed}: {YEARS} years, {WALLETS} wallets, {ticks} ticks, {stats:?}, in {:.1?}", started.elapsed());
    // The simulation must exercise what it checks.
    assert!(
        stats.expired > 100
            && stats.notices > 100
            && stats.matured > 1_000
            && stats.tier_up > 50
            && stats.tier_down > 10
            && stats.cards > 50
            && stats.released > 100
            && stats.refunds_too_late > 10
            && stats.refunds_forgotten > 100
    );
}

/// Every sampled `(wallet, instant, state)`: the wallet replayed from a log as of the instant is that state.
fn audit_samples(lives: &[Life], samples: &[(usize, i64, WalletState)]) {
    let store = InMemoryStore::new();
    let streams: Vec<StreamId> = (0..lives.len()).map(|w| StreamId::new(&format!("sim/wallet/w{w}")).unwrap()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        for (life, stream) in lives.iter().zip(&streams) {
            for (chunk, events) in life.log.chunks(APPEND_EVENTS_MAX).enumerate() {
                let data = events.iter().map(|e| codec::encode(e, &EventMetadata::default())).collect();
                store.append(stream, ExpectedVersion::Exact((chunk * APPEND_EVENTS_MAX) as u64), data).await.unwrap();
            }
        }
        for (w, at_ms, state) in samples {
            let replay = wallet_as_of(&*store, &streams[*w], AsOf::Instant(*at_ms)).await.unwrap();
            assert!(replay.state == *state, "wallet {w} as of {at_ms} replays to another state than it had then");
            assert_eq!(replay.stopped_at.map_or(0, |s| s.stream_version), state.version);
        }
    });
    assert!(samples.len() > 1_000 && samples.iter().filter(|(_, _, s)| s.version > 20).count() > 100, "{} samples", samples.len());
}

#[test]
fn years_of_activity_keep_every_promise() {
    let seeds: Vec<u64> = match std::env::var("TALLY_YEARS_SEED") {
        Ok(seed) => vec![seed.parse().expect("TALLY_YEARS_SEED is a number")],
        Err(_) => vec![20_261_122],
    };
    for seed in seeds {
        eprintln!("loyalty years seed = {seed} (replay with TALLY_YEARS_SEED={seed})");
        simulate(seed);
    }
}
