//! `tern:llm/sessions`: the queues of Engine.IO's long-polling sessions,
//! held between requests. The handler keeps the protocol; this keeps, per
//! session, the packets waiting for the client's next poll, the account
//! the session is bound to, and when it last polled and was last pinged.
//!
//! Limits: at most [`MAX_SESSIONS`] sessions (a new one is refused beyond),
//! [`MAX_QUEUED`] waiting packets a session (it is closed beyond: its
//! client is not reading), and a session not polled for [`IDLE`] is gone.
//! Sessions live in this process: replicas behind a balancer need it to
//! keep each client on one replica. `socket_sessions.rs` serves them to
//! the handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::bindings::sessions::Taken;

/// Sessions held at once.
pub const MAX_SESSIONS: usize = 4096;
/// Packets one session may have waiting.
pub const MAX_QUEUED: usize = 4096;
/// A session nobody polls for this long is forgotten (the client's own
/// limit is 45 s without a ping).
pub const IDLE: Duration = Duration::from_secs(60);
/// How often a session is due a ping.
pub const PING_EVERY: Duration = Duration::from_secs(20);

struct Session {
    queue: Vec<String>,
    user: Option<String>,
    /// Woken when packets are queued or the session closes.
    ready: Arc<Notify>,
    polled: Instant,
    pinged: Instant,
}

/// Every live session of this process.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Session>) -> T) -> T {
        f(&mut self.map.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A new session, after forgetting idle ones; none when full.
    pub fn open(&self) -> Option<String> {
        let now = Instant::now();
        self.with(|map| {
            map.retain(|_, s| now - s.polled < IDLE);
            if map.len() >= MAX_SESSIONS {
                return None;
            }
            let id = random_id();
            let session =
                Session { queue: Vec::new(), user: None, ready: Arc::new(Notify::new()), polled: now, pinged: now };
            map.insert(id.clone(), session);
            Some(id)
        })
    }

    pub fn bind(&self, id: &str, user: String) -> bool {
        self.with(|map| map.get_mut(id).map(|s| s.user = Some(user)).is_some())
    }

    pub fn user(&self, id: &str) -> Option<String> {
        self.with(|map| map.get(id).and_then(|s| s.user.clone()))
    }

    /// Queues on one session; a session whose queue would overflow closes.
    pub fn send(&self, id: &str, packets: Vec<String>) -> bool {
        self.with(|map| queue(map, id, &packets))
    }

    /// Queues on every session of `user`, under one lock.
    pub fn send_to_user(&self, user: &str, packets: &[String]) -> u32 {
        self.with(|map| {
            let ids: Vec<String> =
                map.iter().filter(|(_, s)| s.user.as_deref() == Some(user)).map(|(id, _)| id.clone()).collect();
            ids.iter().filter(|id| queue(map, id, packets)).count() as u32
        })
    }

    /// Waits up to `wait` for packets or a due ping, then takes at most
    /// `max` packets, the oldest first.
    pub async fn take(&self, id: &str, wait: Duration, max: usize) -> Option<Taken> {
        let deadline = Instant::now() + wait;
        loop {
            let now = Instant::now();
            let ready = self.with(|map| {
                let s = map.get_mut(id)?;
                s.polled = now;
                let ping_due = now - s.pinged >= PING_EVERY;
                if ping_due {
                    s.pinged = now;
                }
                if !s.queue.is_empty() || ping_due || now >= deadline {
                    let n = s.queue.len().min(max);
                    return Some(Ok(Taken { packets: s.queue.drain(..n).collect(), ping_due }));
                }
                Some(Err((s.ready.clone(), (s.pinged + PING_EVERY).min(deadline))))
            })?;
            match ready {
                Ok(taken) => return Some(taken),
                Err((notify, until)) => {
                    let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(until), notify.notified()).await;
                }
            }
        }
    }

    pub fn close(&self, id: &str) {
        if let Some(gone) = self.with(|map| map.remove(id)) {
            gone.ready.notify_one();
        }
    }
}

/// Queues `packets` on session `id`; a session whose queue would overflow
/// is closed. False when there is no such session (any more).
fn queue(map: &mut HashMap<String, Session>, id: &str, packets: &[String]) -> bool {
    let Some(session) = map.get_mut(id) else { return false };
    if session.queue.len() + packets.len() > MAX_QUEUED {
        let gone = map.remove(id).expect("just found");
        gone.ready.notify_one();
        return false;
    }
    session.queue.extend_from_slice(packets);
    session.ready.notify_one();
    true
}

/// 20 URL-safe characters from 120 random bits.
fn random_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).expect("the system's random source");
    bytes.iter().map(|b| ALPHABET[(b & 63) as usize] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_poll_waits_for_packets_and_takes_them_all() {
        let sessions = Arc::new(Sessions::default());
        let id = sessions.open().unwrap();
        assert_eq!(id.len(), 20);
        let waiting = {
            let sessions = sessions.clone();
            let id = id.clone();
            tokio::spawn(async move { sessions.take(&id, Duration::from_secs(10), 100).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(sessions.bind(&id, "u1".into()));
        assert_eq!(sessions.send_to_user("u1", &["a".into(), "b".into()]), 1);
        let taken = waiting.await.unwrap().unwrap();
        assert_eq!(taken.packets, ["a", "b"]);
        assert!(!taken.ping_due);
        // At most `max` at a time, the oldest first.
        sessions.send(&id, vec!["c".into(), "d".into(), "e".into()]);
        assert_eq!(sessions.take(&id, Duration::ZERO, 2).await.unwrap().packets, ["c", "d"]);
        assert_eq!(sessions.take(&id, Duration::ZERO, 2).await.unwrap().packets, ["e"]);
        // Nothing queued: the wait ends empty.
        let taken = sessions.take(&id, Duration::from_millis(20), 100).await.unwrap();
        assert!(taken.packets.is_empty());
        sessions.close(&id);
        assert!(sessions.take(&id, Duration::ZERO, 100).await.is_none());
        assert!(!sessions.send(&id, vec!["x".into()]));
    }

    #[tokio::test]
    async fn a_session_past_its_queue_limit_is_closed() {
        let sessions = Sessions::default();
        let id = sessions.open().unwrap();
        assert!(sessions.send(&id, vec!["p".into(); MAX_QUEUED]));
        assert!(!sessions.send(&id, vec!["one too many".into()]));
        assert!(sessions.user(&id).is_none() && sessions.take(&id, Duration::ZERO, 100).await.is_none());
    }

    #[test]
    fn sessions_past_the_limit_are_refused() {
        let sessions = Sessions::default();
        for _ in 0..MAX_SESSIONS {
            assert!(sessions.open().is_some());
        }
        assert!(sessions.open().is_none());
    }
}
