//! `tally bench`: drives concurrent gRPC callers against one server with a realistic mix (earns,
//! redeems and reads over many wallets, a few of them hot) for a fixed time or number of calls, then
//! reports throughput and latency percentiles. It only ever contacts the server it is given.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{
    AttachIdentifierRequest, DefineRewardRequest, EarnRequest, EnrollRequest, FindWalletRequest, GetWalletRequest, IdentifierKind,
    RedeemRequest, RedeemRewardRequest, RestockRewardRequest, RewardDefined, SetTransferPolicyRequest, TransferPointsRequest,
};
use tonic::transport::Endpoint;

use crate::cli::BenchArgs;
use crate::credentials::{Authed, CredentialError};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid server URL {0:?}")]
    Url(String),
    #[error("cannot reach {server}: {source}")]
    Connect { server: String, source: tonic::transport::Error },
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("setting up wallets failed: {0}")]
    Setup(tonic::Status),
    #[error("invalid settings: {0}")]
    Settings(&'static str),
}

/// What a run measured.
#[derive(Debug)]
pub struct BenchReport {
    pub elapsed: Duration,
    pub mutations: Histogram<u64>,
    pub reads: Histogram<u64>,
    /// Failed calls by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    /// Calls (mutating and reads) by the node that decided them (`x-tally-node`; a cluster only): against
    /// one node of a cluster, the others' are the forwarded calls, so the difference of the medians is
    /// what a forward adds.
    pub by_node: BTreeMap<String, Histogram<u64>>,
}

impl BenchReport {
    pub fn mutations_per_sec(&self) -> f64 {
        self.mutations.len() as f64 / self.elapsed.as_secs_f64()
    }
}

fn percentiles(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no calls".into();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!("p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms", ms(0.5), ms(0.99), ms(0.999), h.max() as f64 / 1000.0)
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let total = self.mutations.len() + self.reads.len();
        writeln!(f, "{total} calls in {secs:.1} s: {:.0} calls/s", total as f64 / secs)?;
        writeln!(
            f,
            "  mutating {:>8} ({:.0}/s, durable before reply): {}",
            self.mutations.len(),
            self.mutations_per_sec(),
            percentiles(&self.mutations)
        )?;
        write!(f, "  reads    {:>8} ({:.0}/s): {}", self.reads.len(), self.reads.len() as f64 / secs, percentiles(&self.reads))?;
        for (code, count) in &self.errors {
            write!(f, "\n  errors   {count:>8} {code}")?;
        }
        for (node, calls) in &self.by_node {
            write!(f, "\n  decided by node {node}: {:>8} calls: {}", calls.len(), percentiles(calls))?;
        }
        Ok(())
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn channels(args: &BenchArgs) -> Result<Vec<WalletServiceClient<Authed>>, BenchError> {
    let endpoint = Endpoint::from_shared(args.server.clone()).map_err(|_| BenchError::Url(args.server.clone()))?.tcp_nodelay(true);
    let bearer = args.key.bearer_for(&args.server)?;
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let channel = endpoint.connect().await.map_err(|source| BenchError::Connect { server: args.server.clone(), source })?;
        clients.push(WalletServiceClient::with_interceptor(channel, bearer.clone()));
    }
    Ok(clients)
}

/// The node that decided a call, as a cluster says on every answer.
fn decided_by<T>(response: tonic::Response<T>) -> Option<String> {
    response.metadata().get("x-tally-node").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn wallet_id(i: usize) -> String {
    format!("bench-{i}")
}

/// The card number `--find` attaches to wallet `i`.
fn card(i: usize) -> String {
    format!("BENCH{i:08}")
}

/// Enrolls every wallet and gives it points to spend. Idempotent: a second run reuses them.
async fn setup(args: &BenchArgs, clients: &[WalletServiceClient<Authed>]) -> Result<(), BenchError> {
    let tasks: Vec<_> = (0..args.concurrency.clamp(1, 256))
        .map(|t| {
            let mut client = clients[t % clients.len()].clone();
            let (tenant, wallets, step, find) = (args.tenant.clone(), args.wallets, args.concurrency.clamp(1, 256), args.find);
            tokio::spawn(async move {
                for i in (t..wallets).step_by(step) {
                    let wallet = wallet_id(i);
                    let enroll = EnrollRequest {
                        tenant_id: tenant.clone(),
                        wallet_id: wallet.clone(),
                        idempotency_key: "bench-enroll".into(),
                        customer_ref: wallet.clone(),
                        ..Default::default()
                    };
                    client.enroll(enroll).await?;
                    let seed = EarnRequest {
                        tenant_id: tenant.clone(),
                        wallet_id: wallet,
                        idempotency_key: "bench-seed".into(),
                        points: 1_000_000_000,
                        reason: "bench seed".into(),
                        source_ref: "bench-seed".into(),
                        order_amount: None,
                    };
                    client.earn(seed).await?;
                    if find {
                        let card = AttachIdentifierRequest {
                            tenant_id: tenant.clone(),
                            wallet_id: wallet_id(i),
                            kind: IdentifierKind::Card as i32,
                            value: card(i),
                            idempotency_key: "bench-card".into(),
                        };
                        // A second run finds it attached already (under the same key: answered again).
                        client.attach_identifier(card).await?;
                    }
                }
                Ok::<(), tonic::Status>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| BenchError::Setup(tonic::Status::internal(e.to_string())))?.map_err(BenchError::Setup)?;
    }
    Ok(())
}

/// Defines `reward_id` (1 point, limited stock; a second run reuses the definition) and adds 10^9 to its
/// stock, enough for any run.
async fn stock_reward(args: &BenchArgs, reward_id: &str) -> Result<(), BenchError> {
    let endpoint = Endpoint::from_shared(args.server.clone()).map_err(|_| BenchError::Url(args.server.clone()))?;
    let channel = endpoint.connect().await.map_err(|source| BenchError::Connect { server: args.server.clone(), source })?;
    let mut admin = AdminServiceClient::with_interceptor(channel, args.key.bearer_for(&args.server)?);
    let reward = RewardDefined {
        reward_id: reward_id.to_owned(),
        name: "bench reward".into(),
        points: 1,
        limited_stock: true,
        active: true,
        ..RewardDefined::default()
    };
    let define =
        DefineRewardRequest { tenant_id: args.tenant.clone(), idempotency_key: format!("bench-define-{reward_id}"), reward: Some(reward) };
    admin.define_reward(define).await.map_err(BenchError::Setup)?;
    let restock = RestockRewardRequest {
        tenant_id: args.tenant.clone(),
        idempotency_key: format!("bench-restock-{}", uuid::Uuid::new_v4().simple()),
        reward_id: reward_id.to_owned(),
        quantity: 1_000_000_000,
        reason: "tally bench".into(),
    };
    admin.restock_reward(restock).await.map_err(BenchError::Setup)?;
    Ok(())
}

/// Allows transfers in the program, without caps (a second run repeats the same request).
async fn allow_transfers(args: &BenchArgs) -> Result<(), BenchError> {
    let endpoint = Endpoint::from_shared(args.server.clone()).map_err(|_| BenchError::Url(args.server.clone()))?;
    let channel = endpoint.connect().await.map_err(|source| BenchError::Connect { server: args.server.clone(), source })?;
    let mut admin = AdminServiceClient::with_interceptor(channel, args.key.bearer_for(&args.server)?);
    let policy = SetTransferPolicyRequest {
        tenant_id: args.tenant.clone(),
        idempotency_key: "bench-transfers".into(),
        allowed: true,
        max_points_per_transfer: 0,
        max_points_per_day: 0,
        set_by: "tally bench".into(),
    };
    admin.set_transfer_policy(policy).await.map_err(BenchError::Setup)?;
    Ok(())
}

impl BenchReport {
    fn empty() -> Self {
        Self { elapsed: Duration::ZERO, mutations: histogram(), reads: histogram(), errors: BTreeMap::new(), by_node: BTreeMap::new() }
    }

    /// One call that took `micros`: its latency, or its error code.
    fn record(&mut self, result: Result<Option<String>, tonic::Status>, mutating: bool, micros: u64) {
        match result {
            Ok(node) => {
                let calls = if mutating { &mut self.mutations } else { &mut self.reads };
                calls.saturating_record(micros);
                if let Some(node) = node {
                    self.by_node.entry(node).or_insert_with(histogram).saturating_record(micros);
                }
            }
            Err(status) => *self.errors.entry(format!("{:?}", status.code())).or_default() += 1,
        }
    }

    fn merge(&mut self, other: BenchReport) {
        self.mutations.add(&other.mutations).expect("same bounds");
        self.reads.add(&other.reads).expect("same bounds");
        for (code, count) in other.errors {
            *self.errors.entry(code).or_default() += count;
        }
        for (node, calls) in other.by_node {
            self.by_node.entry(node).or_insert_with(histogram).add(&calls).expect("same bounds");
        }
    }
}

/// One call of the mix on wallet `index` (a read, an earn or a redemption, keyed `key`): the node that
/// decided it, and whether it was mutating.
async fn one_call(
    client: &mut WalletServiceClient<Authed>,
    args: &BenchArgs,
    rng: &mut SmallRng,
    index: usize,
    key: String,
) -> (Result<Option<String>, tonic::Status>, bool) {
    let (tenant_id, wallet) = (args.tenant.clone(), wallet_id(index));
    let read = rng.random_range(0..100) < args.read_percent;
    if read && args.find {
        let request = FindWalletRequest { tenant_id, kind: IdentifierKind::Card as i32, value: card(index) };
        (client.find_wallet(request).await.map(decided_by), false)
    } else if read {
        (client.get_wallet(GetWalletRequest { tenant_id, wallet_id: wallet, ..Default::default() }).await.map(decided_by), false)
    } else if let Some(reward_id) = &args.reward {
        let request = RedeemRewardRequest { tenant_id, wallet_id: wallet, redemption_id: key, reward_id: reward_id.clone() };
        (client.redeem_reward(request).await.map(decided_by), true)
    } else if args.transfer {
        let to_wallet_id = wallet_id((index + 1) % args.wallets);
        let request =
            TransferPointsRequest { tenant_id, wallet_id: wallet, to_wallet_id, points: 1, transfer_id: key, reason: String::new() };
        (client.transfer_points(request).await.map(decided_by), true)
    } else if rng.random_range(0..7) < 5 {
        let points = rng.random_range(1..500);
        let request = EarnRequest {
            tenant_id,
            wallet_id: wallet,
            idempotency_key: key.clone(),
            points,
            reason: "order".into(),
            source_ref: key,
            order_amount: None,
        };
        (client.earn(request).await.map(decided_by), true)
    } else {
        let points = rng.random_range(1..200);
        let request = RedeemRequest { tenant_id, wallet_id: wallet, idempotency_key: key, points, reward_ref: "reward".into() };
        (client.redeem(request).await.map(decided_by), true)
    }
}

/// One caller's calls until `deadline` or its `budget`, measured into a report of its own.
async fn drive(
    mut client: WalletServiceClient<Authed>,
    args: BenchArgs,
    caller: usize,
    run_id: String,
    deadline: Instant,
    budget: Option<u64>,
) -> BenchReport {
    let mut rng = SmallRng::seed_from_u64(caller as u64);
    let mut report = BenchReport::empty();
    let mut n = 0u64;
    while Instant::now() < deadline && budget.is_none_or(|b| n < b) {
        n += 1;
        let wallet = if args.hot_wallets > 0 && rng.random_range(0..100) < args.hot_percent {
            rng.random_range(0..args.hot_wallets)
        } else {
            rng.random_range(0..args.wallets)
        };
        let call_started = Instant::now();
        let (result, mutating) = one_call(&mut client, &args, &mut rng, wallet, format!("{run_id}-{caller}-{n}")).await;
        report.record(result, mutating, u64::try_from(call_started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1));
    }
    report
}

pub async fn run(args: BenchArgs) -> Result<BenchReport, BenchError> {
    if args.wallets == 0 || args.hot_wallets > args.wallets || args.concurrency == 0 {
        return Err(BenchError::Settings("need wallets > 0, hot-wallets <= wallets, concurrency > 0"));
    }
    let clients = channels(&args).await?;
    setup(&args, &clients).await?;
    if let Some(reward_id) = &args.reward {
        stock_reward(&args, reward_id).await?;
    }
    if args.transfer {
        allow_transfers(&args).await?;
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let budget = args.requests.map(|r| r.div_ceil(args.concurrency as u64));
    let started = Instant::now();
    let callers: Vec<_> = (0..args.concurrency)
        .map(|caller| {
            let client = clients[caller % clients.len()].clone();
            tokio::spawn(drive(client, args.clone(), caller, run_id.clone(), deadline, budget))
        })
        .collect();
    let mut report = BenchReport::empty();
    for caller in callers {
        if let Ok(measured) = caller.await {
            report.merge(measured);
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
