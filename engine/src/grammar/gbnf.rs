//! GBNF, llama.cpp's grammar notation, read into a [`Grammar`].
//!
//! ```text
//! root   ::= "{" ws pair ("," ws pair)* "}"      # a comment
//! pair   ::= [a-z]+ ":" ws ( "true" | "false" )
//! ws     ::= [ \t\n]{0,4}
//! ```
//!
//! Rules are `name ::= alternatives`, one per line (a line may break after
//! `|` or inside parentheses). Items: `"literals"`, `[character classes]`
//! (ranges, `^` negation), `.` (any character), rule names, `( groups )`,
//! and the postfixes `*`, `+`, `?`, `{m}`, `{m,}`, `{m,n}`, `{,n}`.
//! Escapes: `\n \r \t \\ \" \[ \] \- \^ \/ \xHH \uHHHH \UHHHHHHHH`.

use std::collections::HashMap;

use super::utf8::{self, MAX_CHAR};
use super::{ByteSet, Elem, Grammar, GrammarError};

/// Most elements a grammar may lower to (repetition counts multiply).
const MAX_ELEMS: usize = 200_000;

/// Rules as read: each name with its alternatives.
type Rules = Vec<(String, Vec<Vec<Item>>)>;

/// One item of a sequence, before lowering.
#[derive(Debug, Clone)]
enum Item {
    Bytes(ByteSet),
    /// Characters, some beyond ASCII, as merged ranges.
    Chars(Vec<(u32, u32)>),
    Ref(String),
    Group(Vec<Vec<Item>>),
    Repeat(Box<Item>, u32, Option<u32>),
}

/// Reads `source`; the rule named `root` is where text starts.
pub fn parse(source: &str) -> Result<Grammar, GrammarError> {
    let rules = Parser { src: source.as_bytes(), at: 0 }.grammar()?;
    lower(rules)
}

struct Parser<'a> {
    src: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> GrammarError {
        let line = self.src[..self.at.min(self.src.len())].iter().filter(|&&b| b == b'\n').count() + 1;
        GrammarError(format!("grammar line {line}: {what}"))
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.at).copied()
    }

    /// Skips blanks and comments, and line ends when `newlines`.
    fn space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' => self.at += 1,
                b'\r' | b'\n' if newlines => self.at += 1,
                b'#' => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.at += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn grammar(mut self) -> Result<Rules, GrammarError> {
        let mut rules = Vec::new();
        loop {
            self.space(true);
            if self.peek().is_none() {
                return Ok(rules);
            }
            let name = self.name().ok_or_else(|| self.error("expected a rule name"))?;
            self.space(false);
            if !self.src[self.at..].starts_with(b"::=") {
                return Err(self.error(&format!("expected `::=` after `{name}`")));
            }
            self.at += 3;
            self.space(true);
            let alts = self.alternatives(false)?;
            self.space(false);
            match self.peek() {
                None | Some(b'\n' | b'\r') => rules.push((name, alts)),
                Some(c) => return Err(self.error(&format!("unexpected `{}`", c as char))),
            }
        }
    }

    fn name(&mut self) -> Option<String> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.src[start..self.at]).into_owned())
    }

    fn alternatives(&mut self, nested: bool) -> Result<Vec<Vec<Item>>, GrammarError> {
        let mut alts = vec![self.sequence(nested)?];
        while self.peek() == Some(b'|') {
            self.at += 1;
            self.space(true);
            alts.push(self.sequence(nested)?);
        }
        Ok(alts)
    }

    fn sequence(&mut self, nested: bool) -> Result<Vec<Item>, GrammarError> {
        let mut items: Vec<Item> = Vec::new();
        loop {
            self.space(nested);
            let Some(c) = self.peek() else { return Ok(items) };
            let item = match c {
                b'"' => {
                    self.at += 1;
                    self.literal()?
                }
                b'[' => {
                    self.at += 1;
                    self.class()?
                }
                b'.' => {
                    self.at += 1;
                    Item::Chars(vec![(0, MAX_CHAR)])
                }
                b'(' => {
                    self.at += 1;
                    self.space(true);
                    let alts = self.alternatives(true)?;
                    self.space(true);
                    if self.peek() != Some(b')') {
                        return Err(self.error("expected `)`"));
                    }
                    self.at += 1;
                    Item::Group(alts)
                }
                b'*' | b'+' | b'?' | b'{' => {
                    let last = items.pop().ok_or_else(|| self.error(&format!("`{}` follows nothing", c as char)))?;
                    let (min, max) = self.repetition()?;
                    items.push(Item::Repeat(Box::new(last), min, max));
                    continue;
                }
                c if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' => {
                    let name = self.name().unwrap_or_default();
                    Item::Ref(name)
                }
                _ => return Ok(items),
            };
            items.push(item);
        }
    }

    fn repetition(&mut self) -> Result<(u32, Option<u32>), GrammarError> {
        let c = self.peek().unwrap_or(0);
        self.at += 1;
        Ok(match c {
            b'*' => (0, None),
            b'+' => (1, None),
            b'?' => (0, Some(1)),
            _ => {
                self.space(false);
                let min = self.number()?.unwrap_or(0);
                self.space(false);
                let max = if self.peek() == Some(b',') {
                    self.at += 1;
                    self.space(false);
                    self.number()?
                } else {
                    Some(min)
                };
                self.space(false);
                if self.peek() != Some(b'}') {
                    return Err(self.error("expected `}`"));
                }
                self.at += 1;
                if max.is_some_and(|m| m < min) {
                    return Err(self.error(&format!(
                        "repetition {{{min},{}}} has its maximum below its minimum",
                        max.unwrap_or(0)
                    )));
                }
                (min, max)
            }
        })
    }

    fn number(&mut self) -> Result<Option<u32>, GrammarError> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        if self.at == start {
            return Ok(None);
        }
        let text = std::str::from_utf8(&self.src[start..self.at]).unwrap_or("");
        text.parse().map(Some).map_err(|_| self.error("repetition count too large"))
    }

    /// One character of a literal or class, escapes resolved.
    fn char(&mut self) -> Result<u32, GrammarError> {
        let rest = std::str::from_utf8(&self.src[self.at..]).map_err(|_| self.error("not UTF-8"))?;
        let c = rest.chars().next().ok_or_else(|| self.error("unexpected end"))?;
        self.at += c.len_utf8();
        if c != '\\' {
            return Ok(c as u32);
        }
        let e = self.peek().ok_or_else(|| self.error("unfinished escape"))?;
        self.at += 1;
        let hex = |p: &mut Self, n: usize| -> Result<u32, GrammarError> {
            let digits = p.src.get(p.at..p.at + n).ok_or_else(|| p.error("short escape"))?;
            let text = std::str::from_utf8(digits).map_err(|_| p.error("bad escape"))?;
            let v = u32::from_str_radix(text, 16).map_err(|_| p.error(&format!("bad hex escape `{text}`")))?;
            p.at += n;
            char::from_u32(v).map(|_| v).ok_or_else(|| p.error(&format!("{v:#x} is not a character")))
        };
        Ok(match e {
            b'n' => 10,
            b'r' => 13,
            b't' => 9,
            b'x' => hex(self, 2)?,
            b'u' => hex(self, 4)?,
            b'U' => hex(self, 8)?,
            b'\\' | b'"' | b'[' | b']' | b'-' | b'^' | b'/' | b'\'' => u32::from(e),
            _ => return Err(self.error(&format!("unknown escape `\\{}`", e as char))),
        })
    }

    fn literal(&mut self) -> Result<Item, GrammarError> {
        let mut bytes = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\n') => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.at += 1;
                    break;
                }
                _ => {
                    let c = self.char()?;
                    let mut buf = [0u8; 4];
                    let ch = char::from_u32(c).unwrap_or('\u{FFFD}');
                    bytes.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        let seq: Vec<Item> = bytes.into_iter().map(|b| Item::Bytes(ByteSet::single(b))).collect();
        Ok(match <[Item; 1]>::try_from(seq) {
            Ok([one]) => one,
            Err(seq) => Item::Group(vec![seq]),
        })
    }

    fn class(&mut self) -> Result<Item, GrammarError> {
        let negated = self.peek() == Some(b'^');
        if negated {
            self.at += 1;
        }
        let mut ranges = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated character class")),
                Some(b']') => {
                    self.at += 1;
                    break;
                }
                _ => {
                    let lo = self.char()?;
                    let hi = if self.peek() == Some(b'-') && self.src.get(self.at + 1) != Some(&b']') {
                        self.at += 1;
                        self.char()?
                    } else {
                        lo
                    };
                    if hi < lo {
                        return Err(self.error(&format!("range {lo:#x}-{hi:#x} is backwards")));
                    }
                    ranges.push((lo, hi));
                }
            }
        }
        let mut ranges = utf8::merge(ranges);
        if negated {
            ranges = utf8::complement(&ranges);
        }
        Ok(chars(ranges))
    }
}

/// An item for characters in `ranges` (merged): one byte set when all are ASCII.
fn chars(ranges: Vec<(u32, u32)>) -> Item {
    if ranges.iter().all(|&(_, hi)| hi < 0x80) {
        let mut set = ByteSet::default();
        for (lo, hi) in ranges {
            set.insert_range(lo as u8, hi as u8);
        }
        Item::Bytes(set)
    } else {
        Item::Chars(ranges)
    }
}

/// Builds the flat form: every alternative a run of elements ending in
/// `End`, repetitions and groups as rules of their own.
struct Lowering {
    elems: Vec<Elem>,
    rules: Vec<Vec<u32>>,
    names: Vec<String>,
    ids: HashMap<String, u32>,
    classes: HashMap<Vec<(u32, u32)>, u32>,
}

fn lower(source: Rules) -> Result<Grammar, GrammarError> {
    let mut l = Lowering {
        elems: Vec::new(),
        rules: Vec::new(),
        names: Vec::new(),
        ids: HashMap::new(),
        classes: HashMap::new(),
    };
    for (name, _) in &source {
        if l.ids.contains_key(name) {
            return Err(GrammarError(format!("rule `{name}` is defined twice")));
        }
        let id = l.new_rule(name.clone());
        l.ids.insert(name.clone(), id);
    }
    let root = *l.ids.get("root").ok_or_else(|| GrammarError("the grammar has no `root` rule".into()))?;
    for (name, alts) in &source {
        let id = l.ids[name];
        l.define(id, alts)?;
    }
    Grammar::new(l.elems, l.rules, l.names, root)
}

impl Lowering {
    fn new_rule(&mut self, name: String) -> u32 {
        self.rules.push(Vec::new());
        self.names.push(name);
        (self.rules.len() - 1) as u32
    }

    fn helper(&mut self, alts: Vec<Vec<Elem>>, of: u32) -> Result<u32, GrammarError> {
        let id = self.new_rule(format!("{}-{}", self.names[of as usize], self.rules.len()));
        self.add_alternatives(id, alts)?;
        Ok(id)
    }

    fn add_alternatives(&mut self, id: u32, alts: Vec<Vec<Elem>>) -> Result<(), GrammarError> {
        for alt in alts {
            self.rules[id as usize].push(self.elems.len() as u32);
            self.elems.extend(alt);
            self.elems.push(Elem::End);
        }
        if self.elems.len() > MAX_ELEMS {
            return Err(GrammarError(format!(
                "the grammar is too large (over {MAX_ELEMS} elements once repetitions are spelled out)"
            )));
        }
        Ok(())
    }

    fn define(&mut self, id: u32, alts: &[Vec<Item>]) -> Result<(), GrammarError> {
        let mut lowered = Vec::with_capacity(alts.len());
        for alt in alts {
            let mut out = Vec::new();
            for item in alt {
                self.item(item, id, &mut out)?;
            }
            lowered.push(out);
        }
        self.add_alternatives(id, lowered)
    }

    fn item(&mut self, item: &Item, of: u32, out: &mut Vec<Elem>) -> Result<(), GrammarError> {
        match item {
            Item::Bytes(set) => out.push(Elem::Bytes(*set)),
            Item::Chars(ranges) => {
                let rule = match self.classes.get(ranges) {
                    Some(&r) => r,
                    None => {
                        let r = self.class_rule(ranges, of)?;
                        self.classes.insert(ranges.clone(), r);
                        r
                    }
                };
                out.push(Elem::Rule(rule));
            }
            Item::Ref(name) => {
                let id = *self.ids.get(name).ok_or_else(|| {
                    GrammarError(format!("rule `{}` refers to `{name}`, which is not defined", self.names[of as usize]))
                })?;
                out.push(Elem::Rule(id));
            }
            Item::Group(alts) if alts.len() == 1 => {
                for item in &alts[0] {
                    self.item(item, of, out)?;
                }
            }
            Item::Group(alts) => {
                let id = self.new_rule(format!("{}-{}", self.names[of as usize], self.rules.len()));
                self.define(id, alts)?;
                out.push(Elem::Rule(id));
            }
            Item::Repeat(inner, min, max) => {
                let unit = self.unit(inner, of)?;
                if (*min as usize).max(max.unwrap_or(0) as usize) > MAX_ELEMS {
                    return Err(GrammarError(format!(
                        "repetition count {} is too large",
                        max.unwrap_or(*min).max(*min)
                    )));
                }
                out.extend(std::iter::repeat_n(unit, *min as usize));
                match max {
                    None => {
                        // star ::= unit star | ε  (right recursion keeps the stack flat)
                        let star = self.new_rule(format!("{}-{}", self.names[of as usize], self.rules.len()));
                        self.add_alternatives(star, vec![vec![unit, Elem::Rule(star)], vec![]])?;
                        out.push(Elem::Rule(star));
                    }
                    Some(max) if max > min => {
                        // opt_k ::= unit opt_{k-1} | ε
                        let mut prev: Option<u32> = None;
                        for _ in *min..*max {
                            let mut alt = vec![unit];
                            alt.extend(prev.map(Elem::Rule));
                            prev = Some(self.helper(vec![alt, vec![]], of)?);
                        }
                        out.extend(prev.map(Elem::Rule));
                    }
                    Some(_) => {}
                }
            }
        }
        if out.len() > MAX_ELEMS {
            return Err(GrammarError(format!("the grammar is too large (over {MAX_ELEMS} elements)")));
        }
        Ok(())
    }

    /// One element that stands for `item`.
    fn unit(&mut self, item: &Item, of: u32) -> Result<Elem, GrammarError> {
        let mut out = Vec::new();
        self.item(item, of, &mut out)?;
        if out.len() == 1 {
            return Ok(out[0]);
        }
        Ok(Elem::Rule(self.helper(vec![out], of)?))
    }

    /// A rule of the UTF-8 encodings of `ranges`.
    fn class_rule(&mut self, ranges: &[(u32, u32)], of: u32) -> Result<u32, GrammarError> {
        let mut ascii = ByteSet::default();
        let mut alts = Vec::new();
        for &(lo, hi) in ranges {
            for seq in utf8::sequences(lo, hi) {
                if let [(a, b)] = seq[..] {
                    ascii.insert_range(a, b);
                } else {
                    alts.push(seq.into_iter().map(|(a, b)| Elem::Bytes(ByteSet::range(a, b))).collect());
                }
            }
        }
        if ascii != ByteSet::default() {
            alts.insert(0, vec![Elem::Bytes(ascii)]);
        }
        self.helper(alts, of)
    }
}
