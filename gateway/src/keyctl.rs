//! `tally keys create|list|revoke`: API keys through a running server's `KeysService`.

use std::fmt::Write as _;

use serde::Serialize;
use tally_proto::v1 as pb;
use tally_proto::v1::keys_service_client::KeysServiceClient;

use crate::cli::{KeysCommand, Target};
use crate::client::ClientError;
use crate::credentials::{self, Authed};

async fn connect(target: &Target) -> Result<KeysServiceClient<Authed>, ClientError> {
    credentials::connect(&target.server, target.key.bearer()?)
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

pub async fn run(command: KeysCommand) -> Result<String, ClientError> {
    match command {
        KeysCommand::Create { tenant, roles, label, expires_in_days, target } => {
            let roles = roles.iter().map(|r| wire_role(r)).collect::<Result<Vec<_>, _>>()?;
            let expires_at = expires_in_days.map(|days| {
                let at = std::time::SystemTime::now() + std::time::Duration::from_secs(u64::from(days) * 86_400);
                prost_types::Timestamp::from(at)
            });
            let request = pb::CreateKeyRequest { tenant_id: tenant.unwrap_or_default(), roles, label, expires_at };
            let reply = connect(&target).await?.create_key(request).await.map_err(ClientError::Call)?.into_inner();
            let key = view(reply.key.unwrap_or_default());
            if target.json {
                #[derive(Serialize)]
                struct Created {
                    key: KeyView,
                    token: String,
                }
                return Ok(serde_json::to_string_pretty(&Created { key, token: reply.token }).expect("views serialize"));
            }
            Ok(format!("{}\ntoken (shown this once; send it as `authorization: Bearer <token>`):\n{}", line(&key), reply.token))
        }
        KeysCommand::List { tenant, target } => {
            let request = pb::ListKeysRequest { tenant_id: tenant.unwrap_or_default() };
            let reply = connect(&target).await?.list_keys(request).await.map_err(ClientError::Call)?.into_inner();
            let keys: Vec<KeyView> = reply.keys.into_iter().map(view).collect();
            if target.json {
                return Ok(serde_json::to_string_pretty(&keys).expect("views serialize"));
            }
            Ok(if keys.is_empty() { "no keys".to_owned() } else { keys.iter().map(line).collect::<Vec<_>>().join("\n") })
        }
        KeysCommand::Revoke { key_id, reason, target } => {
            let reply = connect(&target).await?.revoke_key(pb::RevokeKeyRequest { key_id, reason }).await.map_err(ClientError::Call)?;
            let key = view(reply.into_inner());
            if target.json {
                return Ok(serde_json::to_string_pretty(&key).expect("views serialize"));
            }
            Ok(line(&key))
        }
    }
}
