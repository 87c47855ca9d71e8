//! Reading request fields out of a JSON object, with errors that name the
//! offending field the way OpenAI's do (`param: "max_tokens"`).
//!
//! `null` counts as absent everywhere: clients often send every optional
//! field with a null value.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Parses a request body that must be a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson("the body is empty".into()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::MalformedJson(format!("expected a JSON object, but got {}", kind(&other)))),
        Err(err) => Err(ApiError::MalformedJson(err.to_string())),
    }
}

/// How a value's type reads in an error message.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields of one JSON object; `prefix` is prepended to every field name in
/// errors (e.g. `stream_options.`).
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    /// The top-level fields of a request.
    pub fn new(map: &'a Map<String, Value>) -> Self {
        Fields { map, prefix: String::new() }
    }

    /// The fields of an object nested at `path` (e.g. `messages[0]`).
    pub fn nested(map: &'a Map<String, Value>, path: &str) -> Self {
        Fields { map, prefix: format!("{path}.") }
    }

    /// The full name of field `name`, as errors report it.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The object in field `name`, if present and not null, its fields
    /// named from their path.
    pub fn object(&self, name: &str) -> Result<Option<Fields<'a>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields::nested(map, &self.name(name)))),
            Some(other) => Err(self.wrong_type(name, "an object", other)),
        }
    }

    /// [`Fields::object`], required.
    pub fn required_object(&self, name: &str) -> Result<Fields<'a>, ApiError> {
        self.object(name)?.ok_or_else(|| self.missing(name))
    }

    /// The value of `name`, with null treated as absent.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// An error saying `name` should have been `expected`.
    pub fn wrong_type(&self, name: &str, expected: &str, got: &Value) -> ApiError {
        let param = self.name(name);
        let message = format!("Invalid type for '{param}': expected {expected}, but got {} instead.", kind(got));
        ApiError::param(param, message)
    }

    /// An error saying `name` is out of range.
    pub fn out_of_range(&self, name: &str, expected: &str, got: &Value) -> ApiError {
        let param = self.name(name);
        let message = format!("Invalid '{param}': expected {expected}, but got {got} instead.");
        ApiError::param(param, message)
    }

    /// An error saying required field `name` is absent.
    pub fn missing(&self, name: &str) -> ApiError {
        let param = self.name(name);
        let message = format!("Missing required parameter: '{param}'.");
        ApiError::param(param, message)
    }

    /// An optional string.
    pub fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(self.wrong_type(name, "a string", other)),
        }
    }

    /// A required string.
    pub fn required_string(&self, name: &str) -> Result<&'a str, ApiError> {
        self.string(name)?.ok_or_else(|| self.missing(name))
    }

    /// An optional array of strings; a wrong item is named by its index
    /// (`name[i]`).
    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.wrong_type(&format!("{name}[{i}]"), "a string", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(self.wrong_type(name, "an array of strings", other)),
        }
    }

    /// An optional boolean.
    pub fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(name, "a boolean", other)),
        }
    }

    /// An optional integer of any sign.
    pub fn integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(value @ Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Some(i)),
                // Larger than i64: still an integer, so a range error.
                None if n.as_u64().is_some() => Err(self.out_of_range(name, "a 64-bit integer", value)),
                None => Err(self.wrong_type(name, "an integer", value)),
            },
            Some(other) => Err(self.wrong_type(name, "an integer", other)),
        }
    }

    /// An optional integer no smaller than `min`, saturated to `u32`.
    pub fn integer_at_least(&self, name: &str, min: i64) -> Result<Option<u32>, ApiError> {
        match self.integer(name)? {
            None => Ok(None),
            Some(i) if i < min => Err(self.out_of_range(name, &format!("an integer >= {min}"), &Value::from(i))),
            Some(i) => Ok(Some(u32::try_from(i).unwrap_or(u32::MAX))),
        }
    }

    /// An optional number within `low..=high` (or `low..=high` with `low`
    /// excluded when `low_exclusive`).
    pub fn number_in(&self, name: &str, low: f64, low_exclusive: bool, high: f64) -> Result<Option<f64>, ApiError> {
        let value = match self.get(name) {
            None => return Ok(None),
            Some(value) => value,
        };
        let x = match value.as_f64() {
            Some(x) => x,
            None => return Err(self.wrong_type(name, "a number", value)),
        };
        let above_low = if low_exclusive { x > low } else { x >= low };
        if !above_low || x > high {
            let open = if low_exclusive { "greater than" } else { "at least" };
            let expected = if high == f64::MAX {
                format!("a number {open} {low}")
            } else {
                format!("a number {open} {low} and at most {high}")
            };
            return Err(self.out_of_range(name, &expected, value));
        }
        Ok(Some(x))
    }

    /// An optional number greater than `low`, with no upper bound.
    pub fn number_above(&self, name: &str, low: f64) -> Result<Option<f64>, ApiError> {
        self.number_in(name, low, true, f64::MAX)
    }

    /// A 400 naming `name` when it holds anything but an absent, null,
    /// empty, false or zero value: a field the server cannot honour is
    /// refused, never ignored (clients send some of them empty by default).
    /// `why` ends the message.
    pub fn refuse_nonempty(&self, name: &str, why: &str) -> Result<(), ApiError> {
        let empty = match self.get(name) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::Bool(b)) => !b,
            Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        };
        if empty {
            return Ok(());
        }
        let param = self.name(name);
        Err(ApiError::param(param.clone(), format!("'{param}' is not supported: {why}.")))
    }
}

/// The required, non-empty list of objects in field `name` (of `what`s),
/// each read by `item` with its path (`name[i]`) as the field prefix.
pub fn parse_objects<T>(
    f: &Fields<'_>,
    name: &str,
    what: &str,
    mut item: impl FnMut(&Fields<'_>) -> Result<T, ApiError>,
) -> Result<Vec<T>, ApiError> {
    let list = match f.get(name) {
        None => return Err(f.missing(name)),
        Some(Value::Array(list)) => list,
        Some(other) => return Err(f.wrong_type(name, "an array", other)),
    };
    if list.is_empty() {
        return Err(ApiError::param(f.name(name), format!("'{name}' must contain at least one {what}.")));
    }
    list.iter()
        .enumerate()
        .map(|(i, value)| {
            let path = f.name(&format!("{name}[{i}]"));
            match value {
                Value::Object(map) => item(&Fields::nested(map, &path)),
                other => Err(ApiError::param(
                    path.clone(),
                    format!("Invalid type for '{path}': expected an object, but got {} instead.", kind(other)),
                )),
            }
        })
        .collect()
}
