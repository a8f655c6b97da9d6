//! Transfers: a wallet's steps of a points transfer between two wallets of its tenant (the flow in
//! `crate::domain::flows`, driven by `crate::actors::flows`).
//!
//! The source decides whether its customer may move the points — the program allows transfers, the
//! amount is within its caps, the points are available — and records the debit or its refusal, either
//! its answer for good. The target records the credit, or its refusal. A transfer the target refused
//! comes back to the source. Points keep their kind and their date wherever they go: the debit records
//! them by the kind of lot they left ([`lots::parts_of`]), and every credit of them opens a lot of that
//! kind — dated points keep their date (a transfer neither lengthens nor shortens their life), purchased
//! points stay purchased (they never expire), points on inactivity follow their new wallet's inactivity.
//! Pending and held points do not move.

use tally_proto::v1::{PointsTransferRefused, PointsTransferReturned, PointsTransferredIn, PointsTransferredOut, TransferPart};

use super::checks::checked_balance;
use super::lots::{self, Part, credit, credit_parts, debit, inactivity_deadline, take_lots};
use crate::domain::Context;
use crate::domain::command::TransferStep;
use crate::domain::event::{Change, Event};
use crate::domain::fingerprint::CommandFingerprint;
use crate::domain::rejection::Rejection;
use crate::domain::state::{WalletState, WalletStatus};
use crate::limits::TRANSFER_DAY_MS;

/// The source's debit, or the refusal recorded in its place: either way the wallet's answer to the
/// transfer for good (a retry under the step's key gets it back from the receipt).
pub(super) fn send_or_refuse(
    state: &WalletState,
    ctx: &Context<'_>,
    transfer_id: &str,
    to_wallet_id: &str,
    points: i64,
    reason: &str,
) -> Change {
    send(state, ctx, transfer_id, to_wallet_id, points, reason)
        .unwrap_or_else(|rejection| refused(transfer_id, TransferStep::Out, &rejection))
}

fn refused(transfer_id: &str, step: TransferStep, rejection: &Rejection) -> Change {
    Change::TransferRefused(PointsTransferRefused {
        transfer_id: transfer_id.to_owned(),
        step: step.as_str().to_owned(),
        code: crate::domain::flows::refusal_code(rejection).to_owned(),
        message: rejection.to_string(),
    })
}

fn send(
    state: &WalletState,
    ctx: &Context<'_>,
    transfer_id: &str,
    to_wallet_id: &str,
    points: i64,
    reason: &str,
) -> Result<Change, Rejection> {
    let policy = &ctx.program.transfers;
    if !policy.allowed {
        return Err(Rejection::TransfersNotAllowed);
    }
    if policy.max_points_per_transfer > 0 && points > policy.max_points_per_transfer {
        return Err(Rejection::TransferCapExceeded { max: policy.max_points_per_transfer, requested: points });
    }
    let used = state.transferred_out_since(ctx.now_ms);
    if policy.max_points_per_day > 0 && used.saturating_add(points) > policy.max_points_per_day {
        return Err(Rejection::TransferDailyCapExceeded { max: policy.max_points_per_day, used, requested: points });
    }
    let available = state.available_at(ctx.now_ms);
    if points > available {
        return Err(Rejection::InsufficientPoints { available: available.max(0), requested: points });
    }
    let (lots, _) = take_lots(state, points, &[]);
    let parts = lots::parts_of(state, &lots, points).into_iter().map(to_wire).collect();
    Ok(Change::TransferredOut(PointsTransferredOut {
        transfer_id: transfer_id.to_owned(),
        to_wallet_id: to_wallet_id.to_owned(),
        points,
        lots,
        parts,
        inactivity_expires_at_ms: inactivity_deadline(ctx),
        reason: reason.to_owned(),
    }))
}

/// The target's credit, part by part, or the refusal recorded in its place (a balance that would leave
/// the ledger's range).
pub(super) fn receive_or_refuse(
    state: &WalletState,
    ctx: &Context<'_>,
    transfer_id: &str,
    from_wallet_id: &str,
    parts: &[TransferPart],
    reason: &str,
) -> Result<(Vec<Change>, Change), Rejection> {
    let points = parts.iter().map(|p| p.points).sum();
    if let Err(rejection) = checked_balance(state.balance.checked_add(points), "points", points) {
        return Ok((Vec::new(), refused(transfer_id, TransferStep::In, &rejection)));
    }
    let deadline = lots::restarted_clock(state, ctx);
    let changes = credit_parts(state, ctx, &from_wire(parts), |points, lot, first| {
        Change::TransferredIn(PointsTransferredIn {
            transfer_id: transfer_id.to_owned(),
            from_wallet_id: from_wallet_id.to_owned(),
            points,
            lot: Some(lot),
            reason: reason.to_owned(),
            inactivity_expires_at_ms: if first { deadline } else { 0 },
        })
    });
    last_apart(changes)
}

/// The source takes back what a transfer the target refused (with `code`) moved out of it. A source closed
/// since forfeits the points at once, as its closure forfeited the rest (a `WalletClosed` follows).
pub(super) fn give_back(
    state: &WalletState,
    ctx: &Context<'_>,
    transfer_id: &str,
    parts: &[TransferPart],
    code: &str,
) -> Result<(Vec<Change>, Change), Rejection> {
    let closed = state.status == WalletStatus::Closed;
    let deadline = if closed { 0 } else { lots::restarted_clock(state, ctx) };
    let mut changes = credit_parts(state, ctx, &from_wire(parts), |points, lot, first| {
        Change::TransferReturned(PointsTransferReturned {
            transfer_id: transfer_id.to_owned(),
            points,
            lot: Some(lot),
            code: code.to_owned(),
            inactivity_expires_at_ms: if first { deadline } else { 0 },
            wallet_closed: closed,
        })
    });
    if closed {
        let mut after = state.clone();
        for change in &changes {
            let event = Event {
                idempotency_key: String::new(),
                command_fingerprint: CommandFingerprint::Fnv64(0),
                recorded_at_ms: ctx.now_ms,
                change: change.clone(),
            };
            super::apply(&mut after, &event);
        }
        changes.extend(super::ledger::close(&after, "a transfer came back to the closed wallet"));
    }
    last_apart(changes)
}

fn last_apart(mut changes: Vec<Change>) -> Result<(Vec<Change>, Change), Rejection> {
    let last = changes.pop().ok_or_else(|| crate::domain::FieldError::new("parts", "must not be empty"))?;
    Ok((changes, last))
}

fn to_wire((points, expires_at_ms, on_inactivity): Part) -> TransferPart {
    TransferPart { points, expires_at_ms: expires_at_ms.unwrap_or(0), on_inactivity }
}

fn from_wire(parts: &[TransferPart]) -> Vec<Part> {
    parts.iter().map(|p| (p.points, (p.expires_at_ms != 0).then_some(p.expires_at_ms), p.on_inactivity)).collect()
}

pub(super) fn apply_out(state: &mut WalletState, e: &PointsTransferredOut, at_ms: i64) {
    lots::active(state, e.inactivity_expires_at_ms);
    debit(state, e.points, &e.lots);
    // The daily cap looks back 24 hours: older transfers are forgotten as newer ones come (by event time).
    let from = at_ms.saturating_sub(TRANSFER_DAY_MS);
    state.transfers_out.retain(|_, (at, _)| *at > from);
    state.transfers_out.insert(e.transfer_id.clone(), (at_ms, e.points));
}

pub(super) fn apply_in(state: &mut WalletState, e: &PointsTransferredIn) {
    if e.inactivity_expires_at_ms != 0 {
        lots::active(state, e.inactivity_expires_at_ms);
    }
    credit(state, e.points, e.lot.as_ref());
}

pub(super) fn apply_returned(state: &mut WalletState, e: &PointsTransferReturned) {
    if e.inactivity_expires_at_ms != 0 {
        lots::active(state, e.inactivity_expires_at_ms);
    }
    credit(state, e.points, e.lot.as_ref());
    state.transfers_out.remove(&e.transfer_id);
    // Said by the event, so a view of the wallet that starts here (the timers') knows nothing comes due.
    if e.wallet_closed {
        state.status = WalletStatus::Closed;
    }
}

#[cfg(test)]
mod tests {
    use tally_proto::v1::TransferPolicySet;

    use crate::domain::command::{Command, CommandBody, TransferPart, TransferStep, transfer_key};
    use crate::domain::{Change, Context, Decision, ProgramSettings, TenantId, WalletId, WalletState, WalletStatus, apply, decide};

    const NOW: i64 = 1_772_636_400_000;

    fn run(state: &mut WalletState, wallet: &str, program: &ProgramSettings, now_ms: i64, command: Command) -> Vec<Change> {
        let tenant = TenantId::parse("t").unwrap();
        let wallet = WalletId::parse(wallet).unwrap();
        let ctx = Context { tenant: &tenant, wallet: &wallet, now_ms, program };
        match decide(state, &command, &ctx) {
            Ok(Decision::Append(events)) => {
                events.iter().for_each(|e| apply(state, e));
                events.into_iter().map(|e| e.change).collect()
            }
            other => panic!("{command:?}: {other:?}"),
        }
    }

    fn wallet_with(points: i64, program: &ProgramSettings) -> WalletState {
        let mut state = WalletState::default();
        run(&mut state, "a", program, NOW, Command::new("e", CommandBody::enroll("")));
        if points > 0 {
            let earn = CommandBody::Earn { points, reason: "order".into(), source_ref: "o-1".into(), order_amount: None };
            run(&mut state, "a", program, NOW, Command::new("k", earn));
        }
        state
    }

    fn allowed(max_points_per_transfer: i64, max_points_per_day: i64) -> ProgramSettings {
        let transfers = TransferPolicySet { allowed: true, max_points_per_transfer, max_points_per_day, set_by: "ops".into() };
        ProgramSettings { transfers, ..ProgramSettings::default() }
    }

    fn refusal(changes: &[Change]) -> String {
        match changes {
            [Change::TransferRefused(r)] => r.code.clone(),
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn the_program_decides_whether_and_how_much_and_the_refusal_is_recorded() {
        let closed = ProgramSettings::default();
        let mut state = wallet_with(500, &closed);
        let out = |id: &str, points| Command::transfer_out(id, "b", points, "gift");
        assert_eq!(refusal(&run(&mut state, "a", &closed, NOW, out("t-1", 10))), "TRANSFERS_NOT_ALLOWED");
        let capped = allowed(100, 150);
        assert_eq!(refusal(&run(&mut state, "a", &capped, NOW, out("t-2", 101))), "TRANSFER_CAP_EXCEEDED");
        assert!(matches!(run(&mut state, "a", &capped, NOW, out("t-3", 100))[..], [Change::TransferredOut(_)]));
        assert_eq!(refusal(&run(&mut state, "a", &capped, NOW + 1, out("t-4", 60))), "TRANSFER_DAILY_CAP_EXCEEDED");
        // A day later the cap has room again.
        assert!(matches!(run(&mut state, "a", &capped, NOW + 86_400_001, out("t-5", 60))[..], [Change::TransferredOut(_)]));
        assert_eq!(refusal(&run(&mut state, "a", &allowed(0, 0), NOW + 86_400_002, out("t-6", 341))), "INSUFFICIENT_POINTS");
        assert_eq!(state.balance, 340);
        // The refusal is the answer for good: the same step again is answered from its receipt.
        let tenant = TenantId::parse("t").unwrap();
        let wallet = WalletId::parse("a").unwrap();
        let ctx = Context { tenant: &tenant, wallet: &wallet, now_ms: NOW + 86_400_003, program: &allowed(0, 0) };
        assert!(matches!(decide(&state, &out("t-1", 10), &ctx), Ok(Decision::AlreadyApplied(_))));
        // To itself: refused as input, nothing recorded.
        assert!(decide(&state, &Command::transfer_out("t-7", "a", 1, ""), &ctx).is_err());
    }

    #[test]
    fn points_keep_their_kind_and_date_and_a_closed_source_forfeits_what_comes_back() {
        let program = allowed(0, 0);
        let mut source = wallet_with(100, &program);
        let buy = CommandBody::Adjust { points: 1, reason: "x".into(), staff_ref: "s".into() };
        run(&mut source, "a", &program, NOW, Command::new("adj", buy));
        let Change::TransferredOut(out) = run(&mut source, "a", &program, NOW, Command::transfer_out("t-1", "b", 101, "gift")).remove(0)
        else {
            panic!("not sent")
        };
        assert_eq!(out.parts.iter().map(|p| p.points).sum::<i64>(), 101);
        // The target takes them in at the kinds they left.
        let dated = TransferPart { points: 30, expires_at_ms: NOW + 10 * 86_400_000, on_inactivity: false };
        let never = TransferPart { points: 71, expires_at_ms: 0, on_inactivity: false };
        let mut target = wallet_with(0, &program);
        let changes = run(&mut target, "b", &program, NOW, Command::transfer_in("t-1", "a", vec![dated, never], "gift"));
        assert_eq!(changes.len(), 2, "a part each: {changes:?}");
        assert_eq!(target.balance, 101);
        let lots: Vec<Option<i64>> = target.lots().map(|(_, lot)| lot.expires_at_ms).collect();
        assert!(lots.contains(&Some(NOW + 10 * 86_400_000)) && lots.contains(&None), "{lots:?}");
        // A source closed meanwhile gets the points back and forfeits them at once.
        run(&mut source, "a", &program, NOW + 1, Command::new("close", CommandBody::Close { reason: "bye".into() }));
        let back = run(&mut source, "a", &program, NOW + 2, Command::return_transfer("t-1", vec![dated, never], "TARGET_WALLET_CLOSED"));
        assert!(matches!(back.last(), Some(Change::Closed(c)) if c.forfeited_points == 101), "{back:?}");
        assert_eq!((source.balance, source.status), (0, WalletStatus::Closed));
        assert_eq!(back.iter().map(Change::points_delta).sum::<i64>(), 0);
        assert_eq!(transfer_key("t-1", TransferStep::Return), "tally:transfer:t-1:return");
    }

    #[test]
    fn a_target_whose_balance_would_leave_the_range_refuses_for_good() {
        let program = allowed(0, 0);
        let mut target = wallet_with(crate::limits::POINTS_PER_COMMAND_MAX, &program);
        for i in 0..((crate::limits::BALANCE_ABS_MAX / crate::limits::POINTS_PER_COMMAND_MAX) + 1) {
            let earn = CommandBody::Earn {
                points: crate::limits::POINTS_PER_COMMAND_MAX,
                reason: "x".into(),
                source_ref: format!("o-{i}"),
                order_amount: None,
            };
            let tenant = TenantId::parse("t").unwrap();
            let wallet = WalletId::parse("b").unwrap();
            let ctx = Context { tenant: &tenant, wallet: &wallet, now_ms: NOW, program: &program };
            if let Ok(Decision::Append(events)) = decide(&target, &Command::new(format!("e-{i}"), earn), &ctx) {
                events.iter().for_each(|e| apply(&mut target, e));
            }
        }
        let part = TransferPart { points: crate::limits::POINTS_PER_COMMAND_MAX, expires_at_ms: 0, on_inactivity: false };
        let changes = run(&mut target, "b", &program, NOW, Command::transfer_in("t-1", "a", vec![part], "gift"));
        assert_eq!(refusal(&changes), "POINTS_OUT_OF_RANGE");
    }
}
