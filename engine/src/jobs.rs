//! Detached jobs: generations the engine holds for a client that comes back
//! by id (`/api/chat-queue`). A job outlives the request that started it
//! and is kept for `job_ttl` after it ends (at most [`MAX_KEPT_JOBS`]
//! finished ones).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::error::EngineError;
use crate::handle::{FinishReason, Finished, GenerationSlot, Usage};

/// Finished jobs kept at most; the oldest go first.
const MAX_KEPT_JOBS: usize = 1024;

/// Where a job is. Serialisable, so a server's replicas can share it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum JobState {
    Queued { position: u32, estimated_wait: Duration },
    Running,
    Done(Finished),
    Cancelled,
    Failed(EngineError),
}

impl JobState {
    /// Done, cancelled or failed: it will not change again.
    pub fn is_ended(&self) -> bool {
        matches!(self, JobState::Done(_) | JobState::Cancelled | JobState::Failed(_))
    }
}

/// A job as [`crate::Engine::job_status`] reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobInfo {
    pub id: String,
    pub model: String,
    pub state: JobState,
    /// Text so far (all of it once done).
    pub text: String,
    pub prompt_tokens: u32,
    pub created_at_ms: u64,
    /// Who submitted it, as the caller named them (opaque to the engine);
    /// the host answers only them about it.
    pub owner: Option<String>,
}

/// Where a waiting sequence stands: its place in the queue and the time
/// until it starts, or `None` once it runs.
pub(crate) type Place<'a> = &'a dyn Fn(u64) -> Option<(u32, Duration)>;

/// A generation the engine holds for a client that comes back by id.
struct Job {
    model: String,
    owner: Option<String>,
    /// The scheduler's id of its sequence.
    seq: u64,
    slot: Arc<GenerationSlot>,
    prompt_tokens: u32,
    created: SystemTime,
    /// When it was first seen finished; it expires `ttl` later.
    ended: Option<Instant>,
}

/// What [`Jobs::insert`] holds.
pub(crate) struct NewJob {
    pub model: String,
    pub owner: Option<String>,
    pub seq: u64,
    pub slot: Arc<GenerationSlot>,
    pub prompt_tokens: u32,
}

/// The engine's jobs by id.
pub(crate) struct Jobs {
    map: Mutex<HashMap<String, Job>>,
    ttl: Duration,
}

impl Jobs {
    pub fn new(ttl: Duration) -> Self {
        Self { map: Mutex::new(HashMap::new()), ttl }
    }

    /// Holds a generation under `id`.
    pub fn insert(&self, id: String, job: NewJob) {
        let NewJob { model, owner, seq, slot, prompt_tokens } = job;
        let mut jobs = self.lock();
        self.expire(&mut jobs);
        jobs.insert(id, Job { model, owner, seq, slot, prompt_tokens, created: SystemTime::now(), ended: None });
    }

    /// A job's state and text; `None` if the id is unknown or expired.
    pub fn info(&self, id: &str, place: Place) -> Option<JobInfo> {
        let mut jobs = self.lock();
        self.expire(&mut jobs);
        Some(describe(id, jobs.get_mut(id)?, place))
    }

    /// Cancels a job that has not finished; returns its state after. The
    /// scheduler drops its sequence at its next step.
    pub fn cancel(&self, id: &str, place: Place) -> Option<JobInfo> {
        let mut jobs = self.lock();
        let job = jobs.get_mut(id)?;
        job.slot.cancelled.store(true, Ordering::Release);
        let prompt_tokens = job.prompt_tokens;
        job.slot.update(|s| {
            if s.finished.is_none() && s.error.is_none() {
                let usage = Usage { prompt_tokens, ..Usage::default() };
                s.finished = Some(Finished { reason: FinishReason::Cancelled, usage });
            }
        });
        Some(describe(id, job, place))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Job>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets finished jobs older than the time to live, and the oldest
    /// finished ones beyond [`MAX_KEPT_JOBS`].
    fn expire(&self, jobs: &mut HashMap<String, Job>) {
        for job in jobs.values_mut() {
            let s = job.slot.state.lock().unwrap_or_else(PoisonError::into_inner);
            if s.finished.is_some() || s.error.is_some() {
                job.ended.get_or_insert_with(Instant::now);
            }
        }
        jobs.retain(|_, j| j.ended.is_none_or(|t| t.elapsed() < self.ttl));
        let mut ended: Vec<(Instant, String)> =
            jobs.iter().filter_map(|(id, j)| j.ended.map(|t| (t, id.clone()))).collect();
        if ended.len() > MAX_KEPT_JOBS {
            ended.sort();
            for (_, id) in &ended[..ended.len() - MAX_KEPT_JOBS] {
                jobs.remove(id);
            }
        }
    }
}

fn describe(id: &str, job: &mut Job, place: Place) -> JobInfo {
    // The generation's lock is let go before the queue's is taken: the
    // scheduler takes them the other way round.
    let (ended, text) = {
        let s = job.slot.state.lock().unwrap_or_else(PoisonError::into_inner);
        let ended = match (&s.error, &s.finished) {
            (Some(e), _) => Some(JobState::Failed(e.clone())),
            (None, Some(f)) if f.reason == FinishReason::Cancelled => Some(JobState::Cancelled),
            (None, Some(f)) => Some(JobState::Done(f.clone())),
            (None, None) => None,
        };
        (ended, s.text.clone())
    };
    let state = match ended {
        Some(state) => {
            job.ended.get_or_insert_with(Instant::now);
            state
        }
        None => match place(job.seq) {
            Some((position, estimated_wait)) => JobState::Queued { position, estimated_wait },
            None => JobState::Running,
        },
    };
    let created_at_ms = job.created.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    JobInfo {
        id: id.to_string(),
        model: job.model.clone(),
        state,
        text,
        prompt_tokens: job.prompt_tokens,
        created_at_ms,
        owner: job.owner.clone(),
    }
}
