//! JSON Schema as GBNF: a grammar whose every sentence is a JSON value
//! valid against the schema.
//!
//! Objects list their properties in the schema's order: required ones
//! always, optional ones when the model writes them. Properties the schema
//! does not name are written only when it names none (`{"type": "object"}`,
//! or `additionalProperties` alone), so that every output validates whatever
//! `additionalProperties` says. A string's `pattern` becomes grammar too
//! (see [`super::regex`]). Keywords that constrain values in ways a
//! grammar cannot express here (`multipleOf`, `uniqueItems`,
//! `not`, …) are refused by name rather than ignored; annotations (`title`,
//! `description`, `default`, …) are ignored. Numbers have at most 16
//! integer and 16 fraction digits and strings no control characters, all
//! valid JSON; a bounded `number` is written as an integer unless its lower
//! bound is at least 0.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::GrammarError;

/// Keywords that assert something this grammar does not build.
const REFUSED: &[&str] = &[
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "contains",
    "minContains",
    "maxContains",
    "unevaluatedProperties",
    "unevaluatedItems",
    "multipleOf",
    "minProperties",
    "maxProperties",
    "$dynamicRef",
    "$recursiveRef",
];

/// Nesting of schemas followed before giving up.
const MAX_DEPTH: usize = 64;

/// The rules every schema may use, with the rules each needs.
const PRIMITIVES: &[(&str, &str, &[&str])] = &[
    ("ws", r#""" | " " | "\n" [ ]{0,16}"#, &[]),
    (
        "value",
        "object | array | string | number | boolean | null",
        &["object", "array", "string", "number", "boolean", "null"],
    ),
    (
        "object",
        r#""{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}""#,
        &["ws", "string", "value"],
    ),
    ("array", r#""[" ws ( value ws ( "," ws value ws )* )? "]""#, &["ws", "value"]),
    ("string", r#""\"" char* "\"""#, &["char"]),
    ("char", r#"[^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )"#, &[]),
    ("number", r#""-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,2} )?"#, &[]),
    ("integer", r#""0" | "-"? [1-9] [0-9]{0,15}"#, &[]),
    ("boolean", r#""true" | "false""#, &[]),
    ("null", r#""null""#, &[]),
    ("date", r#"[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] )"#, &[]),
    (
        "time",
        r#"( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? ( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )"#,
        &[],
    ),
    ("uuid", r#"[0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12}"#, &[]),
];

/// The GBNF of JSON values valid against `schema`.
pub fn to_gbnf(schema: &Value) -> Result<String, GrammarError> {
    let mut w = Writer {
        root: schema,
        rules: Vec::new(),
        names: HashSet::new(),
        refs: HashMap::new(),
        prims: Vec::new(),
        depth: 0,
    };
    w.names.insert("root".into());
    for (name, _, _) in PRIMITIVES {
        w.names.insert((*name).into());
    }
    let root = w.expr(schema, "root")?;
    let mut out = format!("root ::= {root}\n");
    for (name, body) in &w.rules {
        out.push_str(&format!("{name} ::= {body}\n"));
    }
    for (name, body, _) in PRIMITIVES {
        if w.prims.contains(name) {
            out.push_str(&format!("{name} ::= {body}\n"));
        }
    }
    Ok(out)
}

fn refuse(what: impl std::fmt::Display) -> GrammarError {
    GrammarError(format!("JSON schema: {what}"))
}

/// A GBNF literal of `text`.
fn literal(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The GBNF literal of a JSON value, written compactly.
fn json_literal(v: &Value) -> String {
    literal(&v.to_string())
}

fn alternatives(alts: Vec<String>) -> String {
    match alts.len() {
        1 => alts.into_iter().next().unwrap_or_default(),
        _ => format!("( {} )", alts.join(" | ")),
    }
}

struct Writer<'a> {
    root: &'a Value,
    rules: Vec<(String, String)>,
    names: HashSet<String>,
    /// Rule of each `$ref` followed so far.
    refs: HashMap<String, String>,
    prims: Vec<&'static str>,
    depth: usize,
}

impl Writer<'_> {
    /// A fresh rule name from `hint`.
    fn fresh(&mut self, hint: &str) -> String {
        let mut base: String =
            hint.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
        if base.is_empty() {
            base = "rule".into();
        }
        let mut name = base.clone();
        let mut n = 1;
        while self.names.contains(&name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        self.names.insert(name.clone());
        name
    }

    /// A primitive rule's name, marking it (and what it needs) as used.
    fn prim(&mut self, name: &'static str) -> String {
        if !self.prims.contains(&name) {
            self.prims.push(name);
            let (_, _, needs) = PRIMITIVES.iter().find(|p| p.0 == name).expect("a primitive");
            for n in *needs {
                self.prim(n);
            }
        }
        name.into()
    }

    fn rule(&mut self, hint: &str, body: String) -> String {
        let name = self.fresh(hint);
        self.rules.push((name.clone(), body));
        name
    }

    fn expr(&mut self, schema: &Value, hint: &str) -> Result<String, GrammarError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(refuse(format!("schemas nest deeper than {MAX_DEPTH}")));
        }
        let out = self.expr_inner(schema, hint);
        self.depth -= 1;
        out
    }

    fn expr_inner(&mut self, schema: &Value, hint: &str) -> Result<String, GrammarError> {
        let m = match schema {
            Value::Bool(true) => return Ok(self.prim("value")),
            Value::Bool(false) => return Err(refuse("the schema `false` matches nothing")),
            Value::Object(m) => m,
            _ => return Err(refuse(format!("a schema must be an object or a boolean, got {schema}"))),
        };
        if let Some(k) = REFUSED.iter().find(|k| m.contains_key(**k)) {
            return Err(refuse(format!("the keyword `{k}` is not supported in structured output")));
        }
        if m.get("uniqueItems") == Some(&Value::Bool(true)) {
            return Err(refuse("the keyword `uniqueItems` is not supported in structured output"));
        }
        if let Some(r) = m.get("$ref") {
            return self.reference(r);
        }
        if let Some(c) = m.get("const") {
            return Ok(json_literal(c));
        }
        if let Some(e) = m.get("enum") {
            let values =
                e.as_array().filter(|a| !a.is_empty()).ok_or_else(|| refuse("`enum` must be a non-empty array"))?;
            return Ok(alternatives(values.iter().map(json_literal).collect()));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(list) = m.get(key) {
                let list = list
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| refuse(format!("`{key}` must be a non-empty array")))?;
                let mut alts = Vec::new();
                for (i, s) in list.iter().enumerate() {
                    alts.push(self.expr(s, &format!("{hint}-{i}"))?);
                }
                return Ok(alternatives(alts));
            }
        }
        if let Some(all) = m.get("allOf") {
            let merged = self.merge_all_of(m, all)?;
            return self.expr(&Value::Object(merged), hint);
        }
        let types: Vec<&str> = match m.get("type") {
            None => vec![if m.contains_key("properties")
                || m.contains_key("additionalProperties")
                || m.contains_key("required")
            {
                "object"
            } else if m.contains_key("items") || m.contains_key("prefixItems") {
                "array"
            } else {
                "any"
            }],
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) if !ts.is_empty() => ts
                .iter()
                .map(|t| t.as_str().ok_or_else(|| refuse("`type` lists must hold strings")))
                .collect::<Result<_, _>>()?,
            Some(t) => return Err(refuse(format!("`type` must be a string or a list of them, got {t}"))),
        };
        let mut alts = Vec::new();
        for t in types {
            alts.push(self.typed(m, t, hint)?);
        }
        if m.get("nullable") == Some(&Value::Bool(true)) {
            alts.push(self.prim("null"));
        }
        Ok(alternatives(alts))
    }

    fn reference(&mut self, r: &Value) -> Result<String, GrammarError> {
        let r = r.as_str().ok_or_else(|| refuse("`$ref` must be a string"))?;
        if let Some(name) = self.refs.get(r) {
            return Ok(name.clone());
        }
        let pointer = r
            .strip_prefix('#')
            .ok_or_else(|| refuse(format!("only references within the schema (`#/…`) are followed, not `{r}`")))?;
        let target = self.root.pointer(pointer).ok_or_else(|| refuse(format!("`$ref` `{r}` points at nothing")))?;
        let name = self.fresh(pointer.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or("ref"));
        self.refs.insert(r.to_string(), name.clone());
        let body = self.expr(target, &name)?;
        self.rules.push((name.clone(), body));
        Ok(name)
    }

    /// `allOf` of object schemas as one object schema.
    fn merge_all_of(&self, outer: &Map<String, Value>, all: &Value) -> Result<Map<String, Value>, GrammarError> {
        let list =
            all.as_array().filter(|a| !a.is_empty()).ok_or_else(|| refuse("`allOf` must be a non-empty array"))?;
        let mut merged = outer.clone();
        merged.remove("allOf");
        for s in list {
            let mut s = s.clone();
            // One level of references is followed so that Pydantic's
            // `allOf: [{$ref}]` wrappers work.
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                s = r
                    .strip_prefix('#')
                    .and_then(|p| self.root.pointer(p))
                    .cloned()
                    .ok_or_else(|| refuse(format!("`$ref` `{r}` points at nothing")))?;
            }
            let Value::Object(part) = s else { return Err(refuse("`allOf` must list object schemas")) };
            for (k, v) in part {
                match (k.as_str(), merged.get_mut(&k)) {
                    ("properties", Some(Value::Object(props))) => {
                        let Value::Object(more) = v else { return Err(refuse("`properties` must be an object")) };
                        for (name, p) in more {
                            if props.contains_key(&name) {
                                return Err(refuse(format!("`allOf` defines property `{name}` twice")));
                            }
                            props.insert(name, p);
                        }
                    }
                    ("required", Some(Value::Array(req))) => req.extend(v.as_array().cloned().unwrap_or_default()),
                    (_, Some(existing))
                        if *existing != v
                            && !matches!(k.as_str(), "title" | "description" | "$defs" | "definitions") =>
                    {
                        return Err(refuse(format!("`allOf` parts disagree on `{k}`")));
                    }
                    (_, Some(_)) => {}
                    (_, None) => {
                        merged.insert(k, v);
                    }
                }
            }
        }
        Ok(merged)
    }

    fn typed(&mut self, m: &Map<String, Value>, t: &str, hint: &str) -> Result<String, GrammarError> {
        Ok(match t {
            "any" => self.prim("value"),
            "null" => self.prim("null"),
            "boolean" => self.prim("boolean"),
            "string" => self.string(m)?,
            "integer" => {
                let (lo, hi) = bounds(m)?;
                let lo = lo.map(|(v, exclusive)| if exclusive { v.floor() + 1.0 } else { v.ceil() });
                let hi = hi.map(|(v, exclusive)| if exclusive { v.ceil() - 1.0 } else { v.floor() });
                self.integer(lo, hi)?
            }
            "number" => self.number(m)?,
            "object" => self.object(m, hint)?,
            "array" => self.array(m, hint)?,
            other => return Err(refuse(format!("unknown type `{other}`"))),
        })
    }

    fn string(&mut self, m: &Map<String, Value>) -> Result<String, GrammarError> {
        let format = m.get("format").and_then(Value::as_str);
        let body = match format {
            Some("date") => self.prim("date"),
            Some("time") => self.prim("time"),
            Some("date-time") => format!("{} \"T\" {}", self.prim("date"), self.prim("time")),
            Some("uuid") => self.prim("uuid"),
            _ if m.contains_key("pattern") => {
                if m.contains_key("minLength") || m.contains_key("maxLength") {
                    return Err(refuse("`pattern` together with `minLength` or `maxLength` is not supported"));
                }
                let pattern =
                    m.get("pattern").and_then(Value::as_str).ok_or_else(|| refuse("`pattern` must be a string"))?;
                let ch = self.prim("char");
                super::regex::to_gbnf(pattern, &ch)?
            }
            _ => {
                let (min, max) = counts(m, "minLength", "maxLength")?;
                let ch = self.prim("char");
                match (min, max) {
                    (0, None) => format!("{ch}*"),
                    (min, None) => format!("{ch}{{{min},}}"),
                    (min, Some(max)) => format!("{ch}{{{min},{max}}}"),
                }
            }
        };
        Ok(format!(r#""\"" {body} "\"""#))
    }

    /// Integers in `lo..=hi` (either end open).
    fn integer(&mut self, lo: Option<f64>, hi: Option<f64>) -> Result<String, GrammarError> {
        if lo.is_none() && hi.is_none() {
            return Ok(self.prim("integer"));
        }
        const LIMIT: f64 = 1e15;
        let clamp = |v: f64| v.clamp(-LIMIT, LIMIT) as i64;
        let (lo, hi) = (lo.map(clamp), hi.map(clamp));
        if let (Some(lo), Some(hi)) = (lo, hi) {
            if lo > hi {
                return Err(refuse(format!("no integer lies between the bounds {lo} and {hi}")));
            }
        }
        let mut alts = Vec::new();
        // Negative values, lo..=min(hi, -1): a minus sign and a magnitude.
        let top = hi.map_or(-1, |hi| hi.min(-1));
        if lo.is_none_or(|lo| lo <= top) {
            alts.push(format!("\"-\" {}", naturals(top.unsigned_abs(), lo.map(i64::unsigned_abs))));
        }
        if hi.is_none_or(|hi| hi >= 0) {
            alts.push(naturals(lo.map_or(0, |lo| lo.max(0) as u64), hi.map(|hi| hi as u64)));
        }
        Ok(alternatives(alts))
    }

    fn number(&mut self, m: &Map<String, Value>) -> Result<String, GrammarError> {
        let (lo, hi) = bounds(m)?;
        if lo.is_none() && hi.is_none() {
            return Ok(self.prim("number"));
        }
        let ilo = lo.map(|(v, exclusive)| if exclusive { v.floor() + 1.0 } else { v.ceil() });
        let ihi = hi.map(|(v, exclusive)| if exclusive { v.ceil() - 1.0 } else { v.floor() });
        let whole = self.integer(ilo, ihi)?;
        // With a lower bound at or above 0, an integer part below the
        // upper bound may take a fraction and stay inside the bounds.
        match ilo {
            Some(l) if l >= 0.0 && ihi.is_none_or(|h| h - 1.0 >= l) => {
                let part = self.integer(Some(l), ihi.map(|h| h - 1.0))?;
                Ok(format!("( {part} \".\" [0-9]{{1,16}} | {whole} )"))
            }
            _ => Ok(whole),
        }
    }

    fn object(&mut self, m: &Map<String, Value>, hint: &str) -> Result<String, GrammarError> {
        let ws = self.prim("ws");
        let mut props: Vec<(String, Value)> = match m.get("properties") {
            None => Vec::new(),
            Some(Value::Object(p)) => p.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Some(_) => return Err(refuse("`properties` must be an object")),
        };
        let required: Vec<String> = match m.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| refuse("`required` must list strings")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(refuse("`required` must be an array")),
        };
        for r in &required {
            if !props.iter().any(|(k, _)| k == r) {
                props.push((
                    r.clone(),
                    m.get("additionalProperties").filter(|v| v.is_object()).cloned().unwrap_or(Value::Bool(true)),
                ));
            }
        }
        if props.is_empty() {
            return Ok(match m.get("additionalProperties") {
                Some(Value::Bool(false)) => format!(r#""{{" {ws} "}}""#),
                None | Some(Value::Bool(true)) => self.prim("object"),
                Some(v) => {
                    let value = self.expr(v, &format!("{hint}-value"))?;
                    let s = self.prim("string");
                    let kv = format!(r#"{s} {ws} ":" {ws} {value} {ws}"#);
                    let body = format!(r#""{{" {ws} ( {kv} ( "," {ws} {kv} )* )? "}}""#);
                    self.rule(hint, body)
                }
            });
        }
        let mut pairs = Vec::new();
        for (name, schema) in &props {
            let value = self.expr(schema, &format!("{hint}-{name}"))?;
            let key = json_literal(&Value::String(name.clone()));
            pairs.push((format!(r#"{key} {ws} ":" {ws} {value} {ws}"#), required.contains(name)));
        }
        // rest[i][e]: the properties from i on, e = whether one was written.
        let base = self.fresh(hint);
        let n = pairs.len();
        let name = |i: usize, e: bool| format!("{base}-{i}{}", if e { "-more" } else { "" });
        for i in (0..n).rev() {
            for e in [false, true] {
                let sep = if e { format!(r#""," {ws} "#) } else { String::new() };
                let after = if i + 1 < n { name(i + 1, true) } else { String::new() };
                let (pair, req) = &pairs[i];
                let body = if *req {
                    format!("{sep}{pair} {after}")
                } else {
                    let skip = if i + 1 < n { name(i + 1, e) } else { "\"\"".into() };
                    format!("{sep}{pair} {after} | {skip}")
                };
                self.names.insert(name(i, e));
                self.rules.push((name(i, e), body));
            }
        }
        self.rules.push((base.clone(), format!(r#""{{" {ws} {} "}}""#, name(0, false))));
        Ok(base)
    }

    fn array(&mut self, m: &Map<String, Value>, hint: &str) -> Result<String, GrammarError> {
        let ws = self.prim("ws");
        let (min, max) = counts(m, "minItems", "maxItems")?;
        // Tuples: `prefixItems`, or draft 7's `items` list with `additionalItems`.
        let (prefix, rest) = match (m.get("prefixItems"), m.get("items")) {
            (Some(Value::Array(p)), items) => (p.clone(), items.cloned().unwrap_or(Value::Bool(true))),
            (None, Some(Value::Array(p))) => {
                (p.clone(), m.get("additionalItems").cloned().unwrap_or(Value::Bool(true)))
            }
            (None, items) => (Vec::new(), items.cloned().unwrap_or(Value::Bool(true))),
            (Some(_), _) => return Err(refuse("`prefixItems` must be an array")),
        };
        let mut parts = Vec::new();
        for (i, s) in prefix.iter().enumerate() {
            parts.push(self.expr(s, &format!("{hint}-{i}"))?);
        }
        if max.is_some_and(|max| (max as usize) < prefix.len()) {
            return Err(refuse("`maxItems` is below the number of `prefixItems`"));
        }
        let item = match rest {
            Value::Bool(false) => None,
            s => Some(self.expr(&s, &format!("{hint}-item"))?),
        };
        let body = if parts.is_empty() {
            let Some(item) = item else { return Ok(format!(r#""[" {ws} "]""#)) };
            let more = |lo: u32, hi: Option<u32>| match hi {
                None => format!(r#"( "," {ws} {item} {ws} ){{{lo},}}"#),
                Some(hi) => format!(r#"( "," {ws} {item} {ws} ){{{lo},{hi}}}"#),
            };
            match (min, max) {
                (_, Some(0)) => format!(r#""[" {ws} "]""#),
                (0, max) => format!(r#""[" {ws} ( {item} {ws} {} )? "]""#, more(0, max.map(|m| m - 1))),
                (min, max) => format!(r#""[" {ws} {item} {ws} {} "]""#, more(min - 1, max.map(|m| m - 1))),
            }
        } else {
            let n = parts.len() as u32;
            let fixed = parts.iter().map(|p| format!("{p} {ws}")).collect::<Vec<_>>().join(&format!(r#" "," {ws} "#));
            let extra = match item {
                Some(item) if max.is_none_or(|m| m > n) => {
                    let lo = min.saturating_sub(n);
                    match max {
                        None => format!(r#" ( "," {ws} {item} {ws} ){{{lo},}}"#),
                        Some(max) => format!(r#" ( "," {ws} {item} {ws} ){{{lo},{}}}"#, max - n),
                    }
                }
                _ if min > n => return Err(refuse("`minItems` asks for more items than the tuple allows")),
                _ => String::new(),
            };
            format!(r#""[" {ws} {fixed}{extra} "]""#)
        };
        Ok(self.rule(hint, body))
    }
}

/// A lower and an optional upper count (`minItems`/`maxItems`,
/// `minLength`/`maxLength`), the lower 0 when absent.
fn counts(m: &Map<String, Value>, lo: &str, hi: &str) -> Result<(u32, Option<u32>), GrammarError> {
    let count = |k: &str| -> Result<Option<u32>, GrammarError> {
        m.get(k)
            .map(|v| {
                v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| refuse(format!("`{k}` must be a count")))
            })
            .transpose()
    };
    let (min, max) = (count(lo)?.unwrap_or(0), count(hi)?);
    if max.is_some_and(|max| max < min) {
        return Err(refuse(format!("`{hi}` is below `{lo}`")));
    }
    Ok((min, max))
}

/// The lower and upper bounds of a number, each with whether it is exclusive.
type Bound = Option<(f64, bool)>;

fn bounds(m: &Map<String, Value>) -> Result<(Bound, Bound), GrammarError> {
    let num = |k: &str| -> Result<Option<f64>, GrammarError> {
        match m.get(k) {
            None | Some(Value::Bool(_)) => Ok(None),
            Some(v) => {
                v.as_f64().filter(|v| v.is_finite()).map(Some).ok_or_else(|| refuse(format!("`{k}` must be a number")))
            }
        }
    };
    // Draft 4 spells exclusive bounds as booleans beside the bound.
    let flag = |k: &str| m.get(k) == Some(&Value::Bool(true));
    let mut lo = num("minimum")?.map(|v| (v, flag("exclusiveMinimum")));
    let mut hi = num("maximum")?.map(|v| (v, flag("exclusiveMaximum")));
    if let Some(v) = num("exclusiveMinimum")? {
        lo = Some(match lo {
            Some((l, e)) if l > v => (l, e),
            _ => (v, true),
        });
    }
    if let Some(v) = num("exclusiveMaximum")? {
        hi = Some(match hi {
            Some((h, e)) if h < v => (h, e),
            _ => (v, true),
        });
    }
    Ok((lo, hi))
}

/// GBNF for the naturals in `lo..=hi` (`hi` open when `None`), in decimal
/// without leading zeros.
fn naturals(lo: u64, hi: Option<u64>) -> String {
    let digits = |v: u64| v.to_string().len();
    let mut alts = Vec::new();
    let top = hi.map_or(16, digits);
    for len in digits(lo)..=top.max(digits(lo)) {
        let first = if len == 1 { 0 } else { 10u64.pow(len as u32 - 1) };
        let last = 10u64.pow(len as u32) - 1;
        let (a, b) = (lo.max(first), hi.map_or(last, |h| h.min(last)));
        if a <= b {
            alts.push(same_length(a.to_string().as_bytes(), b.to_string().as_bytes()));
        }
    }
    alternatives(alts)
}

/// GBNF for the digit strings of one length from `a` to `b`.
fn same_length(a: &[u8], b: &[u8]) -> String {
    let n = a.len();
    if n == 0 {
        return String::new();
    }
    let any = |k: usize| vec!["[0-9]"; k].join(" ");
    if a[0] == b[0] {
        let rest = same_length(&a[1..], &b[1..]);
        return format!("\"{}\" {rest}", a[0] as char).trim_end().to_string();
    }
    if a[1..].iter().all(|&d| d == b'0') && b[1..].iter().all(|&d| d == b'9') {
        return format!("[{}-{}] {}", a[0] as char, b[0] as char, any(n - 1)).trim_end().to_string();
    }
    let mut alts =
        vec![format!("\"{}\" {}", a[0] as char, same_length(&a[1..], &vec![b'9'; n - 1])).trim_end().to_string()];
    if a[0] + 1 < b[0] {
        alts.push(format!("[{}-{}] {}", (a[0] + 1) as char, (b[0] - 1) as char, any(n - 1)).trim_end().to_string());
    }
    alts.push(format!("\"{}\" {}", b[0] as char, same_length(&vec![b'0'; n - 1], &b[1..])).trim_end().to_string());
    alternatives(alts)
}
