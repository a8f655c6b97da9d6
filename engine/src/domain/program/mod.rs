//! The program aggregate: a tenant's loyalty program, event-sourced like wallets, so "which rules were in
//! force on 3 March" has an exact answer. Pure: `decide_program` (in `decide.rs`, a function per command)
//! and `apply_program`.

use std::collections::BTreeMap;
use std::sync::Arc;

use tally_proto::v1::{
    CreditPackageDefined, ExpiryPolicy, ExpiryPolicySet, Money, PendingPeriodSet, ProgramCreated, ReferralPolicySet, RefundWindowSet,
    RewardDefined, RulesPublished, StampCardDefined, TierDefinition, TierWindow, TiersDefined, TransferPolicySet,
};

mod decide;

pub use decide::decide_program;

use crate::domain::ReturnPolicy;
use crate::domain::fingerprint::{CommandFingerprint, Layout};
use crate::domain::ids::FieldError;
use crate::domain::rules::{Rule, RuleError, parse_rules};

/// Largest rules document, in bytes: its `RulesPublished` event (the document, a version number and who
/// published it) must fit the log's largest event.
pub const RULES_JSON_BYTES_MAX: usize = 60 * 1024;
const _: () = assert!(RULES_JSON_BYTES_MAX + 1024 <= crate::limits::EVENT_PAYLOAD_BYTES_MAX);
/// Longest pending period: a year.
pub const PENDING_DAYS_MAX: u32 = 365;
/// Longest refund window: ten years.
pub const REFUND_WINDOW_DAYS_MAX: u32 = 3_650;
/// The refund window of a program that never set one: a year.
pub const REFUND_WINDOW_DEFAULT_DAYS: u32 = 365;
/// Time zones span UTC-12:00 to UTC+14:00.
pub(super) const UTC_OFFSET_MINUTES: std::ops::RangeInclusive<i32> = -720..=840;

#[derive(Debug, Clone, PartialEq)]
pub enum ProgramCommandBody {
    Create {
        name: String,
        utc_offset_minutes: i32,
        return_policy: ReturnPolicy,
    },
    /// Validates and publishes a new version of the earn rules.
    PublishRules {
        rules_json: String,
        published_by: String,
    },
    /// Defines a credit package, or replaces its definition.
    DefinePackage {
        package_id: String,
        name: String,
        price: Money,
        points: i64,
        active: bool,
    },
    /// Sets when earned points expire, for points credited from then on.
    SetExpiryPolicy {
        policy: ExpiryPolicy,
        set_by: String,
    },
    /// Sets how long points earned for orders wait before they can be spent.
    SetPendingPeriod {
        days: u32,
        set_by: String,
    },
    /// Sets how long after an order its points can be taken back by refunds and reversals.
    SetRefundWindow {
        days: u32,
        set_by: String,
    },
    /// Defines a stamp card, or replaces its definition.
    DefineStampCard {
        card: StampCardDefined,
    },
    /// Defines a reward of the catalogue, or replaces its definition.
    DefineReward {
        reward: RewardDefined,
    },
    /// Sets whether points may move between wallets, and how many (the whole policy).
    SetTransferPolicy {
        policy: TransferPolicySet,
    },
    /// Sets what a referral earns its two customers (the whole policy).
    SetReferralPolicy {
        policy: ReferralPolicySet,
    },
    /// Defines the tiers (the whole set).
    DefineTiers {
        tiers: Vec<TierDefinition>,
        window: TierWindow,
        grace_days: u32,
        set_by: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProgramCommand {
    pub idempotency_key: String,
    pub body: ProgramCommandBody,
}

impl ProgramCommand {
    /// The fingerprint of the body that new events record (BLAKE3-128 of its layout).
    pub fn fingerprint(&self) -> CommandFingerprint {
        self.layout().fingerprint()
    }

    /// The 64-bit FNV-1a fingerprint events recorded before the digest; only compared, never recorded.
    pub fn legacy_fingerprint(&self) -> CommandFingerprint {
        self.layout().legacy_fingerprint()
    }

    /// Whether a receipt's fingerprint is this command's payload, by the function that recorded it.
    pub fn matches(&self, recorded: &CommandFingerprint) -> bool {
        self.layout().matches(recorded)
    }

    /// The body's bytes as the fingerprints read them; a permanent format (see `fingerprint.rs`).
    fn layout(&self) -> Layout {
        match &self.body {
            ProgramCommandBody::Create { name, utc_offset_minutes, return_policy } => {
                Layout::new(101).str(name).i64(i64::from(*utc_offset_minutes)).i64(i64::from(*return_policy as i32))
            }
            ProgramCommandBody::PublishRules { rules_json, published_by } => Layout::new(102).str(rules_json).str(published_by),
            ProgramCommandBody::DefinePackage { package_id, name, price, points, active } => {
                Layout::new(103).str(package_id).str(name).i64(price.amount_minor).str(&price.currency).i64(*points).u64(u64::from(*active))
            }
            ProgramCommandBody::SetExpiryPolicy { policy, set_by } => {
                use tally_proto::v1::expiry_policy::Rule;
                let layout = match &policy.rule {
                    None => Layout::new(104).u64(0),
                    Some(Rule::After(a)) => {
                        Layout::new(104).u64(1).u64(u64::from(a.months)).u64(u64::from(a.days)).u64(u64::from(a.at_month_end))
                    }
                    Some(Rule::OnDate(d)) => {
                        Layout::new(104).u64(2).u64(u64::from(d.month)).u64(u64::from(d.day)).u64(u64::from(d.years_later))
                    }
                    Some(Rule::Inactivity(i)) => Layout::new(104).u64(3).u64(u64::from(i.months)),
                };
                layout.u64(u64::from(policy.notice_days)).str(set_by)
            }
            ProgramCommandBody::SetPendingPeriod { days, set_by } => Layout::new(105).u64(u64::from(*days)).str(set_by),
            ProgramCommandBody::SetRefundWindow { days, set_by } => Layout::new(108).u64(u64::from(*days)).str(set_by),
            ProgramCommandBody::DefineStampCard { card } => Layout::new(107)
                .str(&card.card_id)
                .str(&card.name)
                .i64(card.stamps_required)
                .str(&card.reward_ref)
                .i64(card.reward_points)
                .u64(u64::from(card.active)),
            // The window after the fields the layout was made with, so their fingerprints stay as they were.
            ProgramCommandBody::DefineReward { reward } => reward_layout(reward).u64_unless_zero(u64::from(reward.cancel_window_days)),
            ProgramCommandBody::SetTransferPolicy { policy } => Layout::new(110)
                .u64(u64::from(policy.allowed))
                .i64(policy.max_points_per_transfer)
                .i64(policy.max_points_per_day)
                .str(&policy.set_by),
            ProgramCommandBody::SetReferralPolicy { policy } => Layout::new(111)
                .u64(u64::from(policy.enabled))
                .i64(policy.referrer_points)
                .i64(policy.referee_points)
                .i64(policy.min_order_minor)
                .str(&policy.currency)
                .str(&policy.set_by)
                .u64(u64::from(policy.convert_within_days))
                .i64(policy.max_rewards_per_referrer),
            ProgramCommandBody::DefineTiers { tiers, window, grace_days, set_by } => {
                let layout = Layout::new(106).u64(tiers.len() as u64);
                let layout = tiers.iter().fold(layout, |layout, t| {
                    layout.str(&t.tier_id).str(&t.name).i64(t.min_qualifying_points).u64(u64::from(t.earn_multiplier_percent))
                });
                layout.i64(i64::from(*window as i32)).u64(u64::from(*grace_days)).str(set_by)
            }
        }
    }
}

/// A reward definition's layout as its first build made it (without the cancellation window, which
/// follows it when it is not 0: a definition with a window recorded by that build, a day before this
/// one, is answered ALREADY_EXISTS on a retry rather than let a change of window pass for a retry).
fn reward_layout(reward: &RewardDefined) -> Layout {
    Layout::new(109)
        .str(&reward.reward_id)
        .str(&reward.name)
        .i64(reward.points)
        .u64(u64::from(reward.limited_stock))
        .i64(reward.per_customer_max)
        .i64(reward.available_from_ms)
        .i64(reward.available_until_ms)
        .str(&reward.min_tier_id)
        .u64(u64::from(reward.active))
}

crate::domain::event::event_table! {
    /// What happened to a program.
    ProgramChange {
        Created(ProgramCreated),
        RulesPublished(RulesPublished),
        PackageDefined(CreditPackageDefined),
        ExpiryPolicySet(ExpiryPolicySet),
        PendingPeriodSet(PendingPeriodSet),
        RefundWindowSet(RefundWindowSet),
        TiersDefined(TiersDefined),
        StampCardDefined(StampCardDefined),
        RewardDefined(RewardDefined),
        TransferPolicySet(TransferPolicySet),
        ReferralPolicySet(ReferralPolicySet),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProgramEvent {
    pub idempotency_key: String,
    /// [`ProgramCommand::fingerprint`] of the command that produced it (an old event's: the FNV-1a).
    pub command_fingerprint: CommandFingerprint,
    pub recorded_at_ms: i64,
    pub change: ProgramChange,
}

/// One published version of the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleVersion {
    pub version: u32,
    /// In force from this instant until the next version's.
    pub effective_from_ms: i64,
    pub published_by: String,
    pub rules_json: Arc<str>,
    /// The parsed rules; an error only if a stored document no longer reads (a format change that was
    /// not additive), in which case evaluating this version must fail rather than guess.
    pub rules: Result<Arc<[Rule]>, RuleError>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgramState {
    /// Events applied.
    pub version: u64,
    pub created: bool,
    pub name: String,
    pub utc_offset_minutes: i32,
    pub return_policy: ReturnPolicy,
    /// Every version, oldest first.
    pub rule_versions: Vec<RuleVersion>,
    /// Credit packages by id, as last defined.
    pub packages: BTreeMap<String, CreditPackageDefined>,
    /// When earned points expire (no rule: never).
    pub expiry: ExpiryPolicy,
    /// Days points earned for orders wait before they can be spent.
    pub pending_days: u32,
    /// Days after an order its points can be taken back; 0: never set (the default applies).
    pub refund_window_days: u32,
    /// The tiers, lowest first, and how they are measured.
    pub tiers: crate::domain::tiers::Tiers,
    /// Stamp cards by id, as last defined.
    pub stamp_cards: BTreeMap<String, StampCardDefined>,
    /// The rewards catalogue by id, as last defined.
    pub rewards: BTreeMap<String, RewardDefined>,
    /// Whether points may move between wallets (none set: not allowed).
    pub transfers: TransferPolicySet,
    /// What a referral earns (none set: nothing).
    pub referrals: ReferralPolicySet,
    /// Idempotency keys of accepted commands: their fingerprint and the rules version after them.
    receipts: BTreeMap<String, (CommandFingerprint, u32)>,
}

impl ProgramState {
    /// The rules in force at `at_ms`: the last version published at or before it.
    pub fn rules_at(&self, at_ms: i64) -> Option<&RuleVersion> {
        version_at(&self.rule_versions, at_ms)
    }

    /// What wallets of this program decide with.
    pub fn settings(&self) -> crate::domain::ProgramSettings {
        crate::domain::ProgramSettings {
            return_policy: self.return_policy,
            utc_offset_minutes: self.utc_offset_minutes,
            rule_versions: self.rule_versions.clone().into(),
            packages: Arc::new(self.packages.clone()),
            expiry: self.expiry,
            pending_days: self.pending_days,
            refund_window_days: self.refund_window_days(),
            tiers: self.tiers.clone(),
            stamp_cards: Arc::new(self.stamp_cards.clone()),
            rewards: Arc::new(self.rewards.clone()),
            transfers: self.transfers.clone(),
            referrals: self.referrals.clone(),
        }
    }

    /// The refund window in force, in days.
    pub fn refund_window_days(&self) -> u32 {
        if self.refund_window_days == 0 { REFUND_WINDOW_DEFAULT_DAYS } else { self.refund_window_days }
    }

    pub fn current_rules(&self) -> Option<&RuleVersion> {
        self.rule_versions.last()
    }
}

/// The last of `versions` (oldest first) in force at `at_ms`.
pub(super) fn version_at(versions: &[RuleVersion], at_ms: i64) -> Option<&RuleVersion> {
    let published = versions.partition_point(|v| v.effective_from_ms <= at_ms);
    published.checked_sub(1).map(|i| &versions[i])
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramRejection {
    #[error("invalid {0}")]
    InvalidField(#[from] FieldError),
    /// The rules document is wrong; the error names the path in it.
    #[error("invalid rules_json: {0}")]
    InvalidRules(RuleError),
    #[error("no program for this tenant yet")]
    NotCreated,
    #[error("the program already exists")]
    AlreadyCreated,
    #[error("idempotency key {key:?} was already used for a different command")]
    IdempotencyKeyReused { key: String },
    /// `max` rules versions were published within the last `window_ms`; the next may be in
    /// `retry_after_ms`. Counted on the versions' recorded times, so every node decides alike.
    #[error("{max} rules versions were published in the last {} hours, the most allowed; the next may be published in {} s", window_ms / 3_600_000, (retry_after_ms + 999) / 1000)]
    TooManyRulesVersions { max: usize, window_ms: i64, retry_after_ms: i64 },
    /// The platform has `max` tenants already (the length of stream `$tenants`).
    #[error("the platform has {max} tenants, the most it allows (tally serve --tenants-max)")]
    TooManyTenants { max: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProgramDecision {
    Append(Vec<ProgramEvent>),
    /// The same command was accepted before; nothing to append. Carries the rules version it left.
    AlreadyApplied {
        rules_version: u32,
    },
}

pub(super) fn check_package_id(id: &str) -> Result<(), FieldError> {
    check_id("package.package_id", id)
}

/// Ids of things a program defines (packages, stamp cards): 1 to 64 bytes of A-Z a-z 0-9 - _ . :
pub fn check_id(field: &'static str, id: &str) -> Result<(), FieldError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if id.is_empty() || id.len() > 64 || !id.chars().all(allowed) {
        return Err(FieldError::new(field, "must be 1 to 64 bytes of A-Z a-z 0-9 - _ . :"));
    }
    Ok(())
}

pub(super) fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError::new(field, format!("must be at most {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// Folds one event into the program. Holds no business rule: it records what was decided.
pub fn apply_program(state: &mut ProgramState, event: &ProgramEvent) {
    match &event.change {
        ProgramChange::Created(e) => {
            state.created = true;
            state.name.clone_from(&e.name);
            state.utc_offset_minutes = e.utc_offset_minutes;
            // Kept as stored; an unknown value stays unspecified rather than guessed.
            state.return_policy = ReturnPolicy::try_from(e.return_policy).unwrap_or(ReturnPolicy::Unspecified);
        }
        ProgramChange::RulesPublished(e) => state.rule_versions.push(RuleVersion {
            version: e.version,
            // Versions stay in order even if a node's clock stepped back.
            effective_from_ms: state.rule_versions.last().map_or(event.recorded_at_ms, |v| v.effective_from_ms.max(event.recorded_at_ms)),
            published_by: e.published_by.clone(),
            rules_json: Arc::from(e.rules_json.as_str()),
            rules: parse_rules(&e.rules_json).map(Arc::from),
        }),
        ProgramChange::PackageDefined(e) => {
            state.packages.insert(e.package_id.clone(), e.clone());
        }
        ProgramChange::ExpiryPolicySet(e) => state.expiry = e.policy.unwrap_or_default(),
        ProgramChange::PendingPeriodSet(e) => state.pending_days = e.days,
        ProgramChange::RefundWindowSet(e) => state.refund_window_days = e.days,
        ProgramChange::StampCardDefined(e) => {
            state.stamp_cards.insert(e.card_id.clone(), e.clone());
        }
        ProgramChange::RewardDefined(e) => {
            state.rewards.insert(e.reward_id.clone(), e.clone());
        }
        ProgramChange::TransferPolicySet(e) => state.transfers = e.clone(),
        ProgramChange::ReferralPolicySet(e) => state.referrals = e.clone(),
        ProgramChange::TiersDefined(e) => {
            state.tiers = crate::domain::tiers::Tiers {
                levels: e.tiers.clone().into(),
                window: TierWindow::try_from(e.window).unwrap_or(TierWindow::Unspecified),
                grace_days: e.grace_days,
            };
        }
    }
    state.version += 1;
    let rules_version = state.current_rules().map_or(0, |v| v.version);
    state.receipts.insert(event.idempotency_key.clone(), (event.command_fingerprint, rules_version));
}
