//! `tern:llm/sessions` for the handler, over this process's [`Sessions`].

use std::time::{Duration, Instant};

use crate::bindings::sessions::{self, Taken};
use crate::state::HostState;

impl sessions::Host for HostState {
    async fn open(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.sessions.open())
    }

    async fn bind(&mut self, id: String, user: String) -> wasmtime::Result<bool> {
        Ok(self.sessions.bind(&id, user))
    }

    async fn user(&mut self, id: String) -> wasmtime::Result<Option<String>> {
        Ok(self.sessions.user(&id))
    }

    async fn send(&mut self, id: String, packets: Vec<String>) -> wasmtime::Result<bool> {
        Ok(self.sessions.send(&id, packets))
    }

    async fn send_to_user(&mut self, user: String, packets: Vec<String>) -> wasmtime::Result<u32> {
        Ok(self.sessions.send_to_user(&user, &packets))
    }

    async fn take(&mut self, id: String, wait_ms: u32, max: u32) -> wasmtime::Result<Option<Taken>> {
        // Never past the request's own deadline.
        let left = self.deadline.saturating_duration_since(Instant::now());
        let wait = Duration::from_millis(wait_ms.into()).min(left.saturating_sub(Duration::from_secs(1)));
        Ok(self.sessions.take(&id, wait, max as usize).await)
    }

    async fn close(&mut self, id: String) -> wasmtime::Result<()> {
        self.sessions.close(&id);
        Ok(())
    }
}
