//! Socket.IO over Engine.IO's long-polling transport (`/ws/socket.io/`),
//! against sessions kept in memory as the host keeps them.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::app::media::{Incoming, Outgoing};
use crate::app::socket::Sessions;
use crate::app::{AppError, Db, Platform};
use crate::http::{Body, Request, Response};
use crate::router::route_with_platform;
use crate::tests::script::Script;

/// A session's queue, account, and whether a ping is due.
type Session = (Vec<String>, Option<String>, bool);

/// Sessions in memory: a ping is due on the first poll only.
#[derive(Default)]
struct Memory {
    queues: RefCell<HashMap<String, Session>>,
    opened: RefCell<u32>,
}

impl Sessions for Memory {
    fn open(&self) -> Option<String> {
        *self.opened.borrow_mut() += 1;
        let id = format!("s{}", self.opened.borrow());
        self.queues.borrow_mut().insert(id.clone(), (Vec::new(), None, true));
        Some(id)
    }

    fn bind(&self, id: &str, user: &str) -> bool {
        self.queues.borrow_mut().get_mut(id).map(|s| s.1 = Some(user.into())).is_some()
    }

    fn send(&self, id: &str, packets: &[String]) -> bool {
        self.queues.borrow_mut().get_mut(id).map(|s| s.0.extend_from_slice(packets)).is_some()
    }

    fn send_to_user(&self, user: &str, packets: &[String]) -> u32 {
        let mut queues = self.queues.borrow_mut();
        let mut n = 0;
        for s in queues.values_mut().filter(|s| s.1.as_deref() == Some(user)) {
            s.0.extend_from_slice(packets);
            n += 1;
        }
        n
    }

    fn take(&self, id: &str, _wait_ms: u32, max: u32) -> Option<(Vec<String>, bool)> {
        let mut queues = self.queues.borrow_mut();
        let s = queues.get_mut(id)?;
        let ping = std::mem::take(&mut s.2);
        let n = s.0.len().min(max as usize);
        Some((s.0.drain(..n).collect(), ping))
    }

    fn close(&self, id: &str) {
        self.queues.borrow_mut().remove(id);
    }
}

/// A platform with sessions and no database: a token cannot sign anyone in.
#[derive(Default)]
struct NoDatabase(Memory);

impl Platform for NoDatabase {
    fn setting(&self, _key: &str) -> Option<String> {
        None
    }

    fn database(&self) -> Result<Box<dyn Db>, AppError> {
        Err(AppError::new(503, "no database"))
    }

    fn forward(&self, _request: Outgoing) -> Result<Incoming, String> {
        Err("no upstream".into())
    }

    fn sessions(&self) -> &dyn Sessions {
        &self.0
    }

    fn share(&self) -> Box<dyn Platform> {
        Box::new(NoDatabase::default())
    }
}

fn text(response: &Response) -> String {
    match &response.body {
        Body::Full(b) | Body::Then(b, _) => String::from_utf8(b.clone()).unwrap(),
        Body::Stream(_) => panic!("a whole body"),
    }
}

fn call(platform: &NoDatabase, method: &str, query: &str, body: &str) -> Response {
    let req = Request::new(method, &format!("/ws/socket.io/?EIO=4&transport=polling&t=x{query}")).with_body(body);
    route_with_platform(&req, &Script::new(Vec::new()), platform)
}

#[test]
fn a_session_opens_connects_and_acknowledges_events() {
    let p = NoDatabase::default();
    let open = call(&p, "GET", "", "");
    assert_eq!(open.status, 200);
    assert_eq!(open.header("content-type"), Some("text/plain; charset=UTF-8"));
    let open = text(&open);
    let handshake: serde_json::Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(handshake["sid"], "s1");
    assert_eq!(handshake["upgrades"], serde_json::json!([]), "no upgrade is offered");
    // CONNECT (with a token nobody can check here) and an event asking for an acknowledgement.
    let posted =
        call(&p, "POST", "&sid=s1", "40{\"token\":\"x\"}\u{1e}421[\"events:chat\",{\"chat_id\":\"c\"}]\u{1e}3");
    assert_eq!((posted.status, text(&posted).as_str()), (200, "ok"));
    let polled = text(&call(&p, "GET", "&sid=s1", ""));
    let packets: Vec<&str> = polled.split('\u{1e}').collect();
    assert_eq!(packets.len(), 3, "{polled}");
    assert!(packets[0].starts_with("40{\"sid\":"), "{polled}");
    assert_eq!(packets[1], "431[true]");
    assert_eq!(packets[2], "2", "the due ping comes last");
    // Nothing queued and no ping due: a no-op, never an empty body.
    assert_eq!(text(&call(&p, "GET", "&sid=s1", "")), "6");
    // An unknown token joins nobody; the acknowledgement says so.
    call(&p, "POST", "&sid=s1", "42[\"heartbeat\",{}]\u{1e}427[\"user-join\",{\"auth\":{\"token\":\"t\"}}]");
    assert_eq!(text(&call(&p, "GET", "&sid=s1", "")), "437[null]");
    // Another namespace is refused inside the protocol.
    call(&p, "POST", "&sid=s1", "40/admin,{}");
    assert_eq!(text(&call(&p, "GET", "&sid=s1", "")), "44/admin,{\"message\":\"Invalid namespace\"}");
    // A poll answers at most 15 packets and a ping (python-engineio's
    // clients refuse more than 16).
    let many = vec!["421[\"x\"]"; 20].join("\u{1e}");
    call(&p, "POST", "&sid=s1", &many);
    assert_eq!(text(&call(&p, "GET", "&sid=s1", "")).split('\u{1e}').count(), 15);
    assert_eq!(text(&call(&p, "GET", "&sid=s1", "")).split('\u{1e}').count(), 5);
    // The client closes: the session is gone.
    assert_eq!(call(&p, "POST", "&sid=s1", "1").status, 200);
    assert_eq!(call(&p, "GET", "&sid=s1", "").status, 400);
}

#[test]
fn bad_requests_are_400_and_never_reach_a_session() {
    let p = NoDatabase::default();
    call(&p, "GET", "", "");
    for (method, query, body) in [
        ("GET", "&sid=nobody", ""),
        ("POST", "&sid=nobody", "3"),
        ("POST", "", "3"),
        ("POST", "&sid=s1", "x"),
        ("POST", "&sid=s1", "42not json"),
        ("POST", "&sid=s1", "42{\"no\":\"list\"}"),
        ("POST", "&sid=s1", "42[1]"),
        ("POST", "&sid=s1", ""),
    ] {
        let r = call(&p, method, query, body);
        assert_eq!(r.status, 400, "{method} {query} {body:?}: {}", text(&r));
    }
    // One packet past the limit of a payload.
    let many = vec!["3"; 65].join("\u{1e}");
    assert_eq!(call(&p, "POST", "&sid=s1", &many).status, 400);
    assert_eq!(call(&p, "POST", "&sid=s1", &vec!["3"; 64].join("\u{1e}")).status, 200);
    // Another protocol version or transport.
    let old = Request::new("GET", "/ws/socket.io/?EIO=3&transport=polling");
    assert_eq!(route_with_platform(&old, &Script::new(Vec::new()), &p).status, 400);
    let ws = Request::new("GET", "/ws/socket.io/?EIO=4&transport=websocket");
    assert_eq!(route_with_platform(&ws, &Script::new(Vec::new()), &p).status, 400);
    let put = Request::new("PUT", "/ws/socket.io/?EIO=4&transport=polling&sid=s1");
    assert_eq!(route_with_platform(&put, &Script::new(Vec::new()), &p).status, 405);
}
