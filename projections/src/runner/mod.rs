//! The projection runner: one task per read model that follows the log from the live generation's
//! checkpoint and applies it in batches.
//!
//! - Back-pressure is by construction: the next batch is read only once the previous one is committed.
//! - Transient failures (database down, store hiccup) are retried with backoff from the same batch;
//!   a fatal one (corrupt read-model data, a failed migration) stops the projection and names the cause.
//! - Data errors (an event the read model cannot store, a poison event) are no reason to stop or retry:
//!   the events at fault are quarantined, the rest of the batch applied ([`crate::quarantine`]).
//! - A rebuild replays the log into a new generation beside the live one, which keeps serving reads;
//!   once the new one has caught up, the runner brings it to the live checkpoint and swaps it in.
//!
//! This file holds what callers see (options, states, status, the [`Projection`] handle); `follow`
//! is the runner's task, `rebuild` a rebuild's, `lag` the lag window.

use std::sync::Arc;
use std::time::Duration;

use tally_engine::clock::{Clock, SystemClock};
use tally_engine::store::EventStore;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use self::follow::Runner;
use self::lag::LagWindow;
use crate::quarantine::QuarantinedEvent;
use crate::{ProjectionError, ReadModel};

mod follow;
mod lag;
mod rebuild;

/// The first wait after a batch (or reading the live generation) failed while following; the waits
/// double up to [`RunnerOptions::retry_max`].
const FOLLOW_RETRY_FIRST: Duration = Duration::from_millis(50);
/// The wait before following again after a read of the log failed.
const LOG_READ_RETRY: Duration = Duration::from_millis(100);
/// How often a standing-by runner asks for the read model's lease, and a running one checks it still
/// holds it: a node takes over within this of the holder's lease ending.
const LEASE_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct RunnerOptions {
    /// Most log events applied in one atomic write while following.
    pub batch_size: usize,
    /// The same during a rebuild's replay: larger batches fold more events into each row write.
    pub rebuild_batch_size: usize,
    /// Longest wait between retries of a failing batch.
    pub retry_max: Duration,
    /// Joins each batch applied while following to the traces of the sampled calls that recorded it (a
    /// `projection.apply` span, see [`crate::traces`]): for a process that exports traces.
    pub trace_calls: bool,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self { batch_size: 2_000, rebuild_batch_size: 50_000, retry_max: Duration::from_secs(5), trace_calls: false }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Starting,
    Running,
    /// Another process holds the read model's lease and runs it; this one takes over when it ends.
    Standby,
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
    /// Events the live generation holds in quarantine (skipped: no rows of theirs).
    pub quarantined: u64,
    /// The latest of them, newest first (at most [`crate::quarantine::RECENT_QUARANTINED_MAX`]).
    pub recent_quarantined: Vec<QuarantinedEvent>,
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
            quarantined: 0,
            recent_quarantined: Vec::new(),
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
