//! Access keys: who may call, as a pure aggregate kept on the log's system stream `$keys`.
//!
//! A key is `tally_<key id>_<secret>`: 16 hex digits anyone may see (logs, the log, listings) and 64 hex
//! digits of secret (256 bits) that only the holder has; the log keeps the secret's SHA-256. A secret
//! of 256 random bits needs no slow hash: nobody can search that space, so one SHA-256 is enough and an
//! authentication costs a map lookup and a hash (well under a microsecond).
//!
//! `decide_keys` checks a key command against the ring and answers the changes; `apply_key` folds them;
//! `KeyRing::authenticate` answers who a token is. Pure: the time comes in as an argument.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tally_proto::v1::{KeyCreated, KeyRevoked};

use super::ids::{FieldError, TenantId};
use crate::limits::{KEY_LABEL_BYTES_MAX, KEYS_ACTIVE_PER_SCOPE_MAX, KEYS_PER_SCOPE_MAX};

/// The log's stream of key events (no tenant id can contain `$`).
pub const KEYS_STREAM: &str = "$keys";
/// Hex digits of a key id.
pub const KEY_ID_HEX_DIGITS: usize = 16;
/// Hex digits of a key's secret (256 bits).
pub const KEY_SECRET_HEX_DIGITS: usize = 64;
const TOKEN_PREFIX: &str = "tally_";

/// What a key may do; the table of which role may call which RPC is the gateway's (and the README's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A till.
    Pos,
    /// A web shop's backend.
    Storefront,
    /// Store staff: corrections, with a staff reference.
    Staff,
    /// A tenant's program operator.
    Operator,
    /// Finance and audit: read-only.
    Auditor,
    /// The platform operator: every tenant, and the log's operations.
    Platform,
}

impl Role {
    pub const ALL: [Role; 6] = [Role::Pos, Role::Storefront, Role::Staff, Role::Operator, Role::Auditor, Role::Platform];

    /// The role's name, as stored in the log and written in the README's table.
    pub fn name(self) -> &'static str {
        match self {
            Role::Pos => "pos",
            Role::Storefront => "storefront",
            Role::Staff => "staff",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Platform => "platform",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles(u8);

impl Roles {
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// Whether any of `roles` is in the set.
    pub fn any(self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.contains(*r))
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        Roles(iter.into_iter().fold(0, |bits, r| bits | r.bit()))
    }
}

/// Whom a key acts for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Platform,
    Tenant(TenantId),
}

impl Scope {
    /// The tenant id as stored (empty for the platform).
    pub fn tenant_str(&self) -> &str {
        match self {
            Scope::Platform => "",
            Scope::Tenant(t) => t.as_str(),
        }
    }
}

/// Who is calling: an authenticated key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub scope: Scope,
    pub roles: Roles,
}

/// A key as the ring knows it. The secret is not here: only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: String,
    secret_sha256: [u8; 32],
    /// The client certificate (SHA-256 of its DER) that authenticates as this key, if any.
    pub client_cert_sha256: Option<[u8; 32]>,
    pub scope: Scope,
    pub roles: Roles,
    pub label: String,
    pub created_at_ms: i64,
    pub created_by: String,
    pub expires_at_ms: Option<i64>,
    pub revoked: Option<Revocation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub at_ms: i64,
    pub by: String,
    pub reason: String,
}

impl KeyRecord {
    fn active(&self, now_ms: i64) -> bool {
        self.revoked.is_none() && self.expires_at_ms.is_none_or(|at| now_ms < at)
    }
}

/// Why a token does not authenticate. Callers are told only "unauthenticated": which of these it was
/// is for the server's log, never for the caller (it would confirm that a key id exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("not a Tally key (tally_<16 hex>_<64 hex>)")]
    Malformed,
    #[error("no such key")]
    UnknownKey,
    #[error("wrong secret")]
    WrongSecret,
    #[error("the key was revoked")]
    Revoked,
    #[error("the key expired")]
    Expired,
}

/// A key command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCommand {
    Create {
        key_id: String,
        secret_sha256: [u8; 32],
        scope: Scope,
        roles: Roles,
        label: String,
        expires_at_ms: Option<i64>,
        created_by: String,
        /// A client certificate that authenticates as the key too (SHA-256 of its DER).
        client_cert_sha256: Option<[u8; 32]>,
    },
    Revoke {
        key_id: String,
        revoked_by: String,
        reason: String,
    },
}

/// A key event as folded: the stored message and when it was recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyChange {
    Created(KeyCreated),
    Revoked(KeyRevoked),
}

impl KeyChange {
    pub const CREATED: &'static str = "tally.v1.KeyCreated";
    pub const REVOKED: &'static str = "tally.v1.KeyRevoked";

    pub fn event_type(&self) -> &'static str {
        match self {
            KeyChange::Created(_) => Self::CREATED,
            KeyChange::Revoked(_) => Self::REVOKED,
        }
    }

    pub fn encode_payload(&self) -> Vec<u8> {
        match self {
            KeyChange::Created(m) => prost::Message::encode_to_vec(m),
            KeyChange::Revoked(m) => prost::Message::encode_to_vec(m),
        }
    }

    /// `None` for a type that is not a key event.
    pub fn decode_payload(event_type: &str, payload: &[u8]) -> Option<Result<Self, prost::DecodeError>> {
        Some(match event_type {
            Self::CREATED => <KeyCreated as prost::Message>::decode(payload).map(KeyChange::Created),
            Self::REVOKED => <KeyRevoked as prost::Message>::decode(payload).map(KeyChange::Revoked),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    #[error(transparent)]
    InvalidField(#[from] FieldError),
    #[error("a key with id {0} exists")]
    DuplicateId(String),
    #[error("no key with id {0}")]
    NotFound(String),
    #[error("key {0} already holds that client certificate")]
    CertificateTaken(String),
    #[error("{scope} has {KEYS_ACTIVE_PER_SCOPE_MAX} active keys (or {KEYS_PER_SCOPE_MAX} in all) already")]
    TooManyKeys { scope: String },
}

/// A stored key event that does not make sense: the key log is damaged, never skipped (a skipped
/// revocation would let a revoked key in).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key event {key_id:?} cannot be applied: {reason}")]
pub struct KeyEventError {
    pub key_id: String,
    pub reason: String,
}

/// Every key, as the log says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRing {
    keys: BTreeMap<String, KeyRecord>,
    /// Keys by the client certificate bound to them.
    by_certificate: BTreeMap<[u8; 32], String>,
    /// Events folded: the version of `$keys` this ring is at.
    pub version: u64,
}

impl KeyRing {
    pub fn get(&self, key_id: &str) -> Option<&KeyRecord> {
        self.keys.get(key_id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Who `token` is at `now_ms`.
    pub fn authenticate(&self, token: &str, now_ms: i64) -> Result<Principal, AuthFailure> {
        let (key_id, secret) = token_parts(token).ok_or(AuthFailure::Malformed)?;
        let key = self.keys.get(key_id).ok_or(AuthFailure::UnknownKey)?;
        if !bool::from(secret_sha256(secret).ct_eq(&key.secret_sha256)) {
            return Err(AuthFailure::WrongSecret);
        }
        if key.revoked.is_some() {
            return Err(AuthFailure::Revoked);
        }
        if key.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return Err(AuthFailure::Expired);
        }
        Ok(Principal { key_id: key.key_id.clone(), scope: key.scope.clone(), roles: key.roles })
    }

    /// Who presents the client certificate whose DER hashes to `cert_sha256`, at `now_ms`.
    pub fn authenticate_certificate(&self, cert_sha256: &[u8; 32], now_ms: i64) -> Result<Principal, AuthFailure> {
        let key = self.by_certificate.get(cert_sha256).and_then(|id| self.keys.get(id)).ok_or(AuthFailure::UnknownKey)?;
        if key.revoked.is_some() {
            return Err(AuthFailure::Revoked);
        }
        if key.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return Err(AuthFailure::Expired);
        }
        Ok(Principal { key_id: key.key_id.clone(), scope: key.scope.clone(), roles: key.roles })
    }

    /// Keys of `scope`: (active at `now_ms`, all).
    fn count_in(&self, scope: &Scope, now_ms: i64) -> (usize, usize) {
        self.keys.values().filter(|k| &k.scope == scope).fold((0, 0), |(active, all), k| (active + usize::from(k.active(now_ms)), all + 1))
    }
}

/// The key id and secret of a token, if it has the shape of one.
pub fn token_parts(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex(key_id, KEY_ID_HEX_DIGITS) && hex(secret, KEY_SECRET_HEX_DIGITS)).then_some((key_id, secret))
}

/// The token of a key id and secret (both lowercase hex of the right length).
pub fn token(key_id: &str, secret: &str) -> String {
    format!("{TOKEN_PREFIX}{key_id}_{secret}")
}

/// The stored hash of a client certificate (its DER encoding).
pub fn certificate_sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The stored hash of a secret.
pub fn secret_sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The platform role alone without a tenant; the other roles with one.
fn roles_fit(scope: &Scope, roles: Roles) -> Result<(), FieldError> {
    match scope {
        Scope::Platform if roles != [Role::Platform].into_iter().collect() => {
            Err(FieldError::new("roles", "a key without a tenant holds the platform role alone"))
        }
        Scope::Tenant(_) if roles.contains(Role::Platform) => {
            Err(FieldError::new("roles", "the platform role is for keys without a tenant"))
        }
        _ => Ok(()),
    }
}

fn check_text(field: &'static str, value: &str) -> Result<(), FieldError> {
    if value.len() > KEY_LABEL_BYTES_MAX {
        return Err(FieldError::new(field, format!("must be at most {KEY_LABEL_BYTES_MAX} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// Decides a key command at `now_ms`.
pub fn decide_keys(ring: &KeyRing, command: &KeyCommand, now_ms: i64) -> Result<Vec<KeyChange>, KeyRejection> {
    match command {
        KeyCommand::Create { key_id, secret_sha256, scope, roles, label, expires_at_ms, created_by, client_cert_sha256 } => {
            if !key_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) || key_id.len() != KEY_ID_HEX_DIGITS {
                return Err(FieldError::new("key_id", format!("must be {KEY_ID_HEX_DIGITS} lowercase hex digits")).into());
            }
            if roles.is_empty() {
                return Err(FieldError::new("roles", "at least one role is required").into());
            }
            roles_fit(scope, *roles)?;
            check_text("label", label)?;
            check_text("created_by", created_by)?;
            if expires_at_ms.is_some_and(|at| at <= now_ms) {
                return Err(FieldError::new("expires_at", "must be in the future").into());
            }
            if ring.keys.contains_key(key_id) {
                return Err(KeyRejection::DuplicateId(key_id.clone()));
            }
            // One certificate, one key: a certificate bound to a revoked key stays retired with it.
            if let Some(holder) = client_cert_sha256.as_ref().and_then(|c| ring.by_certificate.get(c)) {
                return Err(KeyRejection::CertificateTaken(holder.clone()));
            }
            let (active, all) = ring.count_in(scope, now_ms);
            if active >= KEYS_ACTIVE_PER_SCOPE_MAX || all >= KEYS_PER_SCOPE_MAX {
                let scope = match scope {
                    Scope::Platform => "the platform".to_owned(),
                    Scope::Tenant(t) => format!("tenant {t}"),
                };
                return Err(KeyRejection::TooManyKeys { scope });
            }
            Ok(vec![KeyChange::Created(KeyCreated {
                key_id: key_id.clone(),
                secret_sha256: secret_sha256.to_vec(),
                tenant_id: scope.tenant_str().to_owned(),
                roles: roles.iter().map(|r| r.name().to_owned()).collect(),
                expires_at_ms: expires_at_ms.unwrap_or(0),
                label: label.clone(),
                created_by: created_by.clone(),
                client_cert_sha256: client_cert_sha256.map(|c| c.to_vec()).unwrap_or_default(),
            })])
        }
        KeyCommand::Revoke { key_id, revoked_by, reason } => {
            check_text("reason", reason)?;
            check_text("revoked_by", revoked_by)?;
            let key = ring.keys.get(key_id).ok_or_else(|| KeyRejection::NotFound(key_id.clone()))?;
            if key.revoked.is_some() {
                return Ok(Vec::new());
            }
            Ok(vec![KeyChange::Revoked(KeyRevoked { key_id: key_id.clone(), revoked_by: revoked_by.clone(), reason: reason.clone() })])
        }
    }
}

/// Folds one stored key event, recorded at `recorded_at_ms`.
pub fn apply_key(ring: &mut KeyRing, change: &KeyChange, recorded_at_ms: i64) -> Result<(), KeyEventError> {
    match change {
        KeyChange::Created(c) => {
            let error = |reason: String| KeyEventError { key_id: c.key_id.clone(), reason };
            let secret_sha256: [u8; 32] =
                c.secret_sha256.as_slice().try_into().map_err(|_| error(format!("a hash of {} bytes", c.secret_sha256.len())))?;
            let roles = c
                .roles
                .iter()
                .map(|name| Role::from_name(name).ok_or_else(|| error(format!("unknown role {name:?}"))))
                .collect::<Result<Roles, _>>()?;
            let scope = match c.tenant_id.as_str() {
                "" => Scope::Platform,
                tenant => Scope::Tenant(TenantId::parse(tenant).map_err(|e| error(e.to_string()))?),
            };
            // What decide refuses is refused here too: a key written into the log by other means gets
            // no more than one made through the API could have.
            if roles.is_empty() {
                return Err(error("no roles".into()));
            }
            roles_fit(&scope, roles).map_err(|e| error(e.to_string()))?;
            let client_cert_sha256 = match c.client_cert_sha256.as_slice() {
                [] => None,
                bytes => Some(<[u8; 32]>::try_from(bytes).map_err(|_| error(format!("a certificate hash of {} bytes", bytes.len())))?),
            };
            if let Some(cert) = client_cert_sha256
                && ring.by_certificate.insert(cert, c.key_id.clone()).is_some()
            {
                return Err(error("a certificate another key holds".into()));
            }
            let record = KeyRecord {
                key_id: c.key_id.clone(),
                secret_sha256,
                client_cert_sha256,
                scope,
                roles,
                label: c.label.clone(),
                created_at_ms: recorded_at_ms,
                created_by: c.created_by.clone(),
                expires_at_ms: (c.expires_at_ms != 0).then_some(c.expires_at_ms),
                revoked: None,
            };
            if ring.keys.insert(c.key_id.clone(), record).is_some() {
                return Err(error("a second key of that id".into()));
            }
        }
        KeyChange::Revoked(r) => {
            let key =
                ring.keys.get_mut(&r.key_id).ok_or_else(|| KeyEventError { key_id: r.key_id.clone(), reason: "no such key".into() })?;
            key.revoked.get_or_insert(Revocation { at_ms: recorded_at_ms, by: r.revoked_by.clone(), reason: r.reason.clone() });
        }
    }
    ring.version += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn create(key_id: &str, secret: &str, scope: Scope, roles: &[Role]) -> KeyCommand {
        KeyCommand::Create {
            key_id: key_id.into(),
            secret_sha256: secret_sha256(secret),
            scope,
            roles: roles.iter().copied().collect(),
            label: "till 3".into(),
            expires_at_ms: None,
            created_by: "bootstrap".into(),
            client_cert_sha256: None,
        }
    }

    fn run(ring: &mut KeyRing, command: &KeyCommand, now_ms: i64) -> Result<(), KeyRejection> {
        for change in decide_keys(ring, command, now_ms)? {
            apply_key(ring, &change, now_ms).unwrap();
        }
        Ok(())
    }

    const ID: &str = "0123456789abcdef";
    const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn a_key_authenticates_until_revoked() {
        let acme = TenantId::parse("acme").unwrap();
        let mut ring = KeyRing::default();
        run(&mut ring, &create(ID, SECRET, Scope::Tenant(acme.clone()), &[Role::Pos, Role::Staff]), NOW).unwrap();
        let principal = ring.authenticate(&token(ID, SECRET), NOW).unwrap();
        assert_eq!(principal.scope, Scope::Tenant(acme));
        assert!(principal.roles.contains(Role::Pos) && principal.roles.contains(Role::Staff) && !principal.roles.contains(Role::Operator));
        let mut wrong = SECRET.to_owned();
        wrong.replace_range(63.., "0");
        assert_eq!(ring.authenticate(&token(ID, &wrong), NOW), Err(AuthFailure::WrongSecret));
        assert_eq!(ring.authenticate(&token("fedcba9876543210", SECRET), NOW), Err(AuthFailure::UnknownKey));
        for malformed in ["", "Bearer x", "tally_0123_abcd", &token(ID, SECRET).to_uppercase(), &format!("{}0", token(ID, SECRET))] {
            assert_eq!(ring.authenticate(malformed, NOW), Err(AuthFailure::Malformed), "{malformed}");
        }
        let revoke = KeyCommand::Revoke { key_id: ID.into(), revoked_by: "ffffffffffffffff".into(), reason: "till stolen".into() };
        run(&mut ring, &revoke, NOW + 1).unwrap();
        assert_eq!(ring.authenticate(&token(ID, SECRET), NOW + 2), Err(AuthFailure::Revoked));
        assert!(decide_keys(&ring, &revoke, NOW + 3).unwrap().is_empty(), "revoking twice changes nothing");
        assert_eq!(ring.get(ID).unwrap().revoked.as_ref().unwrap().at_ms, NOW + 1);
    }

    #[test]
    fn a_client_certificate_authenticates_as_its_key_alone() {
        let acme = Scope::Tenant(TenantId::parse("acme").unwrap());
        let cert = certificate_sha256(b"a DER certificate");
        let mut ring = KeyRing::default();
        let mut command = create(ID, SECRET, acme.clone(), &[Role::Pos]);
        if let KeyCommand::Create { client_cert_sha256, .. } = &mut command {
            *client_cert_sha256 = Some(cert);
        }
        run(&mut ring, &command, NOW).unwrap();
        assert_eq!(ring.authenticate_certificate(&cert, NOW).unwrap().key_id, ID);
        assert_eq!(ring.authenticate(&token(ID, SECRET), NOW).unwrap().key_id, ID, "the token works too");
        assert_eq!(ring.authenticate_certificate(&certificate_sha256(b"another"), NOW), Err(AuthFailure::UnknownKey));
        let mut second = create("fedcba9876543210", SECRET, acme, &[Role::Staff]);
        if let KeyCommand::Create { client_cert_sha256, .. } = &mut second {
            *client_cert_sha256 = Some(cert);
        }
        assert_eq!(decide_keys(&ring, &second, NOW), Err(KeyRejection::CertificateTaken(ID.into())));
        let revoke = KeyCommand::Revoke { key_id: ID.into(), revoked_by: "x".into(), reason: String::new() };
        run(&mut ring, &revoke, NOW).unwrap();
        assert_eq!(ring.authenticate_certificate(&cert, NOW), Err(AuthFailure::Revoked));
        assert_eq!(decide_keys(&ring, &second, NOW), Err(KeyRejection::CertificateTaken(ID.into())), "retired with its key");
    }

    #[test]
    fn a_key_expires_at_its_time() {
        let mut ring = KeyRing::default();
        let mut command = create(ID, SECRET, Scope::Platform, &[Role::Platform]);
        if let KeyCommand::Create { expires_at_ms, .. } = &mut command {
            *expires_at_ms = Some(NOW + 1_000);
        }
        run(&mut ring, &command, NOW).unwrap();
        assert!(ring.authenticate(&token(ID, SECRET), NOW + 999).is_ok());
        assert_eq!(ring.authenticate(&token(ID, SECRET), NOW + 1_000), Err(AuthFailure::Expired));
        assert!(
            matches!(decide_keys(&KeyRing::default(), &command, NOW + 1_000), Err(KeyRejection::InvalidField(f)) if f.field == "expires_at")
        );
    }

    #[test]
    fn roles_fit_their_scope() {
        let acme = Scope::Tenant(TenantId::parse("acme").unwrap());
        let ring = KeyRing::default();
        for (scope, roles) in [
            (Scope::Platform, vec![Role::Pos]),
            (Scope::Platform, vec![Role::Platform, Role::Auditor]),
            (acme.clone(), vec![Role::Platform]),
            (acme, vec![]),
        ] {
            let rejection = decide_keys(&ring, &create(ID, SECRET, scope.clone(), &roles), NOW).unwrap_err();
            assert!(matches!(&rejection, KeyRejection::InvalidField(f) if f.field == "roles"), "{scope:?} {roles:?}: {rejection}");
        }
        assert!(matches!(
            decide_keys(&ring, &create("0123", SECRET, Scope::Platform, &[Role::Platform]), NOW),
            Err(KeyRejection::InvalidField(f)) if f.field == "key_id"
        ));
    }

    #[test]
    fn ids_are_unique_and_active_keys_bounded() {
        let acme = Scope::Tenant(TenantId::parse("acme").unwrap());
        let mut ring = KeyRing::default();
        for n in 0..KEYS_ACTIVE_PER_SCOPE_MAX {
            run(&mut ring, &create(&format!("{n:016x}"), SECRET, acme.clone(), &[Role::Pos]), NOW).unwrap();
        }
        let one_more = create("ffffffffffffffff", SECRET, acme.clone(), &[Role::Pos]);
        assert!(matches!(decide_keys(&ring, &one_more, NOW), Err(KeyRejection::TooManyKeys { .. })));
        assert!(decide_keys(&ring, &create("ffffffffffffffff", SECRET, Scope::Platform, &[Role::Platform]), NOW).is_ok(), "per scope");
        let revoke = KeyCommand::Revoke { key_id: format!("{:016x}", 0), revoked_by: "x".into(), reason: String::new() };
        run(&mut ring, &revoke, NOW).unwrap();
        run(&mut ring, &one_more, NOW).unwrap();
        assert!(matches!(decide_keys(&ring, &one_more, NOW), Err(KeyRejection::DuplicateId(_))));
    }

    #[test]
    fn a_damaged_event_is_an_error_not_a_gap() {
        let mut ring = KeyRing::default();
        let revoked = KeyChange::Revoked(KeyRevoked { key_id: ID.into(), revoked_by: "x".into(), reason: String::new() });
        assert!(apply_key(&mut ring, &revoked, NOW).is_err(), "a revocation of an unknown key");
        let mut created = KeyCreated {
            key_id: ID.into(),
            secret_sha256: vec![0; 31],
            roles: vec!["pos".into()],
            tenant_id: "acme".into(),
            ..Default::default()
        };
        assert!(apply_key(&mut ring, &KeyChange::Created(created.clone()), NOW).is_err(), "a short hash");
        created.secret_sha256 = vec![0; 32];
        created.roles = vec!["cashier".into()];
        assert!(apply_key(&mut ring, &KeyChange::Created(created.clone()), NOW).is_err(), "an unknown role");
        created.roles = vec!["platform".into()];
        assert!(apply_key(&mut ring, &KeyChange::Created(created.clone()), NOW).is_err(), "a tenant key with the platform role");
        created.roles = vec![];
        assert!(apply_key(&mut ring, &KeyChange::Created(created), NOW).is_err(), "a key without roles");
    }
}
