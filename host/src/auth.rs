//! API keys: with any configured, every request but the open ones (liveness,
//! readiness, the chat page's files, CORS preflight) must carry one, as
//! `Authorization: Bearer KEY` or `x-api-key: KEY`.
//!
//! Keys are compared by their SHA-256 digests, byte by byte without an early
//! exit, against every configured key, so neither a key's content nor its
//! length shows in the response time.
//!
//! The handler learns who is calling from the host, not from the raw
//! headers: [`Keys::identify`] names the key that matched (whichever header
//! carried it) by a digest that cannot be turned back into the key, and the
//! server passes that on as `x-tern-identity`.

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use std::path::Path;

/// A set of accepted keys; empty means no key is needed.
#[derive(Default, Clone)]
pub struct Keys {
    digests: Vec<[u8; 32]>,
}

impl Keys {
    /// Keys given directly and, one per line, in files (`#` starts a comment).
    pub fn load(keys: &[String], files: &[std::path::PathBuf]) -> anyhow::Result<Self> {
        let mut all: Vec<String> = keys.iter().map(|k| k.trim().to_string()).collect();
        for file in files {
            all.extend(read_key_file(file)?);
        }
        anyhow::ensure!(all.iter().all(|k| !k.is_empty()), "an API key must not be empty");
        Ok(Self { digests: all.iter().map(|k| digest(k)).collect() })
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// The digest of the key equal to `given`, every key compared in full.
    fn matching(&self, given: &str) -> Option<&[u8; 32]> {
        let d = digest(given);
        let mut found = None;
        for key in &self.digests {
            let diff = key.iter().zip(d.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(key);
            }
        }
        found
    }

    /// True when the request's headers carry an accepted key.
    pub fn allows(&self, headers: &http::HeaderMap) -> bool {
        self.identify(headers).is_some()
    }

    /// A name for the accepted key the request carries: 16 hex digits of a
    /// digest of the key's digest, the same whichever header carried it.
    pub fn identify(&self, headers: &http::HeaderMap) -> Option<String> {
        let key = self.matching(presented(headers)?)?;
        let name = Sha256::new().chain_update(b"tern identity\0").chain_update(key).finalize();
        Some(name[..8].iter().map(|b| format!("{b:02x}")).collect())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn read_key_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the key file {}", path.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect())
}

/// The key a request presents, if any.
fn presented(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(auth) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, key) = auth.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Routes answered without a key: liveness, readiness, the chat page and
/// its files, and CORS preflight requests (browsers send no credentials).
pub fn is_open(method: &http::Method, path: &str) -> bool {
    method == http::Method::OPTIONS
        || matches!(path, "/health" | "/ready" | "/" | "/favicon.ico")
        || path.starts_with("/static/")
}

/// The app layer's routes (Open WebUI's API): accounts authenticate them,
/// with a sign-in token or a user's own key, so the server's API keys are
/// not asked for; the handler refuses them without an account.
pub fn is_account_route(path: &str) -> bool {
    path.starts_with("/api/v1/") || matches!(path, "/api/config" | "/api/models")
}

/// The routes that take files (`--max-upload-mib`, not `--max-body-kib`).
pub fn is_upload_route(path: &str) -> bool {
    matches!(path, "/api/v1/files/" | "/api/v1/files" | "/api/v1/audio/transcriptions")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        h
    }

    impl Keys {
        fn accepts(&self, given: &str) -> bool {
            self.matching(given).is_some()
        }
    }

    #[test]
    fn only_configured_keys_are_accepted() {
        let keys = Keys::load(&["sk-one".into(), "sk-two".into()], &[]).unwrap();
        assert!(keys.accepts("sk-one") && keys.accepts("sk-two"));
        assert!(!keys.accepts("sk-on") && !keys.accepts("sk-one ") && !keys.accepts(""));
    }

    #[test]
    fn keys_come_as_bearer_tokens_or_x_api_key() {
        let keys = Keys::load(&["sk-one".into()], &[]).unwrap();
        assert!(keys.allows(&headers("authorization", "Bearer sk-one")));
        assert!(keys.allows(&headers("authorization", "bearer sk-one")));
        assert!(keys.allows(&headers("x-api-key", "sk-one")));
        assert!(!keys.allows(&headers("authorization", "Basic sk-one")));
        assert!(!keys.allows(&headers("authorization", "Bearer sk-two")));
        assert!(!keys.allows(&http::HeaderMap::new()));
    }

    #[test]
    fn a_key_has_one_identity_whichever_header_carries_it() {
        let keys = Keys::load(&["sk-one".into(), "sk-two".into()], &[]).unwrap();
        let one = keys.identify(&headers("authorization", "Bearer sk-one")).unwrap();
        assert_eq!(keys.identify(&headers("x-api-key", "sk-one")), Some(one.clone()));
        let two = keys.identify(&headers("x-api-key", "sk-two")).unwrap();
        assert_ne!(one, two);
        assert!(one.len() == 16 && !one.contains("sk-"));
        assert_eq!(keys.identify(&headers("x-api-key", "sk-three")), None);
    }

    #[test]
    fn key_files_skip_comments_and_blank_lines() {
        let dir = std::env::temp_dir().join(format!("tern-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        std::fs::write(&file, "# team keys\nsk-a\n\n  sk-b  \n").unwrap();
        let keys = Keys::load(&[], std::slice::from_ref(&file)).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts("sk-a") && keys.accepts("sk-b") && !keys.accepts("# team keys"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_page_and_probes_are_open() {
        assert!(is_open(&http::Method::GET, "/health"));
        assert!(is_open(&http::Method::GET, "/static/app.js"));
        assert!(is_open(&http::Method::OPTIONS, "/v1/chat/completions"));
        assert!(!is_open(&http::Method::POST, "/v1/chat/completions"));
        assert!(!is_open(&http::Method::GET, "/metrics"));
    }
}
