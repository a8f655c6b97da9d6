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
        wallet.run(Command::new("enroll", CommandBody::enroll(""))).unwrap();
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
            // What time brought, a chunk at a time, then the command.
            Decision::CatchUp(events) => {
                events.iter().for_each(|e| apply(&mut self.state, e));
                let caught_up = events.into_iter().map(|e| e.change);
                Ok(caught_up.chain(self.run(command)?).collect())
            }
        }
    }

    /// Like [`Wallet::run`] for a command that makes exactly one change.
    pub fn run_one(&mut self, command: Command) -> Result<Change, Rejection> {
        let mut changes = self.run(command)?;
        assert_eq!(changes.len(), 1, "{changes:?}");
        Ok(changes.remove(0))
    }
}

/// The rules `json` as the only version, in force since 1970.
pub fn rules(json: &str) -> std::sync::Arc<[tally_engine::domain::program::RuleVersion]> {
    let version = tally_engine::domain::program::RuleVersion {
        version: 1,
        effective_from_ms: 0,
        published_by: "test".into(),
        rules_json: json.into(),
        rules: tally_engine::domain::rules::parse_rules(json).map(Into::into),
    };
    std::sync::Arc::new([version])
}

/// One point per euro.
pub const POINT_PER_EURO: &str = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]}]"#;

/// `EarnForOrder` for a one-line order of `euros` in `category`, keyed by its id.
pub fn order(id: &str, euros: i64, category: &str, placed_at_ms: Option<i64>) -> Command {
    use tally_engine::domain::rules::{Order, OrderLine};
    let total_minor = euros * 100;
    let lines = vec![OrderLine { sku: "sku-1".into(), category: category.into(), quantity: 1, amount_minor: total_minor }];
    let order = Order {
        order_id: id.into(),
        total_minor,
        currency: "EUR".into(),
        channel: "web".into(),
        store: String::new(),
        lines,
        placed_at_ms,
    };
    Command::new(id, CommandBody::EarnForOrder { order })
}

/// Copies a directory tree (a data directory, to open a fixture without touching it).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
