//! The read side over gRPC: `ReportingService` (answers from the PostgreSQL reporting read model) and
//! `ProjectionsService` (status and rebuilds of every running projection).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tally_engine::actors::Programs;
use tally_engine::domain::TenantId;
use tally_engine::store::EventStore;
use tally_projections::postgres::{ProgramStats, WalletCursor, WalletOrder};
use tally_projections::runner::RunState;
use tally_projections::{PostgresReadModel, Projection, ProjectionError, RebuildPhase, RebuildProgress};
use tally_proto::v1 as pb;
use tally_proto::v1::projections_service_server::ProjectionsService;
use tally_proto::v1::reporting_service_server::ReportingService;
use time::Date;
use time::macros::format_description;
use tonic::{Request, Response, Status};

use crate::limits::{STATS_DAYS_MAX, WALLET_PAGE_SIZE_DEFAULT, WALLET_PAGE_SIZE_MAX};
use crate::{access, status};
use tally_engine::clock::{Clock, SystemClock};

/// The read models a server runs.
#[derive(Debug, Clone, Default)]
pub struct ReadSide {
    /// The reporting read model, when `--reporting-db` is set.
    pub reporting: Option<Arc<PostgresReadModel>>,
    /// Every running projection.
    pub projections: Vec<Arc<Projection>>,
}

#[derive(Debug, Clone)]
pub struct ReportingApi {
    read: ReadSide,
    programs: Arc<dyn Programs>,
    /// The log, whose keys open the customers' sealed data as rows are read.
    store: Arc<dyn EventStore>,
}

impl ReportingApi {
    pub fn new(read: ReadSide, programs: Arc<dyn Programs>, store: Arc<dyn EventStore>) -> Self {
        Self { read, programs, store }
    }

    fn model(&self) -> Result<&PostgresReadModel, Status> {
        self.read.reporting.as_deref().ok_or_else(|| {
            Status::failed_precondition("this server keeps no reporting read model; start `tally serve` with --reporting-db postgres://…")
        })
    }

    /// The tenant the call acts on (see `access::acting_tenant`), if its program exists.
    async fn tenant(&self, extensions: &tonic::Extensions, named: &str) -> Result<TenantId, Status> {
        let id = access::acting_tenant(extensions, named)?;
        if self.programs.settings(&id).await.map_err(|e| status::from_wallet_error(&e))?.is_none() {
            return Err(status::unknown_tenant(id.as_str()));
        }
        Ok(id)
    }
}

fn from_projection_error(error: &ProjectionError) -> Status {
    match error {
        ProjectionError::Postgres(_) | ProjectionError::Pool(_) => {
            tracing::warn!(%error, "reporting query failed");
            Status::unavailable(format!("the reporting database cannot answer now: {error}"))
        }
        ProjectionError::Corrupt { .. } => {
            tracing::error!(%error, "read model corrupt");
            Status::data_loss(format!("{error}; rebuild it with `tally projections rebuild`"))
        }
        ProjectionError::Store(store) => {
            tracing::warn!(%error, "the keys to open customers' data cannot be read");
            Status::unavailable(format!("the log's keys cannot be read now: {store}"))
        }
        ProjectionError::RebuildRunning { .. } | ProjectionError::Standby { .. } => Status::failed_precondition(error.to_string()),
        ProjectionError::OutOfRange(_) => Status::out_of_range(error.to_string()),
        ProjectionError::Stopped { .. } => Status::unavailable(error.to_string()),
        _ => {
            tracing::error!(%error, "read side failed");
            Status::internal(error.to_string())
        }
    }
}

/// Page tokens are `<order letter>:<sort value>:<wallet id>`; wallet ids may contain `:` but come last.
fn encode_token(order: WalletOrder, cursor: &WalletCursor) -> String {
    let letter = match order {
        WalletOrder::Balance => 'b',
        WalletOrder::LastActivity => 'a',
    };
    format!("{letter}:{}:{}", cursor.value, cursor.wallet_id)
}

fn decode_token(order: WalletOrder, token: &str) -> Result<Option<WalletCursor>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || status::invalid("page_token", "not a token from a previous ListWallets response with this order_by");
    let mut parts = token.splitn(3, ':');
    let (Some(letter), Some(value), Some(wallet_id)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
    let expected = match order {
        WalletOrder::Balance => "b",
        WalletOrder::LastActivity => "a",
    };
    if letter != expected {
        return Err(bad());
    }
    Ok(Some(WalletCursor { value: value.parse().map_err(|_| bad())?, wallet_id: wallet_id.to_owned() }))
}

fn parse_day(field: &str, value: &str) -> Result<Date, Status> {
    Date::parse(value, format_description!("[year]-[month]-[day]")).map_err(|_| status::invalid(field, "expected a date as YYYY-MM-DD"))
}

fn format_day(day: Date) -> String {
    day.format(format_description!("[year]-[month]-[day]")).unwrap_or_default()
}

fn day_stats(day: String, s: &tally_projections::model::DayStats) -> pb::DayStats {
    pb::DayStats {
        day,
        points_issued: s.points_issued,
        points_redeemed: s.points_redeemed,
        points_reversed: s.points_reversed,
        points_adjusted: s.points_adjusted,
        points_forfeited: s.points_forfeited,
        enrolments: s.enrolments,
        active_wallets: s.active_wallets,
        points_purchased: s.points_purchased,
        points_expired: s.points_expired,
        points_transferred: s.points_transferred,
    }
}

#[tonic::async_trait]
impl ReportingService for ReportingApi {
    async fn list_wallets(&self, request: Request<pb::ListWalletsRequest>) -> Result<Response<pb::ListWalletsResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let tenant = self.tenant(&extensions, &request.tenant_id).await?;
        let order = match pb::WalletOrder::try_from(request.order_by) {
            Ok(pb::WalletOrder::Unspecified | pb::WalletOrder::Balance) => WalletOrder::Balance,
            Ok(pb::WalletOrder::LastActivity) => WalletOrder::LastActivity,
            Err(_) => return Err(status::invalid("order_by", "unknown order")),
        };
        let page_size = match request.page_size {
            0 => WALLET_PAGE_SIZE_DEFAULT as usize,
            n if n > WALLET_PAGE_SIZE_MAX => return Err(status::invalid("page_size", &format!("at most {WALLET_PAGE_SIZE_MAX}"))),
            n => n as usize,
        };
        let after = decode_token(order, &request.page_token)?;
        let model = self.model()?;
        let mut page =
            model.list_wallets(tenant.as_str(), order, page_size, after.as_ref()).await.map_err(|e| from_projection_error(&e))?;
        let mut rows: Vec<_> = page.wallets.iter_mut().map(|row| (tenant.as_str(), row.wallet_id.as_str(), &mut row.summary)).collect();
        tally_projections::customers::reveal(self.store.as_ref(), &mut rows).await.map_err(|e| from_projection_error(&e))?;
        Ok(Response::new(pb::ListWalletsResponse {
            wallets: page
                .wallets
                .into_iter()
                .map(|row| {
                    let s = row.summary;
                    pb::WalletSummary {
                        wallet_id: row.wallet_id,
                        customer_ref: s.customer_ref,
                        customer_erased: s.customer_erased,
                        closed: s.closed,
                        balance: s.balance,
                        lifetime_earned: s.lifetime_earned,
                        lifetime_redeemed: s.lifetime_redeemed,
                        lifetime_reversed: s.lifetime_reversed,
                        lifetime_adjusted: s.lifetime_adjusted,
                        forfeited: s.forfeited,
                        enrolled_at: s.enrolled_at_ms.map(status::timestamp),
                        last_activity_at: Some(status::timestamp(s.last_activity_ms)),
                        events: s.events,
                    }
                })
                .collect(),
            next_page_token: page.next.map(|cursor| encode_token(order, &cursor)).unwrap_or_default(),
            as_of_position: page.as_of_position,
        }))
    }

    async fn program_stats(&self, request: Request<pb::ProgramStatsRequest>) -> Result<Response<pb::ProgramStatsResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let tenant = self.tenant(&extensions, &request.tenant_id).await?;
        let from = parse_day("from_day", &request.from_day)?;
        let to = parse_day("to_day", &request.to_day)?;
        if to < from {
            return Err(status::invalid("to_day", "is before from_day"));
        }
        if (to - from).whole_days() >= STATS_DAYS_MAX {
            return Err(status::invalid("to_day", &format!("the range spans more than {STATS_DAYS_MAX} days")));
        }
        let ProgramStats { days, totals, as_of_position } =
            self.model()?.program_stats(tenant.as_str(), from, to).await.map_err(|e| from_projection_error(&e))?;
        Ok(Response::new(pb::ProgramStatsResponse {
            days: days.iter().map(|(day, stats)| day_stats(format_day(*day), stats)).collect(),
            totals: Some(day_stats(String::new(), &totals)),
            as_of_position,
        }))
    }

    async fn liability(&self, request: Request<pb::LiabilityRequest>) -> Result<Response<pb::LiabilityResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let tenant = self.tenant(&extensions, &request.tenant_id).await?;
        let (liability, as_of_position) = self.model()?.liability(tenant.as_str()).await.map_err(|e| from_projection_error(&e))?;
        Ok(Response::new(pb::LiabilityResponse {
            outstanding_points: liability.outstanding_points,
            negative_points: liability.negative_points,
            wallets: liability.wallets,
            as_of_position,
        }))
    }
}

#[derive(Debug, Clone)]
pub struct ProjectionsApi {
    projections: Vec<Arc<Projection>>,
}

impl ProjectionsApi {
    pub fn new(read: &ReadSide) -> Self {
        Self { projections: read.projections.clone() }
    }
}

fn progress_message(name: &str, progress: &RebuildProgress) -> pb::RebuildProgress {
    let (phase, error) = match &progress.phase {
        RebuildPhase::Replaying => ("replaying", String::new()),
        RebuildPhase::Swapping => ("swapping", String::new()),
        RebuildPhase::Done => ("done", String::new()),
        RebuildPhase::Failed { error } => ("failed", error.clone()),
        RebuildPhase::Cancelled => ("cancelled", String::new()),
    };
    pb::RebuildProgress {
        name: name.to_owned(),
        generation: progress.generation,
        checkpoint: progress.checkpoint,
        log_head: progress.head,
        events_per_second: progress.events_per_second,
        phase: phase.to_owned(),
        error,
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::RebuildProgress, Status>> + Send>>;

#[tonic::async_trait]
impl ProjectionsService for ProjectionsApi {
    async fn list_projections(&self, _: Request<pb::ListProjectionsRequest>) -> Result<Response<pb::ListProjectionsResponse>, Status> {
        let now = SystemClock.now_ms();
        let projections = self
            .projections
            .iter()
            .map(|projection| {
                let s = projection.status();
                let (state, error) = match &s.state {
                    RunState::Starting => ("starting", String::new()),
                    RunState::Running => ("running", String::new()),
                    RunState::Standby => ("standby", String::new()),
                    RunState::Retrying { error } => ("retrying", error.clone()),
                    RunState::Failed { error } => ("failed", error.clone()),
                    RunState::Stopped => ("stopped", String::new()),
                };
                pb::ProjectionStatus {
                    name: s.name.to_owned(),
                    generation: s.generation,
                    checkpoint: s.checkpoint,
                    log_head: s.head,
                    lag_events: s.lag_events(),
                    lag_ms: s.lag_ms(now),
                    state: state.to_owned(),
                    error,
                    events_applied: s.events_applied,
                    lag_p50_ms: s.lag_p50_ms.unwrap_or(0),
                    lag_p99_ms: s.lag_p99_ms.unwrap_or(0),
                    rebuild: s.rebuild.as_ref().map(|p| progress_message(s.name, p)),
                    quarantined_events: s.quarantined,
                    recent_quarantined: s
                        .recent_quarantined
                        .iter()
                        .map(|q| pb::QuarantinedEvent {
                            position: q.position,
                            stream: q.stream.clone(),
                            event_type: q.event_type.clone(),
                            reason: q.reason.clone(),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(pb::ListProjectionsResponse { projections }))
    }

    type RebuildProjectionStream = ProgressStream;

    async fn rebuild_projection(&self, request: Request<pb::RebuildProjectionRequest>) -> Result<Response<ProgressStream>, Status> {
        let name = request.into_inner().name;
        let projection = self.projections.iter().find(|p| p.name() == name).ok_or_else(|| {
            let known: Vec<&str> = self.projections.iter().map(|p| p.name()).collect();
            Status::not_found(format!("no projection {name:?}; this server runs {}", known.join(", ")))
        })?;
        let progress = projection.rebuild().await.map_err(|e| from_projection_error(&e))?;
        let name = projection.name();
        // Ends after the final phase; dropping the stream (the client went away) drops the receiver,
        // which cancels the rebuild.
        let stream = futures::stream::unfold((progress, true, false), move |(mut progress, first, finished)| async move {
            if finished || (!first && progress.changed().await.is_err()) {
                return None;
            }
            let current = progress.borrow_and_update().clone();
            let finished = current.is_finished();
            Some((Ok(progress_message(name, &current)), (progress, false, finished)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
