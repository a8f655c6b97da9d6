//! The wallet domain: pure, synchronous, deterministic.
//!
//! `decide(&state, &command, &ctx)` turns a command into events or a typed rejection; `apply(&mut state,
//! &event)` folds an event into the state. Time, ids and program settings arrive through [`Context`];
//! nothing here reads a clock, touches I/O or uses floating point.
//!
//! Architecture Invariant: nothing in this module depends on the store, the actors or any runtime.
//! Architecture Invariant: `apply` holds no business rule; every decision is recorded in the event.
#![deny(clippy::float_arithmetic)]

mod command;
mod decide;
mod event;
mod fingerprint;
mod ids;
pub mod program;
mod rejection;
pub mod rules;
mod state;

pub use command::{Command, CommandBody, Money};
pub use decide::{Decision, apply, decide};
pub use event::{Change, Event};
pub use ids::{FieldError, TenantId, WalletId};
pub use rejection::Rejection;
pub use state::{Receipt, SourceLedger, WalletState, WalletStatus};
pub use tally_proto::v1::ReturnPolicy;

/// Program settings that the wallet domain needs. Issue-level program features (rules, tiers, expiry)
/// will grow this; today it carries the return policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramSettings {
    /// What a reversal does when the points were already spent.
    pub return_policy: ReturnPolicy,
}

impl Default for ProgramSettings {
    fn default() -> Self {
        // Allowing a negative balance is the default: capping at zero would let a customer earn, spend
        // and then refund the order while keeping the reward.
        Self { return_policy: ReturnPolicy::AllowNegative }
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
