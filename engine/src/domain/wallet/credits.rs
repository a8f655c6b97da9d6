//! Credit packages: points bought for money (`PurchaseCredits`), prepaid value that never expires.

use tally_proto::v1::PointsPurchased;

use super::checks::checked_balance;
use super::lots::{active, credit, inactivity_deadline, open_lot};
use crate::domain::Context;
use crate::domain::event::Change;
use crate::domain::rejection::Rejection;
use crate::domain::state::WalletState;

pub(super) fn purchase(state: &WalletState, ctx: &Context<'_>, purchase_id: &str, package_id: &str) -> Result<Change, Rejection> {
    let package = ctx.program.packages.get(package_id).ok_or_else(|| Rejection::UnknownPackage { package_id: package_id.to_owned() })?;
    if !package.active {
        return Err(Rejection::PackageInactive { package_id: package_id.to_owned() });
    }
    checked_balance(state.balance.checked_add(package.points), "points", package.points)?;
    checked_balance(state.lifetime_purchased.checked_add(package.points), "points", package.points)?;
    Ok(Change::Purchased(PointsPurchased {
        purchase_id: purchase_id.to_owned(),
        package_id: package_id.to_owned(),
        points: package.points,
        price: package.price.clone(),
        // Prepaid value: it does not expire.
        lot: Some(open_lot(state, package.points, None, false, ctx)),
        inactivity_expires_at_ms: inactivity_deadline(ctx),
    }))
}

pub(super) fn apply_purchased(state: &mut WalletState, e: &PointsPurchased) {
    active(state, e.inactivity_expires_at_ms);
    state.lifetime_purchased += e.points;
    credit(state, e.points, e.lot.as_ref());
}
