//! The runner's task: follows the live generation from its checkpoint (batches read and decoded ahead
//! by a [`Replay`]), retries failed batches with backoff, quarantines the events of a batch that its
//! read model refuses, stops on fatal errors, records lag, and swaps in a rebuilt generation once it is
//! ready.

use std::sync::Arc;
use std::time::Duration;

use tally_engine::clock::{Clock, SystemClock};
use tally_engine::store::EventStore;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::lag::LagWindow;
use super::rebuild::Rebuild;
use super::{
    Control, FOLLOW_RETRY_FIRST, LEASE_POLL, LOG_READ_RETRY, ProjectionStatus, RebuildPhase, RebuildProgress, RunState, RunnerOptions,
};
use crate::backoff::Backoff;
use crate::movement::decode_events;
use crate::quarantine::{QuarantineSummary, QuarantinedEvent, apply_quarantining};
use crate::replay::{DecodedBatch, Replay};
use crate::{ProjectionError, ReadModel};

/// One task per read model; [`super::Projection`] is its handle.
pub(super) struct Runner {
    pub(super) store: Arc<dyn EventStore>,
    pub(super) model: Arc<dyn ReadModel>,
    pub(super) options: RunnerOptions,
    pub(super) status: watch::Sender<ProjectionStatus>,
    /// Weak, so dropping every `Projection` handle ends the runner.
    pub(super) control_tx: mpsc::WeakSender<Control>,
    pub(super) control: mpsc::Receiver<Control>,
    pub(super) lag: LagWindow,
    pub(super) started_at_ms: i64,
    pub(super) rebuild_task: Option<JoinHandle<()>>,
}

/// What ended a phase of the runner.
enum Exit {
    Stop,
    /// Re-read the live generation and follow again from its checkpoint.
    Restart,
    Fail(ProjectionError),
}

impl Runner {
    pub(super) async fn run(mut self) {
        let mut backoff = self.backoff();
        loop {
            if !self.await_lease().await {
                break;
            }
            let live = match self.model.live().await {
                Ok(live) => self.model.quarantine(live.id).await.map(|quarantine| (live, quarantine)),
                Err(error) => Err(error),
            };
            let exit = match live {
                Ok((live, quarantine)) => {
                    self.status.send_modify(|s| {
                        s.generation = live.id;
                        s.checkpoint = live.checkpoint;
                        s.state = RunState::Running;
                    });
                    self.show_quarantine(quarantine);
                    backoff = self.backoff();
                    self.follow(live.checkpoint).await
                }
                Err(error) if error.is_fatal() => Exit::Fail(error),
                Err(error) => {
                    tracing::warn!(projection = self.model.name(), %error, "cannot read the live generation; retrying");
                    self.status.send_modify(|s| s.state = RunState::Retrying { error: error.to_string() });
                    if self.pause(&mut backoff).await { Exit::Stop } else { Exit::Restart }
                }
            };
            match exit {
                Exit::Restart => continue,
                Exit::Stop => break,
                Exit::Fail(error) => {
                    tracing::error!(projection = self.model.name(), %error, "projection stopped");
                    // Another node may be able to go on (a newer build): it must not wait for this one.
                    self.model.end_lease().await;
                    self.status.send_modify(|s| s.state = RunState::Failed { error: error.to_string() });
                    // Parked: keeps answering control messages until told to stop.
                    while let Some(message) = self.control.recv().await {
                        match message {
                            Control::Stop => break,
                            Control::Rebuild(reply) => {
                                let _ = reply.send(Err(ProjectionError::Stopped { model: self.model.name() }));
                            }
                            Control::Swap { reply, .. } => {
                                let _ = reply.send(Err(ProjectionError::Stopped { model: self.model.name() }));
                            }
                        }
                    }
                    break;
                }
            }
        }
        if let Some(task) = self.rebuild_task.take() {
            task.abort();
        }
        if let Err(error) = self.model.flush().await {
            tracing::warn!(projection = self.model.name(), %error, "read model not flushed; it will re-apply the last batches from the log");
        }
        self.model.end_lease().await;
        self.status.send_modify(|s| {
            if !matches!(s.state, RunState::Failed { .. }) {
                s.state = RunState::Stopped;
            }
        });
    }

    /// Waits until this process holds the read model's lease, standing by meanwhile (the checkpoint shown
    /// is the holder's); false if told to stop.
    async fn await_lease(&mut self) -> bool {
        loop {
            match self.model.lease().await {
                Ok(true) => return true,
                Ok(false) => {
                    let live = self.model.live().await.ok();
                    self.status.send_modify(|s| {
                        s.state = RunState::Standby;
                        if let Some(live) = live {
                            (s.generation, s.checkpoint) = (live.id, live.checkpoint);
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(projection = self.model.name(), %error, "cannot ask for the read model's lease; retrying");
                    self.status.send_modify(|s| s.state = RunState::Retrying { error: error.to_string() });
                }
            }
            if self.stand_by(LEASE_POLL).await {
                return false;
            }
        }
    }

    /// Waits `wait` while another node runs the read model, answering control messages: a rebuild is
    /// refused as the other node's to run; true if told to stop.
    async fn stand_by(&mut self, wait: Duration) -> bool {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        let standby = || ProjectionError::Standby { model: self.model.name() };
        loop {
            tokio::select! {
                () = &mut sleep => return false,
                message = self.control.recv() => match message {
                    None | Some(Control::Stop) => return true,
                    Some(Control::Rebuild(reply)) => {
                        let _ = reply.send(Err(standby()));
                    }
                    Some(Control::Swap { reply, .. }) => {
                        let _ = reply.send(Err(standby()));
                    }
                },
            }
        }
    }

    /// Shows what the live generation holds in quarantine, in the status and the metrics.
    fn show_quarantine(&self, quarantine: QuarantineSummary) {
        metrics::gauge!("tally_projection_quarantined_events", "projection" => self.model.name()).set(quarantine.count as f64);
        self.status.send_modify(|s| {
            s.quarantined = quarantine.count;
            s.recent_quarantined = quarantine.recent;
        });
    }

    /// Adds events just quarantined in the live generation to the status and the metrics.
    fn quarantined(&self, events: &[QuarantinedEvent]) {
        if events.is_empty() {
            return;
        }
        let mut summary = {
            let status = self.status.borrow();
            QuarantineSummary { count: status.quarantined, recent: status.recent_quarantined.clone() }
        };
        summary.add(events);
        metrics::counter!("tally_projection_quarantined_events_total", "projection" => self.model.name()).increment(events.len() as u64);
        self.show_quarantine(summary);
    }

    /// How a follower retries: from [`FOLLOW_RETRY_FIRST`] up to `retry_max`, for as long as it takes.
    fn backoff(&self) -> Backoff {
        Backoff::new(FOLLOW_RETRY_FIRST, self.options.retry_max)
    }

    /// Sleeps for the backoff's next wait unless told to stop; returns true if told to stop.
    async fn pause(&mut self, backoff: &mut Backoff) -> bool {
        let sleep = tokio::time::sleep(backoff.wait());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return false,
                message = self.control.recv() => match message {
                    None | Some(Control::Stop) => return true,
                    Some(other) => self.handle_control_while_busy(other),
                },
            }
        }
    }

    fn handle_control_while_busy(&mut self, message: Control) {
        let busy = || ProjectionError::Busy { model: self.model.name() };
        match message {
            Control::Rebuild(reply) => {
                let _ = reply.send(Err(busy()));
            }
            Control::Swap { reply, .. } => {
                let _ = reply.send(Err(busy()));
            }
            Control::Stop => {}
        }
    }

    async fn follow(&mut self, checkpoint: u64) -> Exit {
        let mut reader = Replay::follow(Arc::clone(&self.store), checkpoint, self.options.batch_size, self.options.trace_calls);
        let mut head = self.store.head();
        let mut head_open = true;
        let mut lease_check = tokio::time::interval(LEASE_POLL);
        loop {
            tokio::select! {
                biased;
                message = self.control.recv() => match message {
                    None | Some(Control::Stop) => return Exit::Stop,
                    Some(Control::Rebuild(reply)) => self.start_rebuild(reply),
                    Some(Control::Swap { generation, checkpoint, reply }) => match self.swap(generation, checkpoint).await {
                        Ok(live_checkpoint) => {
                            let _ = reply.send(Ok(()));
                            reader = Replay::follow(Arc::clone(&self.store), live_checkpoint, self.options.batch_size, self.options.trace_calls);
                        }
                        Err(error) => {
                            // Whatever happened, the live generation is what the model says it is now.
                            let _ = reply.send(Err(error));
                            return Exit::Restart;
                        }
                    },
                },
                changed = head.changed(), if head_open => match changed {
                    Ok(()) => {
                        let position = *head.borrow_and_update();
                        self.status.send_modify(|s| s.head = position);
                    }
                    Err(_) => head_open = false,
                },
                _ = lease_check.tick() => {
                    if !matches!(self.model.lease().await, Ok(true)) {
                        tracing::warn!(projection = self.model.name(), "lost the read model's lease; standing by");
                        // A rebuild of ours could never be swapped in by another node's runner: given up.
                        if let Some(task) = self.rebuild_task.take() {
                            task.abort();
                        }
                        return Exit::Restart;
                    }
                }
                batch = reader.next() => match batch {
                    Some(Ok(batch)) => {
                        if let Some(exit) = self.apply_live(batch).await {
                            return exit;
                        }
                    }
                    None => return Exit::Stop,
                    Some(Err(error)) if error.is_fatal() => return Exit::Fail(error),
                    Some(Err(error)) => {
                        // Shown in the store's own words, as before the reader decoded too.
                        let error = match error {
                            ProjectionError::Store(error) => error.to_string(),
                            other => other.to_string(),
                        };
                        tracing::warn!(projection = self.model.name(), %error, "cannot read the log; retrying");
                        self.status.send_modify(|s| s.state = RunState::Retrying { error });
                        if self.pause(&mut Backoff::new(LOG_READ_RETRY, LOG_READ_RETRY)).await {
                            return Exit::Stop;
                        }
                        return Exit::Restart;
                    }
                },
            }
        }
    }

    /// Applies one batch to the live generation, retrying transient failures. `Some` ends following.
    async fn apply_live(&mut self, batch: DecodedBatch) -> Option<Exit> {
        let DecodedBatch { from, through, first_recorded_ms, movements, poisoned, calls } = batch;
        self.status.send_modify(|s| s.behind_since_ms = Some(first_recorded_ms));
        let generation = self.status.borrow().generation;
        let mut backoff = self.backoff();
        let span = crate::traces::apply_span(self.model.name(), through - from, &calls);
        loop {
            match apply_quarantining(&*self.model, generation, from, through, &movements, &poisoned).instrument(span.clone()).await {
                Ok(quarantined) => {
                    self.quarantined(&quarantined);
                    break;
                }
                Err(error @ (ProjectionError::CheckpointMoved { .. } | ProjectionError::NoSuchGeneration { .. })) => {
                    tracing::info!(projection = self.model.name(), %error, "another runner moved on; following the live generation from its checkpoint");
                    return Some(Exit::Restart);
                }
                Err(error) if error.is_fatal() => return Some(Exit::Fail(error)),
                Err(error) => {
                    tracing::warn!(projection = self.model.name(), %error, through, "batch failed; retrying");
                    self.status.send_modify(|s| s.state = RunState::Retrying { error: error.to_string() });
                    if self.pause(&mut backoff).await {
                        return Some(Exit::Stop);
                    }
                }
            }
        }
        let now = SystemClock.now_ms();
        for movement in movements.iter() {
            if movement.recorded_at_ms >= self.started_at_ms {
                self.lag.record(now, u64::try_from(now - movement.recorded_at_ms).unwrap_or(0));
            }
        }
        let applied = through - from;
        let name = self.model.name();
        metrics::counter!("tally_projection_events_total", "projection" => name).increment(applied);
        metrics::gauge!("tally_projection_checkpoint", "projection" => name).set(through as f64);
        let (lag_p50, lag_p99) = self.lag.quantiles();
        self.status.send_modify(|s| {
            s.checkpoint = through;
            s.head = s.head.max(through);
            s.state = RunState::Running;
            s.events_applied += applied;
            s.lag_p50_ms = lag_p50;
            s.lag_p99_ms = lag_p99;
            if s.head <= through {
                s.behind_since_ms = None;
            }
            metrics::gauge!("tally_projection_lag_events", "projection" => name).set(s.lag_events() as f64);
            metrics::gauge!("tally_projection_lag_seconds", "projection" => name).set(s.lag_ms(now) as f64 / 1000.0);
        });
        None
    }

    fn start_rebuild(&mut self, reply: oneshot::Sender<Result<watch::Receiver<RebuildProgress>, ProjectionError>>) {
        if self.rebuild_task.as_ref().is_some_and(|task| !task.is_finished()) {
            let _ = reply.send(Err(ProjectionError::RebuildRunning { model: self.model.name() }));
            return;
        }
        let head = *self.store.head().borrow();
        let (progress_tx, progress) =
            watch::channel(RebuildProgress { generation: 0, checkpoint: 0, head, events_per_second: 0.0, phase: RebuildPhase::Replaying });
        let rebuild = Rebuild {
            store: Arc::clone(&self.store),
            model: Arc::clone(&self.model),
            batch_size: self.options.rebuild_batch_size,
            control: self.control_tx.clone(),
            status: self.status.clone(),
            progress: progress_tx,
        };
        self.rebuild_task = Some(tokio::spawn(rebuild.run()));
        let _ = reply.send(Ok(progress));
    }

    /// Brings `generation` from `checkpoint` to the live checkpoint, promotes it, and returns the
    /// checkpoint live following resumes from.
    async fn swap(&mut self, generation: u64, checkpoint: u64) -> Result<u64, ProjectionError> {
        let mut position = checkpoint;
        loop {
            // Another node may have taken the live generation further than this runner knows.
            let known = self.status.borrow().checkpoint;
            let live_checkpoint = known.max(self.model.live().await?.checkpoint);
            while position < live_checkpoint {
                let limit = usize::try_from(live_checkpoint - position).unwrap_or(usize::MAX).min(self.options.batch_size);
                let events = self.store.read_all(position + 1, limit).await?;
                let Some(through) = events.last().map(|e| e.global_position) else { break };
                let decoded = decode_events(events);
                let (movements, poisoned) = (decoded.movements.into(), decoded.poisoned.into());
                apply_quarantining(&*self.model, generation, position, through, &movements, &poisoned).await?;
                position = through;
            }
            match self.model.promote(generation).await {
                Ok(()) => break,
                Err(ProjectionError::Behind { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
        tracing::info!(projection = self.model.name(), generation, checkpoint = position, "rebuilt generation swapped in");
        self.status.send_modify(|s| {
            s.generation = generation;
            s.checkpoint = position;
        });
        match self.model.quarantine(generation).await {
            Ok(quarantine) => self.show_quarantine(quarantine),
            Err(error) => tracing::warn!(projection = self.model.name(), %error, "cannot read the rebuilt generation's quarantine"),
        }
        Ok(position)
    }
}
