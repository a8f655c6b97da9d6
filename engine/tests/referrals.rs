//! Referrals through the engine: the referee's first order the program counts converts the referral in
//! its own append (the referee's bonus), and the flow that follows gives the referrer its reward exactly
//! once — whether the call that converted drives it, dies at any point of it, or dies before starting
//! it (the log calls for it, and a node starts it).

use std::sync::Arc;
use std::time::Duration;

use flow_node::{Node, tenant, wallet};
use tally_engine::actors::{CommandMeta, CommandOutcome, REFERRAL_CRASH_POINTS, WalletKey};
use tally_engine::clock::{Clock, ManualClock};
use tally_engine::codec;
use tally_engine::domain::rules::{Order, OrderLine};
use tally_engine::domain::{Change, Command, CommandBody, ProgramSettings, ReferralPolicySet};
use tally_engine::limits::FLOW_RESUME_AFTER_MS;
use tally_engine::store::{EventStore, InMemoryStore};
use tally_proto::v1::FlowOutcome;

mod flow_node;

const START_MS: i64 = 1_700_000_000_000;
const REWARD_KEY: &str = "tally:referral:bob:reward";

/// Referrals give the referrer 100 points and the referee 40, on a first order of 20 EUR or more.
fn program() -> ProgramSettings {
    let referrals = ReferralPolicySet {
        enabled: true,
        referrer_points: 100,
        referee_points: 40,
        min_order_minor: 2_000,
        currency: "EUR".into(),
        set_by: "ops".into(),
        ..ReferralPolicySet::default()
    };
    ProgramSettings { referrals, ..ProgramSettings::default() }
}

async fn node(store: &Arc<dyn EventStore>, clock: &Arc<ManualClock>, crash_at: Option<&'static str>) -> Node {
    flow_node::start(store, clock, crash_at, program()).await
}

/// Ann, with nothing, and bob, referred by ann.
async fn ann_refers_bob(node: &Node) {
    node.open_wallet("ann", 0).await;
    let referred = CommandBody::Enroll { customer_ref: String::new(), sealed: None, referrer_wallet_id: "ann".into() };
    node.run("bob", "enroll", referred).await;
}

/// Bob's order `order_id` of `total_minor` EUR cents, recorded; what the wallet answered.
async fn order(node: &Node, order_id: &str, total_minor: i64) -> CommandOutcome {
    order_of(node, "bob", order_id, total_minor).await
}

/// `wallet`'s order `order_id` of `total_minor` EUR cents, recorded; what the wallet answered.
async fn order_of(node: &Node, wallet: &str, order_id: &str, total_minor: i64) -> CommandOutcome {
    let line = OrderLine { sku: "latte".into(), category: "drinks".into(), quantity: 1, amount_minor: total_minor };
    let order = Order {
        order_id: order_id.into(),
        total_minor,
        currency: "EUR".into(),
        channel: "pos".into(),
        store: "s-1".into(),
        lines: vec![line],
        placed_at_ms: None,
    };
    let command = Command::new(order_id, CommandBody::EarnForOrder { order });
    node.registry.execute(&key(wallet), command, CommandMeta::default()).await.unwrap()
}

fn key(id: &str) -> WalletKey {
    WalletKey::new(tenant(), wallet(id))
}

fn converted(outcome: &CommandOutcome) -> bool {
    outcome.events.iter().any(|s| matches!(s.event.change, Change::ReferralConverted(_)))
}

/// A wallet's balance and how many events it holds under `key`, from the log.
async fn logged(store: &Arc<dyn EventStore>, id: &str, key: &str) -> (i64, usize) {
    let events = store.read_stream(&codec::wallet_stream(&tenant(), &wallet(id)), 1, 10_000).await.unwrap();
    let keyed = events.iter().filter(|e| e.data.idempotency_key == key).count();
    (events.into_iter().map(|e| codec::decode(e).unwrap().change.points_delta()).sum(), keyed)
}

/// How the referral's flow ended, from the log.
async fn flow_end(store: &Arc<dyn EventStore>) -> Option<(i32, String, i64)> {
    let stream = codec::flow_stream(&tenant(), "referral/bob").unwrap();
    let events = store.read_stream(&stream, 1, 100).await.unwrap();
    events
        .into_iter()
        .filter_map(|e| match codec::decode_flow(e).unwrap().change {
            tally_engine::domain::flows::FlowChange::Ended(end) => {
                Some((end.outcome, end.refusal.map(|r| r.code).unwrap_or_default(), end.points))
            }
            _ => None,
        })
        .next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_order_that_counts_rewards_both_sides_once() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = node(&store, &clock, None).await;
    ann_refers_bob(&node).await;

    // Too small an order does not count; the first that does converts, with the referee's bonus.
    assert!(!converted(&order(&node, "o-1", 1_999).await));
    let first = order(&node, "o-2", 2_000).await;
    assert!(converted(&first), "{:?}", first.events);
    assert_eq!((first.balance, node.summary("bob").await.referral_converted), (40, true));
    node.flows.follow(&key("bob"), &first, &CommandMeta::default(), Duration::from_secs(5)).await;
    assert_eq!(node.balance("ann").await, 100, "the referrer's reward before the order is answered");

    // A retried order, a second follow and a later order change nothing.
    let again = order(&node, "o-2", 2_000).await;
    assert!(again.replayed && converted(&again), "a retry answers the same");
    node.flows.follow(&key("bob"), &again, &CommandMeta::default(), Duration::from_secs(5)).await;
    assert!(!converted(&order(&node, "o-3", 5_000).await), "a referral converts once");
    assert_eq!((node.balance("ann").await, node.balance("bob").await), (100, 40));
    assert_eq!(logged(&store, "ann", REWARD_KEY).await, (100, 1));
    assert_eq!(flow_end(&store).await, Some((FlowOutcome::Completed as i32, String::new(), 100)));
    node.settled(&store).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_referrer_is_refused_and_the_referee_keeps_its_bonus() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = node(&store, &clock, None).await;
    ann_refers_bob(&node).await;
    node.close("ann").await;
    let first = order(&node, "o-1", 2_500).await;
    node.flows.follow(&key("bob"), &first, &CommandMeta::default(), Duration::from_secs(5)).await;
    assert_eq!(flow_end(&store).await, Some((FlowOutcome::Refused as i32, "WALLET_CLOSED".into(), 0)));
    assert_eq!((logged(&store, "ann", REWARD_KEY).await, node.balance("bob").await), ((0, 0), 40));
    node.stop().await;
}

/// Converts bob's referral on a node that stops at `point`, then lets a new node on the same log end it:
/// ann's balance and how many rewards she holds, from the log.
async fn crash_and_resume(point: &'static str) -> (i64, usize) {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let first = node(&store, &clock, Some(point)).await;
    ann_refers_bob(&first).await;
    let outcome = order(&first, "o-1", 3_000).await;
    first.flows.follow(&key("bob"), &outcome, &CommandMeta::default(), Duration::from_secs(5)).await;
    first.stop().await;

    clock.advance_ms(FLOW_RESUME_AFTER_MS);
    let second = node(&store, &clock, None).await;
    second.settled(&store).await;
    second.stop().await;
    assert_eq!(flow_end(&store).await.map(|e| e.0), Some(FlowOutcome::Completed as i32), "{point}");
    logged(&store, "ann", REWARD_KEY).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_point_rewards_the_referrer_exactly_once() {
    let runs: Vec<_> = REFERRAL_CRASH_POINTS.iter().map(|point| (*point, tokio::spawn(crash_and_resume(point)))).collect();
    for (point, run) in runs {
        assert_eq!(run.await.unwrap(), (100, 1), "crashed at {point}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_whose_caller_died_is_rewarded_from_the_log() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = node(&store, &clock, None).await;
    ann_refers_bob(&node).await;
    // The conversion is recorded; the call that should start the reward never does.
    assert!(converted(&order(&node, "o-1", 2_000).await));

    // Until it starts, the flow is listed as one to start, never silently missing.
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = node.flows.list(None, false);
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed.iter().map(|f| (f.flow_id.as_str(), f.step)).collect::<Vec<_>>(), [("referral/bob", "starting")]);
    assert_eq!(logged(&store, "ann", REWARD_KEY).await, (0, 0), "not before it is due");

    clock.advance_ms(FLOW_RESUME_AFTER_MS);
    node.settled(&store).await;
    assert_eq!(logged(&store, "ann", REWARD_KEY).await, (100, 1));
    node.stop().await;

    // A node started on this log later finds nothing to start again.
    let later = flow_node::start(&store, &clock, None, program()).await;
    clock.advance_ms(FLOW_RESUME_AFTER_MS);
    later.settled(&store).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(logged(&store, "ann", REWARD_KEY).await, (100, 1));
    later.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_pending_period_an_order_converts_when_it_ends_unless_it_was_refunded() {
    const DAY_MS: i64 = 86_400_000;
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = flow_node::start(&store, &clock, None, ProgramSettings { pending_days: 10, ..program() }).await;
    ann_refers_bob(&node).await;
    // The first order that counts waits out the period; refunded below the smallest order, it lapses.
    assert!(!converted(&order(&node, "o-1", 3_000).await), "not before the order's period ends");
    let refund = CommandBody::RefundOrder { order_id: "o-1".into(), amount_minor: Some(1_500), reason: "returned".into() };
    node.run("bob", "refund-1", refund).await;
    clock.advance_ms(5 * DAY_MS);
    assert!(!converted(&order(&node, "o-2", 2_500).await));
    clock.advance_ms(5 * DAY_MS);
    let due = |at: i64| Command::new(tally_engine::domain::due_key(at), CommandBody::RunDue);
    let lapsed = node.registry.execute(&key("bob"), due(clock.now_ms()), CommandMeta::default()).await.unwrap();
    let lapsed: Vec<_> = lapsed
        .events
        .iter()
        .filter_map(|s| if let Change::ReferralLapsed(l) = &s.event.change { Some(l.order_id.as_str()) } else { None })
        .collect();
    assert_eq!(lapsed, ["o-1"]);
    assert!(!node.summary("bob").await.referral_converted);

    // The second order's period ends: time converts the referral, and the log starts the reward's flow.
    clock.advance_ms(5 * DAY_MS);
    let matured = node.registry.execute(&key("bob"), due(clock.now_ms()), CommandMeta::default()).await.unwrap();
    assert!(matured.events.iter().any(|s| matches!(&s.event.change, Change::ReferralConverted(c) if c.on_maturity && c.order_id == "o-2")));
    assert!(node.summary("bob").await.referral_converted);
    clock.advance_ms(FLOW_RESUME_AFTER_MS);
    node.settled(&store).await;
    assert_eq!(logged(&store, "ann", REWARD_KEY).await, (100, 1));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_programs_window_and_cap_bound_what_referrals_earn() {
    const DAY_MS: i64 = 86_400_000;
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let bounded = ReferralPolicySet { convert_within_days: 30, max_rewards_per_referrer: 1, ..program().referrals };
    let node = flow_node::start(&store, &clock, None, ProgramSettings { referrals: bounded, ..program() }).await;
    ann_refers_bob(&node).await;
    for referee in ["cy", "dan"] {
        let referred = CommandBody::Enroll { customer_ref: String::new(), sealed: None, referrer_wallet_id: "ann".into() };
        node.run(referee, "enroll", referred).await;
    }
    // Bob and cy convert; ann is rewarded once — cy's reward is recorded refused — and cy keeps its bonus.
    for (wallet, order_id) in [("bob", "o-1"), ("cy", "o-2")] {
        let outcome = order_of(&node, wallet, order_id, 3_000).await;
        assert!(converted(&outcome), "{wallet}");
        node.flows.follow(&key(wallet), &outcome, &CommandMeta::default(), Duration::from_secs(5)).await;
    }
    assert_eq!((node.balance("ann").await, node.balance("cy").await), (100, 40));
    let capped = codec::flow_stream(&tenant(), "referral/cy").unwrap();
    let ended = store.read_stream(&capped, 1, 10).await.unwrap().into_iter().last().unwrap();
    let tally_engine::domain::flows::FlowChange::Ended(end) = codec::decode_flow(ended).unwrap().change else { panic!("not ended") };
    assert_eq!(end.refusal.map(|r| r.code), Some("REFERRAL_CAP_REACHED".to_owned()));
    // Dan's first order comes after the window: it converts nothing.
    clock.advance_ms(31 * DAY_MS);
    assert!(!converted(&order_of(&node, "dan", "o-3", 3_000).await));
    node.stop().await;
}
