//! Server-sent events, as bytes arrive: the `data` of each complete event.

/// Bytes received and not yet read as events.
#[derive(Default)]
pub struct Events {
    buffer: Vec<u8>,
}

impl Events {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The `data` of the next complete event (its `data:` lines joined by
    /// newlines); none until one has fully arrived. Events without data
    /// (comments, keep-alives) are skipped.
    pub fn next_data(&mut self) -> Option<String> {
        loop {
            let (end, gap) = find_end(&self.buffer)?;
            let block: Vec<u8> = self.buffer.drain(..end + gap).collect();
            let text = String::from_utf8_lossy(&block[..end]);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                return Some(data.join("\n"));
            }
        }
    }
}

/// Where the first event ends, and the length of the blank line that ends it.
fn find_end(buffer: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buffer.len() {
        if buffer[i..].starts_with(b"\n\n") {
            return Some((i, 2));
        }
        if buffer[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_whole_however_the_bytes_arrive() {
        let mut events = Events::default();
        events.push(b"data: {\"a\"");
        assert_eq!(events.next_data(), None);
        events.push(b":1}\n\n: keep-alive\n\ndata: [DONE]\r\n\r\ndata: x\ndata: y\n\n");
        assert_eq!(events.next_data().as_deref(), Some("{\"a\":1}"));
        assert_eq!(events.next_data().as_deref(), Some("[DONE]"));
        assert_eq!(events.next_data().as_deref(), Some("x\ny"));
        assert_eq!(events.next_data(), None);
    }
}
