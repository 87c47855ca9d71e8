//! `multipart/form-data` bodies (RFC 7578): the parts of an upload, each a
//! slice of the body, never copied.

/// One part: its form field name, file name (if any), type and bytes.
#[derive(Debug)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: &'a [u8],
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        let v = v.trim().trim_matches('"');
        (k.trim().eq_ignore_ascii_case("boundary") && !v.is_empty() && v.len() <= 70).then(|| v.to_string())
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    (from..=haystack.len() - needle.len()).find(|&i| haystack[i..i + needle.len()] == *needle)
}

/// A header parameter (`name="x"`) of a `Content-Disposition` value.
fn parameter(value: &str, name: &str) -> Option<String> {
    let mut rest = value;
    while let Some(i) = rest.find(';') {
        rest = &rest[i + 1..];
        let (key, tail) = rest.trim_start().split_once('=')?;
        let tail = tail.trim_start();
        let (found, after) = if let Some(quoted) = tail.strip_prefix('"') {
            let end = quoted.find('"')?;
            (quoted[..end].to_string(), &quoted[end + 1..])
        } else {
            let end = tail.find(';').unwrap_or(tail.len());
            (tail[..end].trim().to_string(), &tail[end..])
        };
        if key.trim().eq_ignore_ascii_case(name) {
            return Some(found);
        }
        rest = after;
    }
    None
}

/// The parts of `body`, or why it is not a well-formed multipart body.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, &'static str> {
    let delimiter = format!("--{boundary}");
    let mut pos = find(body, delimiter.as_bytes(), 0).ok_or("the body has no part")?;
    let mut parts = Vec::new();
    loop {
        pos += delimiter.len();
        if body[pos..].starts_with(b"--") {
            return Ok(parts);
        }
        if !body[pos..].starts_with(b"\r\n") {
            return Err("a boundary line is malformed");
        }
        pos += 2;
        let head_end = find(body, b"\r\n\r\n", pos).ok_or("a part's headers do not end")?;
        let head = std::str::from_utf8(&body[pos..head_end]).map_err(|_| "a part's headers are not UTF-8")?;
        let data_start = head_end + 4;
        let next = find(body, format!("\r\n{delimiter}").as_bytes(), data_start).ok_or("the body does not end")?;
        let mut part = Part { name: String::new(), filename: None, content_type: None, data: &body[data_start..next] };
        for line in head.split("\r\n") {
            let Some((header, value)) = line.split_once(':') else { continue };
            if header.trim().eq_ignore_ascii_case("content-disposition") {
                part.name = parameter(value, "name").unwrap_or_default();
                part.filename = parameter(value, "filename");
            } else if header.trim().eq_ignore_ascii_case("content-type") {
                part.content_type = Some(value.trim().to_string());
            }
        }
        parts.push(part);
        pos = next + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_a_form() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a; b.txt\"\r\n\
Content-Type: text/plain\r\n\r\nline one\r\nline two\r\n--XyZ\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{}\r\n--XyZ--\r\n";
        assert_eq!(boundary("multipart/form-data; boundary=XyZ").as_deref(), Some("XyZ"));
        assert_eq!(boundary("application/json"), None);
        let parts = parse(body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "file");
        assert_eq!(parts[0].filename.as_deref(), Some("a; b.txt"));
        assert_eq!(parts[0].content_type.as_deref(), Some("text/plain"));
        assert_eq!(parts[0].data, b"line one\r\nline two");
        assert_eq!((parts[1].name.as_str(), parts[1].data), ("metadata", &b"{}"[..]));
        assert!(parse(b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nno end", "XyZ").is_err());
        assert!(parse(b"nothing", "XyZ").is_err());
    }
}
