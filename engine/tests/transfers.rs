//! Points transfers through the process manager's front door (`Flows::transfer_points`) on a real
//! registry: a transfer moves its points once, keeping their kind and date, or moves nothing; a target
//! that refuses sends them back; whatever stops a transfer on the way, a new node on the same log ends it
//! exactly once, and no point is created or lost.

use std::sync::Arc;
use std::time::Duration;

use flow_node::{Node, tenant, wallet};
use proptest::prelude::*;
use tally_engine::actors::{CommandMeta, FlowError, TRANSFER_CRASH_POINTS, Transfer};
use tally_engine::clock::ManualClock;
use tally_engine::codec;
use tally_engine::domain::{Change, CommandBody, ProgramSettings, Rejection, TransferPolicySet};
use tally_engine::limits::FLOW_RESUME_AFTER_MS;
use tally_engine::store::{EventStore, InMemoryStore};
use tally_proto::v1::FlowOutcome;

mod flow_node;

const START_MS: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 86_400_000;

/// Earned points expire 30 days after they were earned; transfers of at most 1,000 points, 1,500 a day.
fn program(allowed: bool) -> ProgramSettings {
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
    let transfers = TransferPolicySet { allowed, max_points_per_transfer: 1_000, max_points_per_day: 1_500, set_by: "ops".into() };
    let mug = tally_engine::domain::RewardDefined {
        reward_id: "mug".into(),
        name: "Mug".into(),
        points: 120,
        limited_stock: true,
        active: true,
        cancel_window_days: 7,
        ..Default::default()
    };
    ProgramSettings {
        rewards: Arc::new([("mug".to_owned(), mug)].into_iter().collect()),
        expiry,
        packages: Arc::new([("p-100".to_owned(), package)].into_iter().collect()),
        transfers,
        ..ProgramSettings::default()
    }
}

async fn node_with(store: &Arc<dyn EventStore>, clock: &Arc<ManualClock>, crash_at: Option<&'static str>, allowed: bool) -> Node {
    flow_node::start(store, clock, crash_at, program(allowed)).await
}

async fn node(store: &Arc<dyn EventStore>, clock: &Arc<ManualClock>, crash_at: Option<&'static str>) -> Node {
    node_with(store, clock, crash_at, true).await
}

fn outcome(transfer: &Transfer) -> (i32, String) {
    (transfer.ended.outcome, transfer.ended.refusal.as_ref().map(|r| r.code.clone()).unwrap_or_default())
}

/// A wallet's balance from the log (nodes sharing a log each know only what they wrote or caught up with).
async fn logged_balance(store: &Arc<dyn EventStore>, id: &str) -> i64 {
    let events = store.read_stream(&codec::wallet_stream(&tenant(), &wallet(id)), 1, 10_000).await.unwrap();
    events.into_iter().map(|e| codec::decode(e).unwrap().change.points_delta()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_moves_points_once_keeping_their_kind_and_date() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = node(&store, &clock, None).await;
    node.open_wallet("ann", 300).await;
    node.run("ann", "pay-1", CommandBody::PurchaseCredits { purchase_id: "pay-1".into(), package_id: "p-100".into() }).await;
    clock.advance_ms(5 * DAY_MS);
    node.open_wallet("bob", 0).await;

    // The earned points go first (they expire first), then purchased ones.
    let sent = node.transfer("ann", "bob", 350, "t-1").await.unwrap();
    assert_eq!(
        (outcome(&sent), sent.ended.points, sent.ended.balance, sent.replayed),
        ((FlowOutcome::Completed as i32, String::new()), 350, 50, false)
    );
    let again = node.transfer("ann", "bob", 350, "t-1").await.unwrap();
    assert!(again.replayed && again.ended == sent.ended && again.position == sent.position, "a retry answers the same: {again:?}");
    let bob = node.summary("bob").await;
    assert_eq!(bob.balance, 350);
    assert_eq!(bob.upcoming_expiries, [(START_MS + 30 * DAY_MS, 300)], "the earned points keep their date; the purchased never expire");
    assert_eq!(node.summary("ann").await.balance, 50);

    // The same id for another transfer is refused; so are a transfer to itself and to nobody.
    assert!(matches!(node.transfer("ann", "bob", 10, "t-1").await, Err(FlowError::FlowIdReused { .. })));
    assert!(matches!(node.transfer("ann", "ann", 10, "t-2").await, Err(FlowError::Rejected(Rejection::InvalidField(_)))));
    let nobody = node.transfer("ann", "nobody", 10, "t-3").await;
    assert!(matches!(nobody, Err(FlowError::WalletNotFound { field: "to_wallet_id", .. })), "{nobody:?}");
    assert_eq!(store.stream_version(&codec::flow_stream(&tenant(), "t-3").unwrap()).await.unwrap(), 0, "nothing was started");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_program_and_the_source_refuse_and_nothing_moves() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let closed_program = node_with(&store, &clock, None, false).await;
    closed_program.open_wallet("ann", 3_000).await;
    closed_program.open_wallet("bob", 0).await;
    let denied = closed_program.transfer("ann", "bob", 10, "t-0").await;
    assert!(matches!(denied, Err(FlowError::Rejected(Rejection::TransfersNotAllowed))), "{denied:?}");
    closed_program.stop().await;

    let node = node(&store, &clock, None).await;
    let capped = node.transfer("ann", "bob", 1_001, "t-1").await;
    assert!(matches!(capped, Err(FlowError::Rejected(Rejection::TransferCapExceeded { max: 1_000, .. }))), "{capped:?}");
    assert_eq!(outcome(&node.transfer("ann", "bob", 1_000, "t-2").await.unwrap()).0, FlowOutcome::Completed as i32);
    // The day's cap is the source's to decide: recorded, and answered the same on a retry.
    let day = node.transfer("ann", "bob", 600, "t-3").await.unwrap();
    assert_eq!(outcome(&day), (FlowOutcome::Refused as i32, "TRANSFER_DAILY_CAP_EXCEEDED".to_owned()));
    clock.advance_ms(DAY_MS + 1);
    assert_eq!(outcome(&node.transfer("ann", "bob", 600, "t-3").await.unwrap()), outcome(&day), "refused for good");
    assert_eq!(outcome(&node.transfer("ann", "bob", 600, "t-4").await.unwrap()).0, FlowOutcome::Completed as i32, "a day later");
    node.open_wallet("dan", 10).await;
    let poor = node.transfer("dan", "ann", 100, "t-5").await.unwrap();
    assert_eq!(outcome(&poor), (FlowOutcome::Refused as i32, "INSUFFICIENT_POINTS".to_owned()));
    assert_eq!((node.summary("ann").await.balance, node.summary("bob").await.balance), (1_400, 1_600));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_target_sends_the_points_back_as_they_were() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = node(&store, &clock, None).await;
    node.open_wallet("ann", 1_500).await;
    node.open_wallet("bob", 0).await;
    node.close("bob").await;
    let before = node.summary("ann").await.upcoming_expiries;
    let back = node.transfer("ann", "bob", 1_000, "t-1").await.unwrap();
    assert_eq!(outcome(&back), (FlowOutcome::Refused as i32, "TARGET_WALLET_CLOSED".to_owned()));
    let ann = node.summary("ann").await;
    assert_eq!((ann.balance, ann.upcoming_expiries), (1_500, before), "back, expiring when they would have");
    // A transfer that came back does not count against the day's cap (1,500).
    node.open_wallet("cy", 0).await;
    assert_eq!(outcome(&node.transfer("ann", "cy", 1_000, "t-2").await.unwrap()).0, FlowOutcome::Completed as i32);
    assert_eq!(outcome(&node.transfer("ann", "cy", 500, "t-3").await.unwrap()).0, FlowOutcome::Completed as i32);
    assert_eq!((node.summary("ann").await.balance, node.summary("cy").await.balance), (0, 1_500));
    node.stop().await;
}

/// Starts a transfer of 200 of ann's 500 points to bob (closed: the points come back), stopping at
/// `point`, restarts the node and lets the resumer end it: how it ended and both balances, from the log.
async fn crash_and_resume(point: &'static str, target_closed: bool) -> ((i32, String), i64, i64, usize) {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let first = node(&store, &clock, Some(point)).await;
    first.open_wallet("ann", 500).await;
    first.open_wallet("bob", 0).await;
    if target_closed {
        first.close("bob").await;
    }
    let stopped = first.transfer("ann", "bob", 200, "t-1").await;
    first.stop().await;
    let reached = matches!(stopped, Err(FlowError::Interrupted { .. }));
    assert!(reached || (point == "returned" && !target_closed), "{point}: the crash point was reached: {stopped:?}");

    clock.advance_ms(FLOW_RESUME_AFTER_MS);
    let second = node(&store, &clock, None).await;
    second.settled(&store).await;
    let ended = second.transfer("ann", "bob", 200, "t-1").await.unwrap();
    assert!(ended.replayed, "{point}: the resumer ended it");
    second.stop().await;
    let steps = [("ann", "tally:transfer:t-1:out"), ("bob", "tally:transfer:t-1:in"), ("ann", "tally:transfer:t-1:return")];
    let mut recorded = 0;
    for (id, key) in steps {
        let events = store.read_stream(&codec::wallet_stream(&tenant(), &wallet(id)), 1, 100).await.unwrap();
        recorded += events.iter().filter(|e| e.data.idempotency_key == key).count();
    }
    (outcome(&ended), logged_balance(&store, "ann").await, logged_balance(&store, "bob").await, recorded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_any_two_steps_ends_the_transfer_exactly_once() {
    let runs: Vec<_> = [false, true]
        .into_iter()
        .flat_map(|closed| TRANSFER_CRASH_POINTS.iter().map(move |point| (closed, *point, tokio::spawn(crash_and_resume(point, closed)))))
        .collect();
    for (closed, point, run) in runs {
        let expected = if closed {
            // The out step, then the return (the closed target records nothing).
            ((FlowOutcome::Refused as i32, "TARGET_WALLET_CLOSED".to_owned()), 500, 0, 2)
        } else {
            ((FlowOutcome::Completed as i32, String::new()), 300, 200, 2)
        };
        assert_eq!(run.await.unwrap(), expected, "target closed: {closed}, crashed at {point}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_driving_the_same_transfers_at_once_move_each_once() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let (a, b) = (Arc::new(node(&store, &clock, None).await), Arc::new(node(&store, &clock, None).await));
    a.open_wallet("ann", 1_000).await;
    a.open_wallet("bob", 0).await;
    a.open_wallet("cy", 0).await;
    a.close("cy").await;
    let mut calls = Vec::new();
    for i in 0..10 {
        let to = if i % 3 == 0 { "cy" } else { "bob" };
        for node in [&a, &b] {
            let node = Arc::clone(node);
            calls.push(tokio::spawn(async move { node.transfer("ann", to, 100, &format!("t-{i}")).await }));
        }
    }
    for call in calls {
        let _ = call.await.unwrap();
    }
    let mut completed = 0;
    for i in 0..10 {
        let to = if i % 3 == 0 { "cy" } else { "bob" };
        let (x, y) =
            (a.transfer("ann", to, 100, &format!("t-{i}")).await.unwrap(), b.transfer("ann", to, 100, &format!("t-{i}")).await.unwrap());
        assert_eq!(x.ended, y.ended, "both nodes answer the same");
        completed += i64::from(x.ended.outcome == FlowOutcome::Completed as i32);
    }
    assert_eq!(completed, 6, "the closed wallet's four came back");
    assert_eq!((logged_balance(&store, "ann").await, logged_balance(&store, "bob").await), (400, 600));
}

/// A transfer is driven on the source's node, which writes the target's credit too: the target's own
/// node, where it is live, catches up rather than keep answering its balance without the points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_live_on_another_node_shows_the_points_it_received() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let (a, b) = (node(&store, &clock, None).await, node(&store, &clock, None).await);
    a.open_wallet("ann", 500).await;
    b.open_wallet("bob", 0).await;
    assert_eq!(b.summary("bob").await.balance, 0, "bob is live on b");
    assert_eq!(outcome(&a.transfer("ann", "bob", 200, "t-1").await.unwrap()).0, FlowOutcome::Completed as i32);
    let mut seen = 0;
    for _ in 0..100 {
        seen = b.summary("bob").await.balance;
        if seen == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 200, "b's bob caught up with the credit a wrote");
    // And b decides on the caught-up state: bob can pass the points on.
    b.open_wallet("cy", 0).await;
    assert_eq!(outcome(&b.transfer("bob", "cy", 200, "t-2").await.unwrap()).0, FlowOutcome::Completed as i32);
    a.stop().await;
    b.stop().await;
}

/// A read that names the position a transfer answered with sees it on any node at once, whatever its
/// node's flow reader has read (here: nothing, it is stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_at_the_transfers_position_sees_it_on_the_targets_node() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let (a, b) = (node(&store, &clock, None).await, node(&store, &clock, None).await);
    b.flows.stop();
    a.open_wallet("ann", 500).await;
    b.open_wallet("bob", 0).await;
    assert_eq!(b.balance("bob").await, 0, "bob is live on b");
    let sent = a.transfer("ann", "bob", 200, "t-1").await.unwrap();
    let key = tally_engine::actors::WalletKey::new(tenant(), wallet("bob"));
    assert_eq!(b.registry.summary_at_least(&key, sent.position).await.unwrap().balance, 200, "read at the transfer's position");
    assert_eq!(b.balance("bob").await, 200, "and from then on");
    a.stop().await;
    b.stop().await;
}

/// One transfer of a random run: between which of four wallets (the last one closed), how many points,
/// and where (if anywhere) the node dies during it.
#[derive(Debug, Clone)]
struct Step {
    from: usize,
    to: usize,
    points: i64,
    crash: Option<&'static str>,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (0..4usize, 0..4usize, 1..700i64, proptest::option::weighted(0.4, proptest::sample::select(TRANSFER_CRASH_POINTS.to_vec())))
        .prop_map(|(from, to, points, crash)| Step { from, to, points, crash });
    proptest::collection::vec(step, 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random transfers among four wallets (one closed), the node dying during some of them: once
    /// everything settled, every transfer ended once, and the tenant's points add up — what left a
    /// wallet arrived in another or came back, nothing twice.
    #[test]
    fn random_transfers_with_crashes_conserve_points(steps in steps()) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let store: Arc<dyn EventStore> = InMemoryStore::new();
            let clock = Arc::new(ManualClock::new(START_MS));
            let names = ["w-0", "w-1", "w-2", "w-3"];
            let setup = node(&store, &clock, None).await;
            for name in names {
                setup.open_wallet(name, 800).await;
            }
            setup.close("w-3").await;
            setup.stop().await;
            let total = logged_total(&store, &names).await;
            for (i, step) in steps.iter().enumerate() {
                let node = node(&store, &clock, step.crash).await;
                let _ = node.transfer(names[step.from], names[step.to], step.points, &format!("t-{i}")).await;
                node.stop().await;
                clock.advance_ms(FLOW_RESUME_AFTER_MS);
            }
            let last = node(&store, &clock, None).await;
            last.settled(&store).await;
            for (i, step) in steps.iter().enumerate() {
                let ended = last.transfer(names[step.from], names[step.to], step.points, &format!("t-{i}")).await;
                if step.from == step.to {
                    assert!(matches!(ended, Err(FlowError::Rejected(_))), "{ended:?}");
                } else {
                    assert!(ended.unwrap().replayed, "t-{i} ended");
                }
            }
            last.stop().await;
            assert_eq!(logged_total(&store, &names).await, total, "no point created or lost");
            // Each transfer's points left once, and arrived or came back once.
            let mut moved = std::collections::BTreeMap::<String, (i64, i64, i64)>::new();
            for name in names {
                for e in store.read_stream(&codec::wallet_stream(&tenant(), &wallet(name)), 1, 10_000).await.unwrap() {
                    match codec::decode(e).unwrap().change {
                        Change::TransferredOut(t) => moved.entry(t.transfer_id).or_default().0 += t.points,
                        Change::TransferredIn(t) => moved.entry(t.transfer_id).or_default().1 += t.points,
                        Change::TransferReturned(t) => moved.entry(t.transfer_id).or_default().2 += t.points,
                        _ => {}
                    }
                }
            }
            for (id, (out, arrived, returned)) in moved {
                assert!(arrived == 0 || returned == 0, "{id}: both arrived and came back");
                assert_eq!(out, arrived + returned, "{id}");
            }
        });
    }
}

/// The tenant's points: every wallet's balance, and what its closures forfeited.
async fn logged_total(store: &Arc<dyn EventStore>, names: &[&str]) -> i64 {
    let mut total = 0;
    for name in names {
        for e in store.read_stream(&codec::wallet_stream(&tenant(), &wallet(name)), 1, 10_000).await.unwrap() {
            let change = codec::decode(e).unwrap().change;
            total += change.points_delta();
            if let Change::Closed(c) = change {
                total += c.forfeited_points;
            }
        }
    }
    total
}

/// One act of a random run across the flows: a transfer, a mug's redemption, or the cancellation of an
/// earlier redemption — and where (if anywhere) the node dies during it.
#[derive(Debug, Clone)]
enum Act {
    Transfer { from: usize, to: usize, points: i64 },
    Redeem { wallet: usize },
    Cancel { wallet: usize, redemption: usize },
}

fn acts() -> impl Strategy<Value = Vec<(Act, Option<&'static str>)>> {
    let crash_points: Vec<&'static str> = TRANSFER_CRASH_POINTS
        .iter()
        .chain(&tally_engine::actors::CRASH_POINTS)
        .chain(&tally_engine::actors::CANCEL_CRASH_POINTS)
        .copied()
        .collect();
    let act = prop_oneof![
        (0..3usize, 0..3usize, 1..400i64).prop_map(|(from, to, points)| Act::Transfer { from, to, points }),
        (0..3usize).prop_map(|wallet| Act::Redeem { wallet }),
        (0..3usize, 0..8usize).prop_map(|(wallet, redemption)| Act::Cancel { wallet, redemption }),
    ];
    proptest::collection::vec((act, proptest::option::weighted(0.4, proptest::sample::select(crash_points))), 1..10)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    /// Transfers, redemptions and cancellations of three wallets drawn together, the node dying during
    /// some: once everything settled, the tenant's points add up — what the wallets hold is what they were
    /// given less what the completed, uncancelled redemptions cost — and the mugs on hand and taken are
    /// the mugs there were.
    #[test]
    fn transfers_redemptions_and_cancellations_with_crashes_conserve_points_and_stock(acts in acts()) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let store: Arc<dyn EventStore> = InMemoryStore::new();
            let clock = Arc::new(ManualClock::new(START_MS));
            let names = ["w-0", "w-1", "w-2"];
            let setup = node(&store, &clock, None).await;
            for name in names {
                setup.open_wallet(name, 500).await;
            }
            let restock = tally_engine::domain::rewards::StockOp::Restock {
                idempotency_key: "delivery".into(),
                quantity: 4,
                restocked_by: "ops".into(),
                reason: String::new(),
            };
            setup.flows.restock(&tenant(), "mug", restock, CommandMeta::default()).await.unwrap();
            setup.stop().await;
            // Each run has at least a redemption and a transfer that complete, before what was drawn.
            let sure = [(Act::Redeem { wallet: 0 }, None), (Act::Transfer { from: 0, to: 1, points: 50 }, None)];
            let acts: Vec<(Act, Option<&'static str>)> = sure.into_iter().chain(acts).collect();
            for (i, (act, crash)) in acts.iter().enumerate() {
                let node = node(&store, &clock, *crash).await;
                let meta = CommandMeta::default;
                let _ = match act {
                    Act::Transfer { from, to, points } => node.transfer(names[*from], names[*to], *points, &format!("t-{i}")).await.map(drop),
                    Act::Redeem { wallet: w } => node.flows.redeem_reward(&tenant(), &wallet(names[*w]), "mug", &format!("r-{i}"), meta()).await.map(drop),
                    Act::Cancel { wallet: w, redemption } => node.flows.cancel_redemption(&tenant(), &wallet(names[*w]), &format!("r-{redemption}"), "back", meta()).await.map(drop),
                };
                node.stop().await;
                clock.advance_ms(FLOW_RESUME_AFTER_MS);
            }
            let last = node(&store, &clock, None).await;
            last.settled(&store).await;
            last.stop().await;
            // From the log: every wallet's balance, and what redemptions cost net of cancellations.
            let (mut held, mut spent, mut redeemed) = (0, 0, 0);
            for name in names {
                for e in store.read_stream(&codec::wallet_stream(&tenant(), &wallet(name)), 1, 10_000).await.unwrap() {
                    let change = codec::decode(e).unwrap().change;
                    held += change.points_delta();
                    match change {
                        Change::Redeemed(r) => {
                            spent += r.points;
                            redeemed += 1;
                        }
                        Change::RewardCancelled(c) => spent -= c.points,
                        _ => {}
                    }
                }
            }
            prop_assert_eq!(held + spent, 3 * 500, "no point created or lost");
            prop_assert!(redeemed >= 1, "the first redemption completed");
            let arrived = store.read_stream(&codec::wallet_stream(&tenant(), &wallet("w-1")), 1, 10_000).await.unwrap();
            prop_assert!(arrived.iter().any(|e| e.data.idempotency_key == "tally:transfer:t-1:in"), "the first transfer arrived");
            let stock = {
                let node = node(&store, &clock, None).await;
                let stock = node.flows.stock(&tenant(), "mug").await.unwrap();
                node.stop().await;
                stock
            };
            prop_assert_eq!(stock.reserved, 0);
            prop_assert_eq!(stock.on_hand + stock.taken, 4);
            prop_assert_eq!(stock.taken * 120, spent, "a mug taken for each redemption paid and not given back");
            Ok(())
        })?;
    }
}
