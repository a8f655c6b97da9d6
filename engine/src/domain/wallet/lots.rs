//! Lots: where credited points sit until they are spent or expire, and the debt credits pay back first.
//! Shared by every family that credits or debits points.

use tally_proto::v1::{LotOpened, LotPoints};

use crate::domain::Context;
use crate::domain::event::{Change, Event};
use crate::domain::fingerprint::CommandFingerprint;
use crate::domain::state::{Lot, SourceLedger, WalletState};

/// Points of one kind of lot: `(points, expiry, expiring with the wallet's inactivity)` — earned points
/// with a date, earned points on inactivity, and points that never expire (purchased ones, or earned
/// under no expiry). What a cancellation gives back and what a transfer moves, each into a lot of its
/// own kind.
pub(crate) type Part = (i64, Option<i64>, bool);

/// Most parts points are moved in (an event each): dates, and the two undated kinds.
pub(super) const PARTS_MAX: usize = 32;

/// `points` taken from `lots` (before the debit is applied) by the kind of lot they come from, dates
/// first. At most [`PARTS_MAX`] parts: dated points beyond them join the latest date kept, sooner than
/// their own (never later). What the lots did not cover (a debt) is a part that never expires.
pub(super) fn parts_of(state: &WalletState, lots: &[LotPoints], points: i64) -> Vec<Part> {
    let mut parts: Vec<Part> = Vec::new();
    for taken in lots {
        let (expires_at_ms, on_inactivity) = state.lots.get(&taken.lot).map_or((None, false), |lot| (lot.expires_at_ms, lot.on_inactivity));
        match parts.iter_mut().find(|(_, at, inactive)| *at == expires_at_ms && *inactive == on_inactivity) {
            Some(part) => part.0 += taken.points,
            None => parts.push((taken.points, expires_at_ms, on_inactivity)),
        }
    }
    parts.sort_by_key(|(_, at, inactive)| (at.is_none(), *at, *inactive));
    while parts.len() > PARTS_MAX && parts[PARTS_MAX - 1].1.is_some() && parts[PARTS_MAX].1.is_some() {
        let (points, _, _) = parts.remove(PARTS_MAX);
        parts[PARTS_MAX - 1].0 += points;
    }
    let covered: i64 = parts.iter().map(|(points, _, _)| points).sum();
    if covered < points {
        parts.push((points - covered, None, false));
    }
    parts
}

/// Credits `parts`, each into a lot of its own kind — dated points at their own date, points on
/// inactivity with the wallet's inactivity, points that never expire never — one change each, made by
/// `change` from the part's points, its lot and whether it is the first; numbered as they will be
/// recorded (each lot is opened on the wallet as the ones before left it). One part (the common case)
/// opens its lot on the wallet as it is: no copy of it.
pub(super) fn credit_parts(
    state: &WalletState,
    ctx: &Context<'_>,
    parts: &[Part],
    mut change: impl FnMut(i64, LotOpened, bool) -> Change,
) -> Vec<Change> {
    if let [(points, expires_at_ms, on_inactivity)] = parts {
        let earned = expires_at_ms.is_some() || *on_inactivity;
        return vec![change(*points, open_lot(state, *points, *expires_at_ms, earned, ctx), true)];
    }
    let mut after = state.clone();
    let mut changes = Vec::with_capacity(parts.len());
    for (i, (points, expires_at_ms, on_inactivity)) in parts.iter().enumerate() {
        let earned = expires_at_ms.is_some() || *on_inactivity;
        let lot = open_lot(&after, *points, *expires_at_ms, earned, ctx);
        let numbered = Event {
            idempotency_key: String::new(),
            command_fingerprint: CommandFingerprint::Fnv64(0),
            recorded_at_ms: ctx.now_ms,
            change: change(*points, lot, i == 0),
        };
        super::apply(&mut after, &numbered);
        changes.push(numbered.change);
    }
    changes
}

pub(super) fn lot_points(lots: &[(u64, i64)]) -> Vec<LotPoints> {
    lots.iter().map(|(lot, points)| LotPoints { lot: *lot, points: *points }).collect()
}

/// Takes `points` from the unheld points of the lots: `first` ones first (a source's own lots), then
/// soonest expiry first. Returns the lots and what they could not cover.
pub(super) fn take_lots(state: &WalletState, points: i64, first: &[u64]) -> (Vec<LotPoints>, i64) {
    let mut lots: Vec<(u64, &Lot)> = state.lots().filter(|(_, lot)| lot.points > 0).collect();
    lots.sort_unstable_by_key(|(id, lot)| (!first.contains(id), lot.spending_order(*id)));
    let mut left = points;
    let mut taken = Vec::new();
    for (id, lot) in lots {
        if left <= 0 {
            break;
        }
        let take = lot.points.min(left);
        taken.push(LotPoints { lot: id, points: take });
        left -= take;
    }
    (taken, left)
}

/// The lot a credit of `points` opens: what is left after paying back the debt, joining an open lot
/// that expires with it if there is one. Earned points without a date expire with the wallet's
/// inactivity under such a policy; purchased ones never.
pub(super) fn open_lot(state: &WalletState, points: i64, expires_at_ms: Option<i64>, earned: bool, ctx: &Context<'_>) -> LotOpened {
    let into_lot = points - points.min(state.debt.max(0));
    let on_inactivity = earned && expires_at_ms.is_none() && crate::domain::expiry::on_inactivity(&ctx.program.expiry);
    let open = state.lots().find(|(_, lot)| lot.expires_at_ms == expires_at_ms && lot.on_inactivity == on_inactivity);
    let lot = open.map_or(state.version + 1, |(id, _)| id);
    // A lot credited already inside its notice period gets no notice.
    let notice_ms = i64::from(ctx.program.expiry.notice_days) * DAY_MS;
    let notify_at_ms = match (open, expires_at_ms) {
        (Some((_, open)), _) => open.notify_at_ms.unwrap_or(0),
        (None, Some(at)) if notice_ms > 0 && at - notice_ms > ctx.now_ms => at - notice_ms,
        _ => 0,
    };
    LotOpened { points: into_lot.max(0), expires_at_ms: expires_at_ms.unwrap_or(0), lot, notify_at_ms, on_inactivity }
}

/// What a customer's activity records under an inactivity policy: the wallet's new deadline (0: none).
pub(super) fn inactivity_deadline(ctx: &Context<'_>) -> i64 {
    crate::domain::expiry::inactivity_deadline(&ctx.program.expiry, ctx.now_ms, ctx.program.utc_offset_minutes).unwrap_or(0)
}

pub(super) const DAY_MS: i64 = 86_400_000;

/// When points earned now expire under the program's policy.
pub(super) fn earned_expiry(ctx: &Context<'_>) -> Option<i64> {
    crate::domain::expiry::expires_at(&ctx.program.expiry, ctx.now_ms, ctx.program.utc_offset_minutes)
}

/// Under an inactivity policy, points credited to a wallet that has lapsed restart its clock rather than
/// land already past their time (as a staff credit does); 0: the deadline stays.
pub(super) fn restarted_clock(state: &WalletState, ctx: &Context<'_>) -> i64 {
    let lapsed = state.inactivity_expires_at_ms.is_none_or(|at| at <= ctx.now_ms);
    if lapsed { inactivity_deadline(ctx) } else { 0 }
}

/// The customer did something: under an inactivity policy, the event carries the wallet's new deadline.
pub(super) fn active(state: &mut WalletState, inactivity_expires_at_ms: i64) {
    state.inactivity_expires_at_ms = (inactivity_expires_at_ms != 0).then_some(inactivity_expires_at_ms);
}

/// A source's points went into `lot`: a reversal of the source takes from it first.
pub(super) fn remember_lot(source: &mut SourceLedger, lot: Option<&LotOpened>) {
    if let Some(lot) = lot.filter(|lot| lot.points > 0)
        && !source.lots.contains(&lot.lot)
    {
        source.lots.push(lot.lot);
    }
}

/// Takes points out of pending credits; how many.
pub(super) fn take_pending(state: &mut WalletState, taken: &[LotPoints]) -> i64 {
    let mut total = 0;
    for t in taken {
        total += t.points;
        state.pending_points -= t.points;
        if let Some(pending) = state.pending.get_mut(&t.lot) {
            pending.points -= t.points;
            if pending.points <= 0 {
                state.pending.remove(&t.lot);
            }
        }
    }
    total
}

/// A credit of `points`: what the lot did not take paid back the debt.
pub(super) fn credit(state: &mut WalletState, points: i64, opened: Option<&LotOpened>) {
    let Some(opened) = opened else { return };
    state.debt -= points - opened.points;
    if opened.points > 0 {
        let expires_at_ms = (opened.expires_at_ms != 0).then_some(opened.expires_at_ms);
        let notify_at_ms = (opened.notify_at_ms != 0).then_some(opened.notify_at_ms);
        let new = Lot { points: 0, held: 0, expires_at_ms, notify_at_ms, on_inactivity: opened.on_inactivity };
        state.lots.entry(opened.lot).or_insert(new).points += opened.points;
    }
}

/// A debit of `points` taken from `lots`; what they did not cover is owed (for a closure, what they held
/// beyond the forfeit paid the debt).
pub(super) fn debit(state: &mut WalletState, points: i64, lots: &[LotPoints]) {
    let mut covered = 0;
    for taken in lots {
        covered += taken.points;
        let lot = state.lots.entry(taken.lot).or_default();
        lot.points -= taken.points;
        drop_if_empty(state, taken.lot);
    }
    state.debt += points - covered;
}

/// Held points leave their lots: spent, or given back to them.
pub(super) fn unhold(state: &mut WalletState, lots: &[LotPoints], give_back: bool) {
    for taken in lots {
        let lot = state.lots.entry(taken.lot).or_default();
        lot.held -= taken.points;
        if give_back {
            lot.points += taken.points;
        }
        drop_if_empty(state, taken.lot);
    }
}

pub(super) fn drop_if_empty(state: &mut WalletState, id: u64) {
    if state.lots.get(&id).is_some_and(|lot| lot.points == 0 && lot.held == 0) {
        state.lots.remove(&id);
    }
}
