//! The projection runner: one task per read model that follows the log from the live generation's
//! checkpoint and applies it in batches.
//!
//! - Back-pressure is by construction: the next batch is read only once the previous one is committed.
//! - Transient failures (database down, store hiccup) are retried with backoff from the same batch;
//!   a fatal one (a poison event, corrupt read-model data) stops the projection and names the cause.
//! - A rebuild replays the log into a new generation beside the live one, which keeps serving reads;
//!   once the new one has caught up, the runner brings it to the live checkpoint and swaps it in.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tally_engine::clock::{Clock, SystemClock};
use tally_engine::store::{EventStore, Follower, RecordedEvent, StoreError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::movement::{Movement, decode_batch};
use crate::replay::{DecodedBatch, Replay};
use crate::{ProjectionError, ReadModel};

#[derive(Debug, Clone, Copy)]
pub struct RunnerOptions {
    /// Most log events applied in one atomic write while following.
    pub batch_size: usize,
    /// The same during a rebuild's replay: larger batches fold more events into each row write.
    pub rebuild_batch_size: usize,
    /// Longest wait between retries of a failing batch.
    pub retry_max: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self { batch_size: 2_000, rebuild_batch_size: 50_000, retry_max: Duration::from_secs(5) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Starting,
    Running,
    /// A batch failed and is being retried.
    Retrying {
        error: String,
    },
    /// Stopped on an error retrying cannot fix; the read model stays at its last checkpoint.
    Failed {
        error: String,
    },
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebuildPhase {
    /// Replaying the log into the new generation.
    Replaying,
    /// Caught up; bringing it to the live checkpoint and swapping it in.
    Swapping,
    Done,
    /// Nothing was swapped: the live read model is untouched.
    Failed {
        error: String,
    },
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RebuildProgress {
    pub generation: u64,
    pub checkpoint: u64,
    /// The log head when this progress was reported.
    pub head: u64,
    pub events_per_second: f64,
    pub phase: RebuildPhase,
}

impl RebuildProgress {
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, RebuildPhase::Done | RebuildPhase::Failed { .. } | RebuildPhase::Cancelled)
    }
}

/// What `tally projections status` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionStatus {
    pub name: &'static str,
    pub generation: u64,
    pub checkpoint: u64,
    pub head: u64,
    pub state: RunState,
    /// Recorded time of the oldest event not yet applied; `None` when caught up.
    pub behind_since_ms: Option<i64>,
    pub events_applied: u64,
    /// Lag from an event's recorded time to its commit in the read model, over the events of the last
    /// one to two minutes written since the runner started (start-up catch-up does not count, and an
    /// old spike does not hide how it is doing now).
    pub lag_p50_ms: Option<u64>,
    pub lag_p99_ms: Option<u64>,
    pub rebuild: Option<RebuildProgress>,
}

impl ProjectionStatus {
    pub fn lag_events(&self) -> u64 {
        self.head.saturating_sub(self.checkpoint)
    }

    /// How far behind the read model is in time, at `now_ms`.
    pub fn lag_ms(&self, now_ms: i64) -> u64 {
        self.behind_since_ms.map_or(0, |since| u64::try_from(now_ms - since).unwrap_or(0))
    }
}

enum Control {
    Rebuild(oneshot::Sender<Result<watch::Receiver<RebuildProgress>, ProjectionError>>),
    Swap { generation: u64, checkpoint: u64, reply: oneshot::Sender<Result<(), ProjectionError>> },
    Stop,
}

/// A running projection: its status, and the handle to rebuild or stop it.
#[derive(Debug)]
pub struct Projection {
    name: &'static str,
    status: watch::Receiver<ProjectionStatus>,
    control: mpsc::Sender<Control>,
    task: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Rebuild(_) => "Rebuild",
            Control::Swap { .. } => "Swap",
            Control::Stop => "Stop",
        })
    }
}

impl Projection {
    /// Starts following `store` into `model`.
    pub fn spawn(store: Arc<dyn EventStore>, model: Arc<dyn ReadModel>, options: RunnerOptions) -> Self {
        let name = model.name();
        let head = *store.head().borrow();
        let (status_tx, status) = watch::channel(ProjectionStatus {
            name,
            generation: 0,
            checkpoint: 0,
            head,
            state: RunState::Starting,
            behind_since_ms: None,
            events_applied: 0,
            lag_p50_ms: None,
            lag_p99_ms: None,
            rebuild: None,
        });
        let (control, control_rx) = mpsc::channel(16);
        let runner = Runner {
            store,
            model,
            options,
            status: status_tx,
            control_tx: control.downgrade(),
            control: control_rx,
            lag: LagWindow::new(SystemClock.now_ms()),
            started_at_ms: SystemClock.now_ms(),
            rebuild_task: None,
        };
        let task = tokio::spawn(runner.run());
        Self { name, status, control, task: parking_lot::Mutex::new(Some(task)) }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn status(&self) -> ProjectionStatus {
        let mut status = self.status.borrow().clone();
        // The runner only lets go of its status when its task ends; if it ended without saying why, it
        // panicked (and logged it).
        if self.status.has_changed().is_err() && !matches!(status.state, RunState::Failed { .. } | RunState::Stopped) {
            status.state = RunState::Failed { error: "the projection task ended unexpectedly; see the server log".to_owned() };
        }
        status
    }

    pub fn watch(&self) -> watch::Receiver<ProjectionStatus> {
        self.status.clone()
    }

    /// Waits until the live read model has applied the log up to `position`.
    pub async fn wait_for(&self, position: u64) -> Result<(), ProjectionError> {
        let mut status = self.status.clone();
        let result = status
            .wait_for(|s| s.checkpoint >= position || matches!(s.state, RunState::Failed { .. } | RunState::Stopped))
            .await
            .map_err(|_| ProjectionError::Stopped { model: self.name })?;
        match &result.state {
            _ if result.checkpoint >= position => Ok(()),
            RunState::Failed { error } => Err(ProjectionError::Invalid(error.clone())),
            _ => Err(ProjectionError::Stopped { model: self.name }),
        }
    }

    /// Starts a blue/green rebuild; progress ends in `Done`, `Failed` or `Cancelled`. Dropping every
    /// receiver of the progress cancels the rebuild and leaves the live read model untouched.
    pub async fn rebuild(&self) -> Result<watch::Receiver<RebuildProgress>, ProjectionError> {
        let (reply, answer) = oneshot::channel();
        self.control.send(Control::Rebuild(reply)).await.map_err(|_| ProjectionError::Stopped { model: self.name })?;
        answer.await.map_err(|_| ProjectionError::Stopped { model: self.name })?
    }

    /// Stops after the batch in flight. A rebuild in progress is abandoned; the next rebuild (or, for
    /// sled, the next start) drops what it left.
    pub async fn stop(&self) {
        let _ = self.control.send(Control::Stop).await;
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

struct Runner {
    store: Arc<dyn EventStore>,
    model: Arc<dyn ReadModel>,
    options: RunnerOptions,
    status: watch::Sender<ProjectionStatus>,
    /// Weak, so dropping every [`Projection`] handle ends the runner.
    control_tx: mpsc::WeakSender<Control>,
    control: mpsc::Receiver<Control>,
    lag: LagWindow,
    started_at_ms: i64,
    rebuild_task: Option<JoinHandle<()>>,
}

/// How long each of the two lag histograms covers.
const LAG_WINDOW_MS: i64 = 60_000;

/// Lag samples of the current minute and of the one before: quantiles cover the last one to two minutes.
struct LagWindow {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    current_since_ms: i64,
}

impl LagWindow {
    fn new(now_ms: i64) -> Self {
        let empty = Histogram::new_with_bounds(1, 3_600_000, 2).expect("valid histogram bounds");
        Self { current: empty.clone(), previous: empty, current_since_ms: now_ms }
    }

    fn record(&mut self, now_ms: i64, lag_ms: u64) {
        let elapsed = now_ms - self.current_since_ms;
        if elapsed >= LAG_WINDOW_MS {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.reset();
            // A quiet stretch of more than a window leaves nothing older behind.
            if elapsed >= 2 * LAG_WINDOW_MS {
                self.previous.reset();
            }
            // Windows stay aligned, so the two cover at most the last two minutes.
            self.current_since_ms += elapsed - elapsed % LAG_WINDOW_MS;
        }
        // Beyond the histogram's hour it counts as an hour, not as nothing.
        self.current.saturating_record(lag_ms.max(1));
    }

    /// `(p50, p99)` in ms, if there are samples.
    fn quantiles(&self) -> (Option<u64>, Option<u64>) {
        let mut both = self.current.clone();
        let _ = both.add(&self.previous);
        if both.is_empty() { (None, None) } else { (Some(both.value_at_quantile(0.5)), Some(both.value_at_quantile(0.99))) }
    }
}

/// What ended a phase of the runner.
enum Exit {
    Stop,
    /// Re-read the live generation and follow again from its checkpoint.
    Restart,
    Fail(ProjectionError),
}

impl Runner {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let exit = match self.model.live().await {
                Ok(live) => {
                    self.status.send_modify(|s| {
                        s.generation = live.id;
                        s.checkpoint = live.checkpoint;
                        s.state = RunState::Running;
                    });
                    backoff = Duration::from_millis(50);
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
        self.status.send_modify(|s| {
            if !matches!(s.state, RunState::Failed { .. }) {
                s.state = RunState::Stopped;
            }
        });
    }

    /// Sleeps for the backoff (doubling it) unless told to stop; returns true if told to stop.
    async fn pause(&mut self, backoff: &mut Duration) -> bool {
        let sleep = tokio::time::sleep(*backoff);
        *backoff = (*backoff * 2).min(self.options.retry_max);
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
        let mut reader = Reader::spawn(Arc::clone(&self.store), checkpoint, self.options.batch_size);
        let mut head = self.store.head();
        let mut head_open = true;
        loop {
            tokio::select! {
                biased;
                message = self.control.recv() => match message {
                    None | Some(Control::Stop) => return Exit::Stop,
                    Some(Control::Rebuild(reply)) => self.start_rebuild(reply),
                    Some(Control::Swap { generation, checkpoint, reply }) => match self.swap(generation, checkpoint).await {
                        Ok(live_checkpoint) => {
                            let _ = reply.send(Ok(()));
                            reader = Reader::spawn(Arc::clone(&self.store), live_checkpoint, self.options.batch_size);
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
                batch = reader.next() => match batch {
                    Ok(Some(events)) => {
                        if let Some(exit) = self.apply_live(events).await {
                            return exit;
                        }
                    }
                    Ok(None) => return Exit::Stop,
                    Err(error) => {
                        tracing::warn!(projection = self.model.name(), %error, "cannot read the log; retrying");
                        self.status.send_modify(|s| s.state = RunState::Retrying { error: error.to_string() });
                        let mut backoff = Duration::from_millis(100);
                        if self.pause(&mut backoff).await {
                            return Exit::Stop;
                        }
                        return Exit::Restart;
                    }
                },
            }
        }
    }

    /// Applies one batch to the live generation, retrying transient failures. `Some` ends following.
    async fn apply_live(&mut self, events: Vec<RecordedEvent>) -> Option<Exit> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else { return None };
        let through = last.global_position;
        let from = first.global_position - 1;
        let first_recorded = first.data.recorded_at_ms;
        self.status.send_modify(|s| s.behind_since_ms = Some(first_recorded));
        let movements: Arc<[Movement]> = match decode_batch(events) {
            Ok(movements) => movements.into(),
            Err(error) => return Some(Exit::Fail(error)),
        };
        let generation = self.status.borrow().generation;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.model.apply(generation, from, through, Arc::clone(&movements)).await {
                Ok(()) => break,
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
                self.model.apply(generation, position, through, decode_batch(events)?.into()).await?;
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
        Ok(position)
    }
}

/// Reads the log ahead of the runner on a task of its own, into a buffer of at most one batch that the
/// runner empties whole when it is ready: a batch it applies holds everything read up to that moment,
/// so its events wait for one apply at most (not for a batch queued behind the one being applied). A
/// read in flight is never abandoned when the runner wakes up for something else.
struct Reader {
    shared: Arc<ReadAhead>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct ReadAhead {
    state: parking_lot::Mutex<ReadState>,
    /// Events (or the end) arrived.
    ready: tokio::sync::Notify,
    /// The runner took the buffer.
    taken: tokio::sync::Notify,
}

#[derive(Default)]
struct ReadState {
    events: Vec<RecordedEvent>,
    /// Set once the reader stopped: `Ok(None)` at the end of the log, or the error it stopped on.
    end: Option<Result<Option<Vec<RecordedEvent>>, StoreError>>,
}

impl Reader {
    fn spawn(store: Arc<dyn EventStore>, after: u64, batch_size: usize) -> Self {
        let shared = Arc::new(ReadAhead::default());
        let ahead = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let mut follower = Follower::new(store, after);
            loop {
                let room = batch_size.saturating_sub(ahead.state.lock().events.len());
                if room == 0 {
                    let taken = ahead.taken.notified();
                    if ahead.state.lock().events.len() >= batch_size {
                        taken.await;
                    }
                    continue;
                }
                let batch = follower.next_batch(room).await;
                let mut state = ahead.state.lock();
                match batch {
                    Ok(Some(events)) => state.events.extend(events),
                    other => state.end = Some(other),
                }
                let stopped = state.end.is_some();
                drop(state);
                ahead.ready.notify_one();
                if stopped {
                    return;
                }
            }
        });
        Self { shared, task }
    }

    /// Everything read so far, waiting for at least one event; then the end (`Ok(None)`) or the error
    /// the reader stopped on. Cancel safe.
    async fn next(&self) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        loop {
            let ready = self.shared.ready.notified();
            {
                let mut state = self.shared.state.lock();
                if !state.events.is_empty() {
                    let events = std::mem::take(&mut state.events);
                    drop(state);
                    self.shared.taken.notify_one();
                    return Ok(Some(events));
                }
                if let Some(end) = state.end.take() {
                    // Answered once; the reader has stopped for good.
                    state.end = Some(Ok(None));
                    return end;
                }
            }
            ready.await;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Rebuild {
    store: Arc<dyn EventStore>,
    model: Arc<dyn ReadModel>,
    batch_size: usize,
    control: mpsc::WeakSender<Control>,
    status: watch::Sender<ProjectionStatus>,
    progress: watch::Sender<RebuildProgress>,
}

impl Rebuild {
    async fn run(self) {
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
        let mut backoff = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            match self.model.apply(generation, checkpoint, batch.through, Arc::clone(&batch.movements)).await {
                Err(error) if !error.is_fatal() && !matches!(error, ProjectionError::NoSuchGeneration { .. }) && attempts < 8 => {
                    attempts += 1;
                    tracing::warn!(projection = self.model.name(), %error, generation, attempts, "rebuild batch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                result => return result,
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
        let mut backoff = Duration::from_millis(100);
        loop {
            let (reply, answer) = oneshot::channel();
            let control = self.control.upgrade().ok_or_else(stopped)?;
            control.send(Control::Swap { generation, checkpoint, reply }).await.map_err(|_| stopped())?;
            drop(control);
            match answer.await.map_err(|_| stopped())? {
                Ok(()) => break,
                // The runner is retrying a failed batch: the rebuilt generation waits for it.
                Err(ProjectionError::Busy { .. }) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
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

#[cfg(test)]
mod tests {
    use super::{LAG_WINDOW_MS, LagWindow};

    #[test]
    fn lag_quantiles_cover_the_last_one_to_two_minutes() {
        let mut lag = LagWindow::new(0);
        assert_eq!(lag.quantiles(), (None, None));
        // A start-up spike, then steady small lags.
        lag.record(1_000, 5_000);
        for at in (2_000..LAG_WINDOW_MS).step_by(10) {
            lag.record(at, 20);
        }
        assert!(lag.quantiles().1.is_some_and(|p99| p99 >= 20));
        lag.record(LAG_WINDOW_MS + 1, 20);
        assert!(lag.quantiles().1.is_some_and(|p99| p99 < 5_000), "still within two minutes, but 1 sample in 5,800");
        lag.record(2 * LAG_WINDOW_MS + 2, 30);
        let (p50, p99) = lag.quantiles();
        assert_eq!((p50, p99.map(|p| p < 40)), (Some(20), Some(true)), "the spike's minute is gone");
        // A long quiet stretch forgets everything before it.
        lag.record(10 * LAG_WINDOW_MS, 7);
        assert_eq!(lag.quantiles(), (Some(7), Some(7)));
    }
}
