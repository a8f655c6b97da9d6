//! A blue/green rebuild on a task of its own: replays the log into a new generation beside the live one
//! (batches read and decoded ahead by a [`Replay`]), then asks the runner to catch it up to the live
//! checkpoint and swap it in. The live read model is untouched until then, and if anything fails.

use std::sync::Arc;

use tally_engine::store::EventStore;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Control, ProjectionStatus, RebuildPhase, RebuildProgress};
use crate::backoff::Backoff;
use crate::quarantine::apply_quarantining;
use crate::replay::{DecodedBatch, Replay};
use crate::{ProjectionError, ReadModel};

/// Attempts at one batch of a replay before the rebuild fails: a replay can be long, and one network
/// blip should not throw it away.
const BATCH_ATTEMPTS_MAX: u32 = 9;

pub(super) struct Rebuild {
    pub(super) store: Arc<dyn EventStore>,
    pub(super) model: Arc<dyn ReadModel>,
    pub(super) batch_size: usize,
    pub(super) control: mpsc::WeakSender<Control>,
    pub(super) status: watch::Sender<ProjectionStatus>,
    pub(super) progress: watch::Sender<RebuildProgress>,
}

impl Rebuild {
    pub(super) async fn run(self) {
        let phase = match self.replay_and_swap().await {
            Ok(phase) => phase,
            Err((generation, error)) => {
                tracing::error!(projection = self.model.name(), %error, "rebuild failed; the live read model is untouched");
                if let Some(generation) = generation
                    && let Err(error) = self.model.drop_generation(generation).await
                {
                    tracing::warn!(projection = self.model.name(), %error, generation, "cannot drop the abandoned generation");
                }
                RebuildPhase::Failed { error: error.to_string() }
            }
        };
        self.report(|p| p.phase = phase);
    }

    fn report(&self, change: impl FnOnce(&mut RebuildProgress)) {
        self.progress.send_modify(change);
        let progress = self.progress.borrow().clone();
        self.status.send_modify(|s| s.rebuild = Some(progress));
    }

    /// Applies `batch` after `checkpoint` to `generation`, retrying transient failures a few times (a
    /// replay can be long; one network blip should not throw it away).
    async fn apply_batch(&self, generation: u64, checkpoint: u64, batch: &DecodedBatch) -> Result<(), ProjectionError> {
        let mut backoff = Backoff::rebuilding(BATCH_ATTEMPTS_MAX);
        let mut attempts = 0;
        loop {
            match apply_quarantining(&*self.model, generation, checkpoint, batch.through, &batch.movements, &batch.poisoned).await {
                Err(error) if !error.is_fatal() && !matches!(error, ProjectionError::NoSuchGeneration { .. }) => {
                    let Some(wait) = backoff.next_wait() else { return Err(error) };
                    attempts += 1;
                    tracing::warn!(projection = self.model.name(), %error, generation, attempts, "rebuild batch failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                result => return result.map(drop),
            }
        }
    }

    async fn replay_and_swap(&self) -> Result<RebuildPhase, (Option<u64>, ProjectionError)> {
        let generation = self.model.create_generation().await.map_err(|e| (None, e))?;
        let fail = |error: ProjectionError| (Some(generation), error);
        tracing::info!(projection = self.model.name(), generation, "rebuild started");
        self.report(|p| p.generation = generation);
        let started = tokio::time::Instant::now();
        let mut checkpoint = 0;
        let mut replay = Replay::spawn(Arc::clone(&self.store), checkpoint, self.batch_size);
        loop {
            if self.progress.is_closed() {
                self.model.drop_generation(generation).await.map_err(fail)?;
                tracing::info!(projection = self.model.name(), generation, "rebuild cancelled; the live read model is untouched");
                return Ok(RebuildPhase::Cancelled);
            }
            let Some(batch) = replay.next().await else { break };
            let batch = batch.map_err(fail)?;
            let head = *self.store.head().borrow();
            self.apply_batch(generation, checkpoint, &batch).await.map_err(fail)?;
            checkpoint = batch.through;
            let rate = checkpoint as f64 / started.elapsed().as_secs_f64().max(1e-9);
            self.report(|p| {
                p.checkpoint = checkpoint;
                p.head = head;
                p.events_per_second = rate;
            });
        }
        self.report(|p| p.phase = RebuildPhase::Swapping);
        let stopped = || fail(ProjectionError::Stopped { model: self.model.name() });
        let mut backoff = Backoff::rebuilding(u32::MAX);
        loop {
            let (reply, answer) = oneshot::channel();
            let control = self.control.upgrade().ok_or_else(stopped)?;
            control.send(Control::Swap { generation, checkpoint, reply }).await.map_err(|_| stopped())?;
            drop(control);
            match answer.await.map_err(|_| stopped())? {
                Ok(()) => break,
                // The runner is retrying a failed batch: the rebuilt generation waits for it.
                Err(ProjectionError::Busy { .. }) => {
                    tokio::time::sleep(backoff.wait()).await;
                }
                Err(error) => return Err(fail(error)),
            }
        }
        let live = *self.store.head().borrow();
        self.report(|p| {
            p.checkpoint = p.checkpoint.max(checkpoint);
            p.head = live;
        });
        Ok(RebuildPhase::Done)
    }
}
