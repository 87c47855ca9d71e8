//! Request bodies, read whole by the host before anything is spent on them:
//! at most a byte limit (413 past it, whether declared or sent chunked) and
//! within a deadline from the end of the headers (408 past it). A client
//! that stalls mid-body therefore holds only its connection, never a
//! handler instance.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;

use crate::responses::{error_response, Response};

/// Reads `body` whole: at most `limit` bytes, within `deadline`; the
/// refusal to send otherwise.
pub async fn read(body: hyper::body::Incoming, limit: u64, deadline: Duration) -> Result<Bytes, Response> {
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(deadline, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large(limit)),
        Ok(Err(e)) => {
            Err(error_response(400, "invalid_request_error", "bad_body", &format!("Reading the body failed: {e}.")))
        }
        Err(_) => {
            let mut resp = error_response(
                408,
                "invalid_request_error",
                "body_timeout",
                &format!("The request body did not arrive within {} seconds.", deadline.as_secs()),
            );
            // The rest of the body may still come; the connection cannot be reused.
            resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            Err(resp)
        }
    }
}

/// 413 for a body over `limit` bytes.
pub fn too_large(limit: u64) -> Response {
    error_response(
        413,
        "invalid_request_error",
        "request_too_large",
        &format!("The request body is larger than the limit of {limit} bytes."),
    )
}
