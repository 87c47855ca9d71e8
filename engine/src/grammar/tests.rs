use std::sync::Arc;

use serde_json::{json, Value};

use super::automaton::{Automaton, TokenTrie};
use super::{gbnf, schema, Constraint};
use crate::sampler::Rng;

/// A vocabulary of every single byte (ids 0-255), some longer tokens, and
/// an end token.
fn trie(extra: &[&str]) -> (Arc<TokenTrie>, u32) {
    let mut tokens: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], u32::from(b))).collect();
    for (i, t) in extra.iter().enumerate() {
        tokens.push((t.as_bytes().to_vec(), 256 + i as u32));
    }
    let end = 256 + extra.len() as u32;
    (Arc::new(TokenTrie::from_tokens(end as usize + 1, tokens, vec![end])), end)
}

fn automaton(source: &str) -> Automaton {
    Automaton::new(gbnf::parse(source).unwrap_or_else(|e| panic!("{e}\n{source}")), trie(&[]).0).unwrap()
}

fn matches(a: &Automaton, text: &str) -> bool {
    a.advance(a.start(), text.as_bytes()).is_some_and(|s| a.accepts(s))
}

#[test]
fn gbnf_literals_classes_groups_and_repetitions() {
    let a = automaton(
        r#"
        # a comment
        root ::= "x" num ( "," num )* tail?
        num  ::= [1-9] [0-9]{0,2}   # no leading zeros
        tail ::= "!" | "?"{2}
        "#,
    );
    for ok in ["x1", "x12,345", "x9,9,9!", "x1??"] {
        assert!(matches(&a, ok), "{ok}");
    }
    for bad in ["", "x", "x0", "x1234", "x1,", "x1?", "x1!!", "y1"] {
        assert!(!matches(&a, bad), "{bad}");
    }
}

#[test]
fn alternatives_may_continue_on_the_next_line_and_inside_parentheses() {
    let a = automaton("root ::= \"a\" |\n  \"b\" ( \"c\"\n | \"d\" )\n");
    assert!(matches(&a, "a") && matches(&a, "bc") && matches(&a, "bd"));
    assert!(!matches(&a, "b"));
}

#[test]
fn characters_beyond_ascii_are_read_as_their_utf8_bytes() {
    let a = automaton(r#"root ::= [à-ÿ€] [^a-z]* "ℵ""#);
    assert!(matches(&a, "é€ℵ"));
    assert!(matches(&a, "€😀Zℵ"));
    assert!(!matches(&a, "aℵ"));
    assert!(!matches(&a, "éaℵ"));
    // A character's first byte alone is a live prefix, not a sentence.
    let s = a.advance(a.start(), &"é".as_bytes()[..1]).expect("a prefix");
    assert!(!a.accepts(s) && a.can_continue(s));
    let escapes = automaton(r#"root ::= "\x41\u00e9\n\"" [\]\-]"#);
    assert!(matches(&escapes, "Aé\n\"]") && matches(&escapes, "Aé\n\"-"));
}

#[test]
fn bad_grammars_say_what_is_wrong() {
    let err = |src: &str| gbnf::parse(src).expect_err(src).0;
    assert!(err("start ::= \"a\"").contains("no `root`"));
    assert!(err("root ::= other").contains("`other`, which is not defined"));
    assert!(err("root ::= root \"a\" | \"b\"").contains("left-recursive"));
    assert!(err("root ::= x\nx ::= y? root \"a\"\ny ::= \"b\"").contains("left-recursive"));
    assert!(err("root ::= \"a").contains("unterminated"));
    assert!(err("root ::= [b-a]").contains("backwards"));
    assert!(err("root ::= \"a\"{3,2}").contains("maximum below"));
    assert!(err("root ::= \"a\"\nroot ::= \"b\"").contains("twice"));
    assert!(err("root ::= \"a\" x\nx ::= x \"b\"").contains("left-recursive"));
    assert!(err("root ::= \"a\"{1000000}").contains("too large"));
}

#[test]
fn the_mask_holds_the_tokens_the_grammar_takes_and_the_end_once_complete() {
    let (trie, end) = trie(&["{\"", "ab", "abc", "\"}", "b\"", "zz"]);
    let a = Automaton::new(gbnf::parse(r#"root ::= "{\"" [a-c]+ "\"}""#).unwrap(), trie).unwrap();
    let m = a.mask(a.start());
    assert!(m.allows(b'{'.into()) && m.allows(256));
    assert_eq!(m.count(), 2);
    let s = a.advance(a.start(), b"{\"").unwrap();
    let m = a.mask(s);
    for id in [u32::from(b'a'), b'b'.into(), b'c'.into(), 257, 258, 260] {
        assert!(m.allows(id), "{id}");
    }
    assert!(!m.allows(259) && !m.allows(261) && !m.allows(end) && !m.allows(b'"'.into()));
    let s = a.advance(s, b"ab\"}").unwrap();
    assert!(a.accepts(s) && !a.can_continue(s));
    assert!(a.mask(s).allows(end));
    assert_eq!(a.mask(s).count(), 1);
}

#[test]
fn repeated_text_returns_to_the_same_state() {
    let a = automaton(r#"root ::= "\"" [a-z]* "\"""#);
    let s = a.advance(a.start(), b"\"a").unwrap();
    let t = a.advance(s, b"bcdefgh").unwrap();
    assert_eq!(s, t);
    assert!(Arc::ptr_eq(&a.mask(s), &a.mask(t)), "the token set is cached");
}

#[test]
fn the_finishing_token_leads_the_shortest_way_to_a_complete_text() {
    let a = Automaton::new(Constraint::JsonSchema(json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}, "required": ["a"]}).to_string()).grammar().unwrap(), trie(&[]).0).unwrap();
    let mut s = a.advance(a.start(), br#"{"a": ["xy"#).unwrap();
    let mut text = String::from(r#"{"a": ["xy"#);
    assert_eq!(a.bytes_to_finish(s), 3);
    while !a.accepts(s) {
        let t = a.finishing_token(s).expect("a byte token");
        text.push(t as u8 as char);
        s = a.advance(s, &[t as u8]).unwrap();
    }
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({"a": ["xy"]}));
}

/// Every integer near the interesting places matches iff it is in range.
#[test]
fn integer_bounds_are_exact() {
    let cases: &[(Option<i64>, Option<i64>)] = &[
        (Some(0), None),
        (Some(1), Some(1)),
        (Some(0), Some(100)),
        (Some(7), Some(1234)),
        (Some(-25), Some(-3)),
        (Some(-120), Some(45)),
        (None, Some(-10)),
        (None, Some(99)),
        (Some(-5), None),
        (Some(190), Some(210)),
        (Some(999), Some(1001)),
    ];
    for &(lo, hi) in cases {
        let mut s = json!({"type": "integer"});
        if let Some(lo) = lo {
            s["minimum"] = lo.into();
        }
        if let Some(hi) = hi {
            s["maximum"] = hi.into();
        }
        let a = automaton(&schema::to_gbnf(&s).unwrap());
        for v in (-1300i64..1300).chain([99_999, -99_999, 10_000_000]) {
            let inside = lo.is_none_or(|l| v >= l) && hi.is_none_or(|h| v <= h);
            assert_eq!(matches(&a, &v.to_string()), inside, "{v} in {lo:?}..={hi:?}");
        }
        assert!(!matches(&a, "01") && !matches(&a, "-0") && !matches(&a, "+1"));
    }
    let exclusive = automaton(
        &schema::to_gbnf(&json!({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10})).unwrap(),
    );
    assert!(
        !matches(&exclusive, "0") && matches(&exclusive, "1") && matches(&exclusive, "9") && !matches(&exclusive, "10")
    );
    let numbers = automaton(&schema::to_gbnf(&json!({"type": "number", "minimum": 0, "maximum": 1})).unwrap());
    for (text, ok) in [("0", true), ("1", true), ("0.25", true), ("1.5", false), ("-0.5", false), ("2", false)] {
        assert_eq!(matches(&numbers, text), ok, "{text}");
    }
}

/// A small validator for the keywords the schemas below use.
fn valid(v: &Value, s: &Value, root: &Value) -> bool {
    let Some(m) = s.as_object() else { return s == &Value::Bool(true) };
    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
        return valid(v, root.pointer(&r[1..]).unwrap(), root);
    }
    if let Some(e) = m.get("enum").and_then(Value::as_array) {
        return e.contains(v);
    }
    if let Some(c) = m.get("const") {
        return c == v;
    }
    if let Some(alts) = m.get("anyOf").and_then(Value::as_array) {
        return alts.iter().any(|a| valid(v, a, root));
    }
    let types: Vec<&str> = match m.get("type") {
        Some(Value::String(t)) => vec![t],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let type_ok = types.is_empty()
        || types.iter().any(|t| match *t {
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            _ => false,
        });
    if !type_ok {
        return false;
    }
    let num = |k: &str| m.get(k).and_then(Value::as_f64);
    let len = |k: &str| m.get(k).and_then(Value::as_u64).map(|n| n as usize);
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap();
            num("minimum").is_none_or(|l| x >= l) && num("maximum").is_none_or(|h| x <= h)
        }
        Value::String(t) => {
            let n = t.chars().count();
            len("minLength").is_none_or(|l| n >= l) && len("maxLength").is_none_or(|h| n <= h)
        }
        Value::Array(items) => {
            len("minItems").is_none_or(|l| items.len() >= l)
                && len("maxItems").is_none_or(|h| items.len() <= h)
                && match m.get("prefixItems").and_then(Value::as_array) {
                    Some(p) => p.len() == items.len() && p.iter().zip(items).all(|(s, i)| valid(i, s, root)),
                    None => m.get("items").is_none_or(|s| items.iter().all(|i| valid(i, s, root))),
                }
        }
        Value::Object(o) => {
            let props = m.get("properties").and_then(Value::as_object);
            let required = m.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
            required.iter().all(|r| o.contains_key(r.as_str().unwrap()))
                && o.iter().all(|(k, val)| match props.and_then(|p| p.get(k)) {
                    Some(ps) => valid(val, ps, root),
                    None => match m.get("additionalProperties") {
                        Some(Value::Bool(false)) => false,
                        Some(s @ Value::Object(_)) => valid(val, s, root),
                        _ => true,
                    },
                })
        }
        _ => true,
    }
}

fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object"}),
        json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150}}, "required": ["name", "age"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}, "c": {"type": "number"}}, "additionalProperties": false}),
        json!({"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3}),
        json!({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 4}}, "nested": {"type": "object", "properties": {"x": {"type": ["integer", "null"]}}, "required": ["x"]}}, "required": ["nested"]}),
        json!({"$defs": {"Node": {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}}, "required": ["v", "next"]}}, "$ref": "#/$defs/Node"}),
        json!({"type": "object", "properties": {"quote": {"const": "a \"b\"\\c\n"}, "k": {"enum": [1, "two", null, [3]]}}, "required": ["quote", "k"]}),
        json!({"type": "object", "additionalProperties": {"type": "integer"}}),
        json!({"type": "string", "format": "date-time"}),
        json!({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": false}),
    ]
}

/// Random walks over the allowed tokens, finishing the shortest way when
/// the budget runs out, always give JSON that the schema accepts.
#[test]
fn random_text_under_a_schema_always_parses_and_validates() {
    let (trie, end) = trie(&["\"", "{\"", "\":", "\": ", ", \"", "true", "null", "12", "é", "\\n", "\\\"", "]}", "}}"]);
    let mut rng = Rng::new(42);
    for s in schemas() {
        let g = Constraint::JsonSchema(s.to_string()).grammar().unwrap_or_else(|e| panic!("{e}: {s}"));
        let a = Automaton::new(g, trie.clone()).unwrap();
        for _ in 0..40 {
            let mut state = a.start();
            let mut bytes = Vec::new();
            let budget = 60 + (rng.next_u64() % 60) as usize;
            let mut steps = 0;
            loop {
                if a.accepts(state) && (!a.can_continue(state) || rng.next_u64().is_multiple_of(8)) {
                    break;
                }
                let mask = a.mask(state);
                let allowed: Vec<u32> = (0..=end).filter(|&t| mask.allows(t) && t != end).collect();
                assert!(!allowed.is_empty(), "a live state allows some token");
                let mut token = allowed[(rng.next_u64() % allowed.len() as u64) as usize];
                // A token that leaves too little budget to finish gives way
                // to the next byte of the shortest finish.
                let after = a.advance(state, &bytes_of(token)).expect("an allowed token is taken");
                if a.bytes_to_finish(after) as usize > budget - steps - 1 {
                    token = a.finishing_token(state).expect("a single-byte token");
                }
                let tb = bytes_of(token);
                state = a.advance(state, &tb).expect("an allowed token is taken");
                bytes.extend(tb);
                steps += 1;
            }
            assert!(steps <= budget, "{steps} tokens over a budget of {budget}");
            let text = String::from_utf8(bytes).expect("UTF-8");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(valid(&v, &s, &s), "{text} against {s}");
        }
    }
}

fn bytes_of(id: u32) -> Vec<u8> {
    if id < 256 {
        return vec![id as u8];
    }
    ["\"", "{\"", "\":", "\": ", ", \"", "true", "null", "12", "é", "\\n", "\\\"", "]}", "}}"][id as usize - 256]
        .as_bytes()
        .to_vec()
}

#[test]
fn schema_keywords_that_cannot_be_kept_are_refused_by_name() {
    for (s, word) in [
        (json!({"type": "string", "pattern": "^(a)\\1$"}), "backreferences"),
        (json!({"type": "string", "pattern": "(?=a)"}), "lookaround"),
        (json!({"type": "string", "pattern": "a+", "maxLength": 3}), "pattern"),
        (json!({"type": "array", "uniqueItems": true}), "uniqueItems"),
        (json!({"not": {"type": "string"}}), "not"),
        (json!({"type": "integer", "multipleOf": 3}), "multipleOf"),
        (json!({"$ref": "https://example.com/s.json"}), "within the schema"),
        (json!({"$ref": "#/$defs/missing"}), "points at nothing"),
        (json!({"type": "integer", "minimum": 5, "maximum": 1}), "no integer"),
        (json!({"type": "wat"}), "unknown type"),
        (json!(false), "matches nothing"),
    ] {
        let e = schema::to_gbnf(&s).expect_err(&s.to_string()).0;
        assert!(e.contains(word), "{e} should name {word}");
    }
    assert!(Constraint::JsonSchema("{not json".into()).grammar().unwrap_err().0.contains("not JSON"));
}

/// A grammar built to make every byte open thousands of alternatives is cut
/// short rather than allowed to hold the scheduler.
#[test]
fn an_ambiguous_grammar_costs_bounded_work() {
    let g = gbnf::parse("root ::= x{0,3000}\nx ::= \"a\"?").unwrap();
    match Automaton::new(g, trie(&[]).0) {
        Err(e) => assert!(e.0.contains("ambiguous")),
        Ok(a) => {
            let started = std::time::Instant::now();
            a.mask(a.start());
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
        }
    }
    let g = gbnf::parse("root ::= x{0,100} \"b\"\nx ::= \"a\"?").unwrap();
    let a = Automaton::new(g, trie(&[]).0).unwrap();
    let started = std::time::Instant::now();
    let s = a.advance(a.start(), b"aaaa").unwrap();
    a.mask(s);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert!(a.advance(s, b"b").is_some_and(|s| a.accepts(s)));
}

#[test]
fn json_or_text_takes_a_valid_object_or_prose_that_does_not_open_one() {
    let schema = json!({"type": "object", "properties": {"name": {"const": "f"}}, "required": ["name"]});
    let a = Automaton::new(Constraint::JsonOrText(schema.to_string()).grammar().unwrap(), trie(&[]).0).unwrap();
    for ok in [r#"{"name": "f"}"#, "Hello {there}", " {\"x\"", ""] {
        assert!(matches(&a, ok), "{ok:?}");
    }
    for bad in [r#"{"name": "g"}"#, "{hello"] {
        assert!(!matches(&a, bad), "{bad:?}");
    }
    let s = a.advance(a.start(), br#"{"name": "f"}"#).unwrap();
    assert!(!a.can_continue(s), "a complete call ends the answer");
}

/// A string's `pattern` keeps the string's value (decoded) in the
/// pattern's language, quotes and backslashes written as JSON escapes.
#[test]
fn patterns_hold_for_the_decoded_string() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (r"^[A-Z]{2}-\d{3,4}$", &["AB-123", "ZZ-0000"], &["ab-123", "AB-12", "AB-12345", "xAB-123"]),
        (r"^(cat|dog)s?$", &["cat", "dogs"], &["cats!", "bird"]),
        (r"^\w+@\w+\.(com|org)$", &["a@b.com", "x_1@y.org"], &["a@b.net", "@b.com"]),
        (r#"^say "hi"\\$"#, &["say \"hi\"\\"], &["say hi"]),
        (r"^[^a-z]*$", &["ABC 123", "", "\n\t\"\u{1}"], &["abc"]),
        (r"^.{2}$", &["é€", "ab"], &["abc", "\n\n"]),
        (r"b+", &["abbbc", "b"], &["ac"]),
        (r"^x(?:yz)*$", &["x", "xyzyz"], &["xy"]),
    ];
    for &(pattern, good, bad) in cases {
        let schema = json!({"type": "string", "pattern": pattern});
        let a = automaton(&schema::to_gbnf(&schema).unwrap_or_else(|e| panic!("{pattern}: {e}")));
        for value in good {
            let text = serde_json::to_string(value).unwrap();
            assert!(matches(&a, &text), "{pattern} should take {text}");
        }
        for value in bad {
            let text = serde_json::to_string(value).unwrap();
            assert!(!matches(&a, &text), "{pattern} should refuse {text}");
        }
    }
}
