//! `--compress`: gzip for whole responses a client accepts it for.
//!
//! Only responses that declare their length (the handler's non-streamed
//! answers) of a textual type and at least [`MIN_BYTES`] are compressed;
//! streams (SSE, NDJSON) carry no length and go out as they come, so a
//! token is never held back in a compressor's buffer.

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, VARY};
use http::HeaderValue;
use http_body_util::BodyExt as _;
use std::io::Write as _;

use crate::responses::{error_response, Response};

/// Smaller answers are not worth a compressor.
const MIN_BYTES: u64 = 1024;
/// Larger ones are sent as they are rather than held in memory.
const MAX_BYTES: u64 = 8 << 20;

/// True when the request's `Accept-Encoding` allows gzip.
pub fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    headers.get_all(ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            let p = p.replace(' ', "");
            p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()) == Some(0.0)
        });
        (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
    })
}

/// True for a whole, textual, not yet encoded response worth compressing.
pub fn worth_it(resp: &Response) -> bool {
    let headers = resp.headers();
    let length = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let kind = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let textual = kind.starts_with("application/json") || kind.starts_with("text/") || kind.contains("javascript");
    !headers.contains_key(CONTENT_ENCODING)
        && textual
        && !kind.starts_with("text/event-stream")
        && length.is_some_and(|n| (MIN_BYTES..=MAX_BYTES).contains(&n))
}

/// The response with its body gzipped.
pub async fn gzip(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::error!(error = %e, "the handler's body failed");
            return error_response(500, "server_error", "handler_failed", "The request handler failed.");
        }
    };
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 3), Compression::fast());
    let packed = match encoder.write_all(&bytes).and_then(|()| encoder.finish()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "gzip failed");
            return error_response(500, "server_error", "compression_failed", "Compressing the response failed.");
        }
    };
    parts.headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(packed.len()));
    parts.headers.append(VARY, HeaderValue::from_static("accept-encoding"));
    let body = http_body_util::Full::new(Bytes::from(packed)).map_err(|never| match never {}).boxed_unsync();
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> bool {
        let mut h = http::HeaderMap::new();
        h.insert(ACCEPT_ENCODING, value.parse().unwrap());
        accepts_gzip(&h)
    }

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        assert!(accept("gzip"));
        assert!(accept("br, gzip;q=0.8"));
        assert!(accept("*"));
        assert!(!accept("gzip;q=0"));
        assert!(!accept("gzip; q=0.000"));
        assert!(!accept("br, deflate"));
        assert!(!accepts_gzip(&http::HeaderMap::new()));
    }
}
