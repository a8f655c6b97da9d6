//! Referrals (issue 20 item 4): a customer who enrols with another customer's referral code is recorded
//! as referred by that wallet, with the enrolment, in the same append — never by the wallet itself.
//! (What a referral earns both sides on the referee's first qualifying order is not built yet.)

use tally_proto::v1::ReferralRecorded;

use crate::domain::Context;
use crate::domain::event::Change;
use crate::domain::ids::FieldError;
use crate::domain::rejection::Rejection;

pub(super) fn referred(ctx: &Context<'_>, referrer_wallet_id: &str) -> Result<Change, Rejection> {
    if referrer_wallet_id == ctx.wallet.as_str() {
        return Err(FieldError::new("referral_code", "is this wallet's own: a customer cannot refer themselves").into());
    }
    Ok(Change::ReferralRecorded(ReferralRecorded { referrer_wallet_id: referrer_wallet_id.to_owned() }))
}
