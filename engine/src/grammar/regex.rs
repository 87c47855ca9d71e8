//! A JSON Schema `pattern` (ECMA-262 regular expression) as GBNF for the
//! body of a JSON string: the characters the pattern speaks of are the
//! string's value, so a quote, a backslash or a control character is written
//! as its JSON escape.
//!
//! Supported: literals and escapes (`\d \w \s` and their negations, `\n \t
//! \r \xHH \uHHHH`, escaped punctuation), `.`, character classes with ranges
//! and negation, groups (capturing, `(?:…)`), alternation, and the
//! quantifiers `* + ? {m} {m,} {m,n}` (a lazy `?` after them changes nothing
//! here). `^` and `$` may only anchor the whole pattern; a side left
//! unanchored may hold any other text, as JSON Schema reads patterns.
//! Backreferences, lookaround and other assertions are refused by name.

use super::utf8::{self, MAX_CHAR};
use super::GrammarError;

/// Most characters a quantifier may repeat a piece (to keep grammars small).
const MAX_REPEAT: u32 = 1000;

/// The GBNF of JSON string bodies (between the quotes) whose value matches
/// `pattern`; `chr` is the rule of one arbitrary JSON string character.
pub fn to_gbnf(pattern: &str, chr: &str) -> Result<String, GrammarError> {
    let chars: Vec<char> = pattern.chars().collect();
    let (start, end) =
        (chars.first() == Some(&'^'), chars.last() == Some(&'$') && !escaped_at(&chars, chars.len() - 1));
    let body = &chars[usize::from(start)..chars.len() - usize::from(end && chars.len() > usize::from(start))];
    let mut p = Parser { chars: body, at: 0 };
    let expr = p.alternatives()?;
    if p.at < body.len() {
        return Err(p.error(&format!("unexpected `{}`", body[p.at])));
    }
    let free = format!("{chr}*");
    Ok(format!(
        "{}( {expr} ){}",
        if start { String::new() } else { format!("{free} ") },
        if end { String::new() } else { format!(" {free}") }
    ))
}

/// Whether the character at `i` is escaped by an odd run of backslashes.
fn escaped_at(chars: &[char], i: usize) -> bool {
    chars[..i].iter().rev().take_while(|&&c| c == '\\').count() % 2 == 1
}

struct Parser<'a> {
    chars: &'a [char],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> GrammarError {
        GrammarError(format!("JSON schema: `pattern` at character {}: {what}", self.at))
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn alternatives(&mut self) -> Result<String, GrammarError> {
        let mut alts = vec![self.sequence()?];
        while self.peek() == Some('|') {
            self.at += 1;
            alts.push(self.sequence()?);
        }
        Ok(if alts.len() == 1 { alts.pop().unwrap_or_default() } else { format!("( {} )", alts.join(" | ")) })
    }

    fn sequence(&mut self) -> Result<String, GrammarError> {
        let mut items: Vec<String> = Vec::new();
        while let Some(c) = self.peek() {
            let atom = match c {
                '|' | ')' => break,
                '(' => {
                    self.at += 1;
                    if self.peek() == Some('?') {
                        if self.chars.get(self.at + 1) == Some(&':') {
                            self.at += 2;
                        } else {
                            return Err(self.error("lookaround and named groups are not supported"));
                        }
                    }
                    let inner = self.alternatives()?;
                    if self.peek() != Some(')') {
                        return Err(self.error("expected `)`"));
                    }
                    self.at += 1;
                    format!("( {inner} )")
                }
                '[' => {
                    self.at += 1;
                    self.class()?
                }
                '.' => {
                    self.at += 1;
                    class_gbnf(&utf8::complement(&[(0x0A, 0x0A), (0x0D, 0x0D)]))
                }
                '^' | '$' => return Err(self.error("`^` and `$` may only anchor the whole pattern")),
                '*' | '+' | '?' | '{' => return Err(self.error(&format!("`{c}` follows nothing"))),
                '\\' => {
                    self.at += 1;
                    let ranges = self.escape(false)?;
                    class_gbnf(&ranges)
                }
                c => {
                    self.at += 1;
                    class_gbnf(&[(c as u32, c as u32)])
                }
            };
            let atom = self.quantified(atom)?;
            items.push(atom);
        }
        Ok(if items.is_empty() { "\"\"".into() } else { items.join(" ") })
    }

    fn quantified(&mut self, atom: String) -> Result<String, GrammarError> {
        let (min, max) = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                let close = self.chars[self.at..].iter().position(|&c| c == '}').map(|i| self.at + i);
                let Some(close) = close else { return Ok(atom) };
                let inner: String = self.chars[self.at + 1..close].iter().collect();
                let number =
                    |s: &str| s.trim().parse::<u32>().map_err(|_| self.error(&format!("bad repetition `{{{inner}}}`")));
                let (min, max) = match inner.split_once(',') {
                    None => {
                        let n = number(&inner)?;
                        (n, Some(n))
                    }
                    Some((a, b)) if b.trim().is_empty() => (number(a)?, None),
                    Some((a, b)) => (number(a)?, Some(number(b)?)),
                };
                if max.is_some_and(|m| m < min) || min.max(max.unwrap_or(0)) > MAX_REPEAT {
                    return Err(self.error(&format!("repetition `{{{inner}}}` is backwards or over {MAX_REPEAT}")));
                }
                self.at = close;
                (min, max)
            }
            _ => return Ok(atom),
        };
        self.at += 1;
        if self.peek() == Some('?') {
            self.at += 1;
        }
        Ok(match (min, max) {
            (0, None) => format!("{atom}*"),
            (1, None) => format!("{atom}+"),
            (0, Some(1)) => format!("{atom}?"),
            (min, None) => format!("{atom}{{{min},}}"),
            (min, Some(max)) => format!("{atom}{{{min},{max}}}"),
        })
    }

    /// The characters of an escape (after `\`); `in_class` allows `\b`
    /// (a backspace there).
    fn escape(&mut self, in_class: bool) -> Result<Vec<(u32, u32)>, GrammarError> {
        let c = self.peek().ok_or_else(|| self.error("unfinished escape"))?;
        self.at += 1;
        let digit = vec![(0x30, 0x39)];
        let word = vec![(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)];
        let space = vec![(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x2028, 0x2029), (0xFEFF, 0xFEFF)];
        let hex = |p: &mut Self, n: usize| -> Result<u32, GrammarError> {
            let digits: String = p.chars.get(p.at..p.at + n).ok_or_else(|| p.error("short escape"))?.iter().collect();
            p.at += n;
            u32::from_str_radix(&digits, 16).map_err(|_| p.error(&format!("bad escape `{digits}`")))
        };
        Ok(match c {
            'd' => digit,
            'D' => utf8::complement(&digit),
            'w' => word,
            'W' => utf8::complement(&word),
            's' => utf8::merge(space),
            'S' => utf8::complement(&utf8::merge(space)),
            'n' => vec![(0x0A, 0x0A)],
            'r' => vec![(0x0D, 0x0D)],
            't' => vec![(0x09, 0x09)],
            'f' => vec![(0x0C, 0x0C)],
            'v' => vec![(0x0B, 0x0B)],
            'b' if in_class => vec![(0x08, 0x08)],
            'x' => {
                let v = hex(self, 2)?;
                vec![(v, v)]
            }
            'u' => {
                let v = hex(self, 4)?;
                vec![(v, v)]
            }
            '1'..='9' => return Err(self.error("backreferences are not supported")),
            'b' | 'B' => return Err(self.error("word-boundary assertions are not supported")),
            c if c.is_ascii_alphanumeric() => return Err(self.error(&format!("unknown escape `\\{c}`"))),
            c => vec![(c as u32, c as u32)],
        })
    }

    fn class(&mut self) -> Result<String, GrammarError> {
        let negated = self.peek() == Some('^');
        if negated {
            self.at += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let c = self.peek().ok_or_else(|| self.error("unterminated character class"))?;
            if c == ']' && !first {
                self.at += 1;
                break;
            }
            first = false;
            self.at += 1;
            let lo = if c == '\\' {
                let set = self.escape(true)?;
                match set[..] {
                    [(a, b)] if a == b => a,
                    _ => {
                        ranges.extend(set);
                        continue;
                    }
                }
            } else {
                c as u32
            };
            if self.peek() == Some('-') && self.chars.get(self.at + 1).is_some_and(|&n| n != ']') {
                self.at += 1;
                let h = self.peek().unwrap_or(']');
                self.at += 1;
                let hi = if h == '\\' {
                    match self.escape(true)?[..] {
                        [(a, b)] if a == b => a,
                        _ => return Err(self.error("a range cannot end in a class escape")),
                    }
                } else {
                    h as u32
                };
                if hi < lo {
                    return Err(self.error("a range is backwards"));
                }
                ranges.push((lo, hi));
            } else {
                ranges.push((lo, lo));
            }
        }
        let mut ranges = utf8::merge(ranges);
        if negated {
            ranges = utf8::complement(&ranges);
        }
        if ranges.is_empty() {
            return Err(self.error("the character class matches nothing"));
        }
        Ok(class_gbnf(&ranges))
    }
}

/// GBNF for one character out of `ranges`, as JSON writes it: a quote,
/// backslash or control character by its escape.
fn class_gbnf(ranges: &[(u32, u32)]) -> String {
    let special = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)];
    let mut plain = Vec::new();
    let mut escapes = Vec::new();
    for &(lo, hi) in ranges {
        let mut from = lo;
        for &(s_lo, s_hi) in &special {
            if from > hi || s_lo > hi {
                continue;
            }
            if s_hi < from {
                continue;
            }
            if from < s_lo {
                plain.push((from, s_lo - 1));
            }
            for c in from.max(s_lo)..=hi.min(s_hi) {
                escapes.push(match c {
                    0x22 => r#""\\\"""#.to_string(),
                    0x5C => r#""\\\\""#.to_string(),
                    0x0A => r#""\\n""#.to_string(),
                    0x09 => r#""\\t""#.to_string(),
                    0x0D => r#""\\r""#.to_string(),
                    c => format!(r#""\\u00{c:02x}""#),
                });
            }
            from = hi.min(s_hi) + 1;
        }
        if from <= hi {
            plain.push((from, hi.min(MAX_CHAR)));
        }
    }
    // Surrogates are not characters: no range starts or ends on one.
    let plain: Vec<(u32, u32)> = plain
        .into_iter()
        .flat_map(|(lo, hi)| [(lo, hi.min(0xD7FF)), (lo.max(0xE000), hi)])
        .filter(|&(lo, hi)| lo <= hi)
        .collect();
    let mut alts = Vec::new();
    if !plain.is_empty() {
        let body: String = plain
            .iter()
            .map(|&(lo, hi)| if lo == hi { class_char(lo) } else { format!("{}-{}", class_char(lo), class_char(hi)) })
            .collect();
        alts.push(format!("[{body}]"));
    }
    alts.extend(escapes);
    if alts.len() == 1 {
        alts.pop().unwrap_or_default()
    } else {
        format!("( {} )", alts.join(" | "))
    }
}

/// A character as GBNF writes it inside a class.
fn class_char(c: u32) -> String {
    match char::from_u32(c) {
        Some(ch @ (']' | '[' | '-' | '^' | '\\')) => format!("\\{ch}"),
        Some(ch) if c >= 0x20 && c != 0x7F => ch.to_string(),
        _ if c <= 0xFF => format!("\\x{c:02X}"),
        _ if c <= 0xFFFF => format!("\\u{c:04X}"),
        _ => format!("\\U{c:08X}"),
    }
}
