//! Generated text on its way to a client: token bytes become whole UTF-8
//! characters ([`Utf8Stream`]), and text that might begin a stop string is
//! held back until it is known not to ([`StopMatcher`]); [`TextOutput`]
//! chains the two for one generation.

/// What a generation shows of its tokens.
#[derive(Debug, Default)]
pub struct TextOutput {
    utf8: Utf8Stream,
    stop: StopMatcher,
}

impl TextOutput {
    /// Output that stops at any of `stops` (empty ones are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self { utf8: Utf8Stream::new(), stop: StopMatcher::new(stops) }
    }

    /// Adds one token's bytes; returns the text that can be shown now and
    /// whether a stop string appeared (the text before it is all that shows).
    pub fn push(&mut self, bytes: &[u8]) -> (String, bool) {
        let text = self.utf8.push(bytes);
        self.stop.push(&text)
    }

    /// Everything still held back, once the generation ends for another
    /// reason than a stop string.
    pub fn flush(&mut self) -> String {
        let rest = self.utf8.flush();
        let (shown, _) = self.stop.push(&rest);
        shown + &self.stop.flush()
    }
}

/// Turns a stream of token bytes into text without ever splitting a
/// character: bytes of an unfinished character wait for the next push.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add bytes; returns every complete character so far. Bytes that can
    /// never start a valid character come out as U+FFFD right away.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut consumed = 0;
        loop {
            match std::str::from_utf8(&self.pending[consumed..]) {
                Ok(s) => {
                    out.push_str(s);
                    consumed = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[consumed..consumed + valid]).expect("valid prefix"));
                    consumed += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            consumed += bad;
                        }
                        // An incomplete character at the end: keep it for later.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        out
    }

    /// Whatever is left, an unfinished character as U+FFFD.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Holds back generated text that might be the start of a stop string.
///
/// Each stop string is matched by its own automaton (Knuth-Morris-Pratt):
/// every new byte advances each one in amortised constant time, whatever
/// the stops' lengths, so matching costs what the text costs and never a
/// rescan of the held text. The first stop string to be completed ends the
/// text, where it began.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<Stop>,
    /// Text not shown yet: at most the longest partial match.
    held: String,
}

/// One stop string and how far the text matches it.
#[derive(Debug)]
struct Stop {
    bytes: Vec<u8>,
    /// `fall[k]`: the longest proper prefix of `bytes[..k + 1]` that is
    /// also its suffix.
    fall: Vec<usize>,
    /// Bytes of `bytes` the text ends with.
    matched: usize,
}

impl Stop {
    fn new(text: String) -> Self {
        let bytes = text.into_bytes();
        let mut fall = vec![0; bytes.len()];
        let mut k = 0;
        for i in 1..bytes.len() {
            while k > 0 && bytes[i] != bytes[k] {
                k = fall[k - 1];
            }
            if bytes[i] == bytes[k] {
                k += 1;
            }
            fall[i] = k;
        }
        Self { bytes, fall, matched: 0 }
    }

    /// Takes one more byte of text; true when the whole string matched.
    fn advance(&mut self, b: u8) -> bool {
        let mut k = self.matched;
        while k > 0 && self.bytes[k] != b {
            k = self.fall[k - 1];
        }
        if self.bytes[k] == b {
            k += 1;
        }
        self.matched = k;
        k == self.bytes.len()
    }
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).map(Stop::new).collect(), held: String::new() }
    }

    /// Adds text; returns what can be shown and whether a stop string appeared.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        let base = self.held.len();
        self.held.push_str(text);
        for (i, &b) in text.as_bytes().iter().enumerate() {
            let end = base + i + 1;
            let done = self.stops.iter_mut().filter_map(|s| s.advance(b).then_some(s.bytes.len())).max();
            if let Some(len) = done {
                let out = self.held[..end - len].to_string();
                self.held.clear();
                self.stops.iter_mut().for_each(|s| s.matched = 0);
                return (out, true);
            }
        }
        // Keep the longest tail that could still grow into a stop string;
        // it starts where a stop string starts, so on a character boundary.
        let keep = self.stops.iter().map(|s| s.matched).max().unwrap_or(0);
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        (out, false)
    }

    pub fn flush(&mut self) -> String {
        self.stops.iter_mut().for_each(|s| s.matched = 0);
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_never_splits_a_character() {
        let text = "a🦀é日";
        let mut stream = Utf8Stream::new();
        let mut out = String::new();
        for &b in text.as_bytes() {
            let piece = stream.push(&[b]);
            assert!(!piece.contains(char::REPLACEMENT_CHARACTER), "{piece:?}");
            out.push_str(&piece);
        }
        out.push_str(&stream.flush());
        assert_eq!(out, text);

        let crab = "🦀".as_bytes();
        let mut stream = Utf8Stream::new();
        assert_eq!(stream.push(&crab[..1]), "");
        assert_eq!(stream.push(&crab[1..3]), "");
        assert_eq!(stream.push(&crab[3..]), "🦀");
    }

    #[test]
    fn utf8_stream_replaces_invalid_bytes() {
        let mut stream = Utf8Stream::new();
        assert_eq!(stream.push(b"a\xFFb"), "a\u{FFFD}b");
        assert_eq!(stream.push(&"日".as_bytes()[..2]), "");
        assert_eq!(stream.flush(), "\u{FFFD}");
        assert_eq!(stream.flush(), "");
        // A lead byte interrupted by ASCII is invalid at once.
        assert_eq!(stream.push(b"\xE6x"), "\u{FFFD}x");
    }

    #[test]
    fn stop_matcher_holds_back_possible_prefix_and_cuts_at_stop() {
        let mut m = StopMatcher::new(vec!["\nUser:".into()]);
        assert_eq!(m.push("Hello"), ("Hello".into(), false));
        assert_eq!(m.push(" there\nUs"), (" there".into(), false));
        assert_eq!(m.push("er: hi"), ("".into(), true));
    }

    #[test]
    fn stop_matcher_releases_text_that_stops_matching() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN"), ("".into(), false));
        assert_eq!(m.push("D?"), ("".into(), true));
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN"), ("".into(), false));
        assert_eq!(m.push("ough"), ("ENough".into(), false));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_matcher_cuts_where_the_first_completed_stop_begins_however_the_text_is_split() {
        let stops = || vec!["abcd".to_string(), "bc".into(), "aab".into()];
        let text = "xaabcdy";
        // "aab" completes first (at the second b), beginning at index 1.
        for split in 0..=text.len() {
            let mut m = StopMatcher::new(stops());
            let (a, stopped) = m.push(&text[..split]);
            let (b, stopped) = if stopped { (String::new(), true) } else { m.push(&text[split..]) };
            assert_eq!((a + &b, stopped), ("x".to_string(), true), "split at {split}");
        }
    }

    #[test]
    fn stop_matcher_finds_overlapping_and_repeating_stops() {
        let mut m = StopMatcher::new(vec!["aab".into()]);
        assert_eq!(m.push("aaaa"), ("aa".into(), false));
        assert_eq!(m.push("ab"), ("a".into(), true), "aaa shown in all");
        let mut m = StopMatcher::new(vec!["abab".into()]);
        assert_eq!(m.push("ababa"), ("".into(), true));
    }

    #[test]
    fn stop_matcher_is_safe_with_multibyte_stops() {
        let mut m = StopMatcher::new(vec!["日本".into()]);
        assert_eq!(m.push("a日"), ("a".into(), false));
        assert_eq!(m.push("x"), ("日x".into(), false));
    }

    #[test]
    fn output_holds_a_split_character_and_a_possible_stop_until_they_resolve() {
        let mut out = TextOutput::new(vec!["日本".into()]);
        let ni = "日".as_bytes();
        assert_eq!(out.push(b"a"), ("a".into(), false));
        assert_eq!(out.push(&ni[..2]), ("".into(), false));
        assert_eq!(out.push(&ni[2..]), ("".into(), false), "日 may begin 日本");
        assert_eq!(out.push(b"x"), ("日x".into(), false));
        assert_eq!(out.push(&ni[..1]), ("".into(), false));
        assert_eq!(out.flush(), "\u{FFFD}");
    }
}
