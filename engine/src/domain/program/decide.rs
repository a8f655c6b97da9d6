//! `decide_program`: a program command's checks and the one event it records, a function per command.

use tally_proto::v1::{
    CreditPackageDefined, ExpiryPolicy, ExpiryPolicySet, Money, PendingPeriodSet, ProgramCreated, ReferralPolicySet, RefundWindowSet,
    RulesPublished, StampCardDefined, TierDefinition, TierWindow, TiersDefined, TransferPolicySet,
};

use super::{
    PENDING_DAYS_MAX, ProgramChange, ProgramCommand, ProgramCommandBody, ProgramDecision, ProgramEvent, ProgramRejection, ProgramState,
    REFUND_WINDOW_DAYS_MAX, RULES_JSON_BYTES_MAX, UTC_OFFSET_MINUTES, check_id, check_package_id, check_text,
};
use crate::domain::ReturnPolicy;
use crate::domain::ids::{FieldError, TenantId};
use crate::domain::rules::parse_rules;
use crate::limits::{
    BALANCE_ABS_MAX, MONEY_MINOR_ABS_MAX, POINTS_PER_COMMAND_MAX, REASON_BYTES_MAX, REF_BYTES_MAX, RULES_VERSIONS_PER_WINDOW_MAX,
    RULES_VERSIONS_WINDOW_MS, STAMPS_PER_CARD_MAX,
};

/// Decides a program command at `now_ms`. Pure.
pub fn decide_program(
    state: &ProgramState,
    tenant: &TenantId,
    command: &ProgramCommand,
    now_ms: i64,
) -> Result<ProgramDecision, ProgramRejection> {
    if command.idempotency_key.is_empty() || command.idempotency_key.len() > REF_BYTES_MAX {
        return Err(FieldError::new("idempotency_key", format!("must be 1 to {REF_BYTES_MAX} bytes")).into());
    }
    if let Some((seen, rules_version)) = state.receipts.get(&command.idempotency_key) {
        return if command.matches(seen) {
            Ok(ProgramDecision::AlreadyApplied { rules_version: *rules_version })
        } else {
            Err(ProgramRejection::IdempotencyKeyReused { key: command.idempotency_key.clone() })
        };
    }
    use ProgramCommandBody as C;
    let change = match &command.body {
        C::Create { name, utc_offset_minutes, return_policy } => create(state, tenant, name, *utc_offset_minutes, *return_policy)?,
        _ if !state.created => return Err(ProgramRejection::NotCreated),
        C::PublishRules { rules_json, published_by } => publish_rules(state, rules_json, published_by, now_ms)?,
        C::DefinePackage { package_id, name, price, points, active } => define_package(package_id, name, price, *points, *active)?,
        C::SetExpiryPolicy { policy, set_by } => set_expiry_policy(policy, set_by)?,
        C::SetPendingPeriod { days, set_by } => set_pending_period(*days, set_by)?,
        C::SetRefundWindow { days, set_by } => set_refund_window(*days, set_by)?,
        C::DefineStampCard { card } => define_stamp_card(card)?,
        C::DefineTiers { tiers, window, grace_days, set_by } => define_tiers(tiers, *window, *grace_days, set_by)?,
        C::SetTransferPolicy { policy } => set_transfer_policy(policy)?,
        C::SetReferralPolicy { policy } => set_referral_policy(policy)?,
        C::DefineReward { reward } => {
            crate::domain::rewards::check_definition(reward, &state.tiers)?;
            ProgramChange::RewardDefined(reward.clone())
        }
    };
    Ok(ProgramDecision::Append(vec![ProgramEvent {
        idempotency_key: command.idempotency_key.clone(),
        command_fingerprint: command.fingerprint(),
        recorded_at_ms: now_ms,
        change,
    }]))
}

fn create(
    state: &ProgramState,
    tenant: &TenantId,
    name: &str,
    utc_offset_minutes: i32,
    return_policy: ReturnPolicy,
) -> Result<ProgramChange, ProgramRejection> {
    if state.created {
        return Err(ProgramRejection::AlreadyCreated);
    }
    check_text("name", name, REASON_BYTES_MAX)?;
    if !UTC_OFFSET_MINUTES.contains(&utc_offset_minutes) {
        return Err(FieldError::new("utc_offset_minutes", "must be between -720 and 840").into());
    }
    if return_policy == ReturnPolicy::Unspecified {
        return Err(FieldError::new("return_policy", "must be ALLOW_NEGATIVE or CAP_AT_ZERO").into());
    }
    Ok(ProgramChange::Created(ProgramCreated {
        tenant_id: tenant.as_str().to_owned(),
        name: name.to_owned(),
        utc_offset_minutes,
        return_policy: return_policy as i32,
    }))
}

fn publish_rules(state: &ProgramState, rules_json: &str, published_by: &str, now_ms: i64) -> Result<ProgramChange, ProgramRejection> {
    // The versions in force from within the last window: they are in order of that time.
    let window_start_ms = now_ms.saturating_sub(RULES_VERSIONS_WINDOW_MS);
    let recent = &state.rule_versions[state.rule_versions.partition_point(|v| v.effective_from_ms <= window_start_ms)..];
    if recent.len() >= RULES_VERSIONS_PER_WINDOW_MAX {
        // The window has room again once the oldest version that would still count leaves it.
        let leaves_ms = recent[recent.len() - RULES_VERSIONS_PER_WINDOW_MAX].effective_from_ms + RULES_VERSIONS_WINDOW_MS;
        return Err(ProgramRejection::TooManyRulesVersions {
            max: RULES_VERSIONS_PER_WINDOW_MAX,
            window_ms: RULES_VERSIONS_WINDOW_MS,
            retry_after_ms: (leaves_ms - now_ms).max(1),
        });
    }
    if rules_json.len() > RULES_JSON_BYTES_MAX {
        return Err(FieldError::new("rules_json", format!("must be at most {RULES_JSON_BYTES_MAX} bytes")).into());
    }
    check_text("published_by", published_by, REF_BYTES_MAX)?;
    parse_rules(rules_json).map_err(ProgramRejection::InvalidRules)?;
    let version = u32::try_from(state.rule_versions.len() + 1).unwrap_or(u32::MAX);
    Ok(ProgramChange::RulesPublished(RulesPublished { version, rules_json: rules_json.to_owned(), published_by: published_by.to_owned() }))
}

fn define_package(package_id: &str, name: &str, price: &Money, points: i64, active: bool) -> Result<ProgramChange, ProgramRejection> {
    check_package_id(package_id)?;
    check_text("package.name", name, REASON_BYTES_MAX)?;
    if price.currency.len() != 3 || !price.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(FieldError::new("package.price.currency", "must be an ISO 4217 code such as EUR").into());
    }
    if !(1..=MONEY_MINOR_ABS_MAX).contains(&price.amount_minor) {
        return Err(FieldError::new("package.price.amount_minor", format!("must be within 1..={MONEY_MINOR_ABS_MAX}")).into());
    }
    if !(1..=POINTS_PER_COMMAND_MAX).contains(&points) {
        return Err(FieldError::new("package.points", format!("must be within 1..={POINTS_PER_COMMAND_MAX}")).into());
    }
    Ok(ProgramChange::PackageDefined(CreditPackageDefined {
        package_id: package_id.to_owned(),
        name: name.to_owned(),
        price: Some(price.clone()),
        points,
        active,
    }))
}

fn set_expiry_policy(policy: &ExpiryPolicy, set_by: &str) -> Result<ProgramChange, ProgramRejection> {
    crate::domain::expiry::validate(policy)?;
    check_text("set_by", set_by, REF_BYTES_MAX)?;
    Ok(ProgramChange::ExpiryPolicySet(ExpiryPolicySet { policy: Some(*policy), set_by: set_by.to_owned() }))
}

fn set_pending_period(days: u32, set_by: &str) -> Result<ProgramChange, ProgramRejection> {
    if days > PENDING_DAYS_MAX {
        return Err(FieldError::new("days", format!("must be at most {PENDING_DAYS_MAX}")).into());
    }
    check_text("set_by", set_by, REF_BYTES_MAX)?;
    Ok(ProgramChange::PendingPeriodSet(PendingPeriodSet { days, set_by: set_by.to_owned() }))
}

fn set_refund_window(days: u32, set_by: &str) -> Result<ProgramChange, ProgramRejection> {
    if !(1..=REFUND_WINDOW_DAYS_MAX).contains(&days) {
        return Err(FieldError::new("days", format!("must be 1 to {REFUND_WINDOW_DAYS_MAX}")).into());
    }
    check_text("set_by", set_by, REF_BYTES_MAX)?;
    Ok(ProgramChange::RefundWindowSet(RefundWindowSet { days, set_by: set_by.to_owned() }))
}

fn set_transfer_policy(policy: &TransferPolicySet) -> Result<ProgramChange, ProgramRejection> {
    if !(0..=POINTS_PER_COMMAND_MAX).contains(&policy.max_points_per_transfer) {
        return Err(FieldError::new("max_points_per_transfer", format!("must be 0 (no cap) to {POINTS_PER_COMMAND_MAX}")).into());
    }
    if !(0..=BALANCE_ABS_MAX).contains(&policy.max_points_per_day) {
        return Err(FieldError::new("max_points_per_day", format!("must be 0 (no cap) to {BALANCE_ABS_MAX}")).into());
    }
    check_text("set_by", &policy.set_by, REF_BYTES_MAX)?;
    Ok(ProgramChange::TransferPolicySet(policy.clone()))
}

/// The longest a referral may wait for its converting order, in days.
const REFERRAL_WINDOW_DAYS_MAX: u32 = 3_650;
/// The largest cap of rewards per referrer.
const REFERRAL_REWARDS_MAX: i64 = 1_000_000;

fn set_referral_policy(policy: &ReferralPolicySet) -> Result<ProgramChange, ProgramRejection> {
    for (field, points) in [("referrer_points", policy.referrer_points), ("referee_points", policy.referee_points)] {
        if !(0..=POINTS_PER_COMMAND_MAX).contains(&points) {
            return Err(FieldError::new(field, format!("must be within 0..={POINTS_PER_COMMAND_MAX}")).into());
        }
    }
    if policy.enabled && policy.referrer_points == 0 && policy.referee_points == 0 {
        return Err(FieldError::new("referrer_points", "an enabled policy gives points to the referrer, the referee or both").into());
    }
    if !(0..=MONEY_MINOR_ABS_MAX).contains(&policy.min_order_minor) {
        return Err(FieldError::new("min_order_minor", format!("must be within 0..={MONEY_MINOR_ABS_MAX}")).into());
    }
    if !policy.currency.is_empty() && (policy.currency.len() != 3 || !policy.currency.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(FieldError::new("currency", "must be empty (any) or an ISO 4217 code such as EUR").into());
    }
    if policy.convert_within_days > REFERRAL_WINDOW_DAYS_MAX {
        return Err(FieldError::new("convert_within_days", format!("must be 0 (no limit) to {REFERRAL_WINDOW_DAYS_MAX}")).into());
    }
    if !(0..=REFERRAL_REWARDS_MAX).contains(&policy.max_rewards_per_referrer) {
        return Err(FieldError::new("max_rewards_per_referrer", format!("must be 0 (no limit) to {REFERRAL_REWARDS_MAX}")).into());
    }
    // 20 of what: minor units of two currencies are not one amount.
    if policy.min_order_minor > 0 && policy.currency.is_empty() {
        return Err(FieldError::new("currency", "must name the currency of min_order_minor").into());
    }
    check_text("set_by", &policy.set_by, REF_BYTES_MAX)?;
    Ok(ProgramChange::ReferralPolicySet(policy.clone()))
}

fn define_stamp_card(card: &StampCardDefined) -> Result<ProgramChange, ProgramRejection> {
    check_id("card.card_id", &card.card_id)?;
    check_text("card.name", &card.name, REASON_BYTES_MAX)?;
    check_text("card.reward_ref", &card.reward_ref, REF_BYTES_MAX)?;
    if !(1..=STAMPS_PER_CARD_MAX).contains(&card.stamps_required) {
        return Err(FieldError::new("card.stamps_required", format!("must be within 1..={STAMPS_PER_CARD_MAX}")).into());
    }
    if !(0..=POINTS_PER_COMMAND_MAX).contains(&card.reward_points) {
        return Err(FieldError::new("card.reward_points", format!("must be within 0..={POINTS_PER_COMMAND_MAX}")).into());
    }
    if card.reward_ref.is_empty() && card.reward_points == 0 {
        return Err(FieldError::new("card.reward_ref", "a card needs a reward: reward_ref, reward_points or both").into());
    }
    Ok(ProgramChange::StampCardDefined(card.clone()))
}

fn define_tiers(tiers: &[TierDefinition], window: TierWindow, grace_days: u32, set_by: &str) -> Result<ProgramChange, ProgramRejection> {
    crate::domain::tiers::validate(tiers, window, grace_days)?;
    check_text("set_by", set_by, REF_BYTES_MAX)?;
    Ok(ProgramChange::TiersDefined(TiersDefined { tiers: tiers.to_vec(), window: window as i32, grace_days, set_by: set_by.to_owned() }))
}
