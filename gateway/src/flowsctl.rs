//! `tally flows list [--stuck]` and `tally rewards list`: an operator's view of a running server's flows
//! across aggregates (reward redemptions and points transfers not yet ended) and of the rewards catalogue with its stock.

use std::fmt::Write as _;

use serde::Serialize;
use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::{ListFlowsRequest, ListRewardsRequest};

use crate::cli::Target;
use crate::client::ClientError;
use crate::credentials::{self, Authed};

async fn connect(target: &Target) -> Result<AdminServiceClient<Authed>, ClientError> {
    credentials::connect(&target.server, target.key.bearer_for(&target.server)?)
        .await
        .map(AdminServiceClient::new)
        .map_err(|source| ClientError::Connect { server: target.server.clone(), source })
}

/// A timestamp as RFC 3339 (empty: none).
fn rfc3339(timestamp: Option<prost_types::Timestamp>) -> String {
    timestamp.map(|t| t.to_string()).unwrap_or_default()
}

#[derive(Debug, Serialize)]
struct FlowLine {
    flow_id: String,
    kind: String,
    wallet_id: String,
    reward_id: String,
    to_wallet_id: String,
    points: i64,
    started_at: String,
    last_progress_at: String,
    step: String,
    attempts: u32,
    last_error: String,
}

/// The tenant's open flows (`stuck`: only those without progress for a minute), oldest first.
pub async fn list_flows(tenant: String, stuck: bool, target: Target) -> Result<String, ClientError> {
    let request = ListFlowsRequest { tenant_id: tenant.clone(), stuck_only: stuck };
    let flows = connect(&target).await?.list_flows(request).await.map_err(ClientError::Call)?.into_inner().flows;
    let lines: Vec<FlowLine> = flows
        .into_iter()
        .map(|f| FlowLine {
            flow_id: f.flow_id,
            kind: f.kind,
            wallet_id: f.wallet_id,
            reward_id: f.reward_id,
            to_wallet_id: f.to_wallet_id,
            points: f.points,
            started_at: rfc3339(f.started_at),
            last_progress_at: rfc3339(f.last_progress_at),
            step: f.step,
            attempts: f.attempts,
            last_error: f.last_error,
        })
        .collect();
    if target.json {
        return Ok(serde_json::to_string_pretty(&lines).expect("lines serialize"));
    }
    if lines.is_empty() {
        return Ok(format!("no {} flows for {tenant}", if stuck { "stuck" } else { "open" }));
    }
    let mut out =
        format!("{:<24} {:<18} {:<16} {:<24} {:<15} {:<24} {:>8}", "FLOW", "KIND", "WALLET", "WHAT", "STEP", "LAST PROGRESS", "ATTEMPTS");
    for l in &lines {
        // A redemption's reward, or a transfer's points and target.
        let what = if l.to_wallet_id.is_empty() { l.reward_id.clone() } else { format!("{} to {}", l.points, l.to_wallet_id) };
        // Ids are validated, errors are text from the server: shown escaped, never as terminal controls.
        let _ = write!(
            out,
            "\n{:<24} {:<18} {:<16} {:<24} {:<15} {:<24} {:>8}",
            l.flow_id, l.kind, l.wallet_id, what, l.step, l.last_progress_at, l.attempts
        );
        if !l.last_error.is_empty() {
            let _ = write!(out, "\n  {}", l.last_error.escape_debug());
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
struct RewardLine {
    reward_id: String,
    name: String,
    points: i64,
    active: bool,
    per_customer_max: i64,
    min_tier_id: String,
    /// `None`: unlimited.
    on_hand: Option<i64>,
    reserved: Option<i64>,
    taken: Option<i64>,
}

/// The tenant's catalogue with each limited reward's stock.
pub async fn list_rewards(tenant: String, target: Target) -> Result<String, ClientError> {
    let rewards = connect(&target)
        .await?
        .list_rewards(ListRewardsRequest { tenant_id: tenant.clone() })
        .await
        .map_err(ClientError::Call)?
        .into_inner()
        .rewards;
    let lines: Vec<RewardLine> = rewards
        .into_iter()
        .filter_map(|r| {
            let reward = r.reward?;
            Some(RewardLine {
                reward_id: reward.reward_id,
                name: reward.name,
                points: reward.points,
                active: reward.active,
                per_customer_max: reward.per_customer_max,
                min_tier_id: reward.min_tier_id,
                on_hand: r.stock.as_ref().map(|s| s.on_hand),
                reserved: r.stock.as_ref().map(|s| s.reserved),
                taken: r.stock.as_ref().map(|s| s.taken),
            })
        })
        .collect();
    if target.json {
        return Ok(serde_json::to_string_pretty(&lines).expect("lines serialize"));
    }
    if lines.is_empty() {
        return Ok(format!("{tenant} has no rewards in its catalogue"));
    }
    let count = |n: Option<i64>| n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    let mut out =
        format!("{:<16} {:<24} {:>10} {:>8} {:>10} {:>9} {:>9}", "REWARD", "NAME", "POINTS", "ACTIVE", "ON HAND", "RESERVED", "TAKEN");
    for l in &lines {
        let _ = write!(
            out,
            "\n{:<16} {:<24} {:>10} {:>8} {:>10} {:>9} {:>9}",
            l.reward_id,
            l.name.escape_debug().to_string(),
            l.points,
            if l.active { "yes" } else { "no" },
            count(l.on_hand),
            l.reserved.map_or_else(String::new, |n| n.to_string()),
            l.taken.map_or_else(String::new, |n| n.to_string()),
        );
    }
    Ok(out)
}

/// `tally rewards define`: the reward as the program now has it.
pub async fn define_reward(args: crate::cli::DefineRewardArgs) -> Result<String, ClientError> {
    use tally_proto::v1::{DefineRewardRequest, RewardDefined};
    let reward = RewardDefined {
        reward_id: args.reward.clone(),
        name: args.name,
        points: args.points,
        limited_stock: args.limited,
        per_customer_max: args.per_customer,
        min_tier_id: args.min_tier,
        active: !args.inactive,
        cancel_window_days: args.cancel_days,
        ..RewardDefined::default()
    };
    // The same definition again is a retry of it; another is a new definition.
    let key = args.key.unwrap_or_else(|| format!("define-{}-{:016x}", args.reward, fnv(&prost::Message::encode_to_vec(&reward))));
    let request = DefineRewardRequest { tenant_id: args.tenant, idempotency_key: key, reward: Some(reward) };
    let program = connect(&args.target).await?.define_reward(request).await.map_err(ClientError::Call)?.into_inner();
    let defined = program.rewards.into_iter().find(|r| r.reward_id == args.reward);
    let Some(r) = defined else {
        return Err(ClientError::Direct(format!("the program does not list {:?} after defining it", args.reward)));
    };
    if args.target.json {
        let line = serde_json::json!({ "reward_id": r.reward_id, "points": r.points, "limited_stock": r.limited_stock, "active": r.active, "replayed": program.replayed });
        return Ok(line.to_string());
    }
    let stock = if r.limited_stock { "limited stock" } else { "unlimited" };
    Ok(format!(
        "{}: {} points, {stock}{}",
        r.reward_id,
        r.points,
        if program.replayed { " (unchanged: the same definition again)" } else { "" }
    ))
}

/// `tally rewards restock`: the stock after it.
pub async fn restock(
    tenant: String,
    reward: String,
    quantity: i64,
    key: String,
    reason: String,
    target: Target,
) -> Result<String, ClientError> {
    use tally_proto::v1::RestockRewardRequest;
    let request = RestockRewardRequest { tenant_id: tenant, idempotency_key: key, reward_id: reward, quantity, reason };
    let stock = connect(&target).await?.restock_reward(request).await.map_err(ClientError::Call)?.into_inner();
    if target.json {
        let line = serde_json::json!({ "reward_id": stock.reward_id, "on_hand": stock.on_hand, "reserved": stock.reserved, "taken": stock.taken, "replayed": stock.replayed });
        return Ok(line.to_string());
    }
    let retry = if stock.replayed { " (a retry: nothing added)" } else { "" };
    Ok(format!("{}: {} on hand, {} reserved, {} taken{retry}", stock.reward_id, stock.on_hand, stock.reserved, stock.taken))
}

/// 64-bit FNV-1a, for a definition's default key.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}
