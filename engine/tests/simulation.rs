//! Seeded simulation: many wallets of two programs (rules, pending points, expiry with notices, tiers,
//! stamp cards, credit packages, both return policies) driven through actors over the in-memory store
//! with injected append faults (lost writes and lost acknowledgements), every command of `CommandBody`
//! drawn, and a shared clock that moves by minutes within a customer's visit and by hours to months
//! between rounds of visits, so holds time out, pending points mature, lots expire, tiers are reviewed
//! and receipts are forgotten. Wallets snapshot at random and recover from snapshot + tail. Then global
//! checks against the log: dense streams, no command applied twice while its receipt is kept, points
//! conserved after every event, nothing due left undone after a command, snapshot + tail == full replay
//! at random points of every wallet's log, and the actors' view == the fold of the log, live and after
//! restarts (from snapshots, then from scratch).
//!
//! A failure prints its seed; replay it with `TALLY_SIM_SEED=<seed> cargo test -p tally-engine --test simulation`.
//! `TALLY_SIM_SEEDS=<n>` runs more seeds (a soak).
//!
//! Keys come in the shapes clients use, `/` included, some that look like engine keys (`due/…`,
//! `…/capture`) and some baskets: a till that keys a basket's commands `<basket>/<n>` and authorizes a
//! hold with the basket's id (which once made a duplicate delivery apply twice: a hold forgot every
//! receipt whose key extended its id).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_engine::actors::{
    CommandMeta, CommandOutcome, NoSnapshots, RegistryConfig, Snapshots, StaticPrograms, WalletError, WalletKey, WalletRegistry,
    WalletSummary,
};
use tally_engine::clock::{Clock, ManualClock};
use tally_engine::codec;
use tally_engine::domain::program::RuleVersion;
use tally_engine::domain::rules::parse_rules;
use tally_engine::domain::tiers::Tiers;
use tally_engine::domain::{
    Change, Command, CommandBody, CreditPackageDefined, Event, Money, ProgramSettings, ReturnPolicy, StampCardDefined, TenantId, WalletId,
    WalletState, WalletStatus, apply,
};
use tally_engine::limits::RECEIPT_RETENTION_MS;
use tally_engine::personal;
use tally_engine::store::{EventStore, FaultPlan, InMemoryStore, StreamId};
use tally_proto::v1::expiry_policy::Rule;
use tally_proto::v1::{ExpireAfter, ExpireAfterInactivity, ExpiryPolicy, HoldEnd, PointsEarned, TierDefinition, TierWindow};

const WALLETS: usize = 60;
const CLIENTS: usize = 8;
const COMMANDS_PER_CLIENT: usize = 150;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// 2023-11-14T22:13:20Z.
const START_MS: i64 = 1_700_000_000_000;
/// Random cut points per wallet at which snapshot + tail is compared with the full replay.
const SNAPSHOT_CUTS: usize = 4;

fn rule_version(version: u32, effective_from_ms: i64, json: &str) -> RuleVersion {
    RuleVersion {
        version,
        effective_from_ms,
        published_by: "sim".into(),
        rules_json: json.into(),
        rules: parse_rules(json).map(Into::into),
    }
}

/// What both programs share: two rules versions (the second published four months in), a 500-point
/// package and a retired one, a six-stamp coffee card and a retired tea card, silver and gold tiers.
fn base_program() -> ProgramSettings {
    let v1 = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]},
        {"id":"weekend","conditions":{"type":"day_of_week","value":[6,7]},"actions":[{"type":"points","amount":30}],
         "caps":{"per_customer":{"points":60,"period":"week"}}},
        {"id":"coffee","conditions":{"type":"category","value":"coffee"},"actions":[{"type":"stamps","card":"coffee","count":1}]}]"#;
    let v2 = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":2,"unit_minor":100}]},
        {"id":"welcome","conditions":{"type":"first_order"},"actions":[{"type":"points","amount":25}]},
        {"id":"coffee","conditions":{"type":"category","value":"coffee"},"actions":[{"type":"stamps","card":"coffee","count":2}]}]"#;
    let package = |id: &str, points, active| {
        let price = Some(Money { amount_minor: 499, currency: "EUR".into() });
        (id.to_owned(), CreditPackageDefined { package_id: id.into(), name: id.into(), price, points, active })
    };
    let card = |id: &str, stamps_required, reward_points, active| {
        let reward_ref = format!("free-{id}");
        (id.to_owned(), StampCardDefined { card_id: id.into(), name: id.into(), stamps_required, reward_ref, reward_points, active })
    };
    let tier = |id: &str, min, pct| TierDefinition {
        tier_id: id.into(),
        name: id.into(),
        min_qualifying_points: min,
        earn_multiplier_percent: pct,
    };
    ProgramSettings {
        rule_versions: Arc::new([rule_version(1, 0, v1), rule_version(2, START_MS + 120 * DAY, v2)]),
        packages: Arc::new([package("p-500", 500, true), package("p-old", 200, false)].into_iter().collect()),
        stamp_cards: Arc::new([card("coffee", 6, 40, true), card("tea", 4, 20, false)].into_iter().collect()),
        tiers: Tiers { levels: Arc::new([tier("silver", 300, 0), tier("gold", 1_500, 125)]), ..Tiers::default() },
        ..ProgramSettings::default()
    }
}

fn lenient() -> TenantId {
    TenantId::parse("lenient").unwrap()
}

fn strict() -> TenantId {
    TenantId::parse("strict").unwrap()
}

/// `lenient`: negative balances allowed, points expire at the end of the fourth month with a notice 30
/// days before, two weeks pending, 45 days to refund, tiers over a rolling year.
/// `strict`: capped at zero, points expire after three months without activity, two days pending, 20
/// days to refund, tiers per calendar year with a month's grace.
fn program_settings() -> Vec<(TenantId, ProgramSettings)> {
    let base = base_program();
    let after = ExpireAfter { months: 4, days: 0, at_month_end: true };
    let lenient_settings = ProgramSettings {
        return_policy: ReturnPolicy::AllowNegative,
        utc_offset_minutes: 60,
        expiry: ExpiryPolicy { notice_days: 30, rule: Some(Rule::After(after)) },
        pending_days: 14,
        refund_window_days: 45,
        tiers: Tiers { window: TierWindow::Rolling12Months, grace_days: 7, ..base.tiers.clone() },
        ..base.clone()
    };
    let strict_settings = ProgramSettings {
        return_policy: ReturnPolicy::CapAtZero,
        utc_offset_minutes: -300,
        expiry: ExpiryPolicy { notice_days: 0, rule: Some(Rule::Inactivity(ExpireAfterInactivity { months: 3 })) },
        pending_days: 2,
        refund_window_days: 20,
        tiers: Tiers { window: TierWindow::CalendarYear, grace_days: 30, ..base.tiers.clone() },
        ..base
    };
    vec![(lenient(), lenient_settings), (strict(), strict_settings)]
}

fn programs() -> Arc<StaticPrograms> {
    Arc::new(StaticPrograms::with_tenants(program_settings()))
}

/// How far the clock moves between rounds of visits: hours, days, weeks or months (a run spans about
/// a year and a half).
fn round_step(rng: &mut StdRng) -> i64 {
    match rng.random_range(0..100) {
        0..35 => rng.random_range(HOUR..=12 * HOUR),
        35..65 => rng.random_range(DAY..=3 * DAY),
        65..90 => rng.random_range(3 * DAY..=21 * DAY),
        _ => rng.random_range(28 * DAY..=92 * DAY),
    }
}

/// How far a client moves the clock before a command within a visit: nothing, or minutes, now and
/// then an hour or two (a short hold can time out before its capture).
fn visit_step(rng: &mut StdRng) -> i64 {
    match rng.random_range(0..100) {
        0..50 => 0,
        50..90 => rng.random_range(MINUTE..=10 * MINUTE),
        _ => rng.random_range(10 * MINUTE..=2 * HOUR),
    }
}

/// A client (a POS terminal, a storefront, a back office) serving one customer's visit per round, and
/// what it remembers of what it sent, to refer back to it. What it sends depends on the seed only, never
/// on the answers, so a seed replays the same commands (the interleaving of clients may differ).
struct Client {
    id: usize,
    rng: StdRng,
    wallets: Vec<WalletKey>,
    /// Wallets not enrolled before the clients start.
    late: Vec<WalletKey>,
    sent: usize,
    /// The current basket (the prefix of some keys) and its customer's wallet.
    basket: usize,
    customer: WalletKey,
    /// Orders (wallet, order id, total in minor units), plain earns (wallet, source), holds (wallet, id).
    orders: Vec<(WalletKey, String, i64)>,
    sources: Vec<(WalletKey, String)>,
    holds: Vec<(WalletKey, String)>,
    /// The last commands sent, for duplicate deliveries.
    recent: Vec<(WalletKey, Command)>,
    /// A capture or void to send right after its hold's authorization, as a till does.
    follow_up: Option<(WalletKey, Command)>,
    /// Holds take their basket's id as hold id, which prefixes the keys sent in the basket before.
    basket_holds: bool,
    acknowledged: Vec<(WalletKey, Command, CommandOutcome)>,
    rejected: BTreeMap<String, usize>,
    unknown_outcomes: usize,
}

/// Picks one of `items`, mostly among the last three.
fn recent_pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> Option<&'a T> {
    if items.is_empty() {
        return None;
    }
    let from = if rng.random_bool(0.8) { items.len().saturating_sub(3) } else { 0 };
    Some(&items[rng.random_range(from..items.len())])
}

impl Client {
    /// One customer's visit (a basket): one to four commands for one wallet, minutes apart, each
    /// retried with the same key while its outcome is unknown, as a POS terminal would.
    async fn visit(&mut self, registry: &WalletRegistry, clock: &ManualClock, seed: u64) {
        self.basket += 1;
        self.customer = self.wallets[self.rng.random_range(0..self.wallets.len())].clone();
        let commands = self.rng.random_range(1..=4).min(COMMANDS_PER_CLIENT - self.sent);
        let mut drawn = 0;
        while drawn < commands || self.follow_up.is_some() {
            clock.advance_ms(visit_step(&mut self.rng));
            let (wallet, command) = match self.follow_up.take() {
                Some(follow_up) => follow_up,
                None => {
                    drawn += 1;
                    self.draw(clock.now_ms())
                }
            };
            self.recent.push((wallet.clone(), command.clone()));
            if self.recent.len() > 32 {
                self.recent.remove(0);
            }
            for _ in 0..20 {
                match registry.execute(&wallet, command.clone(), CommandMeta::default()).await {
                    Ok(outcome) => {
                        self.acknowledged.push((wallet.clone(), command.clone(), outcome));
                        break;
                    }
                    Err(WalletError::Rejected(rejection)) => {
                        let kind = format!("{rejection:?}");
                        let kind = kind.split([' ', '(', '{']).next().unwrap_or_default().to_owned();
                        *self.rejected.entry(format!("{}: {kind}", command.kind())).or_default() += 1;
                        break;
                    }
                    Err(WalletError::Store(_)) => self.unknown_outcomes += 1,
                    Err(other) => panic!("seed {seed}: unexpected error {other}"),
                }
            }
        }
    }

    /// The next idempotency key: mostly plain, some with `/`, some that look like engine keys of old
    /// (`due/…`, `…/capture`, `…/void`), a few in the engine's own space (refused).
    fn key(&mut self) -> String {
        let (id, n) = (self.id, self.sent);
        // A till that keys everything by its basket.
        if self.basket_holds && self.rng.random_bool(0.6) {
            return format!("basket-{id}-{}/{n}", self.basket);
        }
        match self.rng.random_range(0..100) {
            0..70 => format!("c{id}-{n}"),
            70..80 => format!("pos-{id}/txn-{n}"),
            80..85 => format!("due/{id}{n:04}"),
            85..89 => format!("c{id}-{}/{}", self.rng.random_range(0..=n), if self.rng.random_bool(0.5) { "capture" } else { "void" }),
            89 => format!("tally:capture:c{id}-{}", self.rng.random_range(0..=n)),
            _ => format!("basket-{id}-{}/{n}", self.basket),
        }
    }

    fn draw(&mut self, now_ms: i64) -> (WalletKey, Command) {
        self.sent += 1;
        let wallet = self.customer.clone();
        let key = self.key();
        // Returns and POS steps refer to this customer's own orders and holds when there are any.
        let mine = |items: &[(WalletKey, String)]| items.iter().filter(|(w, _)| *w == wallet).cloned().collect::<Vec<_>>();
        let (my_sources, my_holds) = (mine(&self.sources), mine(&self.holds));
        let my_sources = if my_sources.is_empty() { self.sources.clone() } else { my_sources };
        let my_holds = if my_holds.is_empty() { self.holds.clone() } else { my_holds };
        let my_orders: Vec<_> = self.orders.iter().filter(|(w, _, _)| *w == wallet).cloned().collect();
        let my_orders = if my_orders.is_empty() { self.orders.clone() } else { my_orders };
        let rng = &mut self.rng;
        match rng.random_range(0..100) {
            // Mostly a customer who signs up now; now and then one who already has.
            0..3 => {
                let wallet = if self.late.is_empty() || rng.random_bool(0.3) {
                    wallet
                } else {
                    self.late[rng.random_range(0..self.late.len())].clone()
                };
                // Now and then the customer asks to be forgotten instead (erasure meets everything else).
                if rng.random_bool(0.2) {
                    return (wallet, Command::new(key, CommandBody::EraseCustomer { reason: "art. 17".into() }));
                }
                let customer_ref = format!("crm-{}", wallet.wallet);
                (wallet, Command::new(key, CommandBody::enroll(customer_ref)))
            }
            3..16 => {
                self.sources.push((wallet.clone(), key.clone()));
                let order_amount =
                    rng.random_bool(0.3).then(|| Money { amount_minor: rng.random_range(0..50_000), currency: "EUR".into() });
                let body =
                    CommandBody::Earn { points: rng.random_range(1..800), reason: "order".into(), source_ref: key.clone(), order_amount };
                (wallet, Command::new(key, body))
            }
            16..34 => {
                let id = if rng.random_bool(0.8) {
                    format!("order-{}-{}", self.id, self.sent)
                } else {
                    format!("web/order/{}-{}", self.id, self.sent)
                };
                let euros = rng.random_range(2..300);
                let category = if rng.random_bool(0.4) { "coffee" } else { "shop" };
                // Mostly now; some placed days ago, a few too long ago to earn.
                let placed_at_ms = match rng.random_range(0..100) {
                    0..75 => None,
                    75..97 => Some(now_ms - rng.random_range(0..6 * DAY)),
                    _ => Some(now_ms - 8 * DAY),
                };
                self.orders.push((wallet.clone(), id.clone(), euros * 100));
                (wallet, common::order(&id, euros, category, placed_at_ms))
            }
            34..41 if !my_orders.is_empty() => {
                let (wallet, order_id, total) = recent_pick(rng, &my_orders).unwrap().clone();
                let amount_minor = rng.random_bool(0.6).then(|| rng.random_range(1..=total));
                (wallet, Command::new(key, CommandBody::RefundOrder { order_id, amount_minor, reason: "returned".into() }))
            }
            41..46 if !my_sources.is_empty() => {
                let (wallet, source_ref) = recent_pick(rng, &my_sources).unwrap().clone();
                let points = rng.random_bool(0.5).then(|| rng.random_range(1..500));
                (wallet, Command::new(key, CommandBody::Reverse { source_ref, points, reason: "refund".into() }))
            }
            58..63 => {
                let body = CommandBody::Adjust { points: rng.random_range(-200..300), reason: "fix".into(), staff_ref: "staff".into() };
                (wallet, Command::new(key, body))
            }
            63..72 => {
                let hold_id =
                    if self.basket_holds && key.starts_with("basket-") { format!("basket-{}-{}", self.id, self.basket) } else { key };
                let timeout_ms = match rng.random_range(0..10) {
                    0..2 => rng.random_range(5..=30) * MINUTE,
                    2..7 => rng.random_range(1..=12) * HOUR,
                    _ => rng.random_range(1..=7) * DAY,
                };
                self.holds.push((wallet.clone(), hold_id.clone()));
                if rng.random_bool(0.8) {
                    let follow_up = if rng.random_bool(0.55) {
                        let points = rng.random_bool(0.5).then(|| rng.random_range(1..300));
                        Command::capture_redemption(hold_id.clone(), points)
                    } else {
                        Command::void_redemption(hold_id.clone())
                    };
                    self.follow_up = Some((wallet.clone(), follow_up));
                }
                let body = CommandBody::AuthorizeRedemption {
                    hold_id: hold_id.clone(),
                    points: rng.random_range(10..300),
                    reward_ref: "pos".into(),
                    timeout_ms,
                };
                (wallet, Command::new(hold_id, body))
            }
            // Capture and void keys are the engine's: one per hold and what is done to it.
            72..78 if !my_holds.is_empty() => {
                let (wallet, hold_id) = recent_pick(rng, &my_holds).unwrap().clone();
                let points = rng.random_bool(0.5).then(|| rng.random_range(1..300));
                (wallet, Command::capture_redemption(hold_id, points))
            }
            78..81 if !my_holds.is_empty() => {
                let (wallet, hold_id) = recent_pick(rng, &my_holds).unwrap().clone();
                (wallet, Command::void_redemption(hold_id))
            }
            // The timers' command, with their key.
            81..85 => (wallet, Command::run_due(now_ms)),
            85..90 => {
                let card_id = match rng.random_range(0..20) {
                    0..17 => "coffee",
                    17..19 => "tea",
                    _ => "none",
                };
                (
                    wallet,
                    Command::new(
                        key,
                        CommandBody::AddStamps { card_id: card_id.into(), count: rng.random_range(1..5), reason: "pos".into() },
                    ),
                )
            }
            90..94 => {
                let package_id = match rng.random_range(0..10) {
                    0..7 => "p-500",
                    7..9 => "p-old",
                    _ => "p-none",
                };
                (wallet, Command::new(key.clone(), CommandBody::PurchaseCredits { purchase_id: key, package_id: package_id.into() }))
            }
            94 => (wallet, Command::new(key, CommandBody::Close { reason: "bye".into() })),
            // A duplicate delivery of something sent before, verbatim.
            95..100 if !self.recent.is_empty() => {
                // Mostly one of the last few (a flushed offline queue), now and then an old one.
                let from = if rng.random_bool(0.8) { self.recent.len().saturating_sub(4) } else { 0 };
                self.recent[rng.random_range(from..self.recent.len())].clone()
            }
            _ => (wallet, Command::new(key, CommandBody::Redeem { points: rng.random_range(1..600), reward_ref: "reward".into() })),
        }
    }
}

/// Snapshots kept in memory in a serialized form, taken at random; counts how many were loaded.
#[derive(Debug)]
struct SimSnapshots {
    saved: parking_lot::Mutex<HashMap<StreamId, String>>,
    rng: parking_lot::Mutex<StdRng>,
    loaded: AtomicU64,
}

impl SimSnapshots {
    fn new(seed: u64) -> Self {
        Self { saved: parking_lot::Mutex::default(), rng: parking_lot::Mutex::new(StdRng::seed_from_u64(seed)), loaded: AtomicU64::new(0) }
    }
}

#[async_trait::async_trait]
impl Snapshots for SimSnapshots {
    async fn latest(&self, stream: &StreamId) -> Option<WalletState> {
        let json = self.saved.lock().get(stream).cloned()?;
        self.loaded.fetch_add(1, Ordering::Relaxed);
        Some(serde_json::from_str(&json).expect("a snapshot decodes"))
    }

    fn due(&self, _since: u64, passivating: bool) -> bool {
        self.rng.lock().random_bool(if passivating { 0.7 } else { 0.2 })
    }

    fn save(&self, stream: &StreamId, state: &WalletState) {
        self.saved.lock().insert(stream.clone(), serde_json::to_string(state).unwrap());
    }
}

/// What the wallet's actor must answer, from the fold of its log, at `now_ms`: the actor's own summary
/// of the folded state (the states are what is compared), with the customer as the wallet's key shows
/// it: its own reference while it has one, nothing once erased, and an erased wallet's key gone.
async fn expected_summary(
    store: &dyn EventStore,
    stream: &StreamId,
    state: &WalletState,
    now_ms: i64,
    program: &ProgramSettings,
) -> WalletSummary {
    let key = store.personal_keys(std::slice::from_ref(stream)).await.unwrap().pop().flatten();
    assert!(!(state.customer_erased && key.is_some()), "{stream}: erased, and its key is still there");
    let (customer_ref, customer_erased) = personal::shown_customer(state, stream.as_str(), key.as_ref()).unwrap();
    if !customer_erased && !state.customer_sealed.is_empty() {
        assert_eq!(customer_ref, format!("crm-{}", stream.as_str().rsplit('/').next().unwrap()), "{stream}: opens to its own");
    }
    WalletSummary { customer_ref, customer_erased, ..WalletSummary::of(state, now_ms, program) }
}

async fn check_views(
    seed: u64,
    (store, registry): (&dyn EventStore, &WalletRegistry),
    wallets: &[WalletKey],
    folded: &HashMap<String, WalletState>,
    now_ms: i64,
) {
    let settings: HashMap<TenantId, ProgramSettings> = program_settings().into_iter().collect();
    for wallet in wallets {
        let stream = codec::wallet_stream(&wallet.tenant, &wallet.wallet);
        let expected = folded.get(stream.as_str());
        match registry.summary(wallet).await {
            Ok(summary) => {
                let expected = expected.expect("a wallet with a summary has events");
                let expected = expected_summary(store, &stream, expected, now_ms, &settings[&wallet.tenant]).await;
                assert_eq!(summary, expected, "seed {seed}: {stream}");
            }
            Err(WalletError::Rejected(_)) => {
                assert!(expected.is_none_or(|s| s.status == WalletStatus::NotEnrolled), "seed {seed}: {stream}")
            }
            Err(other) => panic!("seed {seed}: {other}"),
        }
    }
}

/// The points add up: the balance is the lots (held points included) and pending credits less the
/// debt; held points are the open holds', pending points the pending credits'.
fn check_conserved(seed: u64, stream: &str, state: &WalletState) {
    let lots: i64 = state.lots().map(|(_, lot)| lot.points + lot.held).sum();
    assert_eq!(state.balance, lots + state.pending_points - state.debt, "seed {seed}: {stream} points do not add up: {state:?}");
    assert_eq!(state.held_points, state.lots().map(|(_, lot)| lot.held).sum::<i64>(), "seed {seed}: {stream} held in lots");
    assert_eq!(state.held_points, state.holds().map(|(_, hold)| hold.points).sum::<i64>(), "seed {seed}: {stream} held by holds");
    assert_eq!(state.pending_points, state.pending().map(|(_, p)| p.points).sum::<i64>(), "seed {seed}: {stream} pending");
    assert!(state.debt >= 0 && state.lots().all(|(_, lot)| lot.points >= 0 && lot.held >= 0), "seed {seed}: {stream}: {state:?}");
}

/// Folds `stream`'s first `cut` events, serializes that state as a snapshot store would, and applies the
/// rest: the result must be the full replay, byte for byte.
fn check_snapshot_and_tail(seed: u64, stream: &str, events: &[Event], cut: usize, full: &WalletState) {
    let mut state = WalletState::default();
    events[..cut].iter().for_each(|e| apply(&mut state, e));
    let bytes = serde_json::to_string(&state).unwrap();
    let mut restored: WalletState = serde_json::from_str(&bytes).unwrap();
    assert_eq!(restored, state, "seed {seed}: {stream} snapshot at version {cut} does not restore the state");
    events[cut..].iter().for_each(|e| apply(&mut restored, e));
    assert_eq!(&restored, full, "seed {seed}: {stream} snapshot at version {cut} + tail differs from the full replay");
    assert_eq!(serde_json::to_string(&restored).unwrap(), serde_json::to_string(full).unwrap(), "seed {seed}: {stream} bytes");
}

/// What one command appended: its key, when it was decided, and, if it captured or voided a hold, which.
#[derive(Debug, Clone)]
struct Appended {
    recorded_at_ms: i64,
    version: u64,
    ended_hold: Option<String>,
}

/// Counts of what happened, to show the run exercised what it checks.
#[derive(Debug, Default)]
struct Stats {
    /// Commands accepted (not replayed) by kind.
    accepted: BTreeMap<&'static str, usize>,
    replayed: usize,
    rejected: BTreeMap<String, usize>,
    unknown_outcomes: usize,
    events: BTreeMap<&'static str, usize>,
    holds_timed_out: usize,
    keys_appended_again: usize,
    snapshot_loads: u64,
}

async fn run(seed: u64) -> Stats {
    eprintln!("simulation seed = {seed} (replay with TALLY_SIM_SEED={seed})");
    let started = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    // Every other seed has tills that key by basket (`TALLY_SIM_BASKET_HOLDS=1`: every seed).
    let basket_holds = seed.is_multiple_of(2) || std::env::var_os("TALLY_SIM_BASKET_HOLDS").is_some();
    let faults = FaultPlan { seed, fail_before_write_per_mille: 40, fail_after_write_per_mille: 40 };
    let store = Arc::new(InMemoryStore::with_faults(faults));
    let clock = Arc::new(ManualClock::new(START_MS));
    let snapshots = Arc::new(SimSnapshots::new(seed));
    // A small bound forces constant passivation and recovery (from snapshot + tail) under load.
    let config = RegistryConfig { active_wallets_max: 20, ..RegistryConfig::default() };
    let registry = WalletRegistry::start_with_snapshots(config, store.clone(), programs(), clock.clone(), snapshots.clone()).await.unwrap();
    let wallets: Vec<WalletKey> = (0..WALLETS)
        .map(|i| WalletKey::new(if i % 2 == 0 { lenient() } else { strict() }, WalletId::parse(&format!("w{i}")).unwrap()))
        .collect();

    let (early, late): (Vec<WalletKey>, Vec<WalletKey>) = wallets.iter().cloned().partition(|_| rng.random_bool(0.85));
    for wallet in &early {
        let enroll = Command::new("enroll", CommandBody::enroll(format!("crm-{}", wallet.wallet)));
        while let Err(WalletError::Store(_)) = registry.execute(wallet, enroll.clone(), CommandMeta::default()).await {}
    }
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|id| Client {
            id,
            rng: StdRng::seed_from_u64(rng.random()),
            wallets: wallets.clone(),
            late: late.clone(),
            sent: 0,
            basket: 0,
            customer: wallets[0].clone(),
            orders: Vec::new(),
            sources: Vec::new(),
            holds: Vec::new(),
            recent: Vec::new(),
            follow_up: None,
            basket_holds,
            acknowledged: Vec::new(),
            rejected: BTreeMap::new(),
            unknown_outcomes: 0,
        })
        .collect();
    // Rounds of visits, the clients' at the same time, then the clock moves on.
    let mut rounds = 0;
    while clients.iter().any(|c| c.sent < COMMANDS_PER_CLIENT) {
        let visits = clients.iter_mut().filter(|c| c.sent < COMMANDS_PER_CLIENT).map(|c| c.visit(&registry, &clock, seed));
        futures::future::join_all(visits).await;
        clock.advance_ms(round_step(&mut rng));
        rounds += 1;
    }
    let mut acknowledged = Vec::new();
    let mut stats = Stats::default();
    for client in clients {
        acknowledged.extend(client.acknowledged);
        client.rejected.into_iter().for_each(|(kind, n)| *stats.rejected.entry(kind).or_default() += n);
        stats.unknown_outcomes += client.unknown_outcomes;
    }
    for (_, command, _) in acknowledged.iter().filter(|(_, _, outcome)| !outcome.replayed) {
        *stats.accepted.entry(command.kind()).or_default() += 1;
    }
    stats.replayed = acknowledged.iter().filter(|(_, _, outcome)| outcome.replayed).count();
    let registry_stats = registry.stats();
    assert!(stats.unknown_outcomes > 0 && registry_stats.passivations > 0, "seed {seed}: the faults and passivation were exercised");

    // Global checks against the log, the only source of truth.
    let log = store.all_events();
    let settings: HashMap<TenantId, ProgramSettings> = program_settings().into_iter().collect();
    let mut folded: HashMap<String, WalletState> = HashMap::new();
    let mut events: HashMap<String, Vec<Event>> = HashMap::new();
    let mut deltas: HashMap<String, i64> = HashMap::new();
    // Per stream: each key's last command, and the version each hold id was last authorized at.
    let mut appended: HashMap<String, HashMap<String, Appended>> = HashMap::new();
    let mut authorized: HashMap<String, HashMap<String, u64>> = HashMap::new();
    let mut claims: HashMap<(TenantId, String), String> = HashMap::new();
    for (i, recorded) in log.iter().enumerate() {
        assert_eq!(recorded.global_position, i as u64 + 1, "seed {seed}: dense global log");
        let stream = recorded.stream_id.as_str().to_owned();
        let tenant = TenantId::parse(stream.split('/').next().unwrap()).unwrap();
        // An order id's claim: once, on its own stream, before the wallet's earn.
        let Some((_, wallet_id)) = codec::wallet_of(&stream) else {
            let claim = codec::decode_claim(recorded.clone()).unwrap();
            assert_eq!(recorded.stream_version, 1, "seed {seed}: an order is claimed once: {stream}");
            claims.insert((tenant, claim.order_id), claim.wallet_id);
            continue;
        };
        let state = folded.entry(stream.clone()).or_default();
        assert_eq!(recorded.stream_version, state.version + 1, "seed {seed}: dense stream {stream}");
        let event = codec::decode(recorded.clone()).unwrap();
        if let Change::Earned(PointsEarned { order: Some(_), source_ref, .. }) = &event.change {
            let holder = claims.get(&(tenant.clone(), source_ref.clone()));
            assert_eq!(holder.map(String::as_str), Some(wallet_id.as_str()), "seed {seed}: {stream} earned for an order claimed elsewhere");
        }
        let stream_events = events.entry(stream.clone()).or_default();
        let first_of_command = stream_events
            .last()
            .is_none_or(|last| last.idempotency_key != event.idempotency_key || last.recorded_at_ms != event.recorded_at_ms);
        if first_of_command {
            // After every command nothing due is left undone.
            if let Some(last) = stream_events.last() {
                let now = last.recorded_at_ms;
                assert!(state.next_due_ms().is_none_or(|due| due > now), "seed {seed}: {stream} left something due after {last:?}");
            }
            // A key is appended again only once its receipt is forgotten, or, for a hold's capture or
            // void, once the hold id was authorized again.
            let keys = appended.entry(stream.clone()).or_default();
            if let Some(before) = keys.get(&event.idempotency_key) {
                let forgotten = event.recorded_at_ms - before.recorded_at_ms > RECEIPT_RETENTION_MS;
                let hold_again = before
                    .ended_hold
                    .as_ref()
                    .is_some_and(|hold| authorized.get(&stream).and_then(|a| a.get(hold)).is_some_and(|at| *at > before.version));
                assert!(
                    forgotten || hold_again,
                    "seed {seed}: key {} appended twice to {stream} ({before:?}, then {event:?}): a retry was applied again",
                    event.idempotency_key
                );
                stats.keys_appended_again += 1;
            }
            keys.insert(
                event.idempotency_key.clone(),
                Appended { recorded_at_ms: event.recorded_at_ms, version: state.version + 1, ended_hold: None },
            );
        }
        *deltas.entry(stream.clone()).or_default() += event.change.points_delta();
        *stats.events.entry(event.change.event_type().trim_start_matches("tally.v1.")).or_default() += 1;
        match &event.change {
            Change::Reversed(r) => {
                assert_eq!(r.requested_points, r.reversed_points + r.shortfall_points, "seed {seed}: {stream}");
                if settings[&tenant].return_policy == ReturnPolicy::AllowNegative {
                    assert_eq!(r.shortfall_points, 0, "seed {seed}: {stream} allows negative balances");
                }
            }
            Change::Held(h) => _ = authorized.entry(stream.clone()).or_default().insert(h.hold_id.clone(), state.version + 1),
            Change::Released(r) if r.reason == HoldEnd::Expired as i32 => stats.holds_timed_out += 1,
            _ => {}
        }
        // The capture or void (by its own key) of a hold; a hold's timeout released by another command is not.
        let ended_hold = match &event.change {
            Change::Captured(c) => Some(c.hold_id.clone()),
            Change::Released(r) if r.reason == HoldEnd::Voided as i32 => Some(r.hold_id.clone()),
            _ => None,
        };
        if let Some(hold) = ended_hold {
            let keys = appended.get_mut(&stream).unwrap();
            keys.get_mut(&event.idempotency_key).unwrap().ended_hold = Some(hold);
        }
        apply(state, &event);
        check_conserved(seed, &stream, state);
        if settings[&tenant].return_policy == ReturnPolicy::CapAtZero {
            assert!(state.balance >= 0, "seed {seed}: cap-at-zero wallet {stream} went negative");
        }
        stream_events.push(event);
    }
    for (stream, state) in &folded {
        assert_eq!(state.balance, deltas[stream], "seed {seed}: balance of {stream} is the sum of its movements");
        let last = events[stream].last().unwrap().recorded_at_ms;
        assert!(state.next_due_ms().is_none_or(|due| due > last), "seed {seed}: {stream} left something due");
    }
    // Erasures met everything else: some customers were forgotten, others kept their sealed reference.
    assert!(folded.values().any(|s| s.customer_erased), "seed {seed}: no customer was erased");
    assert!(folded.values().any(|s| !s.customer_erased && !s.customer_sealed.is_empty()), "seed {seed}: none kept their data");
    // Snapshot + tail == full replay, at random points of every wallet's log.
    for (stream, stream_events) in &events {
        for _ in 0..SNAPSHOT_CUTS {
            check_snapshot_and_tail(seed, stream, stream_events, rng.random_range(0..=stream_events.len()), &folded[stream]);
        }
    }
    // Every acknowledged command is in the log where its reply said.
    for (wallet, command, outcome) in &acknowledged {
        for stored in &outcome.events {
            let recorded = &log[(stored.position - 1) as usize];
            assert_eq!(recorded.stream_id, codec::wallet_stream(&wallet.tenant, &wallet.wallet), "seed {seed}");
            assert_eq!(recorded.data.idempotency_key, command.idempotency_key, "seed {seed}");
        }
    }
    // The actors' view equals the fold of the log, live and after restarts: from the snapshots taken
    // during the run (snapshot + tail), then from scratch.
    let now_ms = clock.now_ms();
    check_views(seed, (store.as_ref(), &registry), &wallets, &folded, now_ms).await;
    registry.shutdown().await;
    let loaded_live = snapshots.loaded.load(Ordering::Relaxed);
    let restarted =
        WalletRegistry::start_with_snapshots(RegistryConfig::default(), store.clone(), programs(), clock.clone(), snapshots.clone())
            .await
            .unwrap();
    check_views(seed, (store.as_ref(), &restarted), &wallets, &folded, now_ms).await;
    restarted.shutdown().await;
    stats.snapshot_loads = snapshots.loaded.load(Ordering::Relaxed);
    assert!(loaded_live > 0 && stats.snapshot_loads > loaded_live, "seed {seed}: wallets recovered from snapshots");
    let replayed = WalletRegistry::start_with_snapshots(RegistryConfig::default(), store.clone(), programs(), clock, Arc::new(NoSnapshots))
        .await
        .unwrap();
    check_views(seed, (store.as_ref(), &replayed), &wallets, &folded, now_ms).await;
    replayed.shutdown().await;
    let days = (now_ms - START_MS) / DAY;
    eprintln!("seed {seed}: {days} days in {rounds} rounds, simulated in {:.1?}, {registry_stats:?}, {stats:?}", started.elapsed());
    // The run exercised what it checks: every command accepted, time's every transition recorded.
    let kinds = ["enroll", "earn", "redeem", "adjust", "reverse", "close", "earn_for_order", "refund_order", "authorize_redemption"];
    let kinds =
        kinds.into_iter().chain(["capture_redemption", "void_redemption", "run_due", "add_stamps", "purchase_credits", "erase_customer"]);
    // (Every wallet may have been enrolled by the set-up: then no drawn Enroll can be accepted.)
    let enrolled_by_setup = |kind: &&str| *kind == "enroll" && stats.events.contains_key("WalletEnrolledV2");
    let missing: Vec<&str> = kinds.filter(|kind| !stats.accepted.contains_key(kind) && !enrolled_by_setup(kind)).collect();
    assert!(missing.is_empty(), "seed {seed}: no {missing:?} accepted");
    let happened = ["PointsExpired", "PointsExpiringSoon", "PointsMatured", "TierChanged", "TierReviewed", "StampCardCompleted"];
    let missing: Vec<&str> = happened.into_iter().filter(|kind| !stats.events.contains_key(kind)).collect();
    assert!(missing.is_empty() && stats.holds_timed_out > 0 && stats.replayed > 0, "seed {seed}: no {missing:?}: {stats:?}");
    stats
}

#[test]
fn seeded_simulation() {
    let seeds: Vec<u64> = match std::env::var("TALLY_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("TALLY_SIM_SEED is a u64")],
        Err(_) => {
            // Four seeds keep the default run as short as the simpler simulation's eight were.
            let count = std::env::var("TALLY_SIM_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(4u64);
            (0..count).map(|i| 0x5eed_0000 + i).collect()
        }
    };
    for seed in seeds {
        // One thread: scheduling is the same on every run of a seed.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(seed));
    }
}
