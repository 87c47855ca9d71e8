//! The request body limit, applied while the export reads a body: a
//! declared length over [`MAX_BODY_BYTES`] is refused before any of it is
//! read, and a chunked body, which declares none, as it grows.

use crate::error::ApiError;
use crate::http::MAX_BODY_BYTES;

/// Refuses a body whose declared `content-length` is over the limit, before
/// any of it is read.
pub fn check_declared_length(content_length: Option<&str>) -> Result<(), ApiError> {
    match content_length.and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(len) if len > MAX_BODY_BYTES as u64 => Err(ApiError::BodyTooLarge),
        _ => Ok(()),
    }
}

/// Appends a chunk read from the body, refusing to grow past the limit (a
/// chunked body declares no length, so it is counted as it arrives).
pub fn append_body_chunk(body: &mut Vec<u8>, chunk: &[u8]) -> Result<(), ApiError> {
    if body.len().saturating_add(chunk.len()) > MAX_BODY_BYTES {
        return Err(ApiError::BodyTooLarge);
    }
    body.extend_from_slice(chunk);
    Ok(())
}
