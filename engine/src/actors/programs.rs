//! Programs as aggregates: one tenant's program at a time is loaded from its stream, caught up with
//! whatever other nodes appended, decided against, and appended with the version it expects. Commands on
//! one program are serialised per tenant; the store's version check keeps nodes honest.

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::Clock;
use crate::codec::{self, CodecError};
use crate::domain::TenantId;
use crate::domain::program::{ProgramCommand, ProgramDecision, ProgramRejection, ProgramState, apply_program, decide_program};
use crate::store::{EventMetadata, EventStore, ExpectedVersion, StoreError};

/// Events read per call while catching a program up.
const READ_BATCH_EVENTS: usize = 1_000;
/// Attempts at a command when another node appends to the program concurrently.
const CONFLICT_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(transparent)]
    Rejected(#[from] ProgramRejection),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// What a program command did.
#[derive(Debug, Clone)]
pub struct ProgramOutcome {
    pub state: ProgramState,
    /// `Some(rules version the command left)` if the same command had already been applied: its first
    /// outcome, whatever happened since.
    pub replayed: Option<u32>,
}

#[derive(Debug)]
pub struct ProgramBook {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    programs: parking_lot::Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<ProgramState>>>>,
}

impl ProgramBook {
    pub fn new(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock, programs: parking_lot::Mutex::new(HashMap::new()) }
    }

    fn slot(&self, tenant: &TenantId) -> Arc<tokio::sync::Mutex<ProgramState>> {
        Arc::clone(self.programs.lock().entry(tenant.clone()).or_default())
    }

    async fn catch_up(&self, tenant: &TenantId, state: &mut ProgramState) -> Result<(), ProgramError> {
        let stream = codec::program_stream(tenant);
        loop {
            let events = self.store.read_stream(&stream, state.version + 1, READ_BATCH_EVENTS).await?;
            if events.is_empty() {
                return Ok(());
            }
            for recorded in events {
                apply_program(state, &codec::decode_program(recorded)?);
            }
        }
    }

    /// The program as the log has it now.
    pub async fn get(&self, tenant: &TenantId) -> Result<ProgramState, ProgramError> {
        let slot = self.slot(tenant);
        let mut state = slot.lock().await;
        self.catch_up(tenant, &mut state).await?;
        if !state.created {
            // Asking about a program that does not exist leaves nothing behind.
            self.programs.lock().remove(tenant);
        }
        Ok(state.clone())
    }

    /// Decides and appends a program command; replies once its events are durable.
    pub async fn execute(&self, tenant: &TenantId, command: &ProgramCommand, meta: &EventMetadata) -> Result<ProgramOutcome, ProgramError> {
        let slot = self.slot(tenant);
        let mut state = slot.lock().await;
        let stream = codec::program_stream(tenant);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.catch_up(tenant, &mut state).await?;
            let events = match decide_program(&state, tenant, command, self.clock.now_ms())? {
                ProgramDecision::AlreadyApplied { rules_version } => {
                    return Ok(ProgramOutcome { state: state.clone(), replayed: Some(rules_version) });
                }
                ProgramDecision::Append(events) => events,
            };
            let data = events.iter().map(|e| codec::encode_program(e, meta)).collect();
            match self.store.append(&stream, ExpectedVersion::Exact(state.version), data).await {
                Ok(_) => {
                    events.iter().for_each(|e| apply_program(&mut state, e));
                    return Ok(ProgramOutcome { state: state.clone(), replayed: None });
                }
                Err(StoreError::VersionConflict { .. }) if attempt < CONFLICT_ATTEMPTS => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }
}
