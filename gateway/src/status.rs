//! The one mapping from engine errors to gRPC statuses. Every code here is one a client can act on;
//! INVALID_ARGUMENT always names the field, in the message and in a `google.rpc.BadRequest` detail.

use std::time::Duration;

use tally_engine::actors::WalletError;
use tally_engine::domain::{FieldError, Rejection};
use tally_engine::store::StoreError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT naming `field`.
pub fn invalid(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid {field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

pub fn from_field_error(error: &FieldError) -> Status {
    invalid(&error.field, &error.reason)
}

pub fn precondition(kind: &str, subject: &str, message: String) -> Status {
    Status::with_error_details(
        Code::FailedPrecondition,
        message.clone(),
        ErrorDetails::with_precondition_failure_violation(kind, subject, message),
    )
}

/// `code` with the reason a client branches on in a `google.rpc.ErrorInfo` (domain `tally.v1`), and
/// `metadata` beside it (e.g. the wallet that holds an identifier).
pub fn with_reason(code: Code, reason: &str, message: String, metadata: &[(&str, &str)]) -> Status {
    let metadata: std::collections::HashMap<String, String> = metadata.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, "tally.v1", metadata))
}

/// RESOURCE_EXHAUSTED for a quota `subject` is over: `retry-after` metadata in whole seconds (rounded up,
/// at least 1), a `google.rpc.RetryInfo` with the exact wait and a `QuotaFailure` naming the subject.
pub fn quota_exhausted(message: String, subject: &str, retry_after: Duration) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(retry_after));
    details.add_quota_failure_violation(subject, message.clone());
    let mut status = Status::with_error_details(Code::ResourceExhausted, message, details);
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    status.metadata_mut().insert("retry-after", MetadataValue::from(seconds.max(1)));
    status
}

pub fn from_rejection(rejection: &Rejection) -> Status {
    let message = rejection.to_string();
    match rejection {
        Rejection::InvalidField(field) => from_field_error(field),
        Rejection::NonPositivePoints { field, points } => invalid(field, &format!("must be positive, got {points}")),
        Rejection::ZeroAdjustment => invalid("points", "an adjustment must not be zero"),
        Rejection::PointsOutOfRange { field, points } => invalid(field, &format!("{points} is out of range")),
        Rejection::WalletNotFound => Status::not_found(message),
        Rejection::UnknownSource { .. } => {
            Status::with_error_details(Code::NotFound, message.clone(), ErrorDetails::with_bad_request_violation("source_ref", message))
        }
        Rejection::WalletClosed => precondition("WALLET_CLOSED", "wallet", message),
        Rejection::AlreadyEnrolled => Status::already_exists(message),
        Rejection::CustomerAlreadyErased => precondition("CUSTOMER_ALREADY_ERASED", "wallet_id", message),
        Rejection::PersonalDataNotSealed => {
            tracing::error!(%rejection, "an enrolment reached decide unsealed");
            Status::internal(message)
        }
        Rejection::InsufficientPoints { .. } => precondition("INSUFFICIENT_POINTS", "balance", message),
        Rejection::ReversalExceedsEarned { .. } => precondition("REVERSAL_EXCEEDS_EARNED", "source_ref", message),
        Rejection::IdempotencyKeyReused { .. } => Status::already_exists(message),
        Rejection::NoOpenHold { .. } => precondition("HOLD_NOT_OPEN", "hold_id", message),
        Rejection::HoldExpired { .. } => precondition("HOLD_EXPIRED", "hold_id", message),
        Rejection::CaptureExceedsHold { .. } => precondition("CAPTURE_EXCEEDS_HOLD", "points", message),
        Rejection::TooManyOpenHolds { .. } => precondition("TOO_MANY_OPEN_HOLDS", "hold_id", message),
        Rejection::CommandTooLarge { .. } => precondition("COMMAND_TOO_LARGE", "wallet_id", message),
        // Only the engine's own timers send RunDue.
        Rejection::NothingDue { .. } => precondition("NOTHING_DUE", "wallet_id", message),
        Rejection::UnknownPackage { .. } => {
            Status::with_error_details(Code::NotFound, message.clone(), ErrorDetails::with_bad_request_violation("package_id", message))
        }
        Rejection::PackageInactive { .. } => precondition("PACKAGE_INACTIVE", "package_id", message),
        Rejection::UnknownStampCard { .. } => {
            Status::with_error_details(Code::NotFound, message.clone(), ErrorDetails::with_bad_request_violation("card_id", message))
        }
        Rejection::StampCardInactive { .. } => precondition("STAMP_CARD_INACTIVE", "card_id", message),
        Rejection::NotAnOrder { .. } => precondition("NOT_AN_ORDER", "order_id", message),
        Rejection::RefundWindowClosed { .. } => precondition("REFUND_WINDOW_CLOSED", "source_ref", message),
        Rejection::OrderAlreadyEarned { .. } | Rejection::OrderEarnedElsewhere { .. } => Status::already_exists(message),
        Rejection::RefundExceedsOrder { .. } => precondition("REFUND_EXCEEDS_ORDER", "amount_minor", message),
        Rejection::RulesUnreadable { .. } => {
            tracing::error!(%rejection, "a stored rules version no longer reads");
            Status::data_loss(message)
        }
        Rejection::UnknownReward { .. } => {
            Status::with_error_details(Code::NotFound, message.clone(), ErrorDetails::with_bad_request_violation("reward_id", message))
        }
        Rejection::RewardInactive { .. } => precondition("REWARD_INACTIVE", "reward_id", message),
        Rejection::RewardNotAvailable { .. } => precondition("REWARD_NOT_AVAILABLE", "reward_id", message),
        Rejection::RewardLimitReached { .. } => precondition("REWARD_LIMIT_REACHED", "reward_id", message),
        Rejection::TierTooLow { .. } => precondition("TIER_TOO_LOW", "reward_id", message),
        Rejection::UnknownRedemption { .. } => Status::not_found(message),
        Rejection::TransfersNotAllowed => precondition("TRANSFERS_NOT_ALLOWED", "tenant_id", message),
        Rejection::TransferCapExceeded { .. } => precondition("TRANSFER_CAP_EXCEEDED", "points", message),
        Rejection::TransferDailyCapExceeded { .. } => precondition("TRANSFER_DAILY_CAP_EXCEEDED", "points", message),
        Rejection::IdentifierAlreadyAttached => with_reason(Code::AlreadyExists, "IDENTIFIER_ALREADY_ATTACHED", message, &[]),
        Rejection::IdentifierTaken { wallet_id } => {
            with_reason(Code::AlreadyExists, "IDENTIFIER_TAKEN", message, &[("wallet_id", wallet_id.as_str())])
        }
        Rejection::IdentifierNotAttached => with_reason(Code::NotFound, "IDENTIFIER_NOT_ATTACHED", message, &[]),
        Rejection::TooManyIdentifiers { .. } => precondition("TOO_MANY_IDENTIFIERS", "wallet_id", message),
    }
}

/// The answer to a redemption a step refused: the recorded code, as the wallet's own refusal would be.
pub fn from_refusal(code: &str, message: String) -> Status {
    match code {
        "WALLET_NOT_FOUND" | "REDEMPTION_UNKNOWN" => Status::not_found(message),
        "UNKNOWN_REWARD" => {
            Status::with_error_details(Code::NotFound, message.clone(), ErrorDetails::with_bad_request_violation("reward_id", message))
        }
        "INSUFFICIENT_POINTS" => precondition(code, "balance", message),
        "POINTS_OUT_OF_RANGE" => invalid("points", &message),
        "WALLET_CLOSED" => precondition(code, "wallet", message),
        _ => precondition(code, "reward_id", message),
    }
}

pub fn from_wallet_error(error: &WalletError) -> Status {
    match error {
        WalletError::Rejected(rejection) => from_rejection(rejection),
        WalletError::UnknownTenant(tenant) => unknown_tenant(tenant.as_str()),
        WalletError::Store(store) => from_store_error(store),
        WalletError::Codec(codec) => {
            tracing::error!(error = %codec, "stored event cannot be decoded");
            Status::data_loss(format!("wallet history cannot be read: {codec}"))
        }
        WalletError::PersonalData(_) => {
            tracing::error!(%error, "sealed personal data does not open");
            Status::data_loss(error.to_string())
        }
        // The actor died with the command queued or in hand: it may have been decided before, so the
        // same key answers a retry with the first outcome.
        WalletError::Crashed { .. } => {
            tracing::error!(%error, "wallet crashed while handling a call");
            Status::unavailable(format!("{error}; retry with the same idempotency key"))
        }
        WalletError::Quarantined { .. } | WalletError::ShuttingDown => Status::unavailable(error.to_string()),
        WalletError::Busy { .. } => Status::resource_exhausted(error.to_string()),
        // Not a rate: waiting frees nothing, so no retry-after; the platform operator raises the bound.
        WalletError::TooManyWallets { max } => Status::with_error_details(
            Code::ResourceExhausted,
            format!("{error}; the platform operator can raise tally serve --wallets-max"),
            ErrorDetails::with_quota_failure_violation("wallets-per-tenant", format!("at most {max} wallets per tenant")),
        ),
        WalletError::DeadlineExceeded => Status::deadline_exceeded(error.to_string()),
    }
}

pub fn from_store_error(error: &StoreError) -> Status {
    match error {
        StoreError::VersionConflict { .. } => Status::aborted(format!("{error}; retry with the same idempotency key")),
        StoreError::Unavailable { .. } => Status::unavailable(format!("{error}; retry with the same idempotency key")),
        StoreError::Corrupt { .. } => {
            tracing::error!(%error, "event log corruption");
            Status::data_loss(error.to_string())
        }
        StoreError::Io { .. } => {
            tracing::error!(%error, "event log i/o error");
            Status::unavailable(format!("{error}; retry with the same idempotency key"))
        }
        StoreError::EventTooLarge { .. } | StoreError::AppendTooLarge { .. } | StoreError::TooManyEvents { .. } => {
            Status::invalid_argument(error.to_string())
        }
        StoreError::InvalidStreamId { .. } | StoreError::EmptyAppend => Status::internal(error.to_string()),
        StoreError::Unsupported { .. } => Status::failed_precondition(error.to_string()),
    }
}

pub fn unknown_tenant(tenant: &str) -> Status {
    Status::with_error_details(
        Code::NotFound,
        format!("unknown tenant_id {tenant:?}"),
        ErrorDetails::with_bad_request_violation("tenant_id", "no such program"),
    )
}

/// Milliseconds since the Unix epoch as a protobuf `Timestamp`.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0) }
}

#[cfg(test)]
mod tests {
    use tally_engine::domain::Rejection;
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::from_rejection;

    #[test]
    fn a_closed_refund_window_is_a_failed_precondition_naming_its_reason() {
        let status = from_rejection(&Rejection::RefundWindowClosed { source_ref: "order-1".into(), closed_at_ms: 1 });
        assert_eq!(status.code(), Code::FailedPrecondition);
        let violation = &status.get_details_precondition_failure().unwrap().violations[0];
        assert_eq!((violation.r#type.as_str(), violation.subject.as_str()), ("REFUND_WINDOW_CLOSED", "source_ref"));
    }
}
