//! Sequences waiting to start: one lane per priority, interactive before
//! batch, first come first served within each.

use std::collections::VecDeque;

use crate::error::EngineError;
use crate::request::Priority;
use crate::scheduler::seq::Seq;

/// Sequences waiting to start, one queue per priority.
#[derive(Default)]
pub(crate) struct Queue {
    interactive: VecDeque<Seq>,
    batch: VecDeque<Seq>,
    /// Set by [`crate::Engine::abort_all`]: every generation, running or
    /// queued, ends with this error, and no new one is admitted.
    pub closed: Option<EngineError>,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.interactive.len() + self.batch.len()
    }

    /// Sequences waiting in the lane of `priority`.
    pub fn lane_len(&self, priority: Priority) -> usize {
        match priority {
            Priority::Interactive => self.interactive.len(),
            Priority::Batch => self.batch.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push_back(&mut self, seq: Seq) {
        self.lane(seq.priority).push_back(seq);
    }

    pub fn push_front(&mut self, seq: Seq) {
        self.lane(seq.priority).push_front(seq);
    }

    fn lane(&mut self, p: Priority) -> &mut VecDeque<Seq> {
        match p {
            Priority::Interactive => &mut self.interactive,
            Priority::Batch => &mut self.batch,
        }
    }

    pub fn pop_front(&mut self) -> Option<Seq> {
        self.interactive.pop_front().or_else(|| self.batch.pop_front())
    }

    /// Sequences that start before the one with `id`, if it is queued.
    pub fn position(&self, id: u64) -> Option<usize> {
        self.interactive.iter().chain(&self.batch).position(|s| s.id == id)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&mut Seq) -> bool) {
        self.interactive.retain_mut(&mut keep);
        self.batch.retain_mut(&mut keep);
    }
}
