//! Constrained generation: text that must match a grammar.
//!
//! A [`Constraint`] (any JSON object, a JSON Schema, or a GBNF grammar)
//! compiles to a [`Grammar`] over bytes: [`schema`] writes a schema as GBNF
//! and [`gbnf`] reads GBNF, spelling characters out as their UTF-8 bytes.
//! [`automaton`] runs a grammar as a pushdown automaton whose states are
//! built as generations reach them and cached, and turns each state into the
//! set of vocabulary tokens that may come next (walking a trie of the
//! vocabulary once per state). The scheduler masks a constrained sequence's
//! logits with that set each step.

pub mod automaton;
pub mod gbnf;
mod regex;
pub mod schema;
mod utf8;

pub use automaton::{Automaton, TokenTrie};

/// What a constrained generation's text must be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Constraint {
    /// One JSON object, any keys.
    JsonObject,
    /// A JSON value valid against this JSON Schema (JSON text).
    JsonSchema(String),
    /// Text in the language of this GBNF grammar (its `root` rule).
    Gbnf(String),
    /// Either JSON valid against this JSON Schema of an object (so its text
    /// starts with `{`), or any text that does not start with `{`: how a
    /// model answers in prose or calls a tool, as it chooses.
    JsonOrText(String),
}

impl Constraint {
    /// The grammar it stands for.
    pub fn grammar(&self) -> Result<Grammar, GrammarError> {
        gbnf::parse(&self.gbnf()?)
    }

    /// The grammar it stands for, as GBNF.
    pub fn gbnf(&self) -> Result<String, GrammarError> {
        match self {
            Constraint::JsonObject => Ok(schema::to_gbnf(&serde_json::json!({"type": "object"}))?),
            Constraint::JsonSchema(text) => schema::to_gbnf(&parse_schema(text)?),
            Constraint::Gbnf(text) => Ok(text.clone()),
            Constraint::JsonOrText(text) => {
                let json = schema::to_gbnf(&parse_schema(text)?)?;
                // Schema rules never hold `_`, so these names are free.
                Ok(format!(
                    "root ::= json_answer | free_text | \"\"\nfree_text ::= [^{{] .*\n{}",
                    json.replacen("root ::= ", "json_answer ::= ", 1)
                ))
            }
        }
    }
}

fn parse_schema(text: &str) -> Result<serde_json::Value, GrammarError> {
    serde_json::from_str(text).map_err(|e| GrammarError(format!("the JSON schema is not JSON: {e}")))
}

/// Why a grammar or schema cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

/// A set of byte values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ByteSet([u64; 4]);

impl ByteSet {
    pub fn single(b: u8) -> Self {
        Self::range(b, b)
    }

    pub fn range(lo: u8, hi: u8) -> Self {
        let mut s = Self::default();
        s.insert_range(lo, hi);
        s
    }

    pub fn insert_range(&mut self, lo: u8, hi: u8) {
        for b in lo..=hi {
            self.0[usize::from(b >> 6)] |= 1 << (b & 63);
        }
    }

    pub fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] >> (b & 63) & 1 == 1
    }

    /// The lowest printable member (space and up), else the lowest.
    fn pick(&self) -> Option<u8> {
        (0x20..=0xFF).chain(0..0x20).find(|&b| self.contains(b))
    }
}

/// One element of an alternative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    /// One byte out of the set.
    Bytes(ByteSet),
    /// Text of a rule.
    Rule(u32),
    /// The end of the alternative.
    End,
}

/// A context-free grammar over bytes in flat form: each alternative is a
/// run of elements in `elems` ending with [`Elem::End`].
#[derive(Debug, Clone)]
pub struct Grammar {
    pub(crate) elems: Vec<Elem>,
    /// Where each alternative of each rule starts.
    pub(crate) rules: Vec<Vec<u32>>,
    names: Vec<String>,
    pub(crate) root: u32,
    /// Fewest bytes from each position to the end of its alternative.
    pub(crate) min_len: Vec<u32>,
}

const NEVER: u32 = u32::MAX;

impl Grammar {
    /// Checks the grammar can be run: no left recursion (the automaton
    /// would never stop expanding it) and every rule matches some text.
    pub(crate) fn new(
        elems: Vec<Elem>,
        rules: Vec<Vec<u32>>,
        names: Vec<String>,
        root: u32,
    ) -> Result<Self, GrammarError> {
        let mut g = Self { elems, rules, names, root, min_len: Vec::new() };
        g.check_left_recursion()?;
        g.compute_min_len()?;
        Ok(g)
    }

    fn alt(&self, start: u32) -> impl Iterator<Item = Elem> + '_ {
        self.elems[start as usize..].iter().copied().take_while(|e| *e != Elem::End)
    }

    fn check_left_recursion(&self) -> Result<(), GrammarError> {
        let n = self.rules.len();
        let mut nullable = vec![false; n];
        let mut changed = true;
        while changed {
            changed = false;
            for r in 0..n {
                if !nullable[r]
                    && self.rules[r]
                        .iter()
                        .any(|&a| self.alt(a).all(|e| matches!(e, Elem::Rule(s) if nullable[s as usize])))
                {
                    nullable[r] = true;
                    changed = true;
                }
            }
        }
        // r -> s when s can come first in r.
        let firsts: Vec<Vec<u32>> = (0..n)
            .map(|r| {
                let mut out = Vec::new();
                for &a in &self.rules[r] {
                    for e in self.alt(a) {
                        match e {
                            Elem::Rule(s) => {
                                out.push(s);
                                if !nullable[s as usize] {
                                    break;
                                }
                            }
                            _ => break,
                        }
                    }
                }
                out
            })
            .collect();
        // Depth-first search for a cycle: 0 unseen, 1 on the path, 2 done.
        let mut mark = vec![0u8; n];
        for start in 0..n {
            if mark[start] != 0 {
                continue;
            }
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            mark[start] = 1;
            while let Some(&mut (r, ref mut i)) = path.last_mut() {
                if let Some(&s) = firsts[r].get(*i) {
                    *i += 1;
                    match mark[s as usize] {
                        0 => {
                            mark[s as usize] = 1;
                            path.push((s as usize, 0));
                        }
                        1 => {
                            return Err(GrammarError(format!(
                                "rule `{}` is left-recursive (it can start with itself), which this grammar engine does not run",
                                self.names[s as usize]
                            )))
                        }
                        _ => {}
                    }
                } else {
                    mark[r] = 2;
                    path.pop();
                }
            }
        }
        Ok(())
    }

    fn compute_min_len(&mut self) -> Result<(), GrammarError> {
        let mut rule_min = vec![NEVER; self.rules.len()];
        let alt_min = |rule_min: &[u32], start: u32| -> u32 {
            self.alt(start).fold(0u32, |acc, e| match e {
                Elem::Bytes(_) => acc.saturating_add(1),
                Elem::Rule(s) => acc.saturating_add(rule_min[s as usize]),
                Elem::End => acc,
            })
        };
        let mut changed = true;
        while changed {
            changed = false;
            for r in (0..self.rules.len()).rev() {
                let m = self.rules[r].iter().map(|&a| alt_min(&rule_min, a)).min().unwrap_or(NEVER);
                if m < rule_min[r] {
                    rule_min[r] = m;
                    changed = true;
                }
            }
        }
        if let Some(r) = rule_min.iter().position(|&m| m == NEVER) {
            return Err(GrammarError(format!("rule `{}` matches no text at all", self.names[r])));
        }
        let mut min_len = vec![0u32; self.elems.len()];
        for p in (0..self.elems.len()).rev() {
            min_len[p] = match self.elems[p] {
                Elem::End => 0,
                Elem::Bytes(_) => 1 + min_len[p + 1],
                Elem::Rule(s) => rule_min[s as usize].saturating_add(min_len[p + 1]),
            };
        }
        self.min_len = min_len;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
