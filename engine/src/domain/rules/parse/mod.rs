//! Rule documents (JSON, in the shape of seed 000) into [`Rule`]s, refusing anything unknown or
//! ill-typed with the path of the offending value, e.g. `conditions.conditions[1].value: expected a number`.

use std::sync::Arc;

use serde_json::{Map, Value};

mod condition;

use condition::condition;

use super::{Action, Caps, Period, Rounding, Rule};
use crate::limits::{POINTS_PER_COMMAND_MAX, REASON_BYTES_MAX, REF_BYTES_MAX};

/// What is wrong with a rule document, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct RuleError {
    /// Where in the document, e.g. `actions[0].amount`; empty for the document itself.
    pub path: String,
    pub message: String,
}

/// Most rules in a program, conditions in one rule, and nesting depth of conditions.
pub const RULES_MAX: usize = 500;
pub const CONDITIONS_MAX: usize = 64;
pub const CONDITION_DEPTH_MAX: usize = 8;
/// Most actions in one rule, and values in one list condition.
pub const ACTIONS_MAX: usize = 16;
pub const LIST_VALUES_MAX: usize = 1_000;
/// Largest multiplier, in percent (20x).
pub const MULTIPLIER_PERCENT_MAX: i64 = 2_000;

/// A JSON object being read, which remembers where it is and which keys were used.
pub(super) struct Object<'a> {
    pub(super) path: String,
    pub(super) map: &'a Map<String, Value>,
    known: Vec<&'static str>,
}

pub(super) fn error(path: &str, message: impl Into<String>) -> RuleError {
    RuleError { path: path.to_owned(), message: message.into() }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

pub(super) fn object<'a>(path: &str, value: &'a Value) -> Result<Object<'a>, RuleError> {
    match value {
        Value::Object(map) => Ok(Object { path: path.to_owned(), map, known: Vec::new() }),
        _ => Err(error(path, "expected an object")),
    }
}

impl<'a> Object<'a> {
    pub(super) fn optional(&mut self, key: &'static str) -> Option<(String, &'a Value)> {
        self.known.push(key);
        self.map.get(key).filter(|v| !v.is_null()).map(|v| (join(&self.path, key), v))
    }

    pub(super) fn required(&mut self, key: &'static str) -> Result<(String, &'a Value), RuleError> {
        let path = self.path.clone();
        self.optional(key).ok_or_else(|| error(&join(&path, key), "is required"))
    }

    fn string(&mut self, key: &'static str, max: usize) -> Result<String, RuleError> {
        let (path, value) = self.required(key)?;
        string(&path, value, max)
    }

    fn optional_string(&mut self, key: &'static str, max: usize) -> Result<Option<String>, RuleError> {
        self.optional(key).map(|(path, value)| string(&path, value, max)).transpose()
    }

    pub(super) fn integer(&mut self, key: &'static str, min: i64, max: i64) -> Result<i64, RuleError> {
        let (path, value) = self.required(key)?;
        integer(&path, value, min, max)
    }

    pub(super) fn optional_integer(&mut self, key: &'static str, min: i64, max: i64) -> Result<Option<i64>, RuleError> {
        self.optional(key).map(|(path, value)| integer(&path, value, min, max)).transpose()
    }

    /// Fails on any key that was not asked for.
    pub(super) fn finish(self) -> Result<(), RuleError> {
        match self.map.keys().find(|k| !self.known.contains(&k.as_str())) {
            Some(key) => Err(error(&join(&self.path, key), format!("unknown field; expected one of {}", self.known.join(", ")))),
            None => Ok(()),
        }
    }
}

pub(super) fn string(path: &str, value: &Value, max: usize) -> Result<String, RuleError> {
    match value {
        Value::String(s) if s.len() <= max => Ok(s.clone()),
        Value::String(_) => Err(error(path, format!("longer than {max} bytes"))),
        _ => Err(error(path, "expected a string")),
    }
}

pub(super) fn integer(path: &str, value: &Value, min: i64, max: i64) -> Result<i64, RuleError> {
    match value.as_i64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(error(path, format!("{n} is out of range {min}..={max}"))),
        None if value.is_u64() => Err(error(path, format!("out of range {min}..={max}"))),
        None if value.is_number() => Err(error(path, "expected a whole number (amounts are integers: points, minor units)")),
        None => Err(error(path, "expected a number")),
    }
}

pub(super) fn strings(path: &str, value: &Value) -> Result<Vec<String>, RuleError> {
    match value {
        Value::String(s) => Ok(vec![string(path, &Value::String(s.clone()), REF_BYTES_MAX)?]),
        Value::Array(items) if items.len() > LIST_VALUES_MAX => Err(error(path, format!("more than {LIST_VALUES_MAX} values"))),
        Value::Array(items) if !items.is_empty() => {
            items.iter().enumerate().map(|(i, v)| string(&format!("{path}[{i}]"), v, REF_BYTES_MAX)).collect()
        }
        Value::Array(_) => Err(error(path, "expected at least one value")),
        _ => Err(error(path, "expected a string or an array of strings")),
    }
}

fn action(path: &str, value: &Value) -> Result<Action, RuleError> {
    let mut o = object(path, value)?;
    let (type_path, kind) = o.required("type")?;
    let parsed = match kind.as_str() {
        Some("points") => Action::Points {
            amount: o.integer("amount", 1, POINTS_PER_COMMAND_MAX)?,
            reason: o.optional_string("reason", REASON_BYTES_MAX)?.map(Arc::from),
        },
        Some("points_per_currency_unit") => {
            let points = o.integer("points", 1, 1_000_000)?;
            // At least 1: the amount is divided by it.
            let unit_minor = o.optional_integer("unit_minor", 1, 1_000_000_000)?.unwrap_or(100);
            let rounding = match o.optional("rounding") {
                None => Rounding::Down,
                Some((path, v)) => match v.as_str() {
                    Some("down") => Rounding::Down,
                    Some("up") => Rounding::Up,
                    Some("nearest") => Rounding::Nearest,
                    _ => return Err(error(&path, "expected down, up or nearest")),
                },
            };
            let matching_lines_only = match o.optional("basis") {
                None => false,
                Some((path, v)) => match v.as_str() {
                    Some("order_total") => false,
                    Some("matching_lines") => true,
                    _ => return Err(error(&path, "expected order_total or matching_lines")),
                },
            };
            Action::PerCurrencyUnit {
                points,
                unit_minor,
                rounding,
                matching_lines_only,
                reason: o.optional_string("reason", REASON_BYTES_MAX)?.map(Arc::from),
            }
        }
        Some("multiplier") => Action::Multiplier {
            percent: o.integer("percent", 101, MULTIPLIER_PERCENT_MAX)?,
            reason: o.optional_string("reason", REASON_BYTES_MAX)?.map(Arc::from),
        },
        Some("stamps") => {
            let card = o.string("card", REF_BYTES_MAX)?;
            if card.is_empty() {
                return Err(error(&join(path, "card"), "must not be empty"));
            }
            Action::Stamps { card: Arc::from(card), count: o.integer("count", 1, 100)? }
        }
        Some(other) => {
            return Err(error(
                &type_path,
                format!("unknown action type {other:?}; expected points, points_per_currency_unit, multiplier or stamps"),
            ));
        }
        None => return Err(error(&type_path, "expected a string")),
    };
    o.finish()?;
    Ok(parsed)
}

fn caps(path: &str, value: &Value) -> Result<Caps, RuleError> {
    let mut o = object(path, value)?;
    let per_order = o.optional_integer("per_order", 1, POINTS_PER_COMMAND_MAX)?;
    let per_customer = match o.optional("per_customer") {
        None => None,
        Some((inner_path, inner)) => {
            let mut c = object(&inner_path, inner)?;
            let points = c.integer("points", 1, POINTS_PER_COMMAND_MAX)?;
            let (period_path, period) = c.required("period")?;
            let period = match period.as_str() {
                Some("day") => Period::Day,
                Some("week") => Period::Week,
                Some("month") => Period::Month,
                Some("year") => Period::Year,
                Some("lifetime") => Period::Lifetime,
                _ => return Err(error(&period_path, "expected day, week, month, year or lifetime")),
            };
            c.finish()?;
            Some((points, period))
        }
    };
    o.finish()?;
    Ok(Caps { per_order, per_customer })
}

/// Reads one rule document.
pub fn parse_rule(document: &Value) -> Result<Rule, RuleError> {
    let mut o = object("", document)?;
    let id = o.string("id", REF_BYTES_MAX)?;
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) {
        return Err(error("id", "expected 1 or more of A-Z a-z 0-9 - _ . :"));
    }
    let name = o.optional_string("name", REASON_BYTES_MAX)?.unwrap_or_default();
    let mut count = 0;
    let conditions = o.optional("conditions").map(|(path, v)| condition(&path, v, 0, &mut count)).transpose()?;
    let (actions_path, actions) = o.required("actions")?;
    let Value::Array(items) = actions else { return Err(error(&actions_path, "expected an array of actions")) };
    if items.is_empty() {
        return Err(error(&actions_path, "expected at least one action"));
    }
    if items.len() > ACTIONS_MAX {
        return Err(error(&actions_path, format!("more than {ACTIONS_MAX} actions")));
    }
    let actions = items.iter().enumerate().map(|(i, v)| action(&format!("{actions_path}[{i}]"), v)).collect::<Result<Vec<_>, _>>()?;
    // A multiplier scales what the other rules earned; it is a rule of its own, and one per rule.
    if actions.len() > 1 && actions.iter().any(|a| matches!(a, Action::Multiplier { .. })) {
        return Err(error(&actions_path, "a multiplier must be the rule's only action"));
    }
    let caps = o.optional("caps").map(|(path, v)| caps(&path, v)).transpose()?.unwrap_or_default();
    o.finish()?;
    Ok(Rule { id: Arc::from(id), name: Arc::from(name), conditions, actions, caps })
}

/// Reads a program's rules: a JSON array of rule documents with distinct ids.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, RuleError> {
    let document: Value = serde_json::from_str(text).map_err(|e| error("", format!("not JSON: {e}")))?;
    let Value::Array(items) = &document else { return Err(error("", "expected an array of rules")) };
    if items.len() > RULES_MAX {
        return Err(error("", format!("more than {RULES_MAX} rules")));
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let rule = parse_rule(item)
            .map_err(|e| RuleError { path: if e.path.is_empty() { format!("[{i}]") } else { format!("[{i}].{}", e.path) }, ..e })?;
        if rules.iter().any(|r| r.id == rule.id) {
            return Err(error(&format!("[{i}].id"), format!("duplicate rule id {:?}", rule.id)));
        }
        rules.push(rule);
    }
    Ok(rules)
}
