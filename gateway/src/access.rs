//! Who may call what: every call but health checks and reflection carries an API key
//! (`authorization: Bearer tally_<key id>_<secret>`); `AuthLayer` authenticates it against the log's keys
//! (in memory, no store read) and lets the call through only if one of the key's roles is allowed the RPC
//! by [`POLICY`], which is the README's table "Who may call what" (a test holds the two together). An RPC
//! missing from the table is reachable by nobody: deny by default.
//!
//! The tenant a call acts on comes from its key: handlers ask [`acting_tenant`], which answers
//! PERMISSION_DENIED for a request naming another tenant before anything is read, so no call tells whether
//! another tenant or its wallets exist. Platform keys name the tenant they act on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tally_engine::actors::{KeyBook, Unauthenticated};
use tally_engine::domain::TenantId;
use tally_engine::domain::access::{Principal, Role, Roles, Scope};
use tally_engine::limits::ORDER_CLOCK_SKEW_MAX_MS;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::quota::Quotas;
use crate::status;

use Role::{Auditor, Operator, Platform, Pos, Staff, Storefront};

/// Each RPC (`package.Service/Method`) and the roles that may call it. Kept equal to the README's table.
pub const POLICY: &[(&str, &[Role])] = &[
    ("tally.v1.WalletService/Enroll", &[Pos, Storefront, Staff, Platform]),
    ("tally.v1.WalletService/Earn", &[Pos, Storefront, Platform]),
    ("tally.v1.WalletService/Redeem", &[Pos, Storefront, Platform]),
    ("tally.v1.WalletService/Adjust", &[Staff, Platform]),
    ("tally.v1.WalletService/Reverse", &[Staff, Platform]),
    ("tally.v1.WalletService/EarnForOrder", &[Pos, Storefront, Platform]),
    ("tally.v1.WalletService/RefundOrder", &[Pos, Storefront, Staff, Platform]),
    ("tally.v1.WalletService/AuthorizeRedemption", &[Pos, Storefront, Platform]),
    ("tally.v1.WalletService/CaptureRedemption", &[Pos, Storefront, Platform]),
    ("tally.v1.WalletService/VoidRedemption", &[Pos, Storefront, Platform]),
    ("tally.v1.WalletService/PurchaseCredits", &[Pos, Storefront, Platform]),
    ("tally.v1.WalletService/AddStamps", &[Pos, Storefront, Platform]),
    ("tally.v1.WalletService/RedeemReward", &[Pos, Storefront, Platform]),
    ("tally.v1.WalletService/CancelRedemption", &[Pos, Storefront, Staff, Platform]),
    ("tally.v1.WalletService/TransferPoints", &[Storefront, Staff, Platform]),
    ("tally.v1.WalletService/AttachIdentifier", &[Pos, Storefront, Staff, Platform]),
    ("tally.v1.WalletService/DetachIdentifier", &[Storefront, Staff, Operator, Platform]),
    ("tally.v1.WalletService/FindWallet", &[Pos, Storefront, Staff, Platform]),
    ("tally.v1.WalletService/Close", &[Staff, Platform]),
    ("tally.v1.WalletService/EraseCustomer", &[Operator, Platform]),
    ("tally.v1.WalletService/GetWallet", &[Pos, Storefront, Staff, Auditor, Platform]),
    ("tally.v1.WalletService/ListTransactions", &[Storefront, Staff, Auditor, Platform]),
    ("tally.v1.AdminService/CreateProgram", &[Platform]),
    ("tally.v1.AdminService/PublishRules", &[Operator, Platform]),
    ("tally.v1.AdminService/GetProgram", &[Operator, Auditor, Platform]),
    ("tally.v1.AdminService/ListRuleVersions", &[Operator, Auditor, Platform]),
    ("tally.v1.AdminService/DefineCreditPackage", &[Operator, Platform]),
    ("tally.v1.AdminService/SetExpiryPolicy", &[Operator, Platform]),
    ("tally.v1.AdminService/SetPendingPeriod", &[Operator, Platform]),
    ("tally.v1.AdminService/SetRefundWindow", &[Operator, Platform]),
    ("tally.v1.AdminService/DefineTiers", &[Operator, Platform]),
    ("tally.v1.AdminService/DefineStampCard", &[Operator, Platform]),
    ("tally.v1.AdminService/SimulateOrder", &[Pos, Storefront, Operator, Platform]),
    ("tally.v1.AdminService/DefineReward", &[Operator, Platform]),
    ("tally.v1.AdminService/RestockReward", &[Operator, Platform]),
    ("tally.v1.AdminService/ListRewards", &[Pos, Storefront, Operator, Auditor, Platform]),
    ("tally.v1.AdminService/ListFlows", &[Operator, Platform]),
    ("tally.v1.AdminService/SetTransferPolicy", &[Operator, Platform]),
    ("tally.v1.AdminService/SetReferralPolicy", &[Operator, Platform]),
    ("tally.v1.ReportingService/ListWallets", &[Operator, Auditor, Platform]),
    ("tally.v1.ReportingService/ProgramStats", &[Operator, Auditor, Platform]),
    ("tally.v1.ReportingService/Liability", &[Operator, Auditor, Platform]),
    ("tally.v1.ProjectionsService/ListProjections", &[Platform]),
    ("tally.v1.ProjectionsService/RebuildProjection", &[Platform]),
    ("tally.v1.KeysService/CreateKey", &[Operator, Platform]),
    ("tally.v1.KeysService/ListKeys", &[Operator, Platform]),
    ("tally.v1.KeysService/RevokeKey", &[Operator, Platform]),
    ("tally.v1.ClusterService/GetClusterStatus", &[Platform]),
    ("tally.v1.AuditService/WalletAsOf", &[Auditor, Platform]),
    ("tally.v1.AuditService/ProgramAsOf", &[Auditor, Platform]),
    ("tally.v1.AuditService/WalletChanges", &[Auditor, Platform]),
    ("tally.v1.AuditService/ExportLedger", &[Auditor, Platform]),
    ("tally.v1.AuditService/VerifyLog", &[Auditor, Platform]),
];

/// Services anyone may call: load balancers' health checks, and reflection (the schema is public).
const OPEN_SERVICES: &[&str] =
    &["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// The roles allowed `rpc` (`package.Service/Method`); none if the table does not list it.
pub fn allowed(rpc: &str) -> &'static [Role] {
    POLICY.iter().find(|(name, _)| *name == rpc).map_or(&[], |(_, roles)| roles)
}

/// How calls are authenticated.
#[derive(Debug, Clone)]
pub enum Access {
    /// By the log's keys.
    Keys(Arc<KeyBook>),
    /// Not at all: every caller is the platform. Only on a loopback address, by an explicit flag
    /// (`--insecure-no-auth`), for measurements and local experiments.
    Open,
}

/// The key id of every caller of a server run without keys (no key has it: ids are hex).
const OPEN_PRINCIPAL: &str = "none";

/// The principal of an unauthenticated server (`Access::Open`).
fn anyone() -> Principal {
    Principal { key_id: OPEN_PRINCIPAL.into(), scope: Scope::Platform, roles: [Platform].into_iter().collect() }
}

#[derive(Debug, Clone)]
pub struct AuthLayer {
    access: Access,
    quotas: Arc<Quotas>,
}

impl AuthLayer {
    /// Authenticates by `access`, then holds each admitted principal to its rates in `quotas`.
    pub fn new(access: Access, quotas: Arc<Quotas>) -> Self {
        Self { access, quotas }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated { inner, access: self.access.clone(), quotas: Arc::clone(&self.quotas) }
    }
}

#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    access: Access,
    quotas: Arc<Quotas>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why a call was refused, for the metric and the server's log (never the caller: see `AuthFailure`).
fn refused(reason: &'static str) {
    metrics::counter!("tally_auth_refused_total", "reason" => reason).increment(1);
}

impl<S> Authenticated<S> {
    /// The principal of `request` to `rpc`, or the status refusing it.
    fn admit<B>(&self, rpc: &str, request: &http::Request<B>) -> Result<Principal, Status> {
        let principal = match &self.access {
            Access::Open => anyone(),
            Access::Keys(keys) => {
                let header = request.headers().get(http::header::AUTHORIZATION);
                let token = header.and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
                // Without a token, a client certificate bound to a key (mutual TLS) speaks for it.
                let certificate = || {
                    let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
                    info.peer_certs().and_then(|certs| certs.first().map(|c| keys.authenticate_certificate(c.as_ref())))
                };
                let outcome = match token {
                    Some(token) => keys.authenticate(token.trim()),
                    None => match certificate() {
                        Some(outcome) => outcome,
                        None => {
                            refused("no_key");
                            return Err(Status::unauthenticated("an API key is required: metadata `authorization: Bearer tally_…`"));
                        }
                    },
                };
                match outcome {
                    Ok(principal) => principal,
                    Err(Unauthenticated::Refused(failure)) => {
                        refused("bad_key");
                        tracing::debug!(rpc, %failure, "call refused: its API key does not authenticate");
                        return Err(Status::unauthenticated("the API key is unknown, revoked or expired"));
                    }
                    Err(Unauthenticated::KeysUnavailable(reason)) => {
                        refused("keys_unavailable");
                        tracing::error!(rpc, %reason, "call refused: the log's keys cannot be read");
                        return Err(Status::unavailable("keys cannot be checked right now; retry later"));
                    }
                }
            }
        };
        if !principal.roles.any(allowed(rpc)) {
            refused("role");
            return Err(Status::permission_denied(format!("the key's roles ({}) may not call {rpc}", role_names(principal.roles))));
        }
        Ok(principal)
    }
}

fn role_names(roles: Roles) -> String {
    roles.iter().map(Role::name).collect::<Vec<_>>().join(",")
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let rpc = request.uri().path().trim_start_matches('/');
        let service = rpc.split_once('/').map_or(rpc, |(service, _)| service);
        if !OPEN_SERVICES.contains(&service) {
            match self.admit(rpc, &request).and_then(|principal| self.quotas.admit(&principal).map(|()| principal)) {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                }
                Err(status) => {
                    let refusal = status.into_http();
                    return Box::pin(async move { Ok(refusal) });
                }
            }
        }
        Box::pin(self.inner.call(request))
    }
}

/// The principal that [`AuthLayer`] attached to a call (UNAUTHENTICATED without one: a handler reached
/// some other way lets nobody in).
pub fn principal(extensions: &tonic::Extensions) -> Result<&Principal, Status> {
    extensions.get::<Principal>().ok_or_else(|| Status::unauthenticated("an API key is required"))
}

/// The principal as events record it (`principal`, `principal_roles` of their metadata): the key id, or
/// "none" on a server run without keys (`--insecure-no-auth`).
pub fn recorded_principal(extensions: &tonic::Extensions) -> tally_engine::store::EventMetadata {
    let mut meta = tally_engine::store::EventMetadata::default();
    if let Some(principal) = extensions.get::<Principal>() {
        meta.principal = principal.key_id.clone();
        meta.principal_roles = role_names(principal.roles);
    }
    meta
}

/// A staff key's changes name the staff member who made them (metadata `x-staff-id`, or Adjust's
/// `staff_ref`): the key says which counter, the id says who stood at it.
pub fn staff_named(extensions: &tonic::Extensions, staff_id: &str) -> Result<(), Status> {
    let roles = principal(extensions)?.roles;
    if roles.contains(Staff) && !roles.contains(Platform) && staff_id.is_empty() {
        return Err(status::invalid("x-staff-id", "a staff key's changes name the staff member: metadata x-staff-id (or staff_ref)"));
    }
    Ok(())
}

/// Whether the caller is anyone at all, on a server run without keys.
pub fn is_open(principal: &Principal) -> bool {
    principal.key_id == OPEN_PRINCIPAL
}

/// Whether the caller may send an order placed at `placed_at_ms`: a till that was offline sends its
/// orders late, so POS keys (and the platform) may backdate one as far as the engine allows (7 days);
/// any other key may send a placement time only within `ORDER_CLOCK_SKEW_MAX_MS` of now (by the system
/// clock), since the time chooses the rules in force and the cap periods an order counts in.
pub fn may_place_at(extensions: &tonic::Extensions, placed_at_ms: Option<i64>) -> Result<(), Status> {
    let roles = principal(extensions)?.roles;
    let Some(placed_at_ms) = placed_at_ms.filter(|_| !roles.any(&[Pos, Platform])) else {
        return Ok(());
    };
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    if placed_at_ms < now_ms.saturating_sub(ORDER_CLOCK_SKEW_MAX_MS) {
        let skew = ORDER_CLOCK_SKEW_MAX_MS / 60_000;
        return Err(Status::permission_denied(format!(
            "order.placed_at: only a POS key may backdate an order; this key's orders must be placed within {skew} minutes of now"
        )));
    }
    Ok(())
}

/// The tenant a call acts on: its key's tenant (a request may leave `tenant_id` empty or name that
/// tenant; naming another is PERMISSION_DENIED), or for a platform key the tenant the request names.
pub fn acting_tenant(extensions: &tonic::Extensions, named: &str) -> Result<TenantId, Status> {
    match &principal(extensions)?.scope {
        Scope::Tenant(own) if named.is_empty() || named == own.as_str() => Ok(own.clone()),
        Scope::Tenant(_) => Err(Status::permission_denied("the API key acts for another tenant than the request's tenant_id")),
        Scope::Platform => TenantId::parse(named).map_err(|e| status::from_field_error(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_every_service_is_in_the_table_once() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(tally_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut rpcs: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| (f.package(), s)))
            .flat_map(|(package, s)| s.method.iter().map(move |m| format!("{package}.{}/{}", s.name(), m.name())))
            .collect();
        rpcs.sort();
        let mut listed: Vec<String> = POLICY.iter().map(|(rpc, _)| (*rpc).to_owned()).collect();
        listed.sort();
        assert_eq!(listed, rpcs, "POLICY lists exactly the RPCs the protos declare");
        assert!(POLICY.iter().all(|(_, roles)| roles.contains(&Platform)), "the platform role may call every RPC");
    }

    #[test]
    fn an_rpc_missing_from_the_table_is_for_nobody() {
        assert!(allowed("tally.v1.WalletService/Teleport").is_empty());
        assert!(allowed("").is_empty());
    }

    #[test]
    fn the_tenant_comes_from_the_key() {
        let acme = TenantId::parse("acme").unwrap();
        let mut extensions = tonic::Extensions::new();
        assert_eq!(acting_tenant(&extensions, "acme").unwrap_err().code(), tonic::Code::Unauthenticated);
        extensions.insert(Principal { key_id: "k".into(), scope: Scope::Tenant(acme.clone()), roles: [Pos].into_iter().collect() });
        assert_eq!(acting_tenant(&extensions, "acme").unwrap(), acme);
        assert_eq!(acting_tenant(&extensions, "").unwrap(), acme);
        assert_eq!(acting_tenant(&extensions, "globex").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(acting_tenant(&extensions, "not a tenant!").unwrap_err().code(), tonic::Code::PermissionDenied);
        extensions.insert(anyone());
        assert_eq!(acting_tenant(&extensions, "globex").unwrap().as_str(), "globex");
        assert_eq!(acting_tenant(&extensions, "").unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
