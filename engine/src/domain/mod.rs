//! The wallet domain: pure, synchronous, deterministic.
//!
//! `decide(&state, &command, &ctx)` turns a command into events or a typed rejection; `apply(&mut state,
//! &event)` folds an event into the state. Time, ids and program settings arrive through [`Context`];
//! nothing here reads a clock, touches I/O or uses floating point.
//!
//! Architecture Invariant: nothing in this module depends on the store, the actors or any runtime.
//! Architecture Invariant: `apply` holds no business rule; every decision is recorded in the event.
#![deny(clippy::float_arithmetic)]

pub mod access;
mod command;
mod event;
pub mod expiry;
mod fingerprint;
pub mod flows;
pub mod identifiers;
mod ids;
pub mod program;
mod rejection;
pub mod rewards;
pub mod rules;
mod state;
pub mod tiers;
mod wallet;

pub use command::{
    Command, CommandBody, ENGINE_KEY_PREFIX, Money, TransferPart, TransferStep, capture_key, due_key, referral_reward_key,
    reward_cancel_key, reward_debit_key, transfer_key, void_key,
};
pub use event::{Change, Event};
pub use fingerprint::CommandFingerprint;
pub use ids::{FieldError, TenantId, WalletId};
pub use rejection::Rejection;
pub use state::{
    CatalogueRedemption, Hold, Lot, Pending, Receipt, RuleUsage, SourceLedger, StampCard, TierState, WalletState, WalletStatus,
};
pub use tally_proto::v1::{
    CreditPackageDefined, ExpiryPolicy, ReferralPolicySet, ReturnPolicy, RewardDefined, StampCardDefined, TierMove, TransferPolicySet,
};
pub use wallet::{Decision, DueView, OrderQuote, apply, decide, quote_order};

/// What the wallet domain needs of its tenant's program (see [`program::ProgramState::settings`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramSettings {
    /// What a reversal does when the points were already spent.
    pub return_policy: ReturnPolicy,
    /// The program's clock for rule days, weekdays, time windows and cap periods: minutes east of UTC.
    pub utc_offset_minutes: i32,
    /// Every published version of the earn rules, oldest first.
    pub rule_versions: std::sync::Arc<[program::RuleVersion]>,
    /// Credit packages by id, as last defined.
    pub packages: std::sync::Arc<std::collections::BTreeMap<String, CreditPackageDefined>>,
    /// When earned points expire (no rule: never).
    pub expiry: ExpiryPolicy,
    /// Days after an order was placed before the points it earned can be spent (0: at once).
    pub pending_days: u32,
    /// Days after an order was placed (after a plain earn) its points can be taken back.
    pub refund_window_days: u32,
    /// The program's tiers (none: no levels).
    pub tiers: tiers::Tiers,
    /// Stamp cards by id, as last defined.
    pub stamp_cards: std::sync::Arc<std::collections::BTreeMap<String, StampCardDefined>>,
    /// The rewards catalogue by id, as last defined.
    pub rewards: std::sync::Arc<std::collections::BTreeMap<String, RewardDefined>>,
    /// Whether points may move between wallets, and how many (none set: not allowed).
    pub transfers: TransferPolicySet,
    /// What a referral earns its two customers (none set: nothing).
    pub referrals: ReferralPolicySet,
}

impl ProgramSettings {
    /// The rules in force at `at_ms`: the last version published at or before it.
    pub fn rules_at(&self, at_ms: i64) -> Option<&program::RuleVersion> {
        program::version_at(&self.rule_versions, at_ms)
    }
}

impl Default for ProgramSettings {
    fn default() -> Self {
        // Allowing a negative balance is the default: capping at zero would let a customer earn, spend
        // and then refund the order while keeping the reward.
        Self {
            return_policy: ReturnPolicy::AllowNegative,
            utc_offset_minutes: 0,
            rule_versions: std::sync::Arc::new([]),
            packages: std::sync::Arc::default(),
            expiry: ExpiryPolicy::default(),
            pending_days: 0,
            refund_window_days: program::REFUND_WINDOW_DEFAULT_DAYS,
            tiers: tiers::Tiers::default(),
            stamp_cards: std::sync::Arc::default(),
            rewards: std::sync::Arc::default(),
            transfers: TransferPolicySet::default(),
            referrals: ReferralPolicySet::default(),
        }
    }
}

/// Everything `decide` needs from outside the wallet: who it is, when it is, and the program's rules.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub tenant: &'a TenantId,
    pub wallet: &'a WalletId,
    /// The engine's clock, in milliseconds since the Unix epoch.
    pub now_ms: i64,
    pub program: &'a ProgramSettings,
}
