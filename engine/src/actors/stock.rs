//! Rewards' stock, one aggregate per limited reward on stream `<tenant>/reward/<reward_id>`
//! (`crate::domain::rewards`). A hot reward is where redemptions contend, so operations on one reward
//! that arrive while an append is on its way wait and go together in the next one, decided in order
//! against the stock as each earlier one left it: a burst costs one append per round trip of the log, not
//! one each. The append carries the version it expects; another node's append in between is a conflict,
//! after which the stock is read again and the batch decided anew.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::CommandMeta;
use crate::clock::Clock;
use crate::codec::{self, CodecError};
use crate::domain::rewards::{StockOp, StockRejection, StockState, apply_stock, decide_stock};
use crate::limits::APPEND_EVENTS_MAX;
use crate::store::{EventStore, ExpectedVersion, StoreError, StreamId};

/// Attempts at one batch while other nodes append to the same stock.
const CONFLICT_ATTEMPTS: u32 = 32;
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

    /// Runs `op` on the stock of `stream`, in a batch with whatever else waits for it.
    pub(crate) async fn run(&self, stream: &StreamId, op: StockOp, meta: CommandMeta) -> Result<StockAnswer, StockError> {
        let room = Arc::clone(self.rewards.lock().entry(stream.clone()).or_default());
        let (reply, answer) = oneshot::channel();
        room.waiting.lock().push(Waiter { op, meta, reply });
        {
            // Whoever holds the stock serves everyone waiting, batch by batch; a caller that gets it after
            // its own batch was served finds nothing to do.
            let mut state = room.state.lock().await;
            loop {
                let batch: Vec<Waiter> = {
                    let mut waiting = room.waiting.lock();
                    let take = waiting.len().min(APPEND_EVENTS_MAX);
                    waiting.drain(..take).collect()
                };
                if batch.is_empty() {
                    break;
                }
                self.serve(stream, &mut state, batch).await;
            }
        }
        answer.await.unwrap_or_else(|_| Err(StoreError::Unavailable { reason: "the stock's batch was abandoned".into() }.into()))
    }

    /// The stock's figures now (read up to the log's latest).
    pub(crate) async fn figures(&self, stream: &StreamId) -> Result<StockFigures, StockError> {
        let room = Arc::clone(self.rewards.lock().entry(stream.clone()).or_default());
        let mut state = room.state.lock().await;
        self.catch_up(stream, &mut state).await?;
        Ok(StockFigures::of(&state))
    }

    async fn catch_up(&self, stream: &StreamId, state: &mut StockState) -> Result<(), StockError> {
        loop {
            let events = self.store.read_stream(stream, state.version + 1, READ_BATCH_EVENTS).await?;
            if events.is_empty() {
                return Ok(());
            }
            for recorded in events {
                apply_stock(state, &codec::decode_stock(recorded)?);
            }
        }
    }

    /// Decides the batch in order, appends what it changed in one append, and answers every waiter.
    async fn serve(&self, stream: &StreamId, state: &mut StockState, batch: Vec<Waiter>) {
        let mut attempt = 0;
        let answers = loop {
            attempt += 1;
            if let Err(error) = self.catch_up(stream, state).await {
                break Err(error);
            }
            let now_ms = self.clock.now_ms();
            let mut next = state.clone();
            let mut events = Vec::new();
            let mut answers = Vec::with_capacity(batch.len());
            for waiter in &batch {
                answers.push(match decide_stock(&next, &waiter.op, now_ms) {
                    Ok(Some(event)) => {
                        apply_stock(&mut next, &event);
                        events.push(codec::encode_stock(&event, &waiter.meta));
                        Ok(StockAnswer { changed: true, figures: StockFigures::of(&next) })
                    }
                    Ok(None) => Ok(StockAnswer { changed: false, figures: StockFigures::of(&next) }),
                    Err(rejection) => Err(rejection),
                });
            }
            if events.is_empty() {
                break Ok(answers);
            }
            match self.store.append(stream, ExpectedVersion::Exact(state.version), events).await {
                Ok(outcome) => {
                    debug_assert_eq!(outcome.last_version, next.version);
                    *state = next;
                    break Ok(answers);
                }
                // Another node moved the stock: read it and decide the batch again.
                Err(StoreError::VersionConflict { .. }) if attempt < CONFLICT_ATTEMPTS => {}
                Err(error) => break Err(error.into()),
            }
        };
        match answers {
            Ok(answers) => {
                for (waiter, answer) in batch.into_iter().zip(answers) {
                    let _ = waiter.reply.send(answer.map_err(StockError::from));
                }
            }
            Err(error) => {
                let reason = error.to_string();
                for waiter in batch {
                    let _ = waiter.reply.send(Err(StoreError::Unavailable { reason: format!("the reward's stock: {reason}") }.into()));
                }
            }
        }
    }
}
