//! How many wallets each tenant has opened, and the bound on it: every enrollment is first counted on the
//! tenant's stream `<tenant>/wallets` (one `WalletAdmitted` each), appended with the version it expects,
//! so nodes sharing the log never admit more than the bound between them. The stream's version is the
//! count, so catching up is one `stream_version`, and nothing per wallet stays in memory.
//!
//! Enrollments that arrive while a count is being appended wait and are appended together, in one append:
//! a burst of sign-ups costs one append per round trip of the log, not one each.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{CommandMeta, WalletError};
use crate::clock::Clock;
use crate::codec;
use crate::domain::{TenantId, WalletId};
use crate::limits::APPEND_EVENTS_MAX;
use crate::store::{EventStore, ExpectedVersion, StoreError};

/// Attempts at one batch when other nodes count the same tenant's wallets concurrently: in a cluster
/// every node enrolls some of a tenant's wallets (their owners differ), so a sign-up burst contends here.
/// Each attempt after a conflict starts from the version the conflict reported, after a random wait of up
/// to `CONFLICT_WAIT_MAX_MS` (doubling), so the nodes fall out of step.
const CONFLICT_ATTEMPTS: u32 = 64;
const CONFLICT_WAIT_MAX_MS: u64 = 32;

/// The wallet counts of every tenant this node has enrolled wallets for.
#[derive(Debug)]
pub(super) struct WalletRolls {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    max: u64,
    tenants: parking_lot::Mutex<HashMap<TenantId, Arc<Roll>>>,
}

/// One tenant's count, and the enrollments waiting to be counted.
#[derive(Debug, Default)]
struct Roll {
    /// The tenant's wallets as far as this node has read `<tenant>/wallets` (its version).
    counted: tokio::sync::Mutex<u64>,
    waiting: parking_lot::Mutex<Vec<Waiter>>,
}

#[derive(Debug)]
struct Waiter {
    wallet: WalletId,
    meta: CommandMeta,
    reply: oneshot::Sender<Result<(), WalletError>>,
}

impl WalletRolls {
    pub(super) fn new(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>, max: u64) -> Self {
        Self { store, clock, max, tenants: parking_lot::Mutex::default() }
    }

    /// Counts `wallet` as one more of `tenant`'s, or refuses it beyond the bound. Called once per new
    /// wallet, before its first event: a wallet that fails to enroll after this stays counted.
    pub(super) async fn admit(&self, tenant: &TenantId, wallet: &WalletId, meta: &CommandMeta) -> Result<(), WalletError> {
        let roll = Arc::clone(self.tenants.lock().entry(tenant.clone()).or_default());
        let (reply, answer) = oneshot::channel();
        roll.waiting.lock().push(Waiter { wallet: wallet.clone(), meta: meta.clone(), reply });
        {
            // Whoever holds the count serves everyone waiting, ourselves included, batch by batch; a
            // caller that gets the lock after its own batch was served finds nothing to do.
            let mut counted = roll.counted.lock().await;
            loop {
                let batch: Vec<Waiter> = {
                    let mut waiting = roll.waiting.lock();
                    let take = waiting.len().min(APPEND_EVENTS_MAX);
                    waiting.drain(..take).collect()
                };
                if batch.is_empty() {
                    break;
                }
                self.serve(tenant, &mut counted, batch).await;
            }
        }
        answer.await.unwrap_or(Err(WalletError::ShuttingDown))
    }

    /// Appends the admissions of `batch` that fit under the bound and answers every waiter.
    async fn serve(&self, tenant: &TenantId, counted: &mut u64, batch: Vec<Waiter>) {
        let stream = codec::wallets_stream(tenant);
        let mut attempt = 0;
        let mut known = None;
        let result = loop {
            attempt += 1;
            match known.take() {
                Some(version) => *counted = version,
                None => match self.store.stream_version(&stream).await {
                    Ok(version) => *counted = version,
                    Err(error) => break Err(error),
                },
            }
            let room = usize::try_from(self.max.saturating_sub(*counted)).unwrap_or(usize::MAX);
            let admitted = batch.len().min(room);
            if admitted == 0 {
                break Ok(0);
            }
            let now_ms = self.clock.now_ms();
            let events = batch[..admitted].iter().map(|w| codec::encode_wallet_admitted(&w.wallet, now_ms, &w.meta)).collect();
            match self.store.append(&stream, ExpectedVersion::Exact(*counted), events).await {
                Ok(outcome) => {
                    *counted = outcome.last_version;
                    break Ok(admitted);
                }
                Err(StoreError::VersionConflict { actual, .. }) if attempt < CONFLICT_ATTEMPTS => {
                    known = Some(actual);
                    let ceiling = CONFLICT_WAIT_MAX_MS.min(1 << attempt.min(6));
                    let wait = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), attempt) % (ceiling + 1);
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                Err(error) => break Err(error),
            }
        };
        for (i, waiter) in batch.into_iter().enumerate() {
            let answer = match &result {
                Ok(admitted) if i < *admitted => Ok(()),
                Ok(_) => Err(WalletError::TooManyWallets { max: self.max }),
                Err(error) => Err(WalletError::Store(for_each_waiter(error))),
            };
            let _ = waiter.reply.send(answer);
        }
    }
}

/// The store's answer to a batch, for each of its waiters: the outcome of a failed count is unknown, so a
/// retry may find the wallet counted (and then enrolls it under the bound as it stands).
fn for_each_waiter(error: &StoreError) -> StoreError {
    match error {
        StoreError::Corrupt { file, offset, reason } => StoreError::Corrupt { file: file.clone(), offset: *offset, reason: reason.clone() },
        other => StoreError::Unavailable { reason: format!("counting the tenant's wallets: {other}") },
    }
}
