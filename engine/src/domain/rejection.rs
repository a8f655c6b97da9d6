//! Business rejections: the documented, expected ways a command can be refused. They are data, not
//! errors of the machine; the gateway maps each to a status a client can act on.

use super::ids::FieldError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A field is malformed (empty, too long, bad currency, ...). Maps to INVALID_ARGUMENT.
    #[error("invalid {0}")]
    InvalidField(#[from] FieldError),
    /// A points amount that must be positive is zero or negative. Maps to INVALID_ARGUMENT.
    #[error("invalid {field}: must be positive, got {points}")]
    NonPositivePoints { field: &'static str, points: i64 },
    /// An adjustment of zero points. Maps to INVALID_ARGUMENT.
    #[error("invalid points: an adjustment must not be zero")]
    ZeroAdjustment,
    /// An amount or the resulting balance would leave the supported range. Maps to INVALID_ARGUMENT.
    #[error("invalid {field}: {points} is out of range")]
    PointsOutOfRange { field: &'static str, points: i64 },
    /// The wallet has not been enrolled. Maps to NOT_FOUND.
    #[error("wallet not found")]
    WalletNotFound,
    /// The wallet is closed and accepts nothing more. Maps to FAILED_PRECONDITION.
    #[error("wallet is closed")]
    WalletClosed,
    /// Enroll on a wallet that already exists (with another idempotency key). Maps to ALREADY_EXISTS.
    #[error("wallet already enrolled")]
    AlreadyEnrolled,
    /// An enrolment's customer reference reached `decide` unsealed. The wallet's actor answers it by
    /// sealing the reference (once the rest of the enrolment is known to hold) and deciding again; it
    /// reaches a caller only through a bug. Maps to INTERNAL.
    #[error("the customer's reference is personal data and was not sealed under the wallet's key")]
    PersonalDataNotSealed,
    /// EraseCustomer on a wallet whose customer was erased already (under another idempotency key).
    /// Maps to FAILED_PRECONDITION.
    #[error("the customer's personal data was erased already")]
    CustomerAlreadyErased,
    /// Not enough available points. Maps to FAILED_PRECONDITION.
    #[error("insufficient points: {available} available, {requested} requested")]
    InsufficientPoints { available: i64, requested: i64 },
    /// A reversal names a source that never earned points in this wallet, or one whose refund window
    /// closed long enough ago that the wallet forgot it. Maps to NOT_FOUND.
    #[error("unknown source_ref {source_ref:?}: nothing was earned from it, or its refund window has closed")]
    UnknownSource { source_ref: String },
    /// A refund or reversal after the source's refund window. Maps to FAILED_PRECONDITION.
    #[error("the refund window of {source_ref:?} closed at {closed_at_ms} (ms since the Unix epoch)")]
    RefundWindowClosed { source_ref: String, closed_at_ms: i64 },
    /// `EarnForOrder` for an order this wallet already earned for, after its idempotency receipt was
    /// forgotten. Maps to ALREADY_EXISTS.
    #[error("order {order_id:?} already earned points in this wallet")]
    OrderAlreadyEarned { order_id: String },
    /// `EarnForOrder` for an order id another wallet of the tenant already earned for. Maps to
    /// ALREADY_EXISTS.
    #[error("order {order_id:?} already earned points in wallet {wallet_id:?}")]
    OrderEarnedElsewhere { order_id: String, wallet_id: String },
    /// A reversal asks for more than what is left to reverse of that source. Maps to FAILED_PRECONDITION.
    #[error("reversal of {requested} points exceeds the {reversible} still reversible from {source_ref:?}")]
    ReversalExceedsEarned { source_ref: String, reversible: i64, requested: i64 },
    /// A refund names a source that was not earned by `EarnForOrder`, so it has no order amount to refund
    /// against. Maps to FAILED_PRECONDITION.
    #[error("{source_ref:?} is not an order earned with EarnForOrder; use Reverse to take points back")]
    NotAnOrder { source_ref: String },
    /// A refund of more than what is left to refund of the order. Maps to FAILED_PRECONDITION.
    #[error("refund of {requested_minor} exceeds the {refundable_minor} still refundable of order {order_id:?}")]
    RefundExceedsOrder { order_id: String, refundable_minor: i64, requested_minor: i64 },
    /// The rules version in force for the order is stored but no longer reads. Maps to DATA_LOSS (an
    /// operator must fix the program; earning would otherwise guess).
    #[error("rules version {version} of the program cannot be read: {reason}")]
    RulesUnreadable { version: u32, reason: String },
    /// No open hold with this id (never authorized, or already captured, voided or expired). Maps to
    /// FAILED_PRECONDITION.
    #[error("no open hold {hold_id:?}")]
    NoOpenHold { hold_id: String },
    /// The hold's timeout passed: it cannot be captured. Maps to FAILED_PRECONDITION.
    #[error("hold {hold_id:?} expired")]
    HoldExpired { hold_id: String },
    /// A capture of more points than the hold holds. Maps to FAILED_PRECONDITION.
    #[error("capture of {requested} points exceeds the {held} held by {hold_id:?}")]
    CaptureExceedsHold { hold_id: String, held: i64, requested: i64 },
    /// `RunDue` found nothing due (the timers' view was stale, or another node's clock is ahead): nothing
    /// happens to this wallet by itself before `next_due_ms` (`None`: nothing is scheduled).
    #[error("nothing is due in this wallet yet")]
    NothingDue { next_due_ms: Option<i64> },
    /// The program has no credit package with this id. Maps to NOT_FOUND.
    #[error("no credit package {package_id:?} in this program")]
    UnknownPackage { package_id: String },
    /// The credit package is not for sale. Maps to FAILED_PRECONDITION.
    #[error("credit package {package_id:?} is inactive")]
    PackageInactive { package_id: String },
    /// The program has no stamp card with this id. Maps to NOT_FOUND.
    #[error("no stamp card {card_id:?} in this program")]
    UnknownStampCard { card_id: String },
    /// The stamp card is not in use. Maps to FAILED_PRECONDITION.
    #[error("stamp card {card_id:?} is inactive")]
    StampCardInactive { card_id: String },
    /// A wallet may have `max` holds open at once; capture or void one first. Maps to FAILED_PRECONDITION.
    #[error("the wallet has {open} open holds, the most it may have; capture or void one first")]
    TooManyOpenHolds { open: usize, max: usize },
    /// The command would record more events than one append holds (a wallet with more open holds than
    /// it may have now, from before the limit, being closed). Maps to FAILED_PRECONDITION.
    #[error("the command would record {events} events, more than the {max} one append holds; void open holds first")]
    CommandTooLarge { events: usize, max: usize },
    /// The program's catalogue has no reward with this id. Maps to NOT_FOUND.
    #[error("no reward {reward_id:?} in this program's catalogue")]
    UnknownReward { reward_id: String },
    /// The reward is not offered. Maps to FAILED_PRECONDITION (REWARD_INACTIVE).
    #[error("reward {reward_id:?} is inactive")]
    RewardInactive { reward_id: String },
    /// Outside the reward's availability window. Maps to FAILED_PRECONDITION (REWARD_NOT_AVAILABLE).
    #[error("reward {reward_id:?} cannot be redeemed now: {why}")]
    RewardNotAvailable { reward_id: String, why: String },
    /// The wallet redeemed the reward as often as one customer may. Maps to FAILED_PRECONDITION
    /// (REWARD_LIMIT_REACHED).
    #[error("reward {reward_id:?} may be redeemed {max} times per customer, and this wallet has")]
    RewardLimitReached { reward_id: String, max: i64 },
    /// The wallet's tier is below the reward's lowest. Maps to FAILED_PRECONDITION (TIER_TOO_LOW).
    #[error("reward {reward_id:?} is for tier {min_tier_id:?} and above")]
    TierTooLow { reward_id: String, min_tier_id: String },
    /// No catalogue redemption with this id in this wallet (never, or too long ago). Maps to NOT_FOUND.
    #[error("no redemption {redemption_id:?} this wallet could cancel")]
    UnknownRedemption { redemption_id: String },
    /// The program does not allow points to move between wallets (`AdminService.SetTransferPolicy`).
    /// Maps to FAILED_PRECONDITION (TRANSFERS_NOT_ALLOWED).
    #[error("this program does not allow points to be transferred between wallets")]
    TransfersNotAllowed,
    /// More points than the program lets one transfer move. Maps to FAILED_PRECONDITION
    /// (TRANSFER_CAP_EXCEEDED).
    #[error("a transfer may move at most {max} points; {requested} requested")]
    TransferCapExceeded { max: i64, requested: i64 },
    /// The transfer would take the wallet past the points the program lets it move out in 24 hours.
    /// Maps to FAILED_PRECONDITION (TRANSFER_DAILY_CAP_EXCEEDED).
    #[error("a wallet may move at most {max} points out in 24 hours; {used} moved already, {requested} requested")]
    TransferDailyCapExceeded { max: i64, used: i64, requested: i64 },
    /// The identifier is attached to this wallet already (under another idempotency key). Maps to
    /// ALREADY_EXISTS (IDENTIFIER_ALREADY_ATTACHED).
    #[error("the identifier is attached to this wallet already")]
    IdentifierAlreadyAttached,
    /// Another wallet of the tenant holds the identifier. Maps to ALREADY_EXISTS (IDENTIFIER_TAKEN).
    #[error("the identifier is attached to wallet {wallet_id:?}")]
    IdentifierTaken { wallet_id: String },
    /// The wallet does not carry the identifier. Maps to NOT_FOUND (IDENTIFIER_NOT_ATTACHED).
    #[error("the identifier is not attached to this wallet")]
    IdentifierNotAttached,
    /// A wallet carries at most `max` identifiers; detach one first. Maps to FAILED_PRECONDITION
    /// (TOO_MANY_IDENTIFIERS).
    #[error("the wallet carries {max} identifiers, the most it may; detach one first")]
    TooManyIdentifiers { max: usize },
    /// The idempotency key was already used for a different command. Maps to ALREADY_EXISTS.
    #[error("idempotency key {key:?} was already used for a different command")]
    IdempotencyKeyReused { key: String },
}
