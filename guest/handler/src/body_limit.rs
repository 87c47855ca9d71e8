//! The request body limit, applied while the export reads a body: a
//! declared length over the limit ([`MAX_BODY_BYTES`], or the upload limit
//! on the routes that take files) is refused before any of it is read, and
//! a chunked body, which declares none, as it grows.

use crate::error::ApiError;
use crate::http::MAX_BODY_BYTES;

/// Refuses a body whose declared `content-length` is over the limit, before
/// any of it is read.
pub fn check_declared_length(content_length: Option<&str>, limit: usize) -> Result<(), ApiError> {
    match content_length.and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(len) if len > limit as u64 => Err(ApiError::BodyTooLarge),
        _ => Ok(()),
    }
}

/// The body limit of a request to `path`: [`MAX_BODY_BYTES`], or on the
/// app's upload routes `max_upload` bytes of file plus room for the
/// multipart framing.
pub fn body_limit(path: &str, max_upload: Option<usize>) -> usize {
    match (path, max_upload) {
        ("/api/v1/files/" | "/api/v1/files" | "/api/v1/audio/transcriptions", Some(max)) => {
            MAX_BODY_BYTES.max(max.saturating_add(64 << 10))
        }
        _ => MAX_BODY_BYTES,
    }
}

/// Appends a chunk read from the body, refusing to grow past the limit (a
/// chunked body declares no length, so it is counted as it arrives).
pub fn append_body_chunk(body: &mut Vec<u8>, chunk: &[u8], limit: usize) -> Result<(), ApiError> {
    if body.len().saturating_add(chunk.len()) > limit {
        return Err(ApiError::BodyTooLarge);
    }
    body.extend_from_slice(chunk);
    Ok(())
}
