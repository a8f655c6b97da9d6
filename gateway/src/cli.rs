//! The `tally` command line: every subcommand and flag, with the help a person reads (the settings of
//! `tally serve`, which the TOML file shares, are declared in `config.rs`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{DATA_DIR_DEFAULT, ServeArgs};
use crate::credentials::KeySource;

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: an event-sourced loyalty engine",
    long_about = "Tally keeps loyalty wallets as supervised actors over a durable, append-only event log.\n\n\
                  Start a server with `tally serve`, then drive wallets with `tally wallet ...` or any gRPC client \
                  (the server has reflection, so `grpcurl -plaintext 127.0.0.1:50051 list` works).\n\n\
                  Settings come from flags, then TALLY_* environment variables, then the --config file."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine and its gRPC API on the embedded event log.
    Serve(Box<ServeArgs>),
    /// Drive a wallet on a running server.
    #[command(subcommand)]
    Wallet(WalletCommand),
    /// Load-test a running server with a realistic mix of calls; stops by itself.
    Bench(BenchArgs),
    /// Inspect or purge wallet snapshots (run while the server is stopped).
    #[command(subcommand)]
    Snapshots(SnapshotsCommand),
    /// Work on whole event logs (run while no server uses them).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Inspect and rebuild the read models of a running server.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Create, list and revoke API keys on a running server (with a platform or operator key).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The cluster as a node sees it (with a platform key).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Flows across aggregates (reward redemptions) that have not ended (with an operator or platform
    /// key).
    #[command(subcommand)]
    Flows(FlowsCommand),
    /// The rewards catalogue and its stock.
    #[command(subcommand)]
    Rewards(RewardsCommand),
    /// Wallets and programs as they were at any instant, replayed from the log (with an auditor or
    /// platform key).
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// A wallet as it was: its figures, lots, holds and pending credits, and the event the replay stopped
    /// at. With --diff, the wallet at a second instant too, every event between, and what changed.
    Replay {
        #[command(flatten)]
        wallet: WalletRef,
        #[command(flatten)]
        when: AsOfArgs,
        /// A second instant (same forms as --as-of), later or earlier.
        #[arg(long, value_name = "TIME", value_parser = crate::auditctl::parse_instant)]
        diff: Option<i64>,
        #[command(flatten)]
        target: Target,
    },
    /// Checks the log against its hash chains and names the first broken link (position, stream,
    /// version); exits non-zero if there is one. Works on the log itself: stop the server first for the
    /// embedded log (file://DIR); a postgres://… log can be checked while nodes use it.
    Verify(VerifyArgs),
    /// Signs the log chain's head with an Ed25519 key held outside the log, after checking the log:
    /// later, `verify --checkpoint` proves the log up to here was not rewritten, even by someone who
    /// recomputed every link.
    Checkpoint(CheckpointArgs),
    /// Makes an Ed25519 key for signing checkpoints: writes its secret seed to FILE (mode 0600; keep it
    /// off the log's hosts) and prints the public key, which auditors keep to verify with.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// The tenant's ledger for finance, from the log: every points movement between two instants, each
    /// wallet's opening and closing balance, and a reconciliation that must balance.
    Export {
        /// Program (tenant) id.
        #[arg(long, env = "TALLY_TENANT", default_value = "demo")]
        tenant: String,
        /// Movements recorded at or after this instant [default: from the beginning].
        #[arg(long, value_name = "TIME", value_parser = crate::auditctl::parse_instant)]
        from: Option<i64>,
        /// Movements recorded before this instant (at least 12 s ago).
        #[arg(long, value_name = "TIME", value_parser = crate::auditctl::parse_instant, required_unless_present = "up_to_position")]
        to: Option<i64>,
        /// Instead of --to: every movement at or before this log position (the closing liability is then
        /// ReportingService.Liability's at that position).
        #[arg(long, value_name = "POSITION", conflicts_with = "to")]
        up_to_position: Option<u64>,
        /// csv: three sections (movements, wallets, reconciliation), each with its header; jsonl: one
        /// object a line, with "record": "movement" | "wallet" | "reconciliation".
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// A program as it was: its settings and the rules version in force, with its document.
    Program {
        /// Program (tenant) id.
        #[arg(long, env = "TALLY_TENANT", default_value = "demo")]
        tenant: String,
        #[command(flatten)]
        when: AsOfArgs,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The log: file://DIR (the embedded log) or postgres://…
    #[arg(long, env = "TALLY_STORE", value_name = "URL")]
    pub store: String,
    /// Only this stream's chain, e.g. acme/wallet/c-42 (its log links need the whole log).
    #[arg(long, value_name = "STREAM", conflicts_with = "checkpoint")]
    pub stream: Option<String>,
    /// A checkpoint made by `tally audit checkpoint`: the log up to its position must be the one signed.
    #[arg(long, value_name = "FILE", requires = "public_key")]
    pub checkpoint: Option<PathBuf>,
    /// The checkpoint signer's public key you hold (64 hex digits, or a file holding them) — never the
    /// one written in the checkpoint.
    #[arg(long, value_name = "HEX|FILE")]
    pub public_key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// The log: file://DIR (the embedded log) or postgres://…
    #[arg(long, env = "TALLY_STORE", value_name = "URL")]
    pub store: String,
    /// The signing key's file (from `tally audit keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Where to write the checkpoint (JSON) [default: print it].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

/// Where a replay stops: an instant or a log position.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct AsOfArgs {
    /// Every event recorded at or before this instant: RFC 3339 (2026-03-01T00:00:00Z,
    /// 2026-03-01T01:00:00+01:00), without seconds (2026-03-01T00:00Z), or a date (its midnight, UTC).
    #[arg(long, value_name = "TIME", value_parser = crate::auditctl::parse_instant)]
    pub as_of: Option<i64>,
    /// Every event at or before this global log position (what a reply's `position` names).
    #[arg(long, value_name = "POSITION")]
    pub position: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, their state and shards, nodes declared dead, and with --wallet where that wallet lives.
    Status {
        /// A wallet to place, as TENANT/WALLET.
        #[arg(long, value_name = "TENANT/WALLET")]
        wallet: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its token, once: the server keeps only a hash of it.
    Create {
        /// Tenant the key acts for (leave out for a platform key).
        #[arg(long)]
        tenant: Option<String>,
        /// Its roles: pos, storefront, staff, operator, auditor, or platform alone (repeat or separate
        /// with commas). The README's table "Who may call what" says what each may call.
        #[arg(long = "role", value_delimiter = ',', required = true, value_name = "ROLE")]
        roles: Vec<String>,
        /// What the key is for, e.g. "till 3, Main Street".
        #[arg(long, default_value = "")]
        label: String,
        /// Days until the key stops working [default: never].
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
        /// A client certificate (PEM file) that authenticates as the key over mutual TLS, without the
        /// token (the server needs --tls-client-ca).
        #[arg(long, value_name = "FILE")]
        client_cert: Option<PathBuf>,
        #[command(flatten)]
        direct: Direct,
        #[command(flatten)]
        target: Target,
    },
    /// List keys (never their tokens): a tenant's, or with a platform key and no --tenant, all.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        direct: Direct,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a key: it stops working on every node sharing the log within seconds.
    Revoke {
        /// The key's id (the 16 hex digits after `tally_`).
        key_id: String,
        /// Why, kept in the log.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        direct: Direct,
        #[command(flatten)]
        target: Target,
    },
}

/// Working on the log itself rather than through a server: to make a platform key when none is left.
#[derive(Debug, Clone, Args)]
pub struct Direct {
    /// Work on this event log directly instead of through --server: file://DIR (the embedded log; stop
    /// the server first) or postgres://… (any time). The log records the change as made "offline".
    #[arg(long, env = "TALLY_KEYS_STORE", value_name = "URL")]
    pub store: Option<String>,
}

impl KeysCommand {
    /// The log to work on directly, if the command names one.
    pub fn store(&self) -> Option<&str> {
        match self {
            KeysCommand::Create { direct, .. } | KeysCommand::List { direct, .. } | KeysCommand::Revoke { direct, .. } => {
                direct.store.as_deref()
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum FlowsCommand {
    /// Open flows, oldest first: what is left of each, its attempts and what keeps it from ending. Each is
    /// retried in the background until it ends; `--stuck` lists those without progress for a minute.
    List {
        /// Program (tenant) id.
        #[arg(long, env = "TALLY_TENANT", default_value = "demo")]
        tenant: String,
        /// Only flows without progress for a minute or more.
        #[arg(long)]
        stuck: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum RewardsCommand {
    /// The catalogue: each reward's cost and, for limited ones, stock on hand, reserved and taken.
    List {
        /// Program (tenant) id.
        #[arg(long, env = "TALLY_TENANT", default_value = "demo")]
        tenant: String,
        #[command(flatten)]
        target: Target,
    },
    /// Define a reward, or replace its definition (with an operator or platform key).
    Define(Box<DefineRewardArgs>),
    /// Add stock to a limited reward; the key makes a retry add nothing.
    Restock {
        /// Program (tenant) id.
        #[arg(long, env = "TALLY_TENANT", default_value = "demo")]
        tenant: String,
        #[arg(long)]
        reward: String,
        /// How many to add (1 to 10^9).
        #[arg(long)]
        quantity: i64,
        /// The idempotency key (a delivery note's number).
        #[arg(long)]
        key: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `tally rewards define`.
#[derive(Debug, Args)]
pub struct DefineRewardArgs {
    /// Program (tenant) id.
    #[arg(long, env = "TALLY_TENANT", default_value = "demo")]
    pub tenant: String,
    /// The reward's id (1 to 64 bytes of A-Z a-z 0-9 - _ . :).
    #[arg(long)]
    pub reward: String,
    #[arg(long, default_value = "")]
    pub name: String,
    /// What one costs, in points.
    #[arg(long)]
    pub points: i64,
    /// Limited stock (add it with `tally rewards restock`); without: unlimited.
    #[arg(long)]
    pub limited: bool,
    /// At most this many per customer (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub per_customer: i64,
    /// Only for this tier and above.
    #[arg(long, default_value = "")]
    pub min_tier: String,
    /// Redemptions can be cancelled within this many days (0: never).
    #[arg(long, default_value_t = 0)]
    pub cancel_days: u32,
    /// Defined but not offered.
    #[arg(long)]
    pub inactive: bool,
    /// The idempotency key [default: derived from the definition, so the same definition again is a retry].
    #[arg(long)]
    pub key: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's checkpoint, the log head, and the lag in events and time.
    Status(Target),
    /// Replay the whole log into a fresh copy of a read model while the live one keeps serving, then swap
    /// it in. Shows progress; Ctrl-C abandons the rebuild and leaves the live read model untouched.
    Rebuild {
        /// Projection name, as `tally projections status` shows it (wallet_activity, reporting).
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a whole log to another store, keeping every stream version and the global order. Resumes where
    /// an interrupted copy stopped, and verifies count and checksum on both sides at the end.
    Copy {
        /// Source store URL (file://DIR or postgres://...).
        #[arg(long)]
        from: String,
        /// Destination store URL (file://DIR or postgres://...); empty, or a prefix of the source.
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// Count, total size and age of the stored snapshots.
    Stats(SnapshotsTarget),
    /// Delete every snapshot; wallets rebuild them from the log as they are used. Use it after a change of
    /// the state format, or if snapshots are suspected to be wrong: nothing is lost, the log is the truth.
    Purge(SnapshotsTarget),
}

/// Where the server keeps its snapshots: beside the embedded log in `--data`, or in the `--store` database.
#[derive(Debug, Args)]
pub struct SnapshotsTarget {
    /// Data directory of the server.
    #[arg(long, env = "TALLY_DATA", default_value = DATA_DIR_DEFAULT)]
    pub data: PathBuf,
    /// The server's store URL, when it is postgres://… (snapshots then live in that database).
    #[arg(long, env = "TALLY_STORE", value_name = "URL")]
    pub store: Option<String>,
}

/// Where to send a client call.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Server URL.
    #[arg(long, env = "TALLY_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub key: KeySource,
}

/// Which wallet.
#[derive(Debug, Clone, Args)]
pub struct WalletRef {
    /// Program (tenant) id.
    #[arg(long, env = "TALLY_TENANT", default_value = "demo")]
    pub tenant: String,
    /// Wallet id (usually the customer id).
    #[arg(long)]
    pub wallet: String,
}

/// The idempotency key of a change. Re-running a command with the same key changes nothing.
#[derive(Debug, Clone, Args)]
pub struct Key {
    /// Idempotency key (POS transaction id, order id...) [default: a new UUID, printed].
    #[arg(long)]
    pub key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Open a wallet for a customer.
    Enroll {
        #[command(flatten)]
        wallet: WalletRef,
        #[command(flatten)]
        key: Key,
        /// The shop's own id for the customer (an id, not an e-mail address).
        #[arg(long, default_value = "")]
        customer: String,
        /// A friend's referral code: the customer is recorded as referred by its holder.
        #[arg(long, default_value = "")]
        referral_code: String,
        #[command(flatten)]
        target: Target,
    },
    /// Credit points, usually for an order.
    Earn {
        #[command(flatten)]
        wallet: WalletRef,
        #[command(flatten)]
        key: Key,
        /// Points to credit (positive).
        #[arg(long, allow_hyphen_values = true)]
        points: i64,
        /// What earned them, e.g. the order id; refunds refer to it [default: the key].
        #[arg(long)]
        source: Option<String>,
        /// Why, as shown in the customer's history.
        #[arg(long, default_value = "")]
        reason: String,
        /// Order amount in minor units (cents), with --currency.
        #[arg(long, requires = "currency")]
        amount_minor: Option<i64>,
        /// ISO 4217 currency of --amount-minor, e.g. EUR.
        #[arg(long, requires = "amount_minor")]
        currency: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Spend points on a reward.
    Redeem {
        #[command(flatten)]
        wallet: WalletRef,
        #[command(flatten)]
        key: Key,
        /// Points to spend (positive).
        #[arg(long, allow_hyphen_values = true)]
        points: i64,
        /// The reward, e.g. a catalogue id.
        #[arg(long, default_value = "")]
        reward: String,
        #[command(flatten)]
        target: Target,
    },
    /// Correct the balance by hand (signed).
    Adjust {
        #[command(flatten)]
        wallet: WalletRef,
        #[command(flatten)]
        key: Key,
        /// Points to add (or, negative, remove).
        #[arg(long, allow_hyphen_values = true)]
        points: i64,
        #[arg(long, default_value = "")]
        reason: String,
        /// Who made the correction.
        #[arg(long)]
        staff: String,
        #[command(flatten)]
        target: Target,
    },
    /// Take back all or part of an earlier earn (a refund).
    Reverse {
        #[command(flatten)]
        wallet: WalletRef,
        #[command(flatten)]
        key: Key,
        /// The source of the earn to take back from.
        #[arg(long)]
        source: String,
        /// Points to take back [default: all that is left of that source].
        #[arg(long, allow_hyphen_values = true)]
        points: Option<i64>,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Erase the customer's personal data for good (GDPR art. 17): their key is destroyed; points and
    /// history stay. Needs an operator or platform key.
    EraseCustomer {
        #[command(flatten)]
        wallet: WalletRef,
        #[command(flatten)]
        key: Key,
        /// Why (a ticket number, the request); kept in the log, so never the personal data itself.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Close the wallet; a positive balance is forfeited.
    Close {
        #[command(flatten)]
        wallet: WalletRef,
        #[command(flatten)]
        key: Key,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Move points to another wallet of the tenant, as the program allows (WalletService.TransferPoints);
    /// the key is the transfer id.
    Transfer {
        #[command(flatten)]
        wallet: WalletRef,
        #[command(flatten)]
        key: Key,
        /// The wallet that receives them.
        #[arg(long)]
        to: String,
        /// Points to move (positive).
        #[arg(long, allow_hyphen_values = true)]
        points: i64,
        #[arg(long, default_value = "")]
        reason: String,
        /// The staff member making it (sent as `x-staff-id`; a staff key's changes must name one).
        #[arg(long)]
        staff: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Let the wallet be found by a card number, phone number, e-mail address or CRM id
    /// (WalletService.AttachIdentifier).
    AttachIdentifier {
        #[command(flatten)]
        wallet: WalletRef,
        #[command(flatten)]
        key: Key,
        #[command(flatten)]
        identifier: IdentifierRef,
        #[command(flatten)]
        target: Target,
    },
    /// Stop the wallet being found by an identifier (WalletService.DetachIdentifier).
    DetachIdentifier {
        #[command(flatten)]
        wallet: WalletRef,
        #[command(flatten)]
        key: Key,
        #[command(flatten)]
        identifier: IdentifierRef,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Show the wallet an identifier is attached to (WalletService.FindWallet).
    Find {
        /// Program (tenant) id.
        #[arg(long, env = "TALLY_TENANT", default_value = "demo")]
        tenant: String,
        #[command(flatten)]
        identifier: IdentifierRef,
        #[command(flatten)]
        target: Target,
    },
    /// Show the balance and totals.
    Show {
        #[command(flatten)]
        wallet: WalletRef,
        #[command(flatten)]
        target: Target,
    },
    /// List movements, newest first.
    History {
        #[command(flatten)]
        wallet: WalletRef,
        /// Movements per page (at most 500).
        #[arg(long, default_value_t = 20)]
        page_size: u32,
        /// Token printed by the previous page.
        #[arg(long, default_value = "")]
        page_token: String,
        #[command(flatten)]
        target: Target,
    },
}

/// An identifier a wallet can be found by.
#[derive(Debug, Clone, Args)]
pub struct IdentifierRef {
    #[arg(long, value_enum)]
    pub kind: IdentifierKindArg,
    /// The card number, phone number (E.164: +44 20 7946 0000), e-mail address or CRM id.
    #[arg(long)]
    pub value: String,
}

/// The kinds of identifier a wallet can be found by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentifierKindArg {
    Card,
    Phone,
    Email,
    CrmId,
    ReferralCode,
}

impl IdentifierKindArg {
    /// The wire's `IdentifierKind`.
    pub fn wire(self) -> i32 {
        use tally_proto::v1::IdentifierKind as K;
        (match self {
            Self::Card => K::Card,
            Self::Phone => K::Phone,
            Self::Email => K::Email,
            Self::CrmId => K::CrmId,
            Self::ReferralCode => K::ReferralCode,
        }) as i32
    }
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server URL to load; nothing else is contacted.
    #[arg(long, env = "TALLY_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    #[command(flatten)]
    pub key: KeySource,
    /// Program (tenant) whose wallets are used.
    #[arg(long, env = "TALLY_TENANT", default_value = "demo")]
    pub tenant: String,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Stop after this many calls, if sooner.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections shared by the callers.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Distinct wallets.
    #[arg(long, default_value_t = 10_000)]
    pub wallets: usize,
    /// Wallets that get a disproportionate share of calls.
    #[arg(long, default_value_t = 10)]
    pub hot_wallets: usize,
    /// Percentage of calls that go to the hot wallets.
    #[arg(long, default_value_t = 20)]
    pub hot_percent: u32,
    /// Percentage of calls that are reads (GetWallet); the rest are earns and redeems (5:2).
    #[arg(long, default_value_t = 30)]
    pub read_percent: u32,
    /// Every mutating call redeems this catalogue reward instead (WalletService.RedeemReward, a flow of
    /// its own): the bench defines it (1 point, limited stock) and stocks it first, which needs an
    /// operator or platform key. One reward for every caller: the hot-reward case.
    #[arg(long)]
    pub reward: Option<String>,
    /// Every mutating call transfers a point to the next wallet instead (WalletService.TransferPoints, a
    /// flow of its own): the bench allows transfers in the program first, which needs an operator or
    /// platform key.
    #[arg(long, conflicts_with = "reward")]
    pub transfer: bool,
    /// Every read finds its wallet by a card number instead (WalletService.FindWallet): the bench attaches
    /// a card to every wallet first.
    #[arg(long)]
    pub find: bool,
}
