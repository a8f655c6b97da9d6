//! `AdminService`: programs and their rules over gRPC, and `SimulateOrder`, which runs an order through
//! the rules in force when it was placed without touching any wallet.

use std::sync::Arc;

use tally_engine::actors::{Flows, ProgramBook, ProgramError, ProgramOutcome};
use tally_engine::domain::program::{ProgramCommand, ProgramCommandBody, ProgramRejection, ProgramState, RuleVersion};
use tally_engine::domain::{ReturnPolicy, TenantId};
use tally_proto::v1 as pb;
use tally_proto::v1::admin_service_server::AdminService;
use tonic::metadata::MetadataMap;
use tonic::{Code, Extensions, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::limits::RULE_VERSIONS_PAGE_BYTES_MAX;
use crate::service::command_meta;
use crate::{access, orders, rewards, status};

#[derive(Debug, Clone)]
pub struct AdminApi {
    programs: Arc<ProgramBook>,
    flows: Flows,
}

impl AdminApi {
    pub fn new(programs: Arc<ProgramBook>, flows: Flows) -> Self {
        Self { programs, flows }
    }
}

fn from_program_error(error: &ProgramError) -> Status {
    match error {
        ProgramError::Rejected(rejection) => match rejection {
            ProgramRejection::InvalidField(field) => status::from_field_error(field),
            ProgramRejection::InvalidRules(rule) => Status::with_error_details(
                Code::InvalidArgument,
                format!("invalid rules_json: {rule}"),
                ErrorDetails::with_bad_request_violation("rules_json", rule.to_string()),
            ),
            ProgramRejection::NotCreated => Status::not_found("no program for this tenant; create it with CreateProgram"),
            ProgramRejection::AlreadyCreated | ProgramRejection::IdempotencyKeyReused { .. } => {
                Status::already_exists(rejection.to_string())
            }
            ProgramRejection::TooManyTenants { .. } => Status::resource_exhausted(rejection.to_string()),
            ProgramRejection::TooManyRulesVersions { retry_after_ms, .. } => status::quota_exhausted(
                rejection.to_string(),
                "rules versions",
                std::time::Duration::from_millis(retry_after_ms.unsigned_abs()),
            ),
        },
        ProgramError::Store(store) => status::from_store_error(store),
        ProgramError::Order(rejection) => status::from_rejection(rejection),
        ProgramError::Codec(codec) => {
            tracing::error!(error = %codec, "stored program event cannot be decoded");
            Status::data_loss(format!("program history cannot be read: {codec}"))
        }
    }
}

/// A program as the wire shows it; `replayed`: the rules version a repeated request's first call left.
pub(crate) fn program_response(tenant: &TenantId, state: &ProgramState, replayed: Option<u32>) -> pb::ProgramResponse {
    pb::ProgramResponse {
        tenant_id: tenant.as_str().to_owned(),
        name: state.name.clone(),
        utc_offset_minutes: state.utc_offset_minutes,
        return_policy: state.return_policy.into(),
        // A replay answers with what the first call left.
        rules_version: replayed.unwrap_or_else(|| state.current_rules().map_or(0, |v| v.version)),
        replayed: replayed.is_some(),
        credit_packages: state
            .packages
            .values()
            .map(|p| pb::CreditPackage {
                package_id: p.package_id.clone(),
                name: p.name.clone(),
                price: p.price.clone(),
                points: p.points,
                active: p.active,
            })
            .collect(),
        expiry_policy: Some(state.expiry),
        pending_days: state.pending_days,
        refund_window_days: state.refund_window_days(),
        tiers: state.tiers.levels.to_vec(),
        tier_window: state.tiers.window as i32,
        tier_grace_days: state.tiers.grace_days,
        stamp_cards: state.stamp_cards.values().cloned().collect(),
        rewards: state.rewards.values().cloned().collect(),
        transfer_policy: Some(state.transfers.clone()),
        referral_policy: Some(state.referrals.clone()),
    }
}

pub(crate) fn rule_version(v: &RuleVersion) -> pb::RuleVersion {
    pb::RuleVersion {
        version: v.version,
        effective_from: Some(status::timestamp(v.effective_from_ms)),
        published_by: v.published_by.clone(),
        rules_json: v.rules_json.to_string(),
    }
}

impl AdminApi {
    async fn execute(
        &self,
        (tenant, metadata, extensions): (TenantId, &MetadataMap, &Extensions),
        key: String,
        body: ProgramCommandBody,
    ) -> Result<Response<pb::ProgramResponse>, Status> {
        let meta = command_meta(metadata, extensions)?;
        let command = ProgramCommand { idempotency_key: key, body };
        let ProgramOutcome { state, replayed } =
            self.programs.execute(&tenant, &command, &meta).await.map_err(|e| from_program_error(&e))?;
        Ok(Response::new(program_response(&tenant, &state, replayed)))
    }

    async fn existing(&self, tenant: TenantId) -> Result<(TenantId, ProgramState), Status> {
        let state = self.programs.get(&tenant).await.map_err(|e| from_program_error(&e))?;
        if !state.created {
            return Err(from_program_error(&ProgramError::Rejected(ProgramRejection::NotCreated)));
        }
        Ok((tenant, state))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_program(&self, request: Request<pb::CreateProgramRequest>) -> Result<Response<pb::ProgramResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        let return_policy = ReturnPolicy::try_from(r.return_policy).map_err(|_| status::invalid("return_policy", "unknown policy"))?;
        self.execute(
            (tenant, &metadata, &extensions),
            r.idempotency_key,
            ProgramCommandBody::Create { name: r.name, utc_offset_minutes: r.utc_offset_minutes, return_policy },
        )
        .await
    }

    async fn publish_rules(&self, request: Request<pb::PublishRulesRequest>) -> Result<Response<pb::ProgramResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        self.execute(
            (tenant, &metadata, &extensions),
            r.idempotency_key,
            ProgramCommandBody::PublishRules { rules_json: r.rules_json, published_by: r.published_by },
        )
        .await
    }

    async fn define_credit_package(
        &self,
        request: Request<pb::DefineCreditPackageRequest>,
    ) -> Result<Response<pb::ProgramResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        let package = r.package.ok_or_else(|| status::invalid("package", "is required"))?;
        let price = package.price.ok_or_else(|| status::invalid("package.price", "is required"))?;
        let body = ProgramCommandBody::DefinePackage {
            package_id: package.package_id,
            name: package.name,
            price,
            points: package.points,
            active: package.active,
        };
        self.execute((tenant, &metadata, &extensions), r.idempotency_key, body).await
    }

    async fn set_expiry_policy(&self, request: Request<pb::SetExpiryPolicyRequest>) -> Result<Response<pb::ProgramResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        let body = ProgramCommandBody::SetExpiryPolicy { policy: r.policy.unwrap_or_default(), set_by: r.set_by };
        self.execute((tenant, &metadata, &extensions), r.idempotency_key, body).await
    }

    async fn set_pending_period(&self, request: Request<pb::SetPendingPeriodRequest>) -> Result<Response<pb::ProgramResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        self.execute(
            (tenant, &metadata, &extensions),
            r.idempotency_key,
            ProgramCommandBody::SetPendingPeriod { days: r.days, set_by: r.set_by },
        )
        .await
    }

    async fn set_refund_window(&self, request: Request<pb::SetRefundWindowRequest>) -> Result<Response<pb::ProgramResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        self.execute(
            (tenant, &metadata, &extensions),
            r.idempotency_key,
            ProgramCommandBody::SetRefundWindow { days: r.days, set_by: r.set_by },
        )
        .await
    }

    async fn set_transfer_policy(&self, request: Request<pb::SetTransferPolicyRequest>) -> Result<Response<pb::ProgramResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        let policy = pb::TransferPolicySet {
            allowed: r.allowed,
            max_points_per_transfer: r.max_points_per_transfer,
            max_points_per_day: r.max_points_per_day,
            set_by: r.set_by,
        };
        self.execute((tenant, &metadata, &extensions), r.idempotency_key, ProgramCommandBody::SetTransferPolicy { policy }).await
    }

    async fn set_referral_policy(&self, request: Request<pb::SetReferralPolicyRequest>) -> Result<Response<pb::ProgramResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        let policy = pb::ReferralPolicySet {
            enabled: r.enabled,
            referrer_points: r.referrer_points,
            referee_points: r.referee_points,
            min_order_minor: r.min_order_minor,
            currency: r.currency,
            set_by: r.set_by,
            convert_within_days: r.convert_within_days,
            max_rewards_per_referrer: r.max_rewards_per_referrer,
        };
        self.execute((tenant, &metadata, &extensions), r.idempotency_key, ProgramCommandBody::SetReferralPolicy { policy }).await
    }

    async fn define_tiers(&self, request: Request<pb::DefineTiersRequest>) -> Result<Response<pb::ProgramResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        let window = pb::TierWindow::try_from(r.window).map_err(|_| status::invalid("window", "unknown window"))?;
        let body = ProgramCommandBody::DefineTiers { tiers: r.tiers, window, grace_days: r.grace_days, set_by: r.set_by };
        self.execute((tenant, &metadata, &extensions), r.idempotency_key, body).await
    }

    async fn define_stamp_card(&self, request: Request<pb::DefineStampCardRequest>) -> Result<Response<pb::ProgramResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        let card = r.card.ok_or_else(|| status::invalid("card", "is required"))?;
        self.execute((tenant, &metadata, &extensions), r.idempotency_key, ProgramCommandBody::DefineStampCard { card }).await
    }

    async fn define_reward(&self, request: Request<pb::DefineRewardRequest>) -> Result<Response<pb::ProgramResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        let reward = r.reward.ok_or_else(|| status::invalid("reward", "is required"))?;
        self.execute((tenant, &metadata, &extensions), r.idempotency_key, ProgramCommandBody::DefineReward { reward }).await
    }

    async fn restock_reward(&self, request: Request<pb::RestockRewardRequest>) -> Result<Response<pb::RewardStock>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let (tenant, _) = self.existing(access::acting_tenant(&extensions, &r.tenant_id)?).await?;
        let meta = command_meta(&metadata, &extensions)?;
        Ok(Response::new(rewards::restock(&self.flows, &self.programs, &tenant, r, meta).await?))
    }

    async fn list_rewards(&self, request: Request<pb::ListRewardsRequest>) -> Result<Response<pb::ListRewardsResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let (tenant, _) = self.existing(access::acting_tenant(&extensions, &r.tenant_id)?).await?;
        Ok(Response::new(rewards::list(&self.flows, &self.programs, &tenant).await?))
    }

    async fn list_flows(&self, request: Request<pb::ListFlowsRequest>) -> Result<Response<pb::ListFlowsResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        Ok(Response::new(rewards::list_flows(&self.flows, &tenant, r.stuck_only)))
    }

    async fn get_program(&self, request: Request<pb::GetProgramRequest>) -> Result<Response<pb::ProgramResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let (tenant, state) = self.existing(access::acting_tenant(&extensions, &r.tenant_id)?).await?;
        Ok(Response::new(program_response(&tenant, &state, None)))
    }

    async fn list_rule_versions(
        &self,
        request: Request<pb::ListRuleVersionsRequest>,
    ) -> Result<Response<pb::ListRuleVersionsResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        let (_, state) = self.existing(tenant).await?;
        let from = match r.page_token.as_str() {
            "" => 1,
            token => token
                .strip_prefix('v')
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|v| *v >= 1)
                .ok_or_else(|| status::invalid("page_token", "not a token from a previous response"))?,
        };
        let page_size = if r.page_size == 0 { usize::MAX } else { r.page_size as usize };
        let (mut versions, mut bytes, mut next_page_token) = (Vec::new(), 0, String::new());
        for v in state.rule_versions.iter().filter(|v| v.version >= from) {
            let version = rule_version(v);
            bytes += prost::Message::encoded_len(&version);
            if versions.len() == page_size || (bytes > RULE_VERSIONS_PAGE_BYTES_MAX && !versions.is_empty()) {
                next_page_token = format!("v{}", v.version);
                break;
            }
            versions.push(version);
        }
        Ok(Response::new(pb::ListRuleVersionsResponse { versions, next_page_token }))
    }

    async fn simulate_order(&self, request: Request<pb::SimulateOrderRequest>) -> Result<Response<pb::SimulateOrderResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let tenant = access::acting_tenant(&extensions, &r.tenant_id)?;
        let order = orders::from_wire(r.order)?;
        let tier = (!r.customer_tier.is_empty()).then_some(r.customer_tier.as_str());
        let quote = self.programs.quote_order(&tenant, &order, tier, r.previous_orders).await.map_err(|e| from_program_error(&e))?;
        let awards = quote.awards.iter().map(orders::award).collect();
        Ok(Response::new(pb::SimulateOrderResponse { awards, total_points: quote.points, rules_version: quote.rules_version }))
    }
}
