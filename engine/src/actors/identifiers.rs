//! Which wallet an identifier from outside Tally belongs to (ADR 0015). The truth is the identifier's
//! own stream `<tenant>/identifier/<lookup>`: a wallet's actor claims it there (appended at the version
//! it read, so two wallets never both succeed) before it records `IdentifierAttached`, and releases it
//! once its `IdentifierDetached` is recorded — so a wallet shows only identifiers it holds, and a claim
//! may outlive what it was for (a crash in between): a finder trusts a claim only if the wallet shows
//! it too, and the wallet lets such a claim go at its next word on the identifier.
//!
//! The lookup is a keyed hash under the tenant's lookup key, kept beside the wallets' personal keys (never
//! in the log), made when the tenant's first identifier is attached.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tally_proto::v1::{IdentifierClaimed, IdentifierReleased};

use super::{CommandMeta, WalletError, WalletKey};
use crate::codec::{self, IdentifierClaim};
use crate::domain::identifiers::{self, IdentifierKind};
use crate::domain::{Command, Rejection, TenantId};
use crate::store::{EventStore, ExpectedVersion, PersonalKey, StoreError};

/// How often a claim or release reads the stream again after another writer got there first.
const CLAIM_ATTEMPTS_MAX: u32 = 4;

/// The tenants' lookup keys, read (or made) once per tenant and process.
#[derive(Debug)]
pub struct IdentifierBook {
    store: Arc<dyn EventStore>,
    keys: Mutex<HashMap<TenantId, [u8; 32]>>,
}

/// Who holds an identifier: the wallet, and the log position of its claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub wallet_id: String,
    pub claimed_at_position: u64,
}

impl IdentifierBook {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store, keys: Mutex::new(HashMap::new()) }
    }

    /// The lookup of `raw` as `kind` normalises it, making the tenant's key if it has none yet (an
    /// identifier about to be attached).
    pub async fn lookup_to_attach(&self, tenant: &TenantId, kind: IdentifierKind, raw: &str) -> Result<String, WalletError> {
        let normalised = identifiers::normalise(kind, raw).map_err(Rejection::from)?;
        let key = match self.key(tenant, false).await? {
            Some(key) => key,
            None => self.key(tenant, true).await?.expect("a key was kept"),
        };
        Ok(identifiers::lookup(&key, kind, &normalised))
    }

    /// The lookup of `raw` as `kind` normalises it; `None` if the tenant has no key (no identifier was
    /// ever attached): nothing to find.
    pub async fn lookup(&self, tenant: &TenantId, kind: IdentifierKind, raw: &str) -> Result<Option<String>, WalletError> {
        let normalised = identifiers::normalise(kind, raw).map_err(Rejection::from)?;
        Ok(self.key(tenant, false).await?.map(|key| identifiers::lookup(&key, kind, &normalised)))
    }

    /// The wallet whose claim on `lookup` stands, if one does.
    pub async fn holder(&self, tenant: &TenantId, lookup: &str) -> Result<Option<Holder>, WalletError> {
        let stream = codec::identifier_stream(tenant, lookup)?;
        let version = self.store.stream_version(&stream).await?;
        Ok(match last_claim(&*self.store, tenant, lookup, version).await? {
            Some((IdentifierClaim::Claimed(claim), position)) => Some(Holder { wallet_id: claim.wallet_id, claimed_at_position: position }),
            _ => None,
        })
    }

    async fn key(&self, tenant: &TenantId, make: bool) -> Result<Option<[u8; 32]>, StoreError> {
        if let Some(key) = self.keys.lock().get(tenant) {
            return Ok(Some(*key));
        }
        let subject = codec::identifier_key_subject(tenant);
        let key = if make {
            Some(self.store.keep_personal_key(&subject, &PersonalKey::generate()?).await?)
        } else {
            self.store.personal_keys(std::slice::from_ref(&subject)).await?.pop().flatten()
        };
        let key = key.map(|key| *key.as_bytes());
        if let Some(key) = key {
            self.keys.lock().insert(tenant.clone(), key);
        }
        Ok(key)
    }
}

/// The last event of `lookup`'s stream at `version`, with its log position.
async fn last_claim(
    store: &dyn EventStore,
    tenant: &TenantId,
    lookup: &str,
    version: u64,
) -> Result<Option<(IdentifierClaim, u64)>, WalletError> {
    if version == 0 {
        return Ok(None);
    }
    let stream = codec::identifier_stream(tenant, lookup)?;
    let Some(recorded) = store.read_stream(&stream, version, 1).await?.into_iter().next() else {
        return Ok(None);
    };
    let position = recorded.global_position;
    Ok(Some((codec::decode_identifier(recorded)?, position)))
}

/// What a wallet command does on an identifier's stream.
pub(super) struct ClaimStep<'a> {
    pub store: &'a dyn EventStore,
    pub wallet: &'a WalletKey,
    pub command: &'a Command,
    pub now_ms: i64,
    pub meta: &'a CommandMeta,
}

impl ClaimStep<'_> {
    /// Claims `lookup` for the wallet unless another wallet holds it (IDENTIFIER_TAKEN). A claim the
    /// wallet holds already (a retry after a crash between the claim and the attach) is its to use.
    pub async fn claim(&self, kind: i32, lookup: &str) -> Result<(), WalletError> {
        let claim = IdentifierClaim::Claimed(IdentifierClaimed {
            tenant_id: self.wallet.tenant.as_str().to_owned(),
            wallet_id: self.wallet.wallet.as_str().to_owned(),
            kind,
            lookup: lookup.to_owned(),
        });
        self.settle(lookup, claim, |held| match held {
            Some(holder) if holder == self.wallet.wallet.as_str() => Ok(false),
            Some(holder) => Err(Rejection::IdentifierTaken { wallet_id: holder.to_owned() }.into()),
            None => Ok(true),
        })
        .await
    }

    /// Releases the wallet's claim on `lookup`, if it holds one (none: released already).
    pub async fn release(&self, lookup: &str) -> Result<(), WalletError> {
        let release = IdentifierClaim::Released(IdentifierReleased {
            tenant_id: self.wallet.tenant.as_str().to_owned(),
            wallet_id: self.wallet.wallet.as_str().to_owned(),
            lookup: lookup.to_owned(),
        });
        self.settle(lookup, release, |held| Ok(held == Some(self.wallet.wallet.as_str()))).await
    }

    /// Appends `event` to `lookup`'s stream if `wanted` (given who holds it now) says so, at the version
    /// read: another writer in between means reading again.
    async fn settle(
        &self,
        lookup: &str,
        event: IdentifierClaim,
        wanted: impl Fn(Option<&str>) -> Result<bool, WalletError>,
    ) -> Result<(), WalletError> {
        let stream = codec::identifier_stream(&self.wallet.tenant, lookup)?;
        let mut attempt = 0;
        loop {
            let version = self.store.stream_version(&stream).await?;
            let holder = match last_claim(self.store, &self.wallet.tenant, lookup, version).await? {
                Some((IdentifierClaim::Claimed(claim), _)) => Some(claim.wallet_id),
                _ => None,
            };
            if !wanted(holder.as_deref())? {
                return Ok(());
            }
            let data = vec![codec::encode_identifier(&event, self.command, self.now_ms, self.meta)];
            match self.store.append(&stream, ExpectedVersion::Exact(version), data).await {
                Ok(_) => return Ok(()),
                Err(StoreError::VersionConflict { .. }) if attempt + 1 < CLAIM_ATTEMPTS_MAX => attempt += 1,
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// The identifier a command is about, if it is about one.
pub(super) fn named_by(command: &Command) -> Option<&str> {
    match &command.body {
        crate::domain::CommandBody::AttachIdentifier { lookup, .. } | crate::domain::CommandBody::DetachIdentifier { lookup, .. } => {
            Some(lookup)
        }
        _ => None,
    }
}
