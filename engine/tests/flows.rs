//! The process manager through its front door (`Flows`) on a real registry: reward redemptions end once,
//! whatever stops them on the way. A crash is a crash point that stops the flow where it is, then a new
//! registry and a new `Flows` on the same log, whose resumer must finish it — or compensate it — exactly
//! once: no points and no stock created or lost.

use std::collections::BTreeMap;
use std::sync::Arc;

use flow_node::{Node, tenant, wallet};
use proptest::prelude::*;
use tally_engine::actors::{CRASH_POINTS, CommandMeta, FlowError, WalletKey};
use tally_engine::clock::{Clock, ManualClock};
use tally_engine::domain::{Command, CommandBody, ProgramSettings, RewardDefined, WalletId};
use tally_engine::limits::FLOW_RESUME_AFTER_MS;
use tally_engine::store::{EventStore, InMemoryStore};
use tally_proto::v1::FlowOutcome;

mod flow_node;

const START_MS: i64 = 1_700_000_000_000;

fn reward(id: &str, points: i64, limited_stock: bool, per_customer_max: i64) -> (String, RewardDefined) {
    let reward = RewardDefined {
        reward_id: id.into(),
        name: id.into(),
        points,
        limited_stock,
        per_customer_max,
        available_from_ms: 0,
        available_until_ms: 0,
        min_tier_id: String::new(),
        active: true,
        // Mugs can be brought back within a week; the rest cannot.
        cancel_window_days: if id == "mug" { 7 } else { 0 },
    };
    (id.to_owned(), reward)
}

fn program() -> ProgramSettings {
    let rewards = [reward("mug", 120, true, 0), reward("tote", 50, false, 2), reward("cap", 70, true, 1)].into_iter().collect();
    // Earned points expire 30 days after they were earned, at the end of that day's month.
    let expiry = tally_engine::domain::ExpiryPolicy {
        rule: Some(tally_proto::v1::expiry_policy::Rule::After(tally_proto::v1::ExpireAfter { months: 0, days: 30, at_month_end: false })),
        notice_days: 0,
    };
    let package = tally_engine::domain::CreditPackageDefined {
        package_id: "p-100".into(),
        name: "100 points".into(),
        price: Some(tally_engine::domain::Money { amount_minor: 100, currency: "EUR".into() }),
        points: 100,
        active: true,
    };
    let packages = Arc::new([("p-100".to_owned(), package)].into_iter().collect());
    ProgramSettings { rewards: Arc::new(rewards), expiry, packages, ..ProgramSettings::default() }
}

async fn node(store: &Arc<dyn EventStore>, clock: &Arc<ManualClock>, crash_at: Option<&'static str>) -> Node {
    flow_node::start(store, clock, crash_at, program()).await
}

fn completed(redemption: &tally_engine::actors::Redemption) -> bool {
    redemption.ended.outcome == FlowOutcome::Completed as i32
}

fn refusal(redemption: &tally_engine::actors::Redemption) -> String {
    redemption.ended.refusal.as_ref().map(|r| r.code.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redemption_debits_and_takes_stock_once_and_a_retry_answers_the_same() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = node(&store, &clock, None).await;
    node.open_wallet("ann", 300).await;
    node.restock("mug", 2).await;

    let first = node.redeem("ann", "mug", "r-1").await.unwrap();
    assert!(completed(&first) && !first.replayed, "{first:?}");
    assert_eq!((first.ended.points, first.ended.balance), (120, 180));
    let again = node.redeem("ann", "mug", "r-1").await.unwrap();
    assert!(again.replayed && again.ended == first.ended && again.position == first.position);
    assert_eq!(node.balance("ann").await, 180);
    let stock = node.flows.stock(&tenant(), "mug").await.unwrap();
    assert_eq!((stock.on_hand, stock.reserved, stock.taken), (1, 0, 1));

    // The same id for another wallet or reward is refused; an unknown reward records nothing.
    assert!(matches!(node.redeem("ann", "tote", "r-1").await, Err(FlowError::FlowIdReused { .. })));
    assert!(matches!(node.redeem("ann", "nothing", "r-2").await, Err(FlowError::Rejected(_))));
    assert_eq!(store.stream_version(&tally_engine::codec::flow_stream(&tenant(), "r-2").unwrap()).await.unwrap(), 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_takes_nothing() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = node(&store, &clock, None).await;
    node.open_wallet("ann", 100).await;
    node.open_wallet("bob", 1_000).await;
    node.restock("mug", 1).await;
    node.restock("cap", 5).await;

    let poor = node.redeem("ann", "mug", "r-1").await.unwrap();
    assert_eq!(refusal(&poor), "INSUFFICIENT_POINTS");
    let stock = node.flows.stock(&tenant(), "mug").await.unwrap();
    assert_eq!((stock.on_hand, stock.reserved, stock.taken), (1, 0, 0), "the reservation was released");
    assert!(completed(&node.redeem("bob", "mug", "r-2").await.unwrap()));
    let out = node.redeem("bob", "mug", "r-3").await.unwrap();
    assert_eq!(refusal(&out), "OUT_OF_STOCK");
    assert_eq!(node.balance("bob").await, 880, "only the completed redemption was paid");
    // Per customer: one cap each.
    assert!(completed(&node.redeem("bob", "cap", "r-4").await.unwrap()));
    assert_eq!(refusal(&node.redeem("bob", "cap", "r-5").await.unwrap()), "REWARD_LIMIT_REACHED");
    let caps = node.flows.stock(&tenant(), "cap").await.unwrap();
    assert_eq!((caps.on_hand, caps.reserved, caps.taken), (4, 0, 1));
    // An unlimited reward has no stock to reserve.
    assert!(completed(&node.redeem("bob", "tote", "r-6").await.unwrap()));
    let nobody = node.redeem("nobody", "tote", "r-7").await;
    assert!(matches!(nobody, Err(FlowError::Rejected(tally_engine::domain::Rejection::WalletNotFound))), "nothing started: {nobody:?}");
    assert_eq!(node.balance("ann").await, 100);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_redemption_is_cancelled_once_within_its_window() {
    use tally_engine::domain::flows::CancelRefusal;
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = node(&store, &clock, None).await;
    node.open_wallet("ann", 300).await;
    node.restock("mug", 1).await;
    let earned_lot_expiry = || async {
        let summary = node.registry.summary(&WalletKey::new(tenant(), wallet("ann"))).await.unwrap();
        summary.upcoming_expiries.clone()
    };
    let before = earned_lot_expiry().await;
    assert!(completed(&node.redeem("ann", "mug", "r-1").await.unwrap()));
    clock.advance_ms(86_400_000);

    let cancelled = node.cancel("ann", "r-1").await.unwrap();
    assert_eq!(cancelled.ended.outcome, FlowOutcome::Cancelled as i32);
    assert_eq!((cancelled.ended.points, cancelled.ended.balance, cancelled.replayed), (120, 300, false));
    assert_eq!(earned_lot_expiry().await, before, "the points came back expiring when they would have");
    let again = node.cancel("ann", "r-1").await.unwrap();
    assert!(again.replayed && again.ended == cancelled.ended);
    let stock = node.flows.stock(&tenant(), "mug").await.unwrap();
    assert_eq!((stock.on_hand, stock.reserved, stock.taken), (1, 0, 0), "the mug is back on the shelf");
    let redeemed = node.redeem("ann", "mug", "r-1").await.unwrap();
    assert!(redeemed.replayed && completed(&redeemed), "the redemption's own answer stays");

    // The mug can be redeemed again, and that redemption not cancelled after a week.
    assert!(completed(&node.redeem("ann", "mug", "r-2").await.unwrap()));
    clock.advance_ms(7 * 86_400_000);
    assert!(matches!(node.cancel("ann", "r-2").await, Err(FlowError::Cancel(CancelRefusal::WindowClosed { .. }))));
    // Nothing else can be cancelled: another wallet's, a refused one, a reward that allows none, none.
    node.open_wallet("bob", 10).await;
    assert!(matches!(node.cancel("bob", "r-2").await, Err(FlowError::Cancel(CancelRefusal::NotFound(_)))));
    assert!(!completed(&node.redeem("bob", "tote", "r-3").await.unwrap()));
    assert!(matches!(node.cancel("bob", "r-3").await, Err(FlowError::Cancel(CancelRefusal::NotCompleted(_)))));
    assert!(completed(&node.redeem("ann", "tote", "r-4").await.unwrap()));
    assert!(matches!(node.cancel("ann", "r-4").await, Err(FlowError::Cancel(CancelRefusal::NotCancellable))));
    assert!(matches!(node.cancel("ann", "r-9").await, Err(FlowError::Cancel(CancelRefusal::NotFound(_)))));
    assert_eq!(node.balance("ann").await, 300 - 120 - 50);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_given_back_after_their_time_expire_with_the_cancellation() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = node(&store, &clock, None).await;
    node.open_wallet("ann", 300).await;
    node.restock("mug", 1).await;
    clock.advance_ms(28 * 86_400_000);
    assert!(completed(&node.redeem("ann", "mug", "r-1").await.unwrap()));
    clock.advance_ms(3 * 86_400_000);
    // The rest of the lot expired meanwhile; the 120 given back are past their time too.
    let cancelled = node.cancel("ann", "r-1").await.unwrap();
    assert_eq!(cancelled.ended.outcome, FlowOutcome::Cancelled as i32);
    let summary = node.registry.summary(&WalletKey::new(tenant(), wallet("ann"))).await.unwrap();
    assert_eq!((summary.balance, summary.lifetime_expired, summary.lifetime_redeemed), (0, 300, 0), "{summary:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchased_points_given_back_stay_purchased() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = node(&store, &clock, None).await;
    node.open_wallet("ann", 50).await;
    let key = WalletKey::new(tenant(), wallet("ann"));
    let purchase = Command::new("pay-1", CommandBody::PurchaseCredits { purchase_id: "pay-1".into(), package_id: "p-100".into() });
    node.registry.execute(&key, purchase, CommandMeta::default()).await.unwrap();
    node.restock("mug", 1).await;
    // The mug takes the 50 earned points (they expire first) and 70 purchased ones.
    assert!(completed(&node.redeem("ann", "mug", "r-1").await.unwrap()));
    let cancelled = node.cancel("ann", "r-1").await.unwrap();
    assert_eq!((cancelled.ended.outcome, cancelled.ended.points), (FlowOutcome::Cancelled as i32, 120));
    let summary = node.registry.summary(&key).await.unwrap();
    assert_eq!(summary.upcoming_expiries, [(START_MS + 30 * 86_400_000, 50)], "only the earned points expire, when they would have");
    clock.advance_ms(31 * 86_400_000);
    node.registry.execute(&key, Command::run_due(clock.now_ms()), CommandMeta::default()).await.unwrap();
    let summary = node.registry.summary(&key).await.unwrap();
    assert_eq!((summary.balance, summary.lifetime_expired), (100, 50), "the purchased points stayed purchased: {summary:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_cancelling_one_redemption_at_once_give_it_back_once() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let (a, b) = (Arc::new(node(&store, &clock, None).await), Arc::new(node(&store, &clock, None).await));
    a.open_wallet("ann", 500).await;
    a.restock("mug", 4).await;
    for i in 0..4 {
        assert!(completed(&a.redeem("ann", "mug", &format!("r-{i}")).await.unwrap()));
    }
    let mut calls = Vec::new();
    for i in 0..4 {
        for node in [&a, &b] {
            let node = Arc::clone(node);
            calls.push(tokio::spawn(async move { node.cancel("ann", &format!("r-{i}")).await }));
        }
    }
    for call in calls {
        let _ = call.await.unwrap();
    }
    for i in 0..4 {
        let (x, y) = (a.cancel("ann", &format!("r-{i}")).await.unwrap(), b.cancel("ann", &format!("r-{i}")).await.unwrap());
        assert_eq!((x.ended.outcome, x.ended.points), (FlowOutcome::Cancelled as i32, 120));
        assert_eq!(x.ended, y.ended, "both nodes answer the same");
    }
    let events = store.read_stream(&tally_engine::codec::wallet_stream(&tenant(), &wallet("ann")), 1, 1_000).await.unwrap();
    let given: i64 = events
        .into_iter()
        .map(|e| tally_engine::codec::decode(e).unwrap())
        .filter_map(|e| if let tally_engine::domain::Change::RewardCancelled(c) = e.change { Some(c.points) } else { None })
        .sum();
    assert_eq!(given, 4 * 120, "each redemption given back once");
    let stock = a.flows.stock(&tenant(), "mug").await.unwrap();
    assert_eq!((stock.on_hand, stock.reserved, stock.taken), (4, 0, 0));
}

/// Cancels a completed redemption, stopping at `point`, restarts the node and lets the resumer end it;
/// the balance and the stock after.
async fn cancel_crash_and_resume(point: &'static str) -> (i64, (i64, i64, i64), usize) {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let first = node(&store, &clock, Some(point)).await;
    first.open_wallet("ann", 500).await;
    first.restock("mug", 3).await;
    assert!(completed(&first.redeem("ann", "mug", "r-1").await.unwrap()));
    let stopped = first.cancel("ann", "r-1").await;
    first.stop().await;
    assert!(matches!(stopped, Err(FlowError::Interrupted { .. })), "{point}: {stopped:?}");
    clock.advance_ms(FLOW_RESUME_AFTER_MS);
    let second = node(&store, &clock, None).await;
    second.settled(&store).await;
    let again = second.cancel("ann", "r-1").await.unwrap();
    assert!(again.replayed, "{point}: the resumer ended it");
    let stock = second.flows.stock(&tenant(), "mug").await.unwrap();
    let events = store.read_stream(&tally_engine::codec::wallet_stream(&tenant(), &wallet("ann")), 1, 100).await.unwrap();
    let refunds = events.iter().filter(|e| e.data.event_type == "tally.v1.RewardRedemptionCancelled").count();
    let balance = second.balance("ann").await;
    second.stop().await;
    (balance, (stock.on_hand, stock.reserved, stock.taken), refunds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_any_two_steps_of_a_cancellation_ends_it_exactly_once() {
    let runs: Vec<_> =
        tally_engine::actors::CANCEL_CRASH_POINTS.iter().map(|point| (*point, tokio::spawn(cancel_crash_and_resume(point)))).collect();
    for (point, run) in runs {
        assert_eq!(run.await.unwrap(), (500, (3, 0, 0), 1), "crashed at {point}");
    }
}

/// Stops a redemption at `point`, restarts the node, lets the resumer end it; what it cost and what
/// stock it took, read back.
async fn crash_and_resume(point: &'static str, points: i64) -> (bool, i64, (i64, i64, i64), usize) {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let first = node(&store, &clock, Some(point)).await;
    first.open_wallet("ann", points).await;
    first.restock("mug", 3).await;
    let stopped = first.redeem("ann", "mug", "r-1").await;
    first.stop().await;
    let interrupted = matches!(stopped, Err(FlowError::Interrupted { .. }));

    clock.advance_ms(FLOW_RESUME_AFTER_MS);
    let second = node(&store, &clock, None).await;
    second.settled(&store).await;
    let ended = second.redeem("ann", "mug", "r-1").await.unwrap();
    assert!(ended.replayed, "{point}: the resumer ended it");
    let stock = second.flows.stock(&tenant(), "mug").await.unwrap();
    let balance = second.balance("ann").await;
    let debits = store.read_stream(&tally_engine::codec::wallet_stream(&tenant(), &wallet("ann")), 1, 100).await.unwrap();
    let redeemed = debits.iter().filter(|e| e.data.event_type == "tally.v1.PointsRedeemed").count();
    second.stop().await;
    assert!(interrupted, "{point}: the crash point was reached");
    (completed(&ended), balance, (stock.on_hand, stock.reserved, stock.taken), redeemed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_any_two_steps_ends_the_redemption_exactly_once() {
    // Paid (enough points), and refused (too few: the stock comes back, nothing is debited).
    let runs: Vec<_> = [500, 100]
        .into_iter()
        .flat_map(|points| CRASH_POINTS.iter().map(move |point| (points, *point, tokio::spawn(crash_and_resume(point, points)))))
        .collect();
    for (points, point, run) in runs {
        let expected = if points == 500 { (true, 380, (2, 0, 1), 1) } else { (false, 100, (3, 0, 0), 0) };
        assert_eq!(run.await.unwrap(), expected, "{points} points, crashed at {point}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_redemptions_of_a_hundred_in_stock_take_exactly_a_hundred() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = Arc::new(node(&store, &clock, None).await);
    for i in 0..50 {
        node.open_wallet(&format!("w-{i}"), 100_000).await;
    }
    node.restock("mug", 100).await;
    let calls = (0..1_000).map(|i| {
        let node = Arc::clone(&node);
        tokio::spawn(async move { node.redeem(&format!("w-{}", i % 50), "mug", &format!("r-{i}")).await.unwrap() })
    });
    let mut ended = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        ended.push(call.await.unwrap());
    }
    assert_eq!(ended.iter().filter(|r| completed(r)).count(), 100);
    assert!(ended.iter().filter(|r| !completed(r)).all(|r| refusal(r) == "OUT_OF_STOCK"));
    let stock = node.flows.stock(&tenant(), "mug").await.unwrap();
    assert_eq!((stock.on_hand, stock.reserved, stock.taken), (0, 0, 100));
    let mut spent = 0;
    for i in 0..50 {
        spent += 100_000 - node.balance(&format!("w-{i}")).await;
    }
    assert_eq!(spent, 100 * 120, "every completed redemption paid once, no refused one paid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_driving_the_same_redemptions_at_once_agree_with_the_wallet() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let (a, b) = (Arc::new(node(&store, &clock, None).await), Arc::new(node(&store, &clock, None).await));
    // Each wallet can pay for one mug and a half: whether a second one is paid depends on an earn that
    // lands while both nodes drive the redemptions.
    for w in 0..6 {
        a.open_wallet(&format!("w-{w}"), 180).await;
    }
    a.restock("mug", 20).await;
    let mut calls = Vec::new();
    for i in 0..24 {
        let wallet = format!("w-{}", i % 6);
        let id = format!("r-{i}");
        for node in [&a, &b] {
            let (node, wallet, id) = (Arc::clone(node), wallet.clone(), id.clone());
            calls.push(tokio::spawn(async move { node.redeem(&wallet, "mug", &id).await }));
        }
        if i % 6 == 5 {
            let earner = Arc::clone(if i % 12 == 5 { &a } else { &b });
            let key = WalletKey::new(tenant(), format!("w-{}", i / 6).parse_wallet());
            let earn = CommandBody::Earn { points: 60, reason: "late order".into(), source_ref: format!("late-{i}"), order_amount: None };
            calls.push(tokio::spawn(async move {
                earner.registry.execute(&key, Command::new(format!("late-{i}"), earn), CommandMeta::default()).await.unwrap();
                Err(FlowError::NotStarted { reason: "an earn, not a redemption".into() })
            }));
        }
    }
    for call in calls {
        let _ = call.await.unwrap();
    }
    // Whatever each node heard, the log holds one answer per redemption, and it is the wallet's.
    let mut completed = 0;
    let mut paid_by = Vec::new();
    for i in 0..24 {
        let wallet = format!("w-{}", i % 6);
        let ended = a.redeem(&wallet, "mug", &format!("r-{i}")).await.unwrap();
        let again = b.redeem(&wallet, "mug", &format!("r-{i}")).await.unwrap();
        assert_eq!(ended.ended, again.ended, "both nodes answer the same");
        let events =
            store.read_stream(&tally_engine::codec::wallet_stream(&tenant(), &wallet.clone().parse_wallet()), 1, 1_000).await.unwrap();
        let key = tally_engine::domain::reward_debit_key(&format!("r-{i}"));
        let answers: Vec<_> = events.iter().filter(|e| e.data.idempotency_key == key).map(|e| e.data.event_type.clone()).collect();
        let paid = completed_flow(&ended);
        assert_eq!(answers, [if paid { "tally.v1.PointsRedeemed" } else { "tally.v1.RewardRedemptionRefused" }], "r-{i}");
        completed += usize::from(paid);
        paid_by.push((i % 6, paid));
    }
    let stock = a.flows.stock(&tenant(), "mug").await.unwrap();
    assert_eq!((stock.reserved, stock.taken, stock.on_hand), (0, completed as i64, 20 - completed as i64));
    let mut spent = 0;
    let mut balances = Vec::new();
    for w in 0..6 {
        // From the log: each node's actor knows only what it wrote or caught up with.
        let stream = tally_engine::codec::wallet_stream(&tenant(), &format!("w-{w}").parse_wallet());
        let events = store.read_stream(&stream, 1, 1_000).await.unwrap();
        let balance: i64 = events.into_iter().map(|e| tally_engine::codec::decode(e).unwrap().change.points_delta()).sum();
        balances.push(balance);
        spent += 180 + 60 * i64::from(w < 4) - balance;
    }
    assert_eq!(spent, 120 * completed as i64, "every paid redemption paid once: balances {balances:?}, {paid_by:?}");
}

fn completed_flow(redemption: &tally_engine::actors::Redemption) -> bool {
    completed(redemption)
}

trait ParseWallet {
    fn parse_wallet(self) -> WalletId;
}

impl ParseWallet for String {
    fn parse_wallet(self) -> WalletId {
        WalletId::parse(&self).unwrap()
    }
}

/// One redemption of a random run: who, what, and where (if anywhere) the node dies during it.
#[derive(Debug, Clone)]
struct Step {
    wallet: usize,
    reward: &'static str,
    crash: Option<&'static str>,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (
        0..3usize,
        prop_oneof![Just("mug"), Just("tote"), Just("cap")],
        proptest::option::weighted(0.4, proptest::sample::select(CRASH_POINTS.to_vec())),
    )
        .prop_map(|(wallet, reward, crash)| Step { wallet, reward, crash });
    proptest::collection::vec(step, 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random redemptions of three wallets and three rewards, the node dying during some of them: once
    /// everything settled, every redemption ended once, each wallet paid exactly what its completed
    /// redemptions cost, and each limited reward's stock adds up (nothing reserved is left behind).
    #[test]
    fn random_redemptions_with_crashes_conserve_points_and_stock(steps in steps()) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let store: Arc<dyn EventStore> = InMemoryStore::new();
            let clock = Arc::new(ManualClock::new(START_MS));
            let costs: BTreeMap<&str, i64> = [("mug", 120), ("tote", 50), ("cap", 70)].into_iter().collect();
            let funds = [400, 150, 1_000];
            let setup = node(&store, &clock, None).await;
            for (i, funds) in funds.iter().enumerate() {
                setup.open_wallet(&format!("w-{i}"), *funds).await;
            }
            setup.restock("mug", 3).await;
            setup.restock("cap", 2).await;
            setup.stop().await;
            for (i, step) in steps.iter().enumerate() {
                let node = node(&store, &clock, step.crash).await;
                let _ = node.redeem(&format!("w-{}", step.wallet), step.reward, &format!("r-{i}")).await;
                node.stop().await;
            }
            clock.advance_ms(FLOW_RESUME_AFTER_MS);
            let last = node(&store, &clock, None).await;
            last.settled(&store).await;
            let mut paid = [0i64; 3];
            let mut taken: BTreeMap<&str, i64> = BTreeMap::new();
            for (i, step) in steps.iter().enumerate() {
                let ended = last.redeem(&format!("w-{}", step.wallet), step.reward, &format!("r-{i}")).await.unwrap();
                prop_assert!(ended.replayed, "redemption {} ended before its retry", i);
                if completed(&ended) {
                    prop_assert_eq!(ended.ended.points, costs[step.reward]);
                    paid[step.wallet] += costs[step.reward];
                    *taken.entry(step.reward).or_default() += 1;
                }
            }
            for (i, funds) in funds.iter().enumerate() {
                prop_assert_eq!(last.balance(&format!("w-{i}")).await, funds - paid[i], "wallet {}", i);
            }
            for (reward, restocked) in [("mug", 3), ("cap", 2)] {
                let stock = last.flows.stock(&tenant(), reward).await.unwrap();
                prop_assert_eq!(stock.reserved, 0);
                prop_assert_eq!(stock.taken, taken.get(reward).copied().unwrap_or(0));
                prop_assert_eq!(stock.on_hand + stock.taken, restocked);
            }
            last.stop().await;
            Ok(())
        })?;
    }
}
