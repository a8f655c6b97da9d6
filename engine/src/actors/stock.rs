//! Rewards' stock, one aggregate per limited reward on stream `<tenant>/reward/<reward_id>`
//! (`crate::domain::rewards`). A hot reward is where redemptions contend, so operations on one reward
//! that arrive while an append is on its way wait and go together in the next one, decided in order
//! against the stock as each earlier one left it: a burst costs one append per round trip of the log, not
//! one each. The append carries the version it expects; another node's append in between is a conflict,
//! after which the stock is read again and the batch decided anew.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::oneshot;

use super::CommandMeta;
use crate::clock::Clock;
use crate::codec::{self, CodecError};
use crate::domain::rewards::{StockOp, StockRejection, StockState, apply_stock, decide_stock, forget_past, revert_stock};
use crate::limits::APPEND_EVENTS_MAX;
use crate::store::{EventStore, ExpectedVersion, StoreError, StreamId};

/// Attempts at one batch while other nodes append to the same stock.
const CONFLICT_ATTEMPTS: u32 = 32;
const CONFLICT_WAIT_MAX_MS: u64 = 32;
/// Events read per call while catching a stock up.
const READ_BATCH_EVENTS: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error(transparent)]
    Rejected(#[from] StockRejection),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the reward's stock cannot be read: {0}")]
    Codec(#[from] CodecError),
}

/// A reward's stock figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StockFigures {
    pub on_hand: i64,
    pub reserved: i64,
    pub taken: i64,
}

impl StockFigures {
    fn of(state: &StockState) -> Self {
        Self { on_hand: state.on_hand, reserved: state.reserved_total(), taken: state.taken }
    }
}

/// What an operation did: whether it changed the stock (false: done before), and the figures after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockAnswer {
    pub changed: bool,
    pub figures: StockFigures,
}

#[derive(Debug)]
pub(crate) struct StockBook {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    rewards: parking_lot::Mutex<HashMap<StreamId, Arc<Room>>>,
}

/// One reward's stock as this node last read it, and the operations waiting for it.
#[derive(Debug, Default)]
struct Room {
    state: tokio::sync::Mutex<StockState>,
    waiting: parking_lot::Mutex<Vec<Waiter>>,
    /// A task is serving the waiting operations.
    serving: AtomicBool,
}

#[derive(Debug)]
struct Waiter {
    op: StockOp,
    meta: CommandMeta,
    reply: oneshot::Sender<Result<StockAnswer, StockError>>,
}

impl StockBook {
    pub(crate) fn new(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock, rewards: parking_lot::Mutex::default() }
    }

    fn room(&self, stream: &StreamId) -> Arc<Room> {
        Arc::clone(self.rewards.lock().entry(stream.clone()).or_default())
    }

    /// Runs `op` on the stock of `stream`, in a batch with whatever else waits for it. The batches are
    /// served by a task of their own, not by a caller: a caller that goes away (its deadline passed)
    /// abandons only its own answer, never the batch it is in.
    pub(crate) async fn run(&self, stream: &StreamId, op: StockOp, meta: CommandMeta) -> Result<StockAnswer, StockError> {
        let room = self.room(stream);
        let (reply, answer) = oneshot::channel();
        room.waiting.lock().push(Waiter { op, meta, reply });
        if !room.serving.swap(true, Ordering::AcqRel) {
            let (store, clock, stream) = (Arc::clone(&self.store), Arc::clone(&self.clock), stream.clone());
            tokio::spawn(serve_room(room, store, clock, stream));
        }
        answer.await.unwrap_or_else(|_| Err(StoreError::Unavailable { reason: "the stock's batch was abandoned".into() }.into()))
    }

    /// The stock's figures now (read up to the log's latest).
    pub(crate) async fn figures(&self, stream: &StreamId) -> Result<StockFigures, StockError> {
        let room = self.room(stream);
        let mut state = room.state.lock().await;
        catch_up(self.store.as_ref(), stream, &mut state).await?;
        Ok(StockFigures::of(&state))
    }
}

/// Serves a room's waiting operations, batch by batch, until none is left.
async fn serve_room(room: Arc<Room>, store: Arc<dyn EventStore>, clock: Arc<dyn Clock>, stream: StreamId) {
    let mut state = room.state.lock().await;
    loop {
        let batch: Vec<Waiter> = {
            let mut waiting = room.waiting.lock();
            let take = waiting.len().min(APPEND_EVENTS_MAX);
            if take == 0 {
                // Under the queue's lock: an operation queued after this sees `serving` false and starts
                // a server of its own.
                room.serving.store(false, Ordering::Release);
                return;
            }
            waiting.drain(..take).collect()
        };
        serve(store.as_ref(), clock.as_ref(), &stream, &mut state, batch).await;
    }
}

async fn catch_up(store: &dyn EventStore, stream: &StreamId, state: &mut StockState) -> Result<(), StockError> {
    loop {
        let events = store.read_stream(stream, state.version + 1, READ_BATCH_EVENTS).await?;
        if events.is_empty() {
            return Ok(());
        }
        for recorded in events {
            let event = codec::decode_stock(recorded)?;
            apply_stock(state, &event);
            forget_past(state, event.recorded_at_ms);
        }
    }
}

/// Decides the batch in order, appends what it changed in one append, and answers every waiter.
async fn serve(store: &dyn EventStore, clock: &dyn Clock, stream: &StreamId, state: &mut StockState, batch: Vec<Waiter>) {
    let mut attempt = 0;
    let answers = loop {
        attempt += 1;
        if let Err(error) = catch_up(store, stream, state).await {
            break Err(error);
        }
        let now_ms = clock.now_ms();
        let expected = state.version;
        // Decided in order against the stock as each earlier op left it, applied as decided, and taken
        // back if the append fails.
        let mut decided = Vec::new();
        let mut events = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        for waiter in &batch {
            answers.push(match decide_stock(state, &waiter.op, now_ms) {
                Ok(Some(event)) => {
                    apply_stock(state, &event);
                    events.push(codec::encode_stock(&event, &waiter.meta));
                    decided.push(event);
                    Ok(StockAnswer { changed: true, figures: StockFigures::of(state) })
                }
                Ok(None) => Ok(StockAnswer { changed: false, figures: StockFigures::of(state) }),
                Err(rejection) => Err(rejection),
            });
        }
        if events.is_empty() {
            break Ok(answers);
        }
        let appended = store.append(stream, ExpectedVersion::Exact(expected), events).await;
        if appended.is_err() {
            decided.iter().rev().for_each(|event| revert_stock(state, event));
        }
        match appended {
            Ok(_) => {
                forget_past(state, now_ms);
                break Ok(answers);
            }
            // Another node moved the stock: read it and decide the batch again, after a random wait of
            // up to `CONFLICT_WAIT_MAX_MS` (doubling) so the nodes fall out of step.
            Err(StoreError::VersionConflict { .. }) if attempt < CONFLICT_ATTEMPTS => {
                let ceiling = CONFLICT_WAIT_MAX_MS.min(1 << attempt.min(6));
                let wait = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), attempt) % (ceiling + 1);
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            }
            Err(error) => break Err(StockError::Store(error)),
        }
    };
    match answers {
        Ok(answers) => {
            for (waiter, answer) in batch.into_iter().zip(answers) {
                let _ = waiter.reply.send(answer.map_err(StockError::from));
            }
        }
        Err(error) => {
            // The outcome of a failed append is unknown: every waiter learns it may retry (each op is
            // idempotent); a stock that cannot be read is reported as such.
            let corrupt = matches!(error, StockError::Codec(_));
            let reason = error.to_string();
            for waiter in batch {
                let answer = match (&error, corrupt) {
                    (StockError::Codec(codec), true) => StockError::Codec(codec.clone()),
                    _ => StoreError::Unavailable { reason: format!("the reward's stock: {reason}") }.into(),
                };
                let _ = waiter.reply.send(Err(answer));
            }
        }
    }
}
