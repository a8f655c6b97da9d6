//! `tally keys create|list|revoke`: API keys through a running server's `KeysService`.

use std::fmt::Write as _;

use serde::Serialize;
use tally_proto::v1 as pb;
use tally_proto::v1::keys_service_client::KeysServiceClient;

use tally_engine::actors::{CommandMeta, KeyBook};
use tally_engine::domain::TenantId;
use tally_engine::domain::access::{KeyCommand, Roles, Scope};

use crate::cli::{KeysCommand, Target};
use crate::client::ClientError;
use crate::credentials::{self, Authed};
use crate::keys;

async fn connect(target: &Target) -> Result<KeysServiceClient<Authed>, ClientError> {
    credentials::connect(&target.server, target.key.bearer_for(&target.server)?)
        .await
        .map(KeysServiceClient::new)
        .map_err(|source| ClientError::Connect { server: target.server.clone(), source })
}

#[derive(Debug, Serialize)]
struct KeyView {
    key_id: String,
    tenant_id: String,
    roles: Vec<String>,
    label: String,
    created_at: String,
    created_by: String,
    expires_at: String,
    revoked_at: String,
    revoked_by: String,
}

fn time(t: Option<prost_types::Timestamp>) -> String {
    t.map(|t| t.to_string()).unwrap_or_default()
}

fn role_name(value: i32) -> String {
    pb::Role::try_from(value).map_or_else(|_| value.to_string(), |r| r.as_str_name().trim_start_matches("ROLE_").to_lowercase())
}

fn view(k: pb::ApiKey) -> KeyView {
    KeyView {
        key_id: k.key_id,
        tenant_id: k.tenant_id,
        roles: k.roles.into_iter().map(role_name).collect(),
        label: k.label,
        created_at: time(k.created_at),
        created_by: k.created_by,
        expires_at: time(k.expires_at),
        revoked_at: time(k.revoked_at),
        revoked_by: k.revoked_by,
    }
}

fn line(k: &KeyView) -> String {
    let tenant = if k.tenant_id.is_empty() { "(platform)" } else { &k.tenant_id };
    let mut out = format!("{}  {tenant}  {}  created {} by {}", k.key_id, k.roles.join(","), k.created_at, k.created_by);
    if !k.expires_at.is_empty() {
        let _ = write!(out, "  expires {}", k.expires_at);
    }
    if !k.revoked_at.is_empty() {
        let _ = write!(out, "  REVOKED {} by {}", k.revoked_at, k.revoked_by);
    }
    if !k.label.is_empty() {
        let _ = write!(out, "  \"{}\"", k.label);
    }
    out
}

fn wire_role(name: &str) -> Result<i32, ClientError> {
    pb::Role::from_str_name(&format!("ROLE_{}", name.trim().to_uppercase()))
        .filter(|r| *r != pb::Role::Unspecified)
        .map(|r| r as i32)
        .ok_or_else(|| {
            ClientError::Call(tonic::Status::invalid_argument(format!(
                "unknown role {name:?}: use pos, storefront, staff, operator, auditor or platform"
            )))
        })
}

/// Who made a change on the log directly, in the change and in its event's metadata.
const OFFLINE: &str = "offline";

fn offline_meta() -> CommandMeta {
    CommandMeta { principal: OFFLINE.into(), ..CommandMeta::default() }
}

/// Makes the key `request` describes on the log itself (`--store`), as "offline".
async fn create_on_log(book: &KeyBook, request: pb::CreateKeyRequest) -> Result<pb::CreateKeyResponse, ClientError> {
    let roles: Roles = request.roles.iter().filter_map(|r| pb::Role::try_from(*r).ok()).filter_map(keys::engine_role).collect();
    let scope = match request.tenant_id.as_str() {
        "" => Scope::Platform,
        t => Scope::Tenant(TenantId::parse(t).map_err(|e| ClientError::Direct(format!("--tenant: {e}")))?),
    };
    let client_cert_sha256 = match request.client_cert_pem.as_str() {
        "" => None,
        pem => Some(keys::client_certificate(pem, "--client-cert").map_err(ClientError::Direct)?),
    };
    let expires_at_ms = request.expires_at.map(|t| t.seconds.saturating_mul(1_000));
    let spec = keys::NewKey { scope, roles, label: request.label, expires_at_ms, client_cert_sha256 };
    keys::create(book, spec, OFFLINE, &offline_meta()).await.map_err(|e| ClientError::Direct(format!("on the log: {e}")))
}

/// Runs a key command through `--server`, or on `direct`, the log itself, when the command names one
/// (`--store`; the binary opens it).
pub async fn run(command: KeysCommand, direct: Option<&KeyBook>) -> Result<String, ClientError> {
    let json = match &command {
        KeysCommand::Create { target, .. } | KeysCommand::List { target, .. } | KeysCommand::Revoke { target, .. } => target.json,
    };
    let failed = |e: tally_engine::actors::KeysError| ClientError::Direct(format!("on the log: {e}"));
    match command {
        KeysCommand::Create { tenant, roles, label, expires_in_days, client_cert, target, .. } => {
            let client_cert_pem = match &client_cert {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| ClientError::Direct(format!("cannot read --client-cert {}: {e}", path.display())))?,
                None => String::new(),
            };
            let roles = roles.iter().map(|r| wire_role(r)).collect::<Result<Vec<_>, _>>()?;
            let expires_at = expires_in_days.map(|days| {
                let at = std::time::SystemTime::now() + std::time::Duration::from_secs(u64::from(days) * 86_400);
                prost_types::Timestamp::from(at)
            });
            let request = pb::CreateKeyRequest { tenant_id: tenant.unwrap_or_default(), roles, label, expires_at, client_cert_pem };
            let created = match direct {
                Some(book) => create_on_log(book, request).await?,
                None => connect(&target).await?.create_key(request).await.map_err(ClientError::Call)?.into_inner(),
            };
            let key = view(created.key.unwrap_or_default());
            if json {
                #[derive(Serialize)]
                struct Created {
                    key: KeyView,
                    token: String,
                }
                return Ok(serde_json::to_string_pretty(&Created { key, token: created.token }).expect("views serialize"));
            }
            Ok(format!("{}\ntoken (shown this once; send it as `authorization: Bearer <token>`):\n{}", line(&key), created.token))
        }
        KeysCommand::List { tenant, target, .. } => {
            let listed = match direct {
                Some(book) => {
                    let ring = book.ring();
                    let mut keys: Vec<_> = ring.keys().filter(|k| tenant.as_deref().is_none_or(|t| k.scope.tenant_str() == t)).collect();
                    keys.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then_with(|| a.key_id.cmp(&b.key_id)));
                    keys.into_iter().map(keys::api_key).collect()
                }
                None => {
                    let request = pb::ListKeysRequest { tenant_id: tenant.unwrap_or_default() };
                    connect(&target).await?.list_keys(request).await.map_err(ClientError::Call)?.into_inner().keys
                }
            };
            let keys: Vec<KeyView> = listed.into_iter().map(view).collect();
            if json {
                return Ok(serde_json::to_string_pretty(&keys).expect("views serialize"));
            }
            Ok(if keys.is_empty() { "no keys".to_owned() } else { keys.iter().map(line).collect::<Vec<_>>().join("\n") })
        }
        KeysCommand::Revoke { key_id, reason, target, .. } => {
            let revoked = match direct {
                Some(book) => {
                    let command = KeyCommand::Revoke { key_id: key_id.clone(), revoked_by: OFFLINE.into(), reason };
                    book.execute(&command, &offline_meta()).await.map_err(failed)?;
                    book.ring().get(&key_id).map(keys::api_key).unwrap_or_default()
                }
                None => connect(&target)
                    .await?
                    .revoke_key(pb::RevokeKeyRequest { key_id, reason })
                    .await
                    .map_err(ClientError::Call)?
                    .into_inner(),
            };
            let key = view(revoked);
            if json {
                return Ok(serde_json::to_string_pretty(&key).expect("views serialize"));
            }
            Ok(line(&key))
        }
    }
}
