//! `KeysService`: API keys over gRPC, and the first start's platform key.
//!
//! A token is made here (the engine stays free of randomness): 8 random bytes of key id and 32 of
//! secret from the thread's CSPRNG, written as hex; the log keeps only the secret's SHA-256.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rand::RngCore;
use tally_engine::actors::{CommandMeta, KeyBook, KeysError};
use tally_engine::domain::access::{
    KEY_ID_HEX_DIGITS, KEY_SECRET_HEX_DIGITS, KeyCommand, KeyRecord, KeyRejection, Principal, Role, Roles, Scope, secret_sha256, token,
};
use tally_proto::v1 as pb;
use tally_proto::v1::keys_service_server::KeysService;
use tonic::{Request, Response, Status};

use crate::service::command_meta;
use crate::{access, status};

/// The file in the data directory where the first start writes the platform key's token.
pub const PLATFORM_KEY_FILE: &str = "platform.key";

/// A new key id and secret, as lowercase hex.
fn new_secret() -> (String, String) {
    let hex = |n: usize| {
        let mut bytes = vec![0u8; n / 2];
        rand::rng().fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    (hex(KEY_ID_HEX_DIGITS), hex(KEY_SECRET_HEX_DIGITS))
}

fn from_keys_error(error: &KeysError) -> Status {
    match error {
        KeysError::Rejected(KeyRejection::InvalidField(field)) => status::from_field_error(field),
        KeysError::Rejected(rejection @ KeyRejection::DuplicateId(_)) => Status::aborted(format!("{rejection}; retry")),
        KeysError::Rejected(rejection @ KeyRejection::NotFound(_)) => Status::not_found(rejection.to_string()),
        KeysError::Rejected(rejection @ KeyRejection::CertificateTaken(_)) => Status::already_exists(rejection.to_string()),
        KeysError::Rejected(rejection @ KeyRejection::TooManyKeys { .. }) => Status::resource_exhausted(rejection.to_string()),
        KeysError::Store(store) => status::from_store_error(store),
        KeysError::Codec(_) | KeysError::Damaged(_) => {
            tracing::error!(%error, "the log's keys cannot be read");
            Status::data_loss(format!("the log's keys cannot be read: {error}"))
        }
    }
}

fn role(role: Role) -> pb::Role {
    match role {
        Role::Pos => pb::Role::Pos,
        Role::Storefront => pb::Role::Storefront,
        Role::Staff => pb::Role::Staff,
        Role::Operator => pb::Role::Operator,
        Role::Auditor => pb::Role::Auditor,
        Role::Platform => pb::Role::Platform,
    }
}

/// The engine's role of a wire role (none for ROLE_UNSPECIFIED).
pub fn engine_role(role: pb::Role) -> Option<Role> {
    Some(match role {
        pb::Role::Pos => Role::Pos,
        pb::Role::Storefront => Role::Storefront,
        pb::Role::Staff => Role::Staff,
        pb::Role::Operator => Role::Operator,
        pb::Role::Auditor => Role::Auditor,
        pb::Role::Platform => Role::Platform,
        pb::Role::Unspecified => return None,
    })
}

fn from_wire_role(value: i32) -> Result<Role, Status> {
    pb::Role::try_from(value).ok().and_then(engine_role).ok_or_else(|| status::invalid("roles", &format!("{value} is not a role")))
}

pub fn api_key(key: &KeyRecord) -> pb::ApiKey {
    let at = |ms: i64| Some(status::timestamp(ms));
    pb::ApiKey {
        key_id: key.key_id.clone(),
        tenant_id: key.scope.tenant_str().to_owned(),
        roles: key.roles.iter().map(|r| role(r) as i32).collect(),
        label: key.label.clone(),
        created_at: at(key.created_at_ms),
        created_by: key.created_by.clone(),
        expires_at: key.expires_at_ms.and_then(at),
        revoked_at: key.revoked.as_ref().and_then(|r| at(r.at_ms)),
        revoked_by: key.revoked.as_ref().map(|r| r.by.clone()).unwrap_or_default(),
        client_cert_sha256: key.client_cert_sha256.map(|h| h.iter().map(|b| format!("{b:02x}")).collect()).unwrap_or_default(),
    }
}

/// The roles a tenant's operator may give the keys it creates: its tenant's devices, staff and auditors.
/// Operator keys come from the platform, so a stolen operator key can neither copy itself nor lock the
/// tenant's other operators out.
const OPERATOR_GRANTS: &[Role] = &[Role::Pos, Role::Storefront, Role::Staff, Role::Auditor];

fn grantable_by_operator(roles: Roles) -> bool {
    roles.iter().all(|r| OPERATOR_GRANTS.contains(&r))
}

/// Whether `principal` may revoke `key`: platform keys any, operators their tenant's keys of the roles
/// they may grant.
fn manages(principal: &Principal, key: &KeyRecord) -> bool {
    principal.scope == Scope::Platform || (principal.scope == key.scope && grantable_by_operator(key.roles))
}

/// Keys are not made or revoked on a server run without keys: anyone could make themselves a platform key
/// that would outlive the experiment.
fn refuse_when_open(principal: &Principal) -> Result<(), Status> {
    if access::is_open(principal) {
        return Err(Status::failed_precondition(
            "this server runs without API keys (--insecure-no-auth): keys are made and revoked only on servers that check them",
        ));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct KeysApi {
    keys: Arc<KeyBook>,
}

impl KeysApi {
    pub fn new(keys: Arc<KeyBook>) -> Self {
        Self { keys }
    }
}

#[tonic::async_trait]
impl KeysService for KeysApi {
    async fn create_key(&self, request: Request<pb::CreateKeyRequest>) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let principal = access::principal(&extensions)?;
        let meta = command_meta(&metadata, &extensions)?;
        refuse_when_open(principal)?;
        let roles = r.roles.iter().map(|r| from_wire_role(*r)).collect::<Result<Roles, _>>()?;
        let scope = if roles.contains(Role::Platform) && r.tenant_id.is_empty() {
            if principal.scope != Scope::Platform {
                return Err(Status::permission_denied("only a platform key may create platform keys"));
            }
            Scope::Platform
        } else {
            Scope::Tenant(access::acting_tenant(&extensions, &r.tenant_id)?)
        };
        let mut expires_at_ms = r.expires_at.map(|t| t.seconds.saturating_mul(1_000).saturating_add(i64::from(t.nanos / 1_000_000)));
        if principal.scope != Scope::Platform {
            if !grantable_by_operator(roles) {
                return Err(Status::permission_denied(
                    "an operator key may create pos, storefront, staff and auditor keys of its tenant; operator keys come from the platform",
                ));
            }
            // A key lives no longer than the key that made it.
            if let Some(limit) = self.keys.ring().get(&principal.key_id).and_then(|k| k.expires_at_ms) {
                expires_at_ms = Some(expires_at_ms.map_or(limit, |at| at.min(limit)));
            }
        }
        let client_cert_sha256 = match r.client_cert_pem.as_str() {
            "" => None,
            pem => Some(client_certificate(pem, "client_cert_pem").map_err(|e| status::invalid("client_cert_pem", &e))?),
        };
        let spec = NewKey { scope, roles, label: r.label, expires_at_ms, client_cert_sha256 };
        let created = create(&self.keys, spec, &principal.key_id, &meta).await.map_err(|e| from_keys_error(&e))?;
        Ok(Response::new(created))
    }

    async fn list_keys(&self, request: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let principal = access::principal(&extensions)?;
        let scope = match (&principal.scope, r.tenant_id.is_empty()) {
            (Scope::Platform, true) => None,
            _ => Some(Scope::Tenant(access::acting_tenant(&extensions, &r.tenant_id)?)),
        };
        let ring = self.keys.ring();
        let mut keys: Vec<&KeyRecord> = ring.keys().filter(|k| scope.as_ref().is_none_or(|s| &k.scope == s)).collect();
        keys.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then_with(|| a.key_id.cmp(&b.key_id)));
        Ok(Response::new(pb::ListKeysResponse { keys: keys.into_iter().map(api_key).collect() }))
    }

    async fn revoke_key(&self, request: Request<pb::RevokeKeyRequest>) -> Result<Response<pb::ApiKey>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let principal = access::principal(&extensions)?;
        let meta = command_meta(&metadata, &extensions)?;
        refuse_when_open(principal)?;
        let not_found = || Status::not_found(format!("no key with id {:?}", r.key_id));
        if !self.keys.ring().get(&r.key_id).is_some_and(|k| manages(principal, k)) {
            return Err(not_found());
        }
        let command = KeyCommand::Revoke { key_id: r.key_id.clone(), revoked_by: principal.key_id.clone(), reason: r.reason };
        self.keys.execute(&command, &meta).await.map_err(|e| from_keys_error(&e))?;
        tracing::info!(key_id = r.key_id, by = principal.key_id, "API key revoked");
        let ring = self.keys.ring();
        Ok(Response::new(api_key(ring.get(&r.key_id).ok_or_else(not_found)?)))
    }
}

/// A key to make.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub scope: Scope,
    pub roles: Roles,
    pub label: String,
    pub expires_at_ms: Option<i64>,
    /// A client certificate (SHA-256 of its DER) that authenticates as the key too.
    pub client_cert_sha256: Option<[u8; 32]>,
}

/// The SHA-256 of the first certificate in `pem`; `field` names it in the error.
pub fn client_certificate(pem: &str, field: &str) -> Result<[u8; 32], String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("{field}: not a PEM certificate ({e})"))?;
    Ok(tally_engine::domain::access::certificate_sha256(&der))
}

/// Makes a key, by `created_by` (a key id, or "offline"); its listing and its token.
pub async fn create(keys: &KeyBook, spec: NewKey, created_by: &str, meta: &CommandMeta) -> Result<pb::CreateKeyResponse, KeysError> {
    let (key_id, secret) = new_secret();
    let command = KeyCommand::Create {
        key_id: key_id.clone(),
        secret_sha256: secret_sha256(&secret),
        scope: spec.scope,
        roles: spec.roles,
        label: spec.label,
        expires_at_ms: spec.expires_at_ms,
        created_by: created_by.to_owned(),
        client_cert_sha256: spec.client_cert_sha256,
    };
    keys.execute(&command, meta).await?;
    let key = keys.ring().get(&key_id).map(api_key);
    tracing::info!(key_id, by = created_by, "API key created");
    Ok(pb::CreateKeyResponse { key, token: token(&key_id, &secret) })
}

/// On a log without keys, creates the platform key and writes its token to `path` (mode 0600), so the
/// first start gives a working setup; answers the new key's id. A log with keys is left as it is.
pub async fn bootstrap(keys: &KeyBook, path: &Path) -> Result<Option<String>, Box<dyn std::error::Error>> {
    if !keys.ring().is_empty() {
        return Ok(None);
    }
    let (key_id, secret) = new_secret();
    let command = KeyCommand::Create {
        key_id: key_id.clone(),
        secret_sha256: secret_sha256(&secret),
        scope: Scope::Platform,
        roles: [Role::Platform].into_iter().collect(),
        label: "created at the first start".into(),
        expires_at_ms: None,
        created_by: "bootstrap".into(),
        client_cert_sha256: None,
    };
    // The token is on disk (a file of this start's own) before the key exists, so a crash in between
    // leaves it findable; it becomes `path` only once this node's key is the log's first.
    let pending = path.with_file_name(format!("{PLATFORM_KEY_FILE}.{key_id}.tmp"));
    write_secret_file(&pending, &token(&key_id, &secret))?;
    if !keys.create_first(&command, &CommandMeta::default()).await? {
        // Another node sharing the log made the first key meanwhile: its file, if any, is left alone.
        std::fs::remove_file(&pending)?;
        return Ok(None);
    }
    std::fs::rename(&pending, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(Some(key_id))
}

/// Writes `contents` to a new file at `path`, readable by its owner only.
fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(format!("{contents}\n").as_bytes())?;
    file.sync_all()
}
