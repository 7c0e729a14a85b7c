//! Command templates' payloads and parameters: what a registered command declares, and how a
//! request's parameters are checked and put into its payload.
//!
//! A payload template is any JSON value. A string that is exactly `${name}` becomes the
//! parameter's value with its type; a `${name}` inside a longer string becomes the value's
//! text (a string as is, anything else as compact JSON). Every placeholder must name a
//! declared parameter, so a template is checked once, when it is registered, and rendering
//! can only fail on the request's own parameters, each refusal naming the parameter.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::limits::{self, MAX_COMMAND_PARAMS_BYTES};
use crate::rejection::Rejection;

/// The most parameters a template declares.
pub const MAX_TEMPLATE_PARAMETERS: usize = 32;
/// The longest parameter name, in characters of `[a-zA-Z0-9_-]`.
pub const MAX_PARAMETER_NAME_LEN: usize = 64;
/// The most values a parameter's `enum` lists.
pub const MAX_ENUM_VALUES: usize = 64;

/// The JSON type a parameter's value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParameterType {
    /// A JSON string.
    String,
    /// Any JSON number.
    Number,
    /// A JSON number without a fraction.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

impl ParameterType {
    /// Whether `v` has this type.
    pub fn admits(self, v: &Value) -> bool {
        match self {
            Self::String => v.is_string(),
            Self::Number => v.is_number(),
            Self::Integer => v.is_i64() || v.is_u64(),
            Self::Boolean => v.is_boolean(),
            Self::Object => v.is_object(),
            Self::Array => v.is_array(),
        }
    }

    const fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Integer => "integer",
            Self::Boolean => "boolean",
            Self::Object => "object",
            Self::Array => "array",
        }
    }
}

/// One declared parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParameterSpec {
    /// 1 to [`MAX_PARAMETER_NAME_LEN`] characters of `[a-zA-Z0-9_-]`.
    pub name: String,
    /// The type its value must have.
    #[serde(rename = "type")]
    pub kind: ParameterType,
    /// Whether a request must give it (a default makes it optional anyway).
    #[serde(default)]
    pub required: bool,
    /// The value when a request leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// The smallest number allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    /// The largest number allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
    /// The longest string allowed, in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    /// The only values allowed, when not empty.
    #[serde(default, rename = "enum", skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<Value>,
}

impl ParameterSpec {
    /// Checks `v` against the declaration; the error says why, without the parameter's name.
    fn check(&self, v: &Value) -> Result<(), String> {
        if !self.kind.admits(v) {
            return Err(format!("must be of type {}", self.kind.as_str()));
        }
        if let Some(n) = v.as_f64() {
            if self.minimum.is_some_and(|m| n < m) {
                return Err(format!("must be at least {}", self.minimum.unwrap_or(n)));
            }
            if self.maximum.is_some_and(|m| n > m) {
                return Err(format!("must be at most {}", self.maximum.unwrap_or(n)));
            }
        }
        if let (Some(s), Some(max)) = (v.as_str(), self.max_length) {
            if s.chars().count() > max as usize {
                return Err(format!("must be at most {max} characters"));
            }
        }
        if !self.allowed.is_empty() && !self.allowed.contains(v) {
            return Err(format!(
                "must be one of {}",
                Value::Array(self.allowed.clone())
            ));
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_PARAMETER_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The placeholders of one string, in order: `(start, end, name)` byte ranges of `${name}`.
/// `Err` names the first `${` that does not open a well-formed placeholder.
fn placeholders(s: &str) -> Result<Vec<(usize, usize, &str)>, String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = s[from..].find("${") {
        let start = from + i;
        let rest = &s[start + 2..];
        let Some(close) = rest.find('}') else {
            return Err(format!("`${{` at byte {start} is never closed"));
        };
        let name = &rest[..close];
        if !valid_name(name) {
            return Err(format!("`${{{name}}}` does not name a parameter"));
        }
        let end = start + 2 + close + 1;
        out.push((start, end, name));
        from = end;
    }
    Ok(out)
}

/// Every string in `v`, depth first.
fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(m) => m.values().for_each(|i| strings(i, out)),
        _ => {}
    }
}

/// Checks a template as registered: at most [`MAX_TEMPLATE_PARAMETERS`] parameters with
/// distinct valid names, ranges that make sense, defaults that pass their own checks, and a
/// payload of at most [`MAX_COMMAND_PARAMS_BYTES`] whose every placeholder names one of them.
pub fn validate(payload: &Value, parameters: &[ParameterSpec]) -> Result<(), Rejection> {
    let bad = |reason: String| Rejection::invalid("parameters", reason);
    if parameters.len() > MAX_TEMPLATE_PARAMETERS {
        return Err(bad(format!(
            "declares {} parameters, at most {MAX_TEMPLATE_PARAMETERS} are allowed",
            parameters.len()
        )));
    }
    let mut names = BTreeSet::new();
    for p in parameters {
        if !valid_name(&p.name) {
            return Err(bad(format!(
                "`{}`: a name is 1 to {MAX_PARAMETER_NAME_LEN} of [a-zA-Z0-9_-]",
                p.name
            )));
        }
        if !names.insert(p.name.as_str()) {
            return Err(bad(format!("`{}` is declared twice", p.name)));
        }
        if let (Some(min), Some(max)) = (p.minimum, p.maximum) {
            if min > max {
                return Err(bad(format!("`{}`: minimum is above maximum", p.name)));
            }
        }
        if p.allowed.len() > MAX_ENUM_VALUES {
            return Err(bad(format!(
                "`{}`: enum lists more than {MAX_ENUM_VALUES} values",
                p.name
            )));
        }
        if let Some(d) = &p.default {
            p.check(d)
                .map_err(|why| bad(format!("`{}`: the default {why}", p.name)))?;
        }
    }
    let len = limits::json_len(payload);
    if len > MAX_COMMAND_PARAMS_BYTES {
        return Err(Rejection::invalid(
            "payload",
            format!("is {len} bytes of JSON, at most {MAX_COMMAND_PARAMS_BYTES} are allowed"),
        ));
    }
    let mut texts = Vec::new();
    strings(payload, &mut texts);
    for s in texts {
        for (_, _, name) in placeholders(s).map_err(|e| Rejection::invalid("payload", e))? {
            if !names.contains(name) {
                return Err(Rejection::invalid(
                    "payload",
                    format!("`${{{name}}}` names no declared parameter"),
                ));
            }
        }
    }
    Ok(())
}

/// The payload for `given` parameters: each is checked against its declaration (unknown,
/// missing, mistyped and out-of-range values are refused, naming the parameter), defaults
/// fill the gaps, and the placeholders are replaced. An optional parameter given no value
/// and no default renders as `null` (or as empty text inside a longer string).
pub fn render(
    payload: &Value,
    parameters: &[ParameterSpec],
    given: &Map<String, Value>,
) -> Result<Value, Rejection> {
    let bad = |name: &str, why: String| Rejection::invalid("parameters", format!("`{name}` {why}"));
    if let Some(unknown) = given
        .keys()
        .find(|k| !parameters.iter().any(|p| &p.name == *k))
    {
        return Err(bad(unknown, "is not a parameter of this command".into()));
    }
    let mut values = Map::new();
    for p in parameters {
        match given.get(&p.name).or(p.default.as_ref()) {
            Some(v) => {
                p.check(v).map_err(|why| bad(&p.name, why))?;
                values.insert(p.name.clone(), v.clone());
            }
            None if p.required => return Err(bad(&p.name, "is required".into())),
            None => {
                values.insert(p.name.clone(), Value::Null);
            }
        }
    }
    let out = fill(payload, &values);
    let len = limits::json_len(&out);
    if len > MAX_COMMAND_PARAMS_BYTES {
        return Err(Rejection::invalid(
            "parameters",
            format!(
                "make a payload of {len} bytes of JSON, at most {MAX_COMMAND_PARAMS_BYTES} are \
                 allowed"
            ),
        ));
    }
    Ok(out)
}

fn fill(v: &Value, values: &Map<String, Value>) -> Value {
    match v {
        Value::String(s) => fill_text(s, values),
        Value::Array(items) => Value::Array(items.iter().map(|i| fill(i, values)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, i)| (k.clone(), fill(i, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn fill_text(s: &str, values: &Map<String, Value>) -> Value {
    // Registration checked every placeholder; a string that fails to parse here stays as is.
    let Ok(found) = placeholders(s) else {
        return Value::String(s.to_owned());
    };
    if let [(0, end, name)] = found.as_slice() {
        if *end == s.len() {
            return values.get(*name).cloned().unwrap_or(Value::Null);
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for (start, end, name) in found {
        out.push_str(&s[at..start]);
        match values.get(name) {
            Some(Value::String(text)) => out.push_str(text),
            Some(Value::Null) | None => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        at = end;
    }
    out.push_str(&s[at..]);
    Value::String(out)
}
