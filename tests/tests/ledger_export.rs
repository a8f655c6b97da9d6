//! Issue 19 item 3: the ledger export balances. A random workload through the wallet actors on a virtual
//! clock — earns, orders and their refunds, redemptions, captured and voided holds, purchases, signed
//! adjustments, points expiring, a wallet closed — and then the export of a period in the middle and of
//! everything: the reconciliation balances to the point, each wallet's closing balance is its actor's,
//! its opening balance is its replay as of the period's start, and the closing liability is what the
//! read models' own fold (`model::Fold`, which the reporting stores are tested against) calls the liability.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_engine::actors::{CommandMeta, ProgramBook, RegistryConfig, WalletKey, WalletRegistry};
use tally_engine::audit::{AsOf, wallet_as_of};
use tally_engine::clock::{Clock, ManualClock};
use tally_engine::codec;
use tally_engine::domain::program::{ProgramCommand, ProgramCommandBody};
use tally_engine::domain::rules::Order;
use tally_engine::domain::{Change, Command, CommandBody, ExpiryPolicy, Money, ReturnPolicy, TenantId, WalletId};
use tally_engine::store::{EventMetadata, EventStore, InMemoryStore};
use tally_projections::export::LedgerExport;
use tally_projections::model::Fold;
use tally_projections::movement;
use tally_proto::v1::ExpireAfter;
use tally_proto::v1::expiry_policy::Rule;

const START_MS: i64 = 1_767_225_600_000;
const DAY_MS: i64 = 86_400_000;
const WALLETS: usize = 12;

async fn program(book: &ProgramBook, tenant: &TenantId) {
    let meta = EventMetadata::default();
    let command = |key: &str, body| ProgramCommand { idempotency_key: key.into(), body };
    let rules = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]}]"#;
    for c in [
        command(
            "create",
            ProgramCommandBody::Create { name: "Ledger".into(), utc_offset_minutes: 0, return_policy: ReturnPolicy::AllowNegative },
        ),
        command("rules", ProgramCommandBody::PublishRules { rules_json: rules.into(), published_by: "ops".into() }),
        command(
            "expiry",
            ProgramCommandBody::SetExpiryPolicy {
                policy: ExpiryPolicy { notice_days: 0, rule: Some(Rule::After(ExpireAfter { months: 1, days: 0, at_month_end: false })) },
                set_by: "ops".into(),
            },
        ),
        command(
            "transfers",
            ProgramCommandBody::SetTransferPolicy {
                policy: tally_engine::domain::TransferPolicySet { allowed: true, set_by: "ops".into(), ..Default::default() },
            },
        ),
        command(
            "package",
            ProgramCommandBody::DefinePackage {
                package_id: "p-100".into(),
                name: "100 points".into(),
                price: Money { amount_minor: 99, currency: "EUR".into() },
                points: 100,
                active: true,
            },
        ),
    ] {
        book.execute(tenant, &c, &meta).await.unwrap();
    }
}

fn random_command(rng: &mut StdRng, n: u32) -> Command {
    let key = format!("k-{n}");
    let body = match rng.random_range(0..9) {
        0 | 1 => {
            CommandBody::Earn { points: rng.random_range(1..300), reason: "visit".into(), source_ref: key.clone(), order_amount: None }
        }
        2 => {
            let order = Order {
                order_id: format!("o-{n}"),
                total_minor: rng.random_range(100..20_000),
                currency: "EUR".into(),
                channel: String::new(),
                store: String::new(),
                lines: Vec::new(),
                placed_at_ms: None,
            };
            return Command::new(format!("o-{n}"), CommandBody::EarnForOrder { order });
        }
        3 => CommandBody::RefundOrder {
            order_id: format!("o-{}", n.saturating_sub(rng.random_range(1..20))),
            amount_minor: None,
            reason: "returned".into(),
        },
        4 => CommandBody::Redeem { points: rng.random_range(1..150), reward_ref: "mug".into() },
        5 => CommandBody::AuthorizeRedemption {
            hold_id: key.clone(),
            points: rng.random_range(1..80),
            reward_ref: "till".into(),
            timeout_ms: DAY_MS,
        },
        6 => CommandBody::PurchaseCredits { purchase_id: key.clone(), package_id: "p-100".into() },
        7 => CommandBody::Adjust { points: rng.random_range(-40..60), reason: "fix".into(), staff_ref: "s-1".into() },
        _ => CommandBody::RunDue,
    };
    match body {
        CommandBody::RunDue => Command::run_due(0),
        body => Command::new(key, body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_export_balances_and_agrees_with_the_wallets_and_the_read_models() {
    let store = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let book = Arc::new(ProgramBook::new(store.clone(), clock.clone() as Arc<dyn Clock>, Duration::from_secs(3600)));
    let registry = WalletRegistry::start(RegistryConfig::default(), store.clone(), book.clone(), clock.clone()).await.unwrap();
    let tenant = TenantId::parse("ledger").unwrap();
    program(&book, &tenant).await;
    let keys: Vec<WalletKey> = (0..WALLETS).map(|w| WalletKey::new(tenant.clone(), WalletId::parse(&format!("w-{w}")).unwrap())).collect();
    for key in &keys {
        registry.execute(key, Command::new("enroll", CommandBody::enroll(String::new())), CommandMeta::default()).await.unwrap();
    }
    let mut rng = StdRng::seed_from_u64(20_261_201);
    let mut holds = Vec::new();
    let mut in_transit = 0;
    for n in 0..1_500u32 {
        clock.advance_ms(rng.random_range(0..DAY_MS / 4));
        let key = &keys[rng.random_range(0..WALLETS)];
        let mut command = random_command(&mut rng, n);
        if matches!(command.body, CommandBody::RunDue) {
            command = Command::run_due(clock.now_ms());
        }
        let hold = match &command.body {
            CommandBody::AuthorizeRedemption { hold_id, .. } => Some(hold_id.clone()),
            _ => None,
        };
        // Refusals (not enough points, an unknown order) record nothing, as in life.
        if registry.execute(key, command, CommandMeta { principal: "00000000000000aa".into(), ..CommandMeta::default() }).await.is_ok()
            && let Some(hold) = hold
        {
            holds.push((key.clone(), hold));
        }
        // Transfers, as their flow's steps: most arrive, some come back, some are still on their way at the end.
        if n % 11 == 5 {
            transfer(&registry, &keys, &mut rng, n, &mut in_transit).await;
        }
        // Half the holds are captured, some voided, the rest time out.
        if n % 7 == 0
            && let Some((key, hold)) = holds.pop()
        {
            let command = if n % 2 == 0 { Command::capture_redemption(hold, None) } else { Command::void_redemption(hold) };
            let _ = registry.execute(&key, command, CommandMeta::default()).await;
        }
    }
    let close = Command::new("close", CommandBody::Close { reason: "left".into() });
    registry.execute(&keys[0], close, CommandMeta::default()).await.unwrap();
    let end_ms = clock.now_ms() + 1;
    let events = store.all_events();
    let kinds: std::collections::BTreeSet<&str> = events.iter().map(|e| e.data.event_type.as_str()).collect();
    for kind in
        ["tally.v1.PointsExpired", "tally.v1.EarnReversed", "tally.v1.PointsPurchased", "tally.v1.HoldCaptured", "tally.v1.WalletClosed"]
    {
        assert!(kinds.contains(kind), "the workload records {kind}: {kinds:?}");
    }

    // Everything: the closing liability is the wallets' balances and the read models' liability.
    let (rows, reconciliation) = export(store.as_ref(), &tenant, i64::MIN, end_ms).await;
    assert!(reconciliation.balances(), "{reconciliation:?}");
    assert_eq!(reconciliation.opening_liability, 0);
    let mut actors = 0;
    for key in &keys {
        actors += registry.summary(key).await.map_or(0, |s| s.balance);
    }
    assert_eq!(reconciliation.closing_liability, actors, "the wallets' own balances");
    let mut fold = Fold::default();
    for m in movement::decode_batch(events.clone()).unwrap() {
        fold.apply(&m);
    }
    let liability = fold.liability[tenant.as_str()];
    assert_eq!(reconciliation.closing_liability, liability.outstanding_points + liability.negative_points, "the read models' liability");
    assert_eq!(rows.iter().map(|m| m.points).sum::<i64>(), reconciliation.closing_liability);
    // Each total, from the events' own types (not through the read models' classification).
    let mut by_type = [0i64; 8]; // issued, purchased, redeemed, reversed, adjusted, forfeited, expired, transferred
    for recorded in events.iter().filter(|e| codec::wallet_of(e.stream_id.as_str()).is_some()) {
        match codec::decode(recorded.clone()).unwrap().change {
            Change::Earned(e) => by_type[0] += e.points,
            Change::CardCompleted(e) => by_type[0] += e.reward_points,
            Change::Purchased(e) => by_type[1] += e.points,
            Change::Redeemed(e) => by_type[2] += e.points,
            Change::Captured(e) => by_type[2] += e.points,
            Change::Reversed(e) => by_type[3] += e.reversed_points,
            Change::Adjusted(e) => by_type[4] += e.points,
            Change::Closed(e) => by_type[5] += e.forfeited_points,
            Change::Expired(e) => by_type[6] += e.points,
            Change::TransferredOut(e) => by_type[7] -= e.points,
            Change::TransferredIn(e) => by_type[7] += e.points,
            Change::TransferReturned(e) => by_type[7] += e.points,
            _ => {}
        }
    }
    let p = reconciliation.period;
    let totals = [
        p.points_issued,
        p.points_purchased,
        p.points_redeemed,
        p.points_reversed,
        p.points_adjusted,
        p.points_forfeited,
        p.points_expired,
        p.points_transferred,
    ];
    assert_eq!(totals, by_type, "issued, purchased, redeemed, reversed, adjusted, forfeited, expired, transferred");
    assert_eq!(p.points_transferred, -in_transit, "transfers net to what is still on its way");
    assert!(by_type.iter().all(|t| *t != 0), "every kind of movement happened: {by_type:?}");
    assert!(rows.iter().any(|m| m.kind.as_str() == "transfer"), "transfers are ledger rows");
    // Who made each: the key that sent the command, none for what the engine did by itself.
    assert!(rows.iter().filter(|m| m.kind.as_str() == "expire").all(|m| m.principal.is_empty()));
    assert!(rows.iter().filter(|m| m.kind.as_str() == "purchase").all(|m| m.principal == "00000000000000aa"));
    assert!(rows.windows(2).all(|w| w[0].position < w[1].position), "in log order");

    // A period in the middle: opening balances are the wallets replayed as of its start.
    let (from_ms, to_ms) = (START_MS + 60 * DAY_MS, START_MS + 150 * DAY_MS);
    let mut export_period = LedgerExport::new(store.as_ref(), tenant.as_str(), from_ms, to_ms);
    let mut period_rows = Vec::new();
    while let Some(rows) = export_period.next_rows().await.unwrap() {
        period_rows.extend(rows);
    }
    let r = export_period.reconciliation();
    assert!(r.balances(), "{r:?}");
    assert!(period_rows.iter().all(|m| (from_ms..to_ms).contains(&m.recorded_at_ms)));
    for (wallet, opening, closing) in export_period.balances() {
        let stream = codec::wallet_stream(&tenant, &WalletId::parse(wallet).unwrap());
        let before = wallet_as_of(store.as_ref(), &stream, AsOf::Instant(from_ms - 1)).await.unwrap().state.balance;
        let after = wallet_as_of(store.as_ref(), &stream, AsOf::Instant(to_ms - 1)).await.unwrap().state.balance;
        assert_eq!((opening, closing), (before, after), "wallet {wallet}");
    }
    assert!(r.rows > 100 && r.opening_liability != 0, "{r:?}");
    registry.shutdown().await;
}

async fn export(
    store: &dyn EventStore,
    tenant: &TenantId,
    from_ms: i64,
    to_ms: i64,
) -> (Vec<tally_projections::Movement>, tally_projections::export::Reconciliation) {
    let mut export = LedgerExport::new(store, tenant.as_str(), from_ms, to_ms);
    let mut rows = Vec::new();
    while let Some(batch) = export.next_rows().await.unwrap() {
        rows.extend(batch);
    }
    (rows, export.reconciliation())
}

/// One transfer's wallet steps between two random wallets: the source's debit, then the target's credit
/// (most), the points back (some) or nothing yet (some: in transit, counted into `in_transit`).
async fn transfer(registry: &WalletRegistry, keys: &[WalletKey], rng: &mut StdRng, n: u32, in_transit: &mut i64) {
    let (from, to) = (&keys[rng.random_range(0..WALLETS)], &keys[rng.random_range(0..WALLETS)]);
    let id = format!("tr-{n}");
    let out = Command::transfer_out(&id, to.wallet.as_str(), rng.random_range(1..200), "gift");
    let Ok(outcome) = registry.execute(from, out, CommandMeta::default()).await else { return };
    let Some((points, parts)) = outcome.events.iter().find_map(|s| match &s.event.change {
        Change::TransferredOut(e) => Some((e.points, e.parts.clone())),
        _ => None,
    }) else {
        return;
    };
    match rng.random_range(0..6) {
        0 => *in_transit += points,
        1 => {
            registry.execute(from, Command::return_transfer(&id, parts, "WALLET_CLOSED"), CommandMeta::default()).await.unwrap();
        }
        _ => {
            match registry.execute(to, Command::transfer_in(&id, from.wallet.as_str(), parts.clone(), "gift"), CommandMeta::default()).await
            {
                Ok(_) => {}
                // The closed wallet: back to the source, as the flow does.
                Err(_) => {
                    registry.execute(from, Command::return_transfer(&id, parts, "WALLET_CLOSED"), CommandMeta::default()).await.unwrap();
                }
            }
        }
    }
}
