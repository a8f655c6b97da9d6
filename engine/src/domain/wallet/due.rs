//! What time brings by itself: holds past their timeout released, pending points matured, lots expired,
//! expiry notices, tier reviews. `decide` records these before any command (`catch_up`); `RunDue` is
//! that step alone.

use tally_proto::v1::{HoldCaptured, HoldEnd, LotOpened, LotPoints, PointsExpired, PointsExpiringSoon, PointsMatured};

use super::holds::release;
use super::lots::{credit, debit, open_lot, remember_lot, take_pending};
use super::tier::tier_review;
use super::{Decision, apply};
use crate::domain::Context;
use crate::domain::command::{Command, CommandBody};
use crate::domain::event::{Change, Event};
use crate::domain::state::{WalletState, WalletStatus};
use crate::limits::DUE_EVENTS_PER_APPEND_MAX;

/// A wallet as the timers see it: folded by the wallet's own [`apply`], keeping only what
/// [`WalletState::next_due_ms`] reads (lots that can expire, open holds, pending points, the tier, the
/// inactivity deadline), so the timers' due time is the wallet's own rather than a second accounting of it.
///
/// Nothing that moves those fields reads what the view forgets (receipts, sources, rule usage,
/// qualifying months, stamp cards, lots that never expire): the property test compares the two due
/// times after every event of random histories.
#[derive(Debug, Clone)]
pub struct DueView(WalletState);

impl Default for DueView {
    /// An enrolled wallet with nothing that can come due: where a view starts, at enrolment or at the
    /// first event after the wallet was last [idle](DueView::is_idle).
    fn default() -> Self {
        Self(WalletState { status: WalletStatus::Active, ..WalletState::default() })
    }
}

impl DueView {
    /// Folds the wallet's event at stream `version` (its first event is version 1).
    pub fn apply(&mut self, event: &Event, version: u64) {
        let state = &mut self.0;
        // Lots and pending credits are numbered by stream version; a view may start mid-stream.
        state.version = version.saturating_sub(1);
        apply(state, event);
        state.customer_ref = String::new();
        state.customer_sealed = Vec::new();
        state.receipts = Default::default();
        state.sources = Default::default();
        state.rule_usage = Default::default();
        state.qualifying = Vec::new();
        state.stamp_cards = Default::default();
        // A lot that never expires never comes due (nor gets a notice); what later events take from
        // it shows up here as a fresh undated lot, dropped again.
        state.lots.retain(|_, lot| lot.expires_at_ms.is_some() || lot.on_inactivity);
        // Only their times count: what a hold is for and where its points came from, whose order
        // pending points are, the tier's name.
        for hold in state.holds.values_mut() {
            hold.reward_ref = String::new();
            hold.lots = Vec::new();
        }
        for pending in state.pending.values_mut() {
            pending.source_ref = String::new();
        }
        if let Some(tier) = state.tier.as_mut() {
            tier.tier_id = String::new();
        }
    }

    /// When the wallet next has something due (see [`WalletState::next_due_ms`]).
    pub fn next_due_ms(&self) -> Option<i64> {
        self.0.next_due_ms()
    }

    /// Nothing in it can come due until more events arrive, whatever they are: it can be dropped, and a
    /// default one started at the wallet's next event gives the same due times.
    pub fn is_idle(&self) -> bool {
        let state = &self.0;
        state.status != WalletStatus::Active
            || (state.holds.is_empty()
                && state.lots.is_empty()
                && state.pending.is_empty()
                && state.tier.is_none()
                && state.referral_due.is_empty()
                && state.inactivity_expires_at_ms.is_none())
    }
}

/// What happened by itself up to `now_ms`, one transition at a time, each seeing the ones before: holds
/// past their timeout are released (by timeout, then hold id), pending points past their time mature
/// (by time, then credit), an order past its pending period converts the referral (or lapses), then lots
/// past their expiry expire (by expiry, then lot) — points given back or matured included. The changes, and the state after them if there were any.
pub(super) fn catch_up(
    state: &WalletState,
    ctx: &Context<'_>,
    event: &dyn Fn(Change) -> Event,
    limit: usize,
) -> (Vec<Change>, Option<WalletState>) {
    let now_ms = ctx.now_ms;
    if state.status != WalletStatus::Active || state.next_due_ms().is_none_or(|due| due > now_ms) {
        return (Vec::new(), None);
    }
    let mut current = state.clone();
    let mut changes = Vec::new();
    while changes.len() < limit
        && let Some(change) = next_transition(&current, ctx)
    {
        apply(&mut current, &event(change.clone()));
        changes.push(change);
    }
    (changes, Some(current))
}

/// The first transition due by `ctx.now_ms`, in the order [`catch_up`] records them.
pub(super) fn next_transition(state: &WalletState, ctx: &Context<'_>) -> Option<Change> {
    let now_ms = ctx.now_ms;
    let hold = state.holds().filter(|(_, hold)| hold.expires_at_ms <= now_ms).min_by_key(|(id, hold)| (hold.expires_at_ms, *id));
    if let Some((id, hold)) = hold {
        return Some(release(id, hold, HoldEnd::Expired));
    }
    let pending = state.pending().filter(|(_, p)| p.available_at_ms <= now_ms).min_by_key(|(id, p)| (p.available_at_ms, *id));
    if let Some((id, pending)) = pending {
        return Some(Change::Matured(PointsMatured {
            pending: id,
            source_ref: pending.source_ref.clone(),
            points: pending.points,
            available_at_ms: pending.available_at_ms,
            lot: Some(open_lot(state, pending.points, pending.expires_at_ms, true, ctx)),
        }));
    }
    // An order that waited out its pending period converts the referral (after its own points matured).
    let referral =
        state.referral_due.iter().filter(|(_, (at, _))| *at <= now_ms).min_by_key(|(order_id, (at, _))| (*at, order_id.as_str()));
    if let Some((order_id, (_, currency))) = referral {
        return Some(super::referrals::on_maturity(state, order_id, currency, ctx));
    }
    let lot = state.expired_lots(now_ms).filter(|(_, lot)| lot.points > 0).min_by_key(|(id, lot)| lot.spending_order(*id));
    if let Some((id, lot)) = lot {
        let expired_at_ms = state.lot_expiry(lot).unwrap_or(now_ms);
        return Some(Change::Expired(PointsExpired { lot: id, points: lot.points, expired_at_ms }));
    }
    let notice = state
        .lots()
        .filter(|(_, lot)| lot.notify_at_ms.is_some_and(|at| at <= now_ms) && lot.points + lot.held > 0)
        .min_by_key(|(id, lot)| (lot.notify_at_ms, *id));
    if let Some((id, lot)) = notice {
        return Some(Change::ExpiringSoon(PointsExpiringSoon {
            lot: id,
            points: lot.points + lot.held,
            expires_at_ms: lot.expires_at_ms.unwrap_or(0),
        }));
    }
    state.tier.as_ref().filter(|t| t.next_review_at_ms != 0 && t.next_review_at_ms <= now_ms).map(|t| tier_review(state, t, ctx))
}

/// More transitions are due than one append records: the first chunk of them, as `RunDue`'s own events
/// (the timers come back at once), or, before any other command, as a catch-up under the engine's key.
pub(super) fn in_chunks(mut due: Vec<Change>, command: &Command, ctx: &Context<'_>, event: &dyn Fn(Change) -> Event) -> Decision {
    due.truncate(DUE_EVENTS_PER_APPEND_MAX);
    if command.body == CommandBody::RunDue {
        return Decision::Append(due.into_iter().map(event).collect());
    }
    let catch_up = Command::run_due(ctx.now_ms);
    let fingerprint = catch_up.fingerprint();
    let event = |change| Event {
        idempotency_key: catch_up.idempotency_key.clone(),
        command_fingerprint: fingerprint,
        recorded_at_ms: ctx.now_ms,
        change,
    };
    Decision::CatchUp(due.into_iter().map(event).collect())
}

/// Points a hold gives back to a lot whose time has passed expire with the command that gave them back.
pub(super) fn expire_returned(
    current: &WalletState,
    changes: &[Change],
    ctx: &Context<'_>,
    event: &dyn Fn(Change) -> Event,
) -> Vec<Change> {
    // Points back into lots whose time may have passed (a hold's), or credited into lots already due (a
    // cancellation's or a transfer's, of a date gone by or a lapsed wallet): only then is time looked at
    // again — a copy of the wallet is not made for every credit.
    let deadline = changes
        .iter()
        .rev()
        .find_map(|c| match c {
            Change::TransferredIn(e) if e.inactivity_expires_at_ms != 0 => Some(e.inactivity_expires_at_ms),
            Change::TransferReturned(e) if e.inactivity_expires_at_ms != 0 => Some(e.inactivity_expires_at_ms),
            _ => None,
        })
        .or(current.inactivity_expires_at_ms);
    let due = |lot: Option<&LotOpened>| {
        lot.is_some_and(|l| {
            l.points > 0
                && ((l.expires_at_ms != 0 && l.expires_at_ms <= ctx.now_ms)
                    || (l.on_inactivity && deadline.is_some_and(|d| d <= ctx.now_ms)))
        })
    };
    let returns_points = changes.iter().any(|c| match c {
        Change::Released(_) | Change::Captured(HoldCaptured { released_points: 1.., .. }) => true,
        Change::RewardCancelled(e) => due(e.lot.as_ref()),
        Change::TransferredIn(e) => due(e.lot.as_ref()),
        Change::TransferReturned(e) => due(e.lot.as_ref()),
        _ => false,
    });
    if returns_points {
        let mut after = current.clone();
        changes.iter().for_each(|c| apply(&mut after, &event(c.clone())));
        catch_up(&after, ctx, event, usize::MAX).0
    } else {
        Vec::new()
    }
}

pub(super) fn apply_expiring_soon(state: &mut WalletState, e: &PointsExpiringSoon) {
    if let Some(lot) = state.lots.get_mut(&e.lot) {
        lot.notify_at_ms = None;
    }
}

pub(super) fn apply_matured(state: &mut WalletState, e: &PointsMatured) {
    take_pending(state, &[LotPoints { lot: e.pending, points: e.points }]);
    credit(state, e.points, e.lot.as_ref());
    // A source forgotten after its refund window needs no lots.
    if let Some(source) = state.sources.get_mut(&e.source_ref) {
        remember_lot(source, e.lot.as_ref());
    }
}

pub(super) fn apply_expired(state: &mut WalletState, e: &PointsExpired) {
    state.lifetime_expired += e.points;
    debit(state, e.points, std::slice::from_ref(&LotPoints { lot: e.lot, points: e.points }));
}
