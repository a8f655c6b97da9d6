//! The program aggregate: a tenant's loyalty program, event-sourced like wallets, so "which rules were in
//! force on 3 March" has an exact answer. Pure: `decide_program` and `apply_program`.

use std::collections::BTreeMap;
use std::sync::Arc;

use tally_proto::v1::{
    CreditPackageDefined, ExpiryPolicy, ExpiryPolicySet, Money, PendingPeriodSet, ProgramCreated, RefundWindowSet, RulesPublished,
    StampCardDefined, TierDefinition, TierWindow, TiersDefined,
};

use super::ReturnPolicy;
use super::fingerprint::Fingerprint;
use super::ids::{FieldError, TenantId};
use super::rules::{Rule, RuleError, parse_rules};
use crate::limits::{MONEY_MINOR_ABS_MAX, POINTS_PER_COMMAND_MAX, REASON_BYTES_MAX, REF_BYTES_MAX, STAMPS_PER_CARD_MAX};

/// Largest rules document, in bytes.
pub const RULES_JSON_BYTES_MAX: usize = 256 * 1024;
/// Longest pending period: a year.
pub const PENDING_DAYS_MAX: u32 = 365;
/// Longest refund window: ten years.
pub const REFUND_WINDOW_DAYS_MAX: u32 = 3_650;
/// The refund window of a program that never set one: a year.
pub const REFUND_WINDOW_DEFAULT_DAYS: u32 = 365;
/// Time zones span UTC-12:00 to UTC+14:00.
const UTC_OFFSET_MINUTES: std::ops::RangeInclusive<i32> = -720..=840;

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
    pub fn fingerprint(&self) -> u64 {
        match &self.body {
            ProgramCommandBody::Create { name, utc_offset_minutes, return_policy } => {
                Fingerprint::new(101).str(name).i64(i64::from(*utc_offset_minutes)).i64(i64::from(*return_policy as i32))
            }
            ProgramCommandBody::PublishRules { rules_json, published_by } => Fingerprint::new(102).str(rules_json).str(published_by),
            ProgramCommandBody::DefinePackage { package_id, name, price, points, active } => Fingerprint::new(103)
                .str(package_id)
                .str(name)
                .i64(price.amount_minor)
                .str(&price.currency)
                .i64(*points)
                .u64(u64::from(*active)),
            ProgramCommandBody::SetExpiryPolicy { policy, set_by } => {
                use tally_proto::v1::expiry_policy::Rule;
                let fp = match &policy.rule {
                    None => Fingerprint::new(104).u64(0),
                    Some(Rule::After(a)) => {
                        Fingerprint::new(104).u64(1).u64(u64::from(a.months)).u64(u64::from(a.days)).u64(u64::from(a.at_month_end))
                    }
                    Some(Rule::OnDate(d)) => {
                        Fingerprint::new(104).u64(2).u64(u64::from(d.month)).u64(u64::from(d.day)).u64(u64::from(d.years_later))
                    }
                    Some(Rule::Inactivity(i)) => Fingerprint::new(104).u64(3).u64(u64::from(i.months)),
                };
                fp.u64(u64::from(policy.notice_days)).str(set_by)
            }
            ProgramCommandBody::SetPendingPeriod { days, set_by } => Fingerprint::new(105).u64(u64::from(*days)).str(set_by),
            ProgramCommandBody::SetRefundWindow { days, set_by } => Fingerprint::new(108).u64(u64::from(*days)).str(set_by),
            ProgramCommandBody::DefineStampCard { card } => Fingerprint::new(107)
                .str(&card.card_id)
                .str(&card.name)
                .i64(card.stamps_required)
                .str(&card.reward_ref)
                .i64(card.reward_points)
                .u64(u64::from(card.active)),
            ProgramCommandBody::DefineTiers { tiers, window, grace_days, set_by } => {
                let fp = Fingerprint::new(106).u64(tiers.len() as u64);
                let fp = tiers.iter().fold(fp, |fp, t| {
                    fp.str(&t.tier_id).str(&t.name).i64(t.min_qualifying_points).u64(u64::from(t.earn_multiplier_percent))
                });
                fp.i64(i64::from(*window as i32)).u64(u64::from(*grace_days)).str(set_by)
            }
        }
        .finish()
    }
}

super::event::event_table! {
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
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProgramEvent {
    pub idempotency_key: String,
    pub command_fingerprint: u64,
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
    pub tiers: super::tiers::Tiers,
    /// Stamp cards by id, as last defined.
    pub stamp_cards: BTreeMap<String, StampCardDefined>,
    /// Idempotency keys of accepted commands: their fingerprint and the rules version after them.
    receipts: BTreeMap<String, (u64, u32)>,
}

impl ProgramState {
    /// The rules in force at `at_ms`: the last version published at or before it.
    pub fn rules_at(&self, at_ms: i64) -> Option<&RuleVersion> {
        version_at(&self.rule_versions, at_ms)
    }

    /// What wallets of this program decide with.
    pub fn settings(&self) -> super::ProgramSettings {
        super::ProgramSettings {
            return_policy: self.return_policy,
            utc_offset_minutes: self.utc_offset_minutes,
            rule_versions: self.rule_versions.clone().into(),
            packages: Arc::new(self.packages.clone()),
            expiry: self.expiry,
            pending_days: self.pending_days,
            refund_window_days: self.refund_window_days(),
            tiers: self.tiers.clone(),
            stamp_cards: Arc::new(self.stamp_cards.clone()),
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
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProgramDecision {
    Append(Vec<ProgramEvent>),
    /// The same command was accepted before; nothing to append. Carries the rules version it left.
    AlreadyApplied {
        rules_version: u32,
    },
}

fn check_package_id(id: &str) -> Result<(), FieldError> {
    check_id("package.package_id", id)
}

/// Ids of things a program defines (packages, stamp cards): 1 to 64 bytes of A-Z a-z 0-9 - _ . :
pub(crate) fn check_id(field: &'static str, id: &str) -> Result<(), FieldError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if id.is_empty() || id.len() > 64 || !id.chars().all(allowed) {
        return Err(FieldError::new(field, "must be 1 to 64 bytes of A-Z a-z 0-9 - _ . :"));
    }
    Ok(())
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError::new(field, format!("must be at most {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(())
}

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
    let fingerprint = command.fingerprint();
    if let Some((seen, rules_version)) = state.receipts.get(&command.idempotency_key) {
        return if *seen == fingerprint {
            Ok(ProgramDecision::AlreadyApplied { rules_version: *rules_version })
        } else {
            Err(ProgramRejection::IdempotencyKeyReused { key: command.idempotency_key.clone() })
        };
    }
    let change = match &command.body {
        ProgramCommandBody::Create { name, utc_offset_minutes, return_policy } => {
            if state.created {
                return Err(ProgramRejection::AlreadyCreated);
            }
            check_text("name", name, REASON_BYTES_MAX)?;
            if !UTC_OFFSET_MINUTES.contains(utc_offset_minutes) {
                return Err(FieldError::new("utc_offset_minutes", "must be between -720 and 840").into());
            }
            if *return_policy == ReturnPolicy::Unspecified {
                return Err(FieldError::new("return_policy", "must be ALLOW_NEGATIVE or CAP_AT_ZERO").into());
            }
            ProgramChange::Created(ProgramCreated {
                tenant_id: tenant.as_str().to_owned(),
                name: name.clone(),
                utc_offset_minutes: *utc_offset_minutes,
                return_policy: *return_policy as i32,
            })
        }
        ProgramCommandBody::PublishRules { rules_json, published_by } => {
            if !state.created {
                return Err(ProgramRejection::NotCreated);
            }
            if rules_json.len() > RULES_JSON_BYTES_MAX {
                return Err(FieldError::new("rules_json", format!("must be at most {RULES_JSON_BYTES_MAX} bytes")).into());
            }
            check_text("published_by", published_by, REF_BYTES_MAX)?;
            parse_rules(rules_json).map_err(ProgramRejection::InvalidRules)?;
            let version = u32::try_from(state.rule_versions.len() + 1).unwrap_or(u32::MAX);
            ProgramChange::RulesPublished(RulesPublished { version, rules_json: rules_json.clone(), published_by: published_by.clone() })
        }
        ProgramCommandBody::DefinePackage { package_id, name, price, points, active } => {
            if !state.created {
                return Err(ProgramRejection::NotCreated);
            }
            check_package_id(package_id)?;
            check_text("package.name", name, REASON_BYTES_MAX)?;
            if price.currency.len() != 3 || !price.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(FieldError::new("package.price.currency", "must be an ISO 4217 code such as EUR").into());
            }
            if !(1..=MONEY_MINOR_ABS_MAX).contains(&price.amount_minor) {
                return Err(FieldError::new("package.price.amount_minor", format!("must be within 1..={MONEY_MINOR_ABS_MAX}")).into());
            }
            if !(1..=POINTS_PER_COMMAND_MAX).contains(points) {
                return Err(FieldError::new("package.points", format!("must be within 1..={POINTS_PER_COMMAND_MAX}")).into());
            }
            ProgramChange::PackageDefined(CreditPackageDefined {
                package_id: package_id.clone(),
                name: name.clone(),
                price: Some(price.clone()),
                points: *points,
                active: *active,
            })
        }
        ProgramCommandBody::SetExpiryPolicy { policy, set_by } => {
            if !state.created {
                return Err(ProgramRejection::NotCreated);
            }
            super::expiry::validate(policy)?;
            check_text("set_by", set_by, REF_BYTES_MAX)?;
            ProgramChange::ExpiryPolicySet(ExpiryPolicySet { policy: Some(*policy), set_by: set_by.clone() })
        }
        ProgramCommandBody::SetPendingPeriod { days, set_by } => {
            if !state.created {
                return Err(ProgramRejection::NotCreated);
            }
            if *days > PENDING_DAYS_MAX {
                return Err(FieldError::new("days", format!("must be at most {PENDING_DAYS_MAX}")).into());
            }
            check_text("set_by", set_by, REF_BYTES_MAX)?;
            ProgramChange::PendingPeriodSet(PendingPeriodSet { days: *days, set_by: set_by.clone() })
        }
        ProgramCommandBody::SetRefundWindow { days, set_by } => {
            if !state.created {
                return Err(ProgramRejection::NotCreated);
            }
            if !(1..=REFUND_WINDOW_DAYS_MAX).contains(days) {
                return Err(FieldError::new("days", format!("must be 1 to {REFUND_WINDOW_DAYS_MAX}")).into());
            }
            check_text("set_by", set_by, REF_BYTES_MAX)?;
            ProgramChange::RefundWindowSet(RefundWindowSet { days: *days, set_by: set_by.clone() })
        }
        ProgramCommandBody::DefineStampCard { card } => {
            if !state.created {
                return Err(ProgramRejection::NotCreated);
            }
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
            ProgramChange::StampCardDefined(card.clone())
        }
        ProgramCommandBody::DefineTiers { tiers, window, grace_days, set_by } => {
            if !state.created {
                return Err(ProgramRejection::NotCreated);
            }
            super::tiers::validate(tiers, *window, *grace_days)?;
            check_text("set_by", set_by, REF_BYTES_MAX)?;
            ProgramChange::TiersDefined(TiersDefined {
                tiers: tiers.clone(),
                window: *window as i32,
                grace_days: *grace_days,
                set_by: set_by.clone(),
            })
        }
    };
    Ok(ProgramDecision::Append(vec![ProgramEvent {
        idempotency_key: command.idempotency_key.clone(),
        command_fingerprint: fingerprint,
        recorded_at_ms: now_ms,
        change,
    }]))
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
        ProgramChange::TiersDefined(e) => {
            state.tiers = super::tiers::Tiers {
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
