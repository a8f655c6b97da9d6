//! Following the log for the open flows, and driving on those that stopped: the process manager's memory
//! of what is left to do, rebuilt from the log at every start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{FlowError, Inner, READ_BATCH_EVENTS, RESUMING_MAX, RETRY_PAUSE_MAX_MS, SCAN_INTERVAL_MS, Unstarted, Until, Watched};
use crate::actors::{CommandMeta, WalletKey};
use crate::codec;
use crate::domain::WalletId;
use crate::domain::flows::{self, FlowState, apply_flow};
use crate::limits::{FLOW_RESUME_AFTER_MS, FLOW_STUCK_AFTER_MS};
use crate::store::{EventStore, Follower, StreamId};

/// Follows the log, keeping the open flows.
pub(super) async fn read(store: Arc<dyn EventStore>, inner: std::sync::Weak<Inner>) {
    let mut follower = Follower::new(store, 0);
    loop {
        let batch = follower.next_batch(READ_BATCH_EVENTS).await;
        let Some(inner) = inner.upgrade() else { return };
        match batch {
            Ok(Some(events)) => {
                refresh_credited(&inner, &events);
                note_unstarted(&inner, &events);
                // A short batch: the reader has reached the log's end (what it does not show started now
                // was not started before).
                if events.len() < READ_BATCH_EVENTS {
                    inner.caught_up.store(true, std::sync::atomic::Ordering::Release);
                }
                let reopened = fold(&mut inner.open.lock(), events);
                // A cancellation asked for after its redemption ended reopens a flow the reader let go
                // of: its state comes from the log (later events it holds are skipped when they come).
                for stream in reopened {
                    // Until it reads: a cancellation the reader lost track of would wait for its caller.
                    let state = loop {
                        match inner.load(&stream).await {
                            Ok(state) => break state,
                            Err(error) => {
                                tracing::warn!(%stream, %error, "a reopened flow cannot be read yet; retrying");
                                tokio::time::sleep(Duration::from_millis(SCAN_INTERVAL_MS)).await;
                            }
                        }
                    };
                    if state.is_open() {
                        inner.open.lock().insert(stream, Watched { state, last_error: None, attempts: 0, next_try_ms: 0, parked: false });
                    }
                }
                metrics::gauge!("tally_flows_open").set(inner.open.lock().len() as f64);
                inner.read_to.store(follower.next_position() - 1, std::sync::atomic::Ordering::Release);
            }
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, at = follower.next_position(), "flows cannot read the log; retrying");
                drop(inner);
                tokio::time::sleep(Duration::from_millis(SCAN_INTERVAL_MS)).await;
            }
        }
    }
}

/// A transfer's credit is written where the transfer is driven (the source's node), so a target live on
/// another node (its owner) is behind the log: it catches up before its next call rather than answer
/// from what it held (a balance without the points).
fn refresh_credited(inner: &Inner, events: &[crate::store::RecordedEvent]) {
    // What the driving node writes to a target: the credit, or the target's refusal.
    // A referral's reward is written where the referee lives, to the referrer: the same.
    let written = [
        crate::domain::Change::TransferredIn(Default::default()).event_type(),
        crate::domain::Change::TransferRefused(Default::default()).event_type(),
        crate::domain::Change::ReferralRewarded(Default::default()).event_type(),
    ];
    let credited = events
        .iter()
        .filter(|e| written.contains(&e.data.event_type.as_str()))
        .filter_map(|e| codec::wallet_of(e.stream_id.as_str()).map(|key| (key, e.stream_version)));
    for ((tenant, wallet), version) in credited {
        inner.registry.refresh(&WalletKey::new(tenant, wallet), version);
    }
}

/// Notes the flows the batch calls for (a converted referral's reward) and lets go of those it shows
/// started, in log order: a flow is always started after the event that calls for it.
fn note_unstarted(inner: &Inner, events: &[crate::store::RecordedEvent]) {
    let converted = crate::domain::Change::ReferralConverted(Default::default()).event_type();
    let mut unstarted = inner.unstarted.lock();
    for recorded in events {
        if recorded.data.event_type == converted
            && let Some((tenant, referee)) = codec::wallet_of(recorded.stream_id.as_str())
        {
            let called = match codec::decode(recorded.clone()).map(|e| e.change) {
                Ok(crate::domain::Change::ReferralConverted(converted)) => super::referral::referral_flow(&referee, &converted),
                Ok(_) => None,
                Err(error) => {
                    tracing::error!(stream = %recorded.stream_id, %error, "a referral's conversion cannot be read; its reward waits for a repair");
                    None
                }
            };
            let stream = codec::flow_stream(&tenant, &flows::referral_flow_id(referee.as_str()));
            if let (Some(_), Err(error)) = (&called, &stream) {
                tracing::error!(%error, "a referral's reward has no stream it can be driven on; it waits for a repair");
            }
            if let (Some(referral), Ok(stream)) = (called, stream) {
                let called_at_ms = recorded.data.recorded_at_ms;
                let unstarted_flow = Unstarted { tenant, referral, called_at_ms, next_try_ms: 0, last_error: None, attempts: 0 };
                unstarted.insert(stream, unstarted_flow);
            }
        } else if recorded.stream_version == 1 && codec::flow_of(recorded.stream_id.as_str()).is_some() {
            unstarted.remove(&recorded.stream_id);
        }
    }
    metrics::gauge!("tally_flows_unstarted").set(unstarted.len() as f64);
}

/// Starts the flows the log called for `FLOW_RESUME_AFTER_MS` ago and does not show started (their
/// caller died first), for wallets this node owns.
fn start_unstarted(inner: &Arc<Inner>, running: &Arc<tokio::sync::Semaphore>, now_ms: i64) {
    if !inner.caught_up.load(std::sync::atomic::Ordering::Acquire) {
        return;
    }
    let due: Vec<(StreamId, Unstarted)> = inner
        .unstarted
        .lock()
        .iter()
        .filter(|(_, u)| now_ms.saturating_sub(u.called_at_ms) >= FLOW_RESUME_AFTER_MS && u.next_try_ms <= now_ms)
        .map(|(stream, u)| (stream.clone(), u.clone()))
        .collect();
    for (stream, unstarted) in due {
        let owned = WalletId::parse(&unstarted.referral.referee_wallet_id)
            .is_ok_and(|referee| (inner.owns)(&WalletKey::new(unstarted.tenant.clone(), referee)));
        if !owned {
            continue;
        }
        let Ok(permit) = Arc::clone(running).try_acquire_owned() else { break };
        // Not again while this try runs.
        if let Some(u) = inner.unstarted.lock().get_mut(&stream) {
            u.next_try_ms = now_ms + FLOW_RESUME_AFTER_MS;
        }
        let inner = Arc::clone(inner);
        tokio::spawn(async move {
            let _permit = permit;
            let result = inner.reward_referral(&unstarted.tenant, unstarted.referral, &CommandMeta::default()).await;
            if let Err(error) = result {
                metrics::counter!("tally_flows_retries_total").increment(1);
                tracing::warn!(%stream, %error, "a flow the log calls for cannot start yet; retrying");
                if let Some(u) = inner.unstarted.lock().get_mut(&stream) {
                    u.attempts += 1;
                    let pause = (1_000_i64 << u.attempts.min(6)).min(RETRY_PAUSE_MAX_MS);
                    u.next_try_ms = inner.clock.now_ms() + pause;
                    u.last_error = Some(error.to_string());
                }
            }
        });
    }
}

/// Folds a batch of the log into the open flows: the flows it leaves open stay, the others go; the
/// streams of flows it reopens (not kept, and not starting here) are returned, to be read whole.
fn fold(open: &mut BTreeMap<StreamId, Watched>, events: Vec<crate::store::RecordedEvent>) -> Vec<StreamId> {
    let mut reopened = Vec::new();
    for recorded in events {
        if codec::flow_of(recorded.stream_id.as_str()).is_none() {
            continue;
        }
        let (stream, version) = (recorded.stream_id.clone(), recorded.stream_version);
        if !open.contains_key(&stream) && version > 1 {
            if !reopened.contains(&stream) {
                reopened.push(stream);
            }
            continue;
        }
        let event = match codec::decode_flow(recorded) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(%stream, %error, "a flow's event cannot be read; the flow waits for a repair");
                continue;
            }
        };
        let watched = open.entry(stream.clone()).or_insert_with(|| Watched {
            state: FlowState::default(),
            last_error: None,
            attempts: 0,
            next_try_ms: 0,
            parked: false,
        });
        // Already in a state read whole from the log.
        if version <= watched.state.version {
            continue;
        }
        apply_flow(&mut watched.state, &event);
        if watched.state.wallet_id().is_none() {
            tracing::error!(%stream, "a flow stream does not start with what it is to do; it is left alone");
            open.remove(&stream);
        } else if !watched.state.is_open() {
            open.remove(&stream);
        }
    }
    reopened
}

/// Drives on the open flows that made no progress for `FLOW_RESUME_AFTER_MS`.
pub(super) async fn resume(inner: std::sync::Weak<Inner>) {
    let running = Arc::new(tokio::sync::Semaphore::new(RESUMING_MAX));
    loop {
        tokio::time::sleep(Duration::from_millis(SCAN_INTERVAL_MS)).await;
        let Some(inner) = inner.upgrade() else { return };
        let now_ms = inner.clock.now_ms();
        start_unstarted(&inner, &running, now_ms);
        let due: Vec<(StreamId, FlowState)> = {
            let open = inner.open.lock();
            metrics::gauge!("tally_flows_stuck")
                .set(open.values().filter(|w| now_ms.saturating_sub(w.state.progress_at_ms) >= FLOW_STUCK_AFTER_MS).count() as f64);
            open.iter()
                .filter(|(_, w)| {
                    !w.parked && now_ms.saturating_sub(w.state.progress_at_ms) >= FLOW_RESUME_AFTER_MS && w.next_try_ms <= now_ms
                })
                .map(|(stream, w)| (stream.clone(), w.state.clone()))
                .collect()
        };
        for (stream, state) in due {
            let Some((tenant, _)) = codec::flow_of(stream.as_str()) else { continue };
            let owned = state
                .wallet_id()
                .and_then(|wallet| WalletId::parse(wallet).ok())
                .is_some_and(|wallet| (inner.owns)(&WalletKey::new(tenant.clone(), wallet)));
            let Ok(permit) = Arc::clone(&running).try_acquire_owned() else { break };
            if !owned {
                continue;
            }
            let lock = inner.lock_for(&stream);
            let Ok(guard) = lock.try_lock_owned() else { continue };
            let inner = Arc::clone(&inner);
            tokio::spawn(async move {
                let _permit = permit;
                let _guard = guard;
                // The log, not the reader's copy, says where the flow is.
                let result = match inner.load(&stream).await {
                    Ok(state) => inner.drive(&tenant, &stream, state, &CommandMeta::default(), Until::Settled).await.map(drop),
                    Err(error) => Err(error),
                };
                if let Err(error) = result {
                    metrics::counter!("tally_flows_retries_total").increment(1);
                    tracing::warn!(%stream, %error, "a flow cannot go on yet; retrying");
                    if let Some(watched) = inner.open.lock().get_mut(&stream) {
                        watched.parked = matches!(error, FlowError::NeedsOperator { .. });
                        watched.attempts += 1;
                        let pause = (1_000_i64 << watched.attempts.min(6)).min(RETRY_PAUSE_MAX_MS);
                        watched.next_try_ms = inner.clock.now_ms() + pause;
                        watched.last_error = Some(error.to_string());
                    }
                }
            });
        }
    }
}
