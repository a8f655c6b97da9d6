//! Commands a wallet accepts. Every one that changes state carries an idempotency key.

use super::fingerprint::{CommandFingerprint, Layout};
use super::rules::Order;

pub use tally_proto::v1::SealedPersonalData;

pub use tally_proto::v1::Money;

/// A command for one wallet, with the client's idempotency key (POS transaction id, order id, ...).
///
/// A retry with the same key and the same body returns the first outcome and changes nothing; the same
/// key with another body is rejected with [`super::Rejection::IdempotencyKeyReused`].
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub idempotency_key: String,
    pub body: CommandBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandBody {
    /// Open the wallet for a customer. `customer_ref` is personal data: the wallet's actor seals it under
    /// the wallet's own key into `sealed` before the command is decided (`crate::personal`), and only
    /// `sealed` is recorded and fingerprinted. A reference left unsealed is refused, never recorded.
    /// `referrer_wallet_id` (empty: none) is the wallet whose referral code the customer enrolled with:
    /// the referral is recorded with the enrolment, in the same append.
    Enroll { customer_ref: String, sealed: Option<SealedPersonalData>, referrer_wallet_id: String },
    /// Erase the customer's personal data for good (the actor destroys the wallet's key once this is
    /// decided, before its event is recorded). Points and history stay.
    EraseCustomer { reason: String },
    /// Credit points, usually for an order (`source_ref` is the order id).
    Earn { points: i64, reason: String, source_ref: String, order_amount: Option<Money> },
    /// Spend points on a reward.
    Redeem { points: i64, reward_ref: String },
    /// Staff correction, signed.
    Adjust { points: i64, reason: String, staff_ref: String },
    /// Take back all (`points: None`) or part of what `source_ref` earned, e.g. on a refund.
    Reverse { source_ref: String, points: Option<i64>, reason: String },
    /// Close the wallet; a positive balance is forfeited.
    Close { reason: String },
    /// Apply the program's rules to an order and credit what they award. The command's idempotency key
    /// is the order id.
    EarnForOrder { order: Order },
    /// Refund `amount_minor` of an order (`None`: whatever is left of it) and take back the order's
    /// points in proportion, never more than it earned.
    RefundOrder { order_id: String, amount_minor: Option<i64>, reason: String },
    /// POS two-phase redemption, step 1: set `points` aside for `timeout_ms`. The command's idempotency
    /// key is the hold id.
    AuthorizeRedemption { hold_id: String, points: i64, reward_ref: String, timeout_ms: i64 },
    /// Spend a hold's points (`None`: all of them; the rest is released).
    CaptureRedemption { hold_id: String, points: Option<i64> },
    /// Release a hold.
    VoidRedemption { hold_id: String },
    /// Record what time brought — holds past their timeout released, lots past their expiry expired —
    /// and nothing else (sent by the engine's timers; every other command does the same first).
    RunDue,
    /// Buy the points of one of the program's credit packages (paid elsewhere). The command's idempotency
    /// key is the purchase id.
    PurchaseCredits { purchase_id: String, package_id: String },
    /// Give `count` stamps on the program's stamp card `card_id` (by hand, at a POS).
    AddStamps { card_id: String, count: i64, reason: String },
    /// Spend the point cost of the program's catalogue reward `reward_id`, as the debit step of
    /// redemption `redemption_id` (`crate::domain::flows`); keyed [`reward_debit_key`].
    RedeemReward { redemption_id: String, reward_id: String },
    /// Give a catalogue redemption's points back, as the cancellation's step of its flow; keyed
    /// [`reward_cancel_key`].
    CancelRewardRedemption { redemption_id: String, reason: String },
    /// Move `points` of this wallet to wallet `to_wallet_id` of the tenant: the source's step of transfer
    /// `transfer_id` (`crate::domain::flows`), the debit or its refusal; keyed [`transfer_key`] `out`.
    TransferOut { transfer_id: String, to_wallet_id: String, points: i64, reason: String },
    /// Take in what transfer `transfer_id` moved out of wallet `from_wallet_id`, part by part (each into
    /// a lot of its kind), or record the refusal; keyed [`transfer_key`] `in`.
    TransferIn { transfer_id: String, from_wallet_id: String, parts: Vec<TransferPart>, reason: String },
    /// Give back what transfer `transfer_id` moved out of this wallet, the target having refused it with
    /// `code`; keyed [`transfer_key`] `return`.
    ReturnTransfer { transfer_id: String, parts: Vec<TransferPart>, code: String },
    /// Make the wallet findable by an identifier known as `lookup` (its keyed hash,
    /// [`crate::domain::identifiers`]); the wallet's actor claims it for this wallet before it is recorded.
    AttachIdentifier { kind: IdentifierKind, lookup: String },
    /// Stop the wallet being found by the identifier `lookup`; its claim is released first.
    DetachIdentifier { kind: IdentifierKind, lookup: String, reason: String },
    /// Give this wallet, the referrer, its reward for the referral of wallet `referee_wallet_id`, which
    /// that wallet's order `order_id` converted: the step of the referral's flow; keyed
    /// [`referral_reward_key`].
    RewardReferral { referee_wallet_id: String, order_id: String, points: i64 },
}

pub use super::identifiers::IdentifierKind;

pub use tally_proto::v1::TransferPart;

/// The wallet steps of a transfer: the source's debit, the target's credit, the source's refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferStep {
    Out,
    In,
    Return,
}

impl TransferStep {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Out => "out",
            Self::In => "in",
            Self::Return => "return",
        }
    }
}

/// The key of a wallet's step of transfer `transfer_id`: one per transfer and step, so the flow's
/// retries of it find its outcome.
pub fn transfer_key(transfer_id: &str, step: TransferStep) -> String {
    format!("{ENGINE_KEY_PREFIX}transfer:{transfer_id}:{}", step.as_str())
}

/// Keys the engine makes itself start with this; a client's key may not, so the two never meet.
pub const ENGINE_KEY_PREFIX: &str = "tally:";

/// The key of the capture of hold `hold_id`: one per hold, so a retried capture finds its outcome.
pub fn capture_key(hold_id: &str) -> String {
    format!("{ENGINE_KEY_PREFIX}capture:{hold_id}")
}

/// The key of the void of hold `hold_id`.
pub fn void_key(hold_id: &str) -> String {
    format!("{ENGINE_KEY_PREFIX}void:{hold_id}")
}

/// The key of the debit step of reward redemption `redemption_id`: one per redemption, so the flow's
/// retries of it find its outcome.
pub fn reward_debit_key(redemption_id: &str) -> String {
    format!("{ENGINE_KEY_PREFIX}reward:{redemption_id}:debit")
}

/// The key of the wallet's step of the cancellation of reward redemption `redemption_id`.
pub fn reward_cancel_key(redemption_id: &str) -> String {
    format!("{ENGINE_KEY_PREFIX}reward:{redemption_id}:cancel")
}

/// The key of the referrer's reward for the referral of wallet `referee_wallet_id`: one per referee, so
/// the flow's retries of it find its outcome.
pub fn referral_reward_key(referee_wallet_id: &str) -> String {
    format!("{ENGINE_KEY_PREFIX}referral:{referee_wallet_id}:reward")
}

/// The key of a `RunDue` sent at `now_ms` (the log shows which clock acted).
pub fn due_key(now_ms: i64) -> String {
    format!("{ENGINE_KEY_PREFIX}due:{now_ms}")
}

/// Whether `key` is one [`due_key`] makes.
pub fn is_due_key(key: &str) -> bool {
    key.strip_prefix(ENGINE_KEY_PREFIX).is_some_and(|rest| rest.starts_with("due:"))
}

impl CommandBody {
    /// Enrolment of a customer known as `customer_ref` (empty: none), to be sealed by the wallet's actor.
    pub fn enroll(customer_ref: impl Into<String>) -> Self {
        Self::Enroll { customer_ref: customer_ref.into(), sealed: None, referrer_wallet_id: String::new() }
    }
}

impl Command {
    pub fn new(idempotency_key: impl Into<String>, body: CommandBody) -> Self {
        Self { idempotency_key: idempotency_key.into(), body }
    }

    /// Captures `points` of hold `hold_id` (all of it when `None`), under the hold's capture key.
    pub fn capture_redemption(hold_id: impl Into<String>, points: Option<i64>) -> Self {
        let hold_id = hold_id.into();
        Self::new(capture_key(&hold_id), CommandBody::CaptureRedemption { hold_id, points })
    }

    /// Voids hold `hold_id`, under the hold's void key.
    pub fn void_redemption(hold_id: impl Into<String>) -> Self {
        let hold_id = hold_id.into();
        Self::new(void_key(&hold_id), CommandBody::VoidRedemption { hold_id })
    }

    /// The debit of reward redemption `redemption_id`, under its engine key.
    pub fn redeem_reward(redemption_id: impl Into<String>, reward_id: impl Into<String>) -> Self {
        let redemption_id = redemption_id.into();
        Self::new(reward_debit_key(&redemption_id), CommandBody::RedeemReward { redemption_id, reward_id: reward_id.into() })
    }

    /// The cancellation of reward redemption `redemption_id` in its wallet, under its engine key.
    pub fn cancel_reward_redemption(redemption_id: impl Into<String>, reason: impl Into<String>) -> Self {
        let redemption_id = redemption_id.into();
        Self::new(reward_cancel_key(&redemption_id), CommandBody::CancelRewardRedemption { redemption_id, reason: reason.into() })
    }

    /// The source's step of transfer `transfer_id`, under its engine key.
    pub fn transfer_out(transfer_id: &str, to_wallet_id: &str, points: i64, reason: &str) -> Self {
        let body = CommandBody::TransferOut {
            transfer_id: transfer_id.to_owned(),
            to_wallet_id: to_wallet_id.to_owned(),
            points,
            reason: reason.to_owned(),
        };
        Self::new(transfer_key(transfer_id, TransferStep::Out), body)
    }

    /// The target's step of transfer `transfer_id`, under its engine key.
    pub fn transfer_in(transfer_id: &str, from_wallet_id: &str, parts: Vec<TransferPart>, reason: &str) -> Self {
        let body = CommandBody::TransferIn {
            transfer_id: transfer_id.to_owned(),
            from_wallet_id: from_wallet_id.to_owned(),
            parts,
            reason: reason.to_owned(),
        };
        Self::new(transfer_key(transfer_id, TransferStep::In), body)
    }

    /// The source's refund of transfer `transfer_id` the target refused with `code`, under its engine key.
    pub fn return_transfer(transfer_id: &str, parts: Vec<TransferPart>, code: &str) -> Self {
        let body = CommandBody::ReturnTransfer { transfer_id: transfer_id.to_owned(), parts, code: code.to_owned() };
        Self::new(transfer_key(transfer_id, TransferStep::Return), body)
    }

    /// The referrer's reward for the referral of `referee_wallet_id`, under its engine key.
    pub fn reward_referral(referee_wallet_id: &str, order_id: &str, points: i64) -> Self {
        let body = CommandBody::RewardReferral { referee_wallet_id: referee_wallet_id.to_owned(), order_id: order_id.to_owned(), points };
        Self::new(referral_reward_key(referee_wallet_id), body)
    }

    /// Records what is due at `now_ms`, under an engine key.
    pub fn run_due(now_ms: i64) -> Self {
        Self::new(due_key(now_ms), CommandBody::RunDue)
    }

    /// The fingerprint of the body that new events record (BLAKE3-128 of its layout), so a retry under
    /// the same key can be told from another payload.
    pub fn fingerprint(&self) -> CommandFingerprint {
        self.layout().fingerprint()
    }

    /// The 64-bit FNV-1a fingerprint events recorded before the digest: what a receipt such an event
    /// left is compared with. Never recorded anew.
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
            CommandBody::Enroll { customer_ref, sealed, referrer_wallet_id } => {
                enroll_layout(customer_ref, sealed.as_ref(), referrer_wallet_id)
            }
            CommandBody::EraseCustomer { reason } => Layout::new(17).str(reason),
            CommandBody::Earn { points, reason, source_ref, order_amount } => {
                let layout = Layout::new(2).i64(*points).str(reason).str(source_ref);
                match order_amount {
                    None => layout.u64(0),
                    Some(money) => layout.u64(1).i64(money.amount_minor).str(&money.currency),
                }
            }
            CommandBody::Redeem { points, reward_ref } => Layout::new(3).i64(*points).str(reward_ref),
            CommandBody::Adjust { points, reason, staff_ref } => Layout::new(4).i64(*points).str(reason).str(staff_ref),
            CommandBody::Reverse { source_ref, points, reason } => {
                let layout = Layout::new(5).str(source_ref);
                let layout = match points {
                    None => layout.u64(0),
                    Some(points) => layout.u64(1).i64(*points),
                };
                layout.str(reason)
            }
            CommandBody::Close { reason } => Layout::new(6).str(reason),
            CommandBody::EarnForOrder { order } => {
                let layout = Layout::new(7)
                    .str(&order.order_id)
                    .i64(order.total_minor)
                    .str(&order.currency)
                    .str(&order.channel)
                    .str(&order.store)
                    .u64(order.lines.len() as u64);
                let layout =
                    order.lines.iter().fold(layout, |layout, l| layout.str(&l.sku).str(&l.category).i64(l.quantity).i64(l.amount_minor));
                match order.placed_at_ms {
                    None => layout.u64(0),
                    Some(at) => layout.u64(1).i64(at),
                }
            }
            CommandBody::RefundOrder { order_id, amount_minor, reason } => {
                let layout = Layout::new(8).str(order_id);
                let layout = match amount_minor {
                    None => layout.u64(0),
                    Some(amount) => layout.u64(1).i64(*amount),
                };
                layout.str(reason)
            }
            CommandBody::AuthorizeRedemption { hold_id, points, reward_ref, timeout_ms } => {
                Layout::new(9).str(hold_id).i64(*points).str(reward_ref).i64(*timeout_ms)
            }
            CommandBody::CaptureRedemption { hold_id, points } => {
                let layout = Layout::new(10).str(hold_id);
                match points {
                    None => layout.u64(0),
                    Some(points) => layout.u64(1).i64(*points),
                }
            }
            CommandBody::VoidRedemption { hold_id } => Layout::new(11).str(hold_id),
            CommandBody::RunDue => Layout::new(14),
            CommandBody::AddStamps { card_id, count, reason } => Layout::new(15).str(card_id).i64(*count).str(reason),
            CommandBody::PurchaseCredits { purchase_id, package_id } => Layout::new(13).str(purchase_id).str(package_id),
            CommandBody::RedeemReward { redemption_id, reward_id } => Layout::new(18).str(redemption_id).str(reward_id),
            CommandBody::CancelRewardRedemption { redemption_id, reason } => Layout::new(19).str(redemption_id).str(reason),
            CommandBody::TransferOut { transfer_id, to_wallet_id, points, reason } => {
                Layout::new(20).str(transfer_id).str(to_wallet_id).i64(*points).str(reason)
            }
            CommandBody::TransferIn { transfer_id, from_wallet_id, parts, reason } => {
                parts_layout(Layout::new(21).str(transfer_id).str(from_wallet_id), parts).str(reason)
            }
            CommandBody::ReturnTransfer { transfer_id, parts, code } => parts_layout(Layout::new(22).str(transfer_id), parts).str(code),
            CommandBody::AttachIdentifier { kind, lookup } => Layout::new(23).u64(kind_number(*kind)).str(lookup),
            CommandBody::DetachIdentifier { kind, lookup, reason } => Layout::new(24).u64(kind_number(*kind)).str(lookup).str(reason),
            CommandBody::RewardReferral { referee_wallet_id, order_id, points } => {
                Layout::new(28).str(referee_wallet_id).str(order_id).i64(*points)
            }
        }
    }

    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self.body {
            CommandBody::Enroll { .. } => "enroll",
            CommandBody::EraseCustomer { .. } => "erase_customer",
            CommandBody::Earn { .. } => "earn",
            CommandBody::Redeem { .. } => "redeem",
            CommandBody::Adjust { .. } => "adjust",
            CommandBody::Reverse { .. } => "reverse",
            CommandBody::Close { .. } => "close",
            CommandBody::EarnForOrder { .. } => "earn_for_order",
            CommandBody::RefundOrder { .. } => "refund_order",
            CommandBody::AuthorizeRedemption { .. } => "authorize_redemption",
            CommandBody::CaptureRedemption { .. } => "capture_redemption",
            CommandBody::VoidRedemption { .. } => "void_redemption",
            CommandBody::RunDue => "run_due",
            CommandBody::AddStamps { .. } => "add_stamps",
            CommandBody::PurchaseCredits { .. } => "purchase_credits",
            CommandBody::RedeemReward { .. } => "redeem_reward",
            CommandBody::CancelRewardRedemption { .. } => "cancel_reward_redemption",
            CommandBody::TransferOut { .. } => "transfer_out",
            CommandBody::TransferIn { .. } => "transfer_in",
            CommandBody::ReturnTransfer { .. } => "return_transfer",
            CommandBody::AttachIdentifier { .. } => "attach_identifier",
            CommandBody::DetachIdentifier { .. } => "detach_identifier",
            CommandBody::RewardReferral { .. } => "reward_referral",
        }
    }
}

fn kind_number(kind: IdentifierKind) -> u64 {
    u64::from((kind as i32).unsigned_abs())
}

/// An enrolment's layout: the sealed bytes, never the reference (the log keeps no digest of personal
/// data that a guess could be checked against once the key is gone); unsealed (nothing to seal, or a
/// wallet enrolled before sealing, whose receipt was made so), the original layout; referred, the
/// referrer first (part of what a retry must repeat), under a kind of its own.
fn enroll_layout(customer_ref: &str, sealed: Option<&SealedPersonalData>, referrer_wallet_id: &str) -> Layout {
    match (sealed, referrer_wallet_id) {
        (Some(sealed), "") => Layout::new(16).u64(u64::from(sealed.algorithm)).bytes(&sealed.ciphertext),
        (None, "") => Layout::new(1).str(customer_ref),
        (Some(sealed), referrer) => Layout::new(26).str(referrer).u64(u64::from(sealed.algorithm)).bytes(&sealed.ciphertext),
        (None, referrer) => Layout::new(27).str(referrer).str(customer_ref),
    }
}

fn parts_layout(layout: Layout, parts: &[TransferPart]) -> Layout {
    parts.iter().fold(layout.u64(parts.len() as u64), |layout, p| layout.i64(p.points).i64(p.expires_at_ms).u64(u64::from(p.on_inactivity)))
}
