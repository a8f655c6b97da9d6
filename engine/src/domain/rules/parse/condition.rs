//! Conditions of a rule document: `and`/`or`/`not` over typed leaves (order total, currency, channel,
//! store, tier, SKU, category, weekday, time window, date range, n-th order), each with its own checks.

use serde_json::Value;

use super::{CONDITION_DEPTH_MAX, CONDITIONS_MAX, Object, RuleError, error, integer, join, object, string, strings};
use crate::domain::rules::{Cmp, Condition, SetOp};

/// `"HH:MM"` → minutes after midnight.
fn clock(path: &str, value: &Value) -> Result<u16, RuleError> {
    let text = string(path, value, 5)?;
    let digits = |part: &str| (part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit())).then(|| part.parse::<u16>().ok()).flatten();
    let parsed = text.split_once(':').and_then(|(h, m)| {
        let (h, m) = (digits(h)?, digits(m)?);
        // 24:00 is the end of the day, for windows that run to midnight.
        (h < 24 && m < 60 || h == 24 && m == 0).then(|| h * 60 + m)
    });
    parsed.ok_or_else(|| error(path, "expected a time of day as HH:MM"))
}

/// `"YYYY-MM-DD"` → days since 1970-01-01.
fn date(path: &str, value: &Value) -> Result<i64, RuleError> {
    let text = string(path, value, 10)?;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(&text, format).map_err(|_| error(path, "expected a date as YYYY-MM-DD"))?;
    Ok(i64::from(date.to_julian_day()) - i64::from(time::Date::from_ordinal_date(1970, 1).map_or(2_440_588, |d| d.to_julian_day())))
}

fn comparison(path: &str, value: &Value) -> Result<Cmp, RuleError> {
    match value.as_str() {
        Some(">=") => Ok(Cmp::Ge),
        Some(">") => Ok(Cmp::Gt),
        Some("<=") => Ok(Cmp::Le),
        Some("<") => Ok(Cmp::Lt),
        Some("==") => Ok(Cmp::Eq),
        Some("!=") => Ok(Cmp::Ne),
        Some(other) => Err(error(path, format!("unknown operator {other:?}; expected one of >=, >, <=, <, ==, !="))),
        None => Err(error(path, "expected an operator string")),
    }
}

fn set_op(path: &str, value: Option<&Value>) -> Result<SetOp, RuleError> {
    match value.map(Value::as_str) {
        None | Some(Some("in")) => Ok(SetOp::In),
        Some(Some("not_in")) => Ok(SetOp::NotIn),
        Some(Some(other)) => Err(error(path, format!("unknown operator {other:?}; expected in or not_in"))),
        Some(None) => Err(error(path, "expected an operator string")),
    }
}

pub(super) fn condition(path: &str, value: &Value, depth: usize, count: &mut usize) -> Result<Condition, RuleError> {
    *count += 1;
    if *count > CONDITIONS_MAX {
        return Err(error(path, format!("more than {CONDITIONS_MAX} conditions in one rule")));
    }
    if depth > CONDITION_DEPTH_MAX {
        return Err(error(path, format!("conditions nest deeper than {CONDITION_DEPTH_MAX}")));
    }
    let mut o = object(path, value)?;
    let parsed = if o.map.contains_key("type") {
        leaf(&mut o)?
    } else {
        let (op_path, op) = o.required("operator")?;
        match op.as_str() {
            Some(kind @ ("and" | "or")) => {
                let (list_path, list) = o.required("conditions")?;
                let Value::Array(items) = list else { return Err(error(&list_path, "expected an array of conditions")) };
                if items.is_empty() {
                    return Err(error(&list_path, "expected at least one condition"));
                }
                let parsed = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| condition(&format!("{list_path}[{i}]"), item, depth + 1, count))
                    .collect::<Result<Vec<_>, _>>()?;
                if kind == "and" { Condition::All(parsed) } else { Condition::Any(parsed) }
            }
            Some("not") => {
                let (inner_path, inner) = o.required("condition")?;
                Condition::Not(Box::new(condition(&inner_path, inner, depth + 1, count)?))
            }
            Some(other) => {
                return Err(error(&op_path, format!("unknown operator {other:?}; expected and, or or not (or give a \"type\")")));
            }
            None => return Err(error(&op_path, "expected an operator string")),
        }
    };
    o.finish()?;
    Ok(parsed)
}

fn leaf(o: &mut Object<'_>) -> Result<Condition, RuleError> {
    let (type_path, kind) = o.required("type")?;
    let kind = kind.as_str().ok_or_else(|| error(&type_path, "expected a string"))?;
    let set = |o: &mut Object<'_>| -> Result<(SetOp, Vec<String>), RuleError> {
        let op_path = join(&o.path, "operator");
        let op = o.optional("operator").map(|(_, v)| v);
        let op = set_op(&op_path, op)?;
        let (path, value) = o.required("value")?;
        Ok((op, strings(&path, value)?))
    };
    Ok(match kind {
        "order_total" => {
            let (op_path, op) = o.required("operator")?;
            Condition::OrderTotal(comparison(&op_path, op)?, o.integer("value", 0, crate::limits::MONEY_MINOR_ABS_MAX)?)
        }
        "currency" => {
            let (op, values) = set(o)?;
            check_currencies(o, &values)?;
            Condition::Currency(op, sorted(values))
        }
        "channel" => {
            let (op, values) = set(o)?;
            Condition::Channel(op, sorted(values))
        }
        "store" => {
            let (op, values) = set(o)?;
            Condition::Store(op, sorted(values))
        }
        "customer_tier" => {
            let (op, values) = set(o)?;
            Condition::CustomerTier(op, sorted(values))
        }
        "sku" | "category" => {
            let (path, value) = o.required("value")?;
            let values = sorted(strings(&path, value)?);
            let min_quantity = o.optional_integer("min_quantity", 1, 1_000_000)?.unwrap_or(1);
            if kind == "sku" { Condition::Sku { values, min_quantity } } else { Condition::Category { values, min_quantity } }
        }
        "day_of_week" => day_of_week(o)?,
        "time_window" => time_window(o)?,
        "date_range" => date_range(o)?,
        "first_order" => Condition::NthOrder(1),
        "nth_order" => Condition::NthOrder(u64::try_from(o.integer("value", 1, 1_000_000)?).unwrap_or(1)),
        other => {
            return Err(error(
                &type_path,
                format!(
                    "unknown condition type {other:?}; expected one of order_total, currency, channel, store, customer_tier, sku, \
                     category, day_of_week, time_window, date_range, first_order, nth_order"
                ),
            ));
        }
    })
}

/// Every value of a `currency` condition is an ISO 4217 code.
fn check_currencies(o: &Object<'_>, values: &[String]) -> Result<(), RuleError> {
    if let Some(i) = values.iter().position(|c| c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase())) {
        let path = if o.map.get("value").is_some_and(Value::is_array) { format!("{}.value[{i}]", o.path) } else { join(&o.path, "value") };
        return Err(error(path.trim_start_matches('.'), "expected an ISO 4217 code such as EUR"));
    }
    Ok(())
}

/// Days 1 (Monday) to 7 (Sunday), as a bit mask.
fn day_of_week(o: &mut Object<'_>) -> Result<Condition, RuleError> {
    let (path, value) = o.required("value")?;
    let Value::Array(days) = value else { return Err(error(&path, "expected an array of days, 1 (Monday) to 7 (Sunday)")) };
    let mut mask = 0u8;
    for (i, day) in days.iter().enumerate() {
        mask |= 1 << integer(&format!("{path}[{i}]"), day, 1, 7)?;
    }
    if mask == 0 {
        return Err(error(&path, "expected at least one day"));
    }
    Ok(Condition::DayOfWeek(mask))
}

fn time_window(o: &mut Object<'_>) -> Result<Condition, RuleError> {
    let (from_path, from) = o.required("from")?;
    let (to_path, to) = o.required("to")?;
    let (from, to) = (clock(&from_path, from)?, clock(&to_path, to)?);
    if from == to {
        return Err(error(&to_path, "must differ from `from` (a window may wrap past midnight)"));
    }
    Ok(Condition::TimeWindow { from, to })
}

fn date_range(o: &mut Object<'_>) -> Result<Condition, RuleError> {
    let (from_path, from) = o.required("from")?;
    let (to_path, to) = o.required("to")?;
    let (from, to) = (date(&from_path, from)?, date(&to_path, to)?);
    if to < from {
        return Err(error(&to_path, "is before `from`"));
    }
    Ok(Condition::DateRange { from_day: from, to_day: to })
}

/// A condition's list as evaluation searches it: sorted, without repeats.
fn sorted(mut values: Vec<String>) -> Vec<String> {
    values.sort_unstable();
    values.dedup();
    values
}
