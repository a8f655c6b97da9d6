//! What the domain's given/when/then tests share: an enrolled wallet of a program, with a clock the test
//! moves.
// Each test crate uses its own part of this.
#![allow(dead_code)]

use tally_engine::domain::{
    Change, Command, CommandBody, Context, Decision, ProgramSettings, Rejection, TenantId, WalletId, WalletState, apply, decide,
};

/// 2026-03-04, a Wednesday, 15:00 UTC.
pub const NOW: i64 = 1_772_636_400_000;

pub struct Wallet {
    pub tenant: TenantId,
    pub wallet: WalletId,
    pub program: ProgramSettings,
    pub state: WalletState,
    pub now: i64,
}

impl Wallet {
    /// Enrolled in `program`, at [`NOW`].
    pub fn enrolled(program: ProgramSettings) -> Self {
        let mut wallet = Self {
            tenant: TenantId::parse("acme").unwrap(),
            wallet: WalletId::parse("c-1").unwrap(),
            program,
            state: WalletState::default(),
            now: NOW,
        };
        wallet.run(Command::new("enroll", CommandBody::Enroll { customer_ref: "crm-1".into() })).unwrap();
        wallet
    }

    pub fn decide(&self, command: &Command) -> Result<Decision, Rejection> {
        let ctx = Context { tenant: &self.tenant, wallet: &self.wallet, now_ms: self.now, program: &self.program };
        decide(&self.state, command, &ctx)
    }

    /// Decides and applies; the changes, or the rejection. A command that was already applied is a test bug.
    pub fn run(&mut self, command: Command) -> Result<Vec<Change>, Rejection> {
        match self.decide(&command)? {
            Decision::Append(events) => {
                events.iter().for_each(|e| apply(&mut self.state, e));
                Ok(events.into_iter().map(|e| e.change).collect())
            }
            Decision::AlreadyApplied(receipt) => panic!("{command:?} was already applied: {receipt:?}"),
        }
    }

    /// Like [`Wallet::run`] for a command that makes exactly one change.
    pub fn run_one(&mut self, command: Command) -> Result<Change, Rejection> {
        let mut changes = self.run(command)?;
        assert_eq!(changes.len(), 1, "{changes:?}");
        Ok(changes.remove(0))
    }
}
