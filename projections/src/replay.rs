//! Reading ahead during a rebuild: a task of its own reads and decodes the next batch of the log while
//! the previous one is applied, so a replay costs the slower of the two per batch, not their sum.

use std::sync::Arc;
use std::time::Duration;

use tally_engine::store::EventStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ProjectionError;
use crate::movement::{Movement, decode_batch};

/// Times a failed read is retried (with backoff) before the replay gives up: a replay can be long, and
/// one network blip should not throw it away.
const READ_ATTEMPTS_MAX: u32 = 8;

/// A batch of the log, decoded.
#[derive(Debug)]
pub struct DecodedBatch {
    /// The position of its last event: the checkpoint once it is applied.
    pub through: u64,
    pub movements: Arc<[Movement]>,
}

/// The log after a position, read one batch ahead of whoever consumes it, until its end.
#[derive(Debug)]
pub struct Replay {
    batches: mpsc::Receiver<Result<DecodedBatch, ProjectionError>>,
    task: JoinHandle<()>,
}

impl Replay {
    /// Reads the log after `after` in batches of `batch_size` events, until a read finds nothing more.
    pub fn spawn(store: Arc<dyn EventStore>, after: u64, batch_size: usize) -> Self {
        // One batch waits while the next is read: two in memory at most besides the one being applied.
        let (sender, batches) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let mut checkpoint = after;
            loop {
                let batch = read(store.as_ref(), checkpoint, batch_size).await;
                match batch {
                    Ok(Some(batch)) => {
                        checkpoint = batch.through;
                        if sender.send(Ok(batch)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                }
            }
        });
        Self { batches, task }
    }

    /// The next batch; `None` at the end of the log.
    pub async fn next(&mut self) -> Option<Result<DecodedBatch, ProjectionError>> {
        self.batches.recv().await
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read(store: &dyn EventStore, checkpoint: u64, batch_size: usize) -> Result<Option<DecodedBatch>, ProjectionError> {
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0;
    let events = loop {
        match store.read_all(checkpoint + 1, batch_size).await {
            Ok(events) => break events,
            Err(error) => {
                let error = ProjectionError::from(error);
                attempts += 1;
                if error.is_fatal() || attempts >= READ_ATTEMPTS_MAX {
                    return Err(error);
                }
                tracing::warn!(%error, checkpoint, attempts, "replay read failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let Some(through) = events.last().map(|e| e.global_position) else { return Ok(None) };
    // Decoding is the CPU-heavy part: off the async workers, beside the apply.
    let movements = match tokio::task::spawn_blocking(move || decode_batch(events)).await {
        Ok(decoded) => decoded?,
        Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
        Err(_) => return Err(ProjectionError::Stopped { model: "replay" }),
    };
    Ok(Some(DecodedBatch { through, movements: movements.into() }))
}
