//! `AuditService`: a wallet or a program as it was at an instant or log position, and a wallet's events
//! between two versions, all read from the event log itself (`tally_engine::audit`), never from a read
//! model. For auditors (their own tenant) and the platform; `tally audit` (`auditctl.rs`) calls it.

use std::sync::Arc;

use tally_engine::actors::{StoredWalletEvent, WalletKey, WalletSummary};
use tally_engine::audit::{self, AsOf, AuditError, ProgramAsOf, StoppedAt, WalletAsOf, verify};
use tally_engine::clock::Clock;
use tally_engine::codec;
use tally_engine::domain::access::Scope;
use tally_engine::domain::{Rejection, TenantId, WalletId, WalletState};
use tally_engine::store::{EventStore, StreamId};
use tally_proto::v1 as pb;
use tally_proto::v1::audit_service_server::AuditService;
use tonic::{Extensions, Request, Response, Status};

use crate::limits::{AUDIT_EXPORTS_IN_FLIGHT_MAX, AUDIT_PAGE_SIZE_DEFAULT, AUDIT_PAGE_SIZE_MAX, AUDIT_SETTLE_MS, PAGE_BYTES_MAX};
use crate::service::{timestamp, wallet};
use crate::transactions::transaction;
use crate::{access, admin, orders, status};

#[derive(Debug, Clone)]
pub struct AuditApi {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    /// Exports streaming now: each holds a permit until its stream ends, not just until it starts.
    exports: Arc<tokio::sync::Semaphore>,
}

impl AuditApi {
    pub fn new(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock, exports: Arc::new(tokio::sync::Semaphore::new(AUDIT_EXPORTS_IN_FLIGHT_MAX)) }
    }

    /// Milliseconds of the instant in `field`, if it is at least `AUDIT_SETTLE_MS` ago.
    fn settled(&self, field: &str, at: &prost_types::Timestamp) -> Result<i64, Status> {
        let at_ms = orders::millis(field, at)?;
        let settled_ms = self.clock.now_ms() - AUDIT_SETTLE_MS;
        if at_ms > settled_ms {
            let latest = status::timestamp(settled_ms);
            return Err(status::invalid(field, &format!("must be at least {} s ago (the latest now is {latest})", AUDIT_SETTLE_MS / 1000)));
        }
        Ok(at_ms)
    }

    /// `position`, if the log has reached it.
    fn reached(&self, field: &str, position: u64) -> Result<u64, Status> {
        let head = *self.store.head().borrow();
        if position > head {
            return Err(status::invalid(field, &format!("is beyond the log's last position, {head}")));
        }
        Ok(position)
    }

    /// The request's instant or position, if settled: an instant at least `AUDIT_SETTLE_MS` ago (events
    /// decided before a later one may still be on their way), a position the log has reached.
    fn as_of(&self, at: Option<&prost_types::Timestamp>, position: Option<u64>) -> Result<AsOf, Status> {
        match (at, position) {
            (Some(at), _) => Ok(AsOf::Instant(self.settled("at", at)?)),
            (None, Some(position)) => Ok(AsOf::Position(self.reached("position", position)?)),
            (None, None) => Err(status::invalid("as_of", "is required: an instant (at) or a log position (position)")),
        }
    }

    /// The tenant the call acts on, if its program was ever created.
    async fn tenant(&self, extensions: &Extensions, named: &str) -> Result<TenantId, Status> {
        let tenant = access::acting_tenant(extensions, named)?;
        let created = self.store.stream_version(&codec::program_stream(&tenant)).await.map_err(|e| status::from_store_error(&e))?;
        if created == 0 {
            return Err(status::unknown_tenant(tenant.as_str()));
        }
        Ok(tenant)
    }

    /// The wallet, its stream and its last version, if it has any event.
    async fn wallet(&self, tenant: &TenantId, wallet_id: &str) -> Result<(WalletKey, StreamId, u64), Status> {
        let wallet = WalletId::parse(wallet_id).map_err(|e| status::from_field_error(&e))?;
        let stream = codec::wallet_stream(tenant, &wallet);
        let head = self.store.stream_version(&stream).await.map_err(|e| status::from_store_error(&e))?;
        if head == 0 {
            return Err(status::from_rejection(&Rejection::WalletNotFound));
        }
        Ok((WalletKey::new(tenant.clone(), wallet), stream, head))
    }
}

/// What `VerifyLog` answers of a verdict: the head it reached, or the first broken link.
fn verdict_of(verdict: verify::Verdict) -> pb::VerifyLogResponse {
    let (verified, broken) = match verdict {
        Ok(verified) => (verified, None),
        Err((broken, verified)) => (verified, Some(broken)),
    };
    let hex = |hash: &[u8; 32]| hash.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (head_position, head_hash) = match (verified.head, verified.stream_head) {
        (Some((position, hash)), _) => (position, hex(&hash)),
        (None, Some(hash)) => (verified.stream_head_position, hex(&hash)),
        (None, None) => (0, String::new()),
    };
    pb::VerifyLogResponse {
        intact: broken.is_none(),
        events_checked: verified.events,
        events_linked: verified.linked,
        head_position,
        head_hash,
        broken: broken.map(|b| pb::BrokenLink {
            position: b.position,
            stream: b.stream,
            stream_version: b.stream_version,
            reason: b.reason,
        }),
    }
}

/// The instant time-dependent figures are computed at: the one asked for, or the last event's time.
fn evaluated_at(as_of: AsOf, stopped_at: Option<&StoppedAt>) -> i64 {
    match as_of {
        AsOf::Instant(at_ms) => at_ms,
        AsOf::Position(_) => stopped_at.map_or(0, |s| s.recorded_at_ms),
    }
}

/// Open holds by hold id (the state keeps them unordered).
fn holds(state: &WalletState) -> Vec<(&str, &tally_engine::domain::Hold)> {
    let mut holds: Vec<_> = state.holds().collect();
    holds.sort_unstable_by_key(|(id, _)| *id);
    holds
}

fn from_audit_error(error: &AuditError) -> Status {
    match error {
        AuditError::Store(store) => status::from_store_error(store),
        AuditError::Codec(codec) => {
            tracing::error!(error = %codec, "stored event cannot be decoded");
            Status::data_loss(format!("the log cannot be replayed: {codec}"))
        }
        AuditError::PersonalData(_) => {
            tracing::error!(%error, "sealed personal data does not open");
            Status::data_loss(error.to_string())
        }
    }
}

fn stopped_at(s: &StoppedAt) -> pb::StoppedAt {
    pb::StoppedAt {
        stream_version: s.stream_version,
        global_position: s.global_position,
        recorded_at: Some(status::timestamp(s.recorded_at_ms)),
        event_type: s.event_type.clone(),
    }
}

/// What `WalletAsOf` answers: the summary as `GetWallet` builds it, then where the points sit.
/// The customer as `audit::customer_now` shows it: erased now, erased in every answer.
fn wallet_as_of(
    key: &WalletKey,
    replay: &WalletAsOf,
    program: &ProgramAsOf,
    at_ms: i64,
    (customer_ref, customer_erased): (String, bool),
) -> pb::WalletAsOfResponse {
    let state: &WalletState = &replay.state;
    let summary = WalletSummary { customer_ref, customer_erased, ..WalletSummary::of(state, at_ms, &program.state.settings()) };
    pb::WalletAsOfResponse {
        wallet: Some(wallet(key, &summary)),
        stopped_at: replay.stopped_at.as_ref().map(stopped_at),
        evaluated_at: timestamp(at_ms),
        lots: state
            .lots()
            .map(|(lot, l)| pb::LotStatus {
                lot,
                points: l.points,
                held: l.held,
                expires_at: l.expires_at_ms.and_then(timestamp),
                on_inactivity: l.on_inactivity,
            })
            .collect(),
        holds: holds(state)
            .into_iter()
            .map(|(id, h)| pb::HoldStatus {
                hold_id: id.to_owned(),
                points: h.points,
                reward_ref: h.reward_ref.clone(),
                expires_at: timestamp(h.expires_at_ms),
            })
            .collect(),
        pending: state
            .pending()
            .map(|(version, p)| pb::PendingCredit {
                version,
                points: p.points,
                source_ref: p.source_ref.clone(),
                available_at: timestamp(p.available_at_ms),
                expires_at: p.expires_at_ms.and_then(timestamp),
            })
            .collect(),
        debt: state.debt,
        orders_placed: state.orders_placed,
        inactivity_expires_at: state.inactivity_expires_at_ms.and_then(timestamp),
        rules_version: program.state.rules_at(at_ms).map_or(0, |v| v.version),
    }
}

type LedgerStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ExportLedgerResponse, Status>> + Send>>;

/// Rows of an export in flight waiting for a slow client, at most.
const EXPORT_CHANNEL_ROWS: usize = 1024;

fn ledger_row(m: tally_projections::Movement) -> pb::ExportLedgerResponse {
    pb::ExportLedgerResponse {
        item: Some(pb::export_ledger_response::Item::Row(pb::LedgerRow {
            position: m.position,
            wallet_id: m.wallet.to_string(),
            stream_version: m.stream_version,
            recorded_at: Some(status::timestamp(m.recorded_at_ms)),
            kind: m.kind.as_str().to_owned(),
            points: m.points,
            reference: m.reference,
            reason: m.reason,
            idempotency_key: m.idempotency_key,
            principal: m.principal,
            event_type: m.event_type.to_owned(),
            lots: m.lots.iter().map(|&(lot, points)| pb::LotPoints { lot, points }).collect(),
            expires_at: m.expires_at_ms.map(status::timestamp),
        })),
    }
}

fn reconciliation(r: &tally_projections::export::Reconciliation) -> pb::ExportLedgerResponse {
    let p = &r.period;
    pb::ExportLedgerResponse {
        item: Some(pb::export_ledger_response::Item::Reconciliation(pb::LedgerReconciliation {
            as_of_position: r.as_of_position,
            opening_liability: r.opening_liability,
            issued: p.points_issued,
            purchased: p.points_purchased,
            redeemed: p.points_redeemed,
            reversed: p.points_reversed,
            adjusted: p.points_adjusted,
            forfeited: p.points_forfeited,
            expired: p.points_expired,
            transferred: p.points_transferred,
            closing_liability: r.closing_liability,
            rows: r.rows,
            wallets: r.wallets,
        })),
    }
}

/// Runs an export into `out`, a batch at a time; stops when the client goes away.
async fn export(
    store: Arc<dyn EventStore>,
    tenant: TenantId,
    (from_ms, to_ms, up_to_position): (i64, i64, u64),
    out: tokio::sync::mpsc::Sender<Result<pb::ExportLedgerResponse, Status>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut export = tally_projections::export::LedgerExport::up_to(store.as_ref(), tenant.as_str(), from_ms, to_ms, up_to_position);
    loop {
        // A client gone away stops the export at the next batch, rows or none.
        if out.is_closed() {
            return;
        }
        match export.next_rows().await {
            Ok(Some(rows)) => {
                for row in rows {
                    if out.send(Ok(ledger_row(row))).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => break,
            Err(error) => {
                tracing::error!(%error, "ledger export failed");
                let _ = out.send(Err(Status::data_loss(format!("the log cannot be exported: {error}")))).await;
                return;
            }
        }
    }
    for (wallet_id, opening_balance, closing_balance) in export.balances() {
        let wallet = pb::WalletBalance { wallet_id: wallet_id.to_owned(), opening_balance, closing_balance };
        if out.send(Ok(pb::ExportLedgerResponse { item: Some(pb::export_ledger_response::Item::Wallet(wallet)) })).await.is_err() {
            return;
        }
    }
    let _ = out.send(Ok(reconciliation(&export.reconciliation()))).await;
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    type ExportLedgerStream = LedgerStream;

    async fn export_ledger(&self, request: Request<pb::ExportLedgerRequest>) -> Result<Response<LedgerStream>, Status> {
        let (_, extensions, r) = request.into_parts();
        let tenant = self.tenant(&extensions, &r.tenant_id).await?;
        let (to_ms, up_to_position) = match r.end {
            Some(pb::export_ledger_request::End::To(to)) => (self.settled("to", &to)?, u64::MAX),
            Some(pb::export_ledger_request::End::UpToPosition(position)) => (i64::MAX, self.reached("up_to_position", position)?),
            None => return Err(status::invalid("to", "is required (or up_to_position): the end of the period")),
        };
        let from_ms = r.from.as_ref().map(|from| orders::millis("from", from)).transpose()?.unwrap_or(i64::MIN);
        if from_ms > to_ms {
            return Err(status::invalid("from", "must not be after to"));
        }
        let permit = Arc::clone(&self.exports).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{AUDIT_EXPORTS_IN_FLIGHT_MAX} ledger exports are running on this node, the most it runs at once; try again when one ends"
            ))
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_CHANNEL_ROWS);
        tokio::spawn(export(Arc::clone(&self.store), tenant, (from_ms, to_ms, up_to_position), tx, permit));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn verify_log(&self, request: Request<pb::VerifyLogRequest>) -> Result<Response<pb::VerifyLogResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let whole_log = r.wallet_id.is_empty();
        let stream = if whole_log {
            if access::principal(&extensions)?.scope != Scope::Platform {
                // Another tenant's name is refused as such first, as for every call.
                access::acting_tenant(&extensions, &r.tenant_id)?;
                return Err(status::invalid(
                    "wallet_id",
                    "is required: the whole log holds every tenant's events, and only a platform key verifies it",
                ));
            }
            None
        } else {
            let tenant = self.tenant(&extensions, &r.tenant_id).await?;
            Some(self.wallet(&tenant, &r.wallet_id).await?.1)
        };
        let _permit = Arc::clone(&self.exports).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{AUDIT_EXPORTS_IN_FLIGHT_MAX} exports and verifications are running on this node, the most it runs at once; try again when one ends"
            ))
        })?;
        let verdict = match &stream {
            None => verify::verify_log(self.store.as_ref(), |_| {}).await,
            Some(stream) => verify::verify_stream(self.store.as_ref(), stream).await,
        }
        .map_err(|e| status::from_store_error(&e))?;
        Ok(Response::new(verdict_of(verdict)))
    }

    async fn wallet_as_of(&self, request: Request<pb::WalletAsOfRequest>) -> Result<Response<pb::WalletAsOfResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let tenant = self.tenant(&extensions, &r.tenant_id).await?;
        let as_of = match r.as_of {
            Some(pb::wallet_as_of_request::AsOf::At(at)) => self.as_of(Some(&at), None)?,
            Some(pb::wallet_as_of_request::AsOf::Position(position)) => self.as_of(None, Some(position))?,
            None => self.as_of(None, None)?,
        };
        let (key, stream, _) = self.wallet(&tenant, &r.wallet_id).await?;
        let replay = audit::wallet_as_of(self.store.as_ref(), &stream, as_of).await.map_err(|e| from_audit_error(&e))?;
        let at_ms = evaluated_at(as_of, replay.stopped_at.as_ref());
        // The program as it stood then: its tiers and cards label the figures, its rules were in force.
        // As of a position, "then" is the wallet's last event, where its figures are computed.
        let program_as_of = match as_of {
            AsOf::Instant(_) => AsOf::Instant(at_ms),
            AsOf::Position(_) => AsOf::Position(replay.stopped_at.as_ref().map_or(0, |s| s.global_position)),
        };
        let program = audit::program_as_of(self.store.as_ref(), &tenant, program_as_of).await.map_err(|e| from_audit_error(&e))?;
        let customer = audit::customer_now(self.store.as_ref(), &stream, &replay).await.map_err(|e| from_audit_error(&e))?;
        Ok(Response::new(wallet_as_of(&key, &replay, &program, at_ms, customer)))
    }

    async fn program_as_of(&self, request: Request<pb::ProgramAsOfRequest>) -> Result<Response<pb::ProgramAsOfResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let tenant = self.tenant(&extensions, &r.tenant_id).await?;
        let as_of = match r.as_of {
            Some(pb::program_as_of_request::AsOf::At(at)) => self.as_of(Some(&at), None)?,
            Some(pb::program_as_of_request::AsOf::Position(position)) => self.as_of(None, Some(position))?,
            None => self.as_of(None, None)?,
        };
        let replay = audit::program_as_of(self.store.as_ref(), &tenant, as_of).await.map_err(|e| from_audit_error(&e))?;
        let at_ms = evaluated_at(as_of, replay.stopped_at.as_ref());
        let in_force = replay.state.rules_at(at_ms);
        let mut program = admin::program_response(&tenant, &replay.state, None);
        program.rules_version = in_force.map_or(0, |v| v.version);
        Ok(Response::new(pb::ProgramAsOfResponse {
            program: Some(program),
            rules_in_force: in_force.map(admin::rule_version),
            stopped_at: replay.stopped_at.as_ref().map(stopped_at),
            evaluated_at: timestamp(at_ms),
        }))
    }

    async fn wallet_changes(&self, request: Request<pb::WalletChangesRequest>) -> Result<Response<pb::WalletChangesResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let tenant = self.tenant(&extensions, &r.tenant_id).await?;
        let (_, stream, head) = self.wallet(&tenant, &r.wallet_id).await?;
        if r.up_to_version != 0 && r.up_to_version < r.after_version {
            return Err(status::invalid("up_to_version", "must not be below after_version (0: up to the last event)"));
        }
        let page_size = match r.page_size {
            0 => AUDIT_PAGE_SIZE_DEFAULT,
            n => n.min(AUDIT_PAGE_SIZE_MAX),
        };
        let up_to = if r.up_to_version == 0 { head } else { r.up_to_version.min(head) };
        let count = usize::try_from(u64::from(page_size).min(up_to.saturating_sub(r.after_version))).unwrap_or(usize::MAX);
        let recorded =
            self.store.read_stream(&stream, r.after_version.saturating_add(1), count).await.map_err(|e| status::from_store_error(&e))?;
        // A page is bounded by bytes as well as by count (at least one transaction is sent).
        let (mut transactions, mut bytes) = (Vec::with_capacity(recorded.len()), 0);
        for r in recorded {
            let (version, position) = (r.stream_version, r.global_position);
            let event = codec::decode(r).map_err(|e| from_audit_error(&AuditError::Codec(e)))?;
            let transaction = transaction(&StoredWalletEvent { version, position, event });
            bytes += prost::Message::encoded_len(&transaction);
            if bytes > PAGE_BYTES_MAX && !transactions.is_empty() {
                break;
            }
            transactions.push(transaction);
        }
        let last = transactions.last().map_or(up_to, |t| t.version);
        let next_after_version = if last < up_to { last } else { 0 };
        Ok(Response::new(pb::WalletChangesResponse { transactions, next_after_version }))
    }
}
