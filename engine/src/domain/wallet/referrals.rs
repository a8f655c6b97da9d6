//! Referrals (issue 20 item 4): a customer who enrols with another customer's referral code is recorded
//! as referred by that wallet — once, right after the enrolment, never by the wallet itself. (What a
//! referral earns both sides on the referee's first qualifying order is not built yet.)

use tally_proto::v1::ReferralRecorded;

use crate::domain::Context;
use crate::domain::event::Change;
use crate::domain::ids::FieldError;
use crate::domain::rejection::Rejection;
use crate::domain::state::WalletState;

pub(super) fn record(state: &WalletState, ctx: &Context<'_>, referrer_wallet_id: &str) -> Result<Change, Rejection> {
    if referrer_wallet_id == ctx.wallet.as_str() {
        return Err(FieldError::new("referral_code", "is this wallet's own: a customer cannot refer themselves").into());
    }
    if !state.referred_by.is_empty() {
        return Err(Rejection::ReferralAlreadyRecorded { referrer_wallet_id: state.referred_by.clone() });
    }
    if state.orders_placed > 0 {
        return Err(Rejection::ReferralTooLate);
    }
    Ok(Change::ReferralRecorded(ReferralRecorded { referrer_wallet_id: referrer_wallet_id.to_owned() }))
}
