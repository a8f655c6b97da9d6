//! Shared by the projection tests and benchmarks: a seeded workload written straight through the
//! domain into a log, and the reference fold of a whole log.

#![allow(dead_code)]

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_engine::codec;
use tally_engine::domain::{
    Command, CommandBody, Context, CreditPackageDefined, Decision, ExpiryPolicy, Money, ProgramSettings, ReturnPolicy, TenantId, WalletId,
    WalletState, apply, decide,
};
use tally_engine::personal;
use tally_engine::store::{EventMetadata, EventStore, ExpectedVersion, PersonalKey, StreamId};
use tally_projections::customers::reveal;
use tally_projections::model::{Fold, WalletSummary};
use tally_projections::movement::decode_batch;
use tally_proto::v1::{ExpireAfter, PersonalData, expiry_policy};

/// 2026-01-01T00:00:00Z.
pub const START_MS: i64 = 1_767_225_600_000;

struct Wallet {
    tenant: TenantId,
    id: WalletId,
    state: WalletState,
    sources: Vec<String>,
}

/// Random wallet commands over a few tenants, with time moving on by up to two hours a command so
/// the activity spans many days.
/// Points expire three days after they are credited; a 100-point credit package is on sale.
fn program(return_policy: ReturnPolicy) -> ProgramSettings {
    let package = CreditPackageDefined {
        package_id: "p-100".to_owned(),
        name: "100 points".to_owned(),
        price: Some(Money { amount_minor: 199, currency: "EUR".to_owned() }),
        points: 100,
        active: true,
    };
    let after = ExpireAfter { months: 0, days: 3, at_month_end: false };
    ProgramSettings {
        return_policy,
        packages: Arc::new([("p-100".to_owned(), package)].into_iter().collect()),
        expiry: ExpiryPolicy { rule: Some(expiry_policy::Rule::After(after)), notice_days: 0 },
        transfers: tally_engine::domain::TransferPolicySet { allowed: true, ..Default::default() },
        ..ProgramSettings::default()
    }
}

pub struct Workload {
    rng: StdRng,
    wallets: Vec<Wallet>,
    now_ms: i64,
    programs: [ProgramSettings; 2],
    commands: u64,
    erasures: bool,
}

impl Workload {
    /// A workload as a build from before sealing wrote it: no customer references (so nothing sealed),
    /// no erasures.
    pub fn before_sealing(mut self) -> Self {
        self.erasures = false;
        self
    }

    pub fn new(seed: u64, wallets: usize) -> Self {
        Self::named(seed, wallets, "w")
    }

    /// Wallets named `<prefix>-<n>`, so several workloads can write to one log side by side.
    pub fn named(seed: u64, wallets: usize, prefix: &str) -> Self {
        let tenants = [TenantId::parse("acme").unwrap(), TenantId::parse("globex").unwrap()];
        let wallets = (0..wallets)
            .map(|i| Wallet {
                tenant: tenants[i % 2].clone(),
                id: WalletId::parse(&format!("{prefix}-{i}")).unwrap(),
                state: WalletState::default(),
                sources: Vec::new(),
            })
            .collect();
        Self {
            rng: StdRng::seed_from_u64(seed),
            wallets,
            now_ms: START_MS,
            programs: [program(ReturnPolicy::AllowNegative), program(ReturnPolicy::CapAtZero)],
            commands: 0,
            erasures: true,
        }
    }

    fn command(&mut self, index: usize) -> Command {
        self.commands += 1;
        let key = format!("k-{}", self.commands);
        let rng = &mut self.rng;
        let wallet = &self.wallets[index];
        let body = if wallet.state.version == 0 {
            CommandBody::enroll(if self.erasures { format!("cust-{index}") } else { String::new() })
        } else {
            match rng.random_range(0..100) {
                0..50 => CommandBody::Earn {
                    points: rng.random_range(1..500),
                    reason: "order".to_owned(),
                    source_ref: format!("order-{}", self.commands),
                    order_amount: None,
                },
                50..70 => CommandBody::Redeem { points: rng.random_range(1..300), reward_ref: "coffee".to_owned() },
                70..80 => CommandBody::Adjust {
                    points: rng.random_range(-50..=50i64).max(1) * if rng.random_bool(0.3) { -1 } else { 1 },
                    reason: "goodwill".to_owned(),
                    staff_ref: "staff-1".to_owned(),
                },
                80..94 if !wallet.sources.is_empty() => CommandBody::Reverse {
                    source_ref: wallet.sources[rng.random_range(0..wallet.sources.len())].clone(),
                    points: rng.random_bool(0.5).then(|| rng.random_range(1..200)),
                    reason: "refund".to_owned(),
                },
                94..96 => CommandBody::PurchaseCredits { purchase_id: key.clone(), package_id: "p-100".to_owned() },
                // What the engine's timers do: record what came due (here, expired points).
                96 => CommandBody::RunDue,
                // A transfer's first step (the flow's later steps are not run here: the points stay in
                // transit, which the daily figures count). Not before sealing: no build then knew it.
                97 if self.erasures => {
                    return Command::transfer_out(&format!("tr-{}", self.commands), "somebody-else", rng.random_range(1..100), "gift");
                }
                97 => CommandBody::RunDue,
                // A customer asks to be forgotten: the read models drop their reference.
                98 if self.erasures => CommandBody::EraseCustomer { reason: "art. 17".to_owned() },
                99 => CommandBody::Close { reason: "customer asked".to_owned() },
                _ => CommandBody::Earn {
                    points: 10,
                    reason: "visit".to_owned(),
                    source_ref: format!("visit-{}", self.commands),
                    order_amount: None,
                },
            }
        };
        Command::new(key, body)
    }

    /// Runs `count` commands (rejected ones included) and appends what they decide.
    pub async fn run(&mut self, store: &dyn EventStore, count: usize) {
        for _ in 0..count {
            self.now_ms += self.rng.random_range(0..7_200_000);
            let index = self.rng.random_range(0..self.wallets.len());
            let command = self.command(index);
            let wallet = &mut self.wallets[index];
            let stream = codec::wallet_stream(&wallet.tenant, &wallet.id);
            let command = sealed(store, &stream, command).await;
            let program = &self.programs[usize::from(wallet.tenant.as_str() == "globex")];
            let ctx = Context { tenant: &wallet.tenant, wallet: &wallet.id, now_ms: self.now_ms, program };
            let Ok(Decision::Append(events)) = decide(&wallet.state, &command, &ctx) else { continue };
            // As the wallet's actor does: the key goes before the erasure is recorded.
            if matches!(command.body, CommandBody::EraseCustomer { .. }) {
                store.erase_personal_key(&stream).await.expect("erase key");
            }
            let data = events.iter().map(|e| codec::encode(e, &EventMetadata::default())).collect();
            store.append(&stream, ExpectedVersion::Exact(wallet.state.version), data).await.expect("append");
            for event in &events {
                apply(&mut wallet.state, event);
            }
            if let CommandBody::Earn { source_ref, .. } = &command.body {
                wallet.sources.push(source_ref.clone());
            }
        }
    }
}

/// An enrolment's customer reference sealed under a key kept in `store`, as the wallet's actor seals it.
async fn sealed(store: &dyn EventStore, stream: &StreamId, command: Command) -> Command {
    let CommandBody::Enroll { customer_ref, sealed: None, .. } = &command.body else { return command };
    if customer_ref.is_empty() {
        return command;
    }
    let key = store.keep_personal_key(stream, &PersonalKey::generate().unwrap()).await.expect("keep key");
    let sealed = personal::seal(&key, stream.as_str(), &PersonalData { customer_ref: customer_ref.clone(), ..Default::default() });
    Command::new(
        command.idempotency_key,
        CommandBody::Enroll { customer_ref: customer_ref.clone(), sealed: Some(sealed), referrer_wallet_id: String::new() },
    )
}

/// The reference: every read model computed in memory from the whole log.
pub async fn fold_log(store: &Arc<dyn EventStore>) -> Fold {
    let mut fold = Fold::default();
    let mut position = 1;
    loop {
        let events = store.read_all(position, 10_000).await.expect("read log");
        let Some(last) = events.last().map(|e| e.global_position) else { break };
        for movement in decode_batch(events).expect("decodable log") {
            fold.apply(&movement);
        }
        fold.position = last;
        position = last + 1;
    }
    // What the workload recorded, independently of the fold's own code: wallet rows hold no reference in
    // clear; opened with the keys, an erased customer's is gone, every other's is their own.
    let mut revealed: Vec<(String, String, WalletSummary)> =
        fold.wallets.iter().map(|((tenant, wallet), summary)| (tenant.clone(), wallet.clone(), summary.clone())).collect();
    assert!(revealed.iter().all(|(_, _, summary)| summary.customer_ref.is_empty()), "sealed, never in clear");
    let mut rows: Vec<_> = revealed.iter_mut().map(|(tenant, wallet, summary)| (tenant.as_str(), wallet.as_str(), summary)).collect();
    reveal(store.as_ref(), &mut rows).await.expect("every customer opens");
    for (_, wallet, summary) in &revealed {
        let index = wallet.rsplit('-').next().unwrap();
        let expected = if summary.customer_sealed.is_empty() { String::new() } else { format!("cust-{index}") };
        assert_eq!(summary.customer_ref, expected, "{wallet}");
        assert!(!summary.customer_erased || summary.customer_sealed.is_empty(), "{wallet}: erased, yet sealed data kept");
    }
    fold
}
