//! The earn-rule engine: a program's rules (JSON documents, see [`parse`]) applied to an order.
//! Pure and deterministic: the order, the customer's facts and the program's time zone come in as
//! arguments; the answer is a breakdown per rule. Integers only; intermediate products in `i128`, so
//! nothing overflows, and an award beyond the ledger's limit is an error, never a wrap.

mod eval;
pub mod parse;

pub use eval::{Award, Breakdown, EvalError, evaluate};
pub use parse::{RuleError, parse_rule, parse_rules};

use std::sync::Arc;

use super::ids::FieldError;
use crate::limits::{MONEY_MINOR_ABS_MAX, ORDER_LINE_QUANTITY_MAX, ORDER_LINES_MAX, REF_BYTES_MAX};

const MS_PER_DAY: i64 = 86_400_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: Arc<str>,
    pub name: Arc<str>,
    /// `None`: the rule applies to every order.
    pub conditions: Option<Condition>,
    pub actions: Vec<Action>,
    pub caps: Caps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
    Ne,
}

impl Cmp {
    fn holds(self, left: i64, right: i64) -> bool {
        match self {
            Cmp::Ge => left >= right,
            Cmp::Gt => left > right,
            Cmp::Le => left <= right,
            Cmp::Lt => left < right,
            Cmp::Eq => left == right,
            Cmp::Ne => left != right,
        }
    }
}

/// Whether `value` is in `set`, sorted and without repeats (as every list in a parsed rule is): a rule of
/// a thousand SKUs costs a binary search per order line, not a scan.
pub(super) fn in_sorted(set: &[String], value: &str) -> bool {
    set.binary_search_by(|s| s.as_str().cmp(value)).is_ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOp {
    In,
    NotIn,
}

impl SetOp {
    /// Whether `value` is in (or not in) `set`, which the parser sorted.
    fn holds(self, value: Option<&str>, set: &[String]) -> bool {
        let found = value.is_some_and(|v| in_sorted(set, v));
        match self {
            SetOp::In => found,
            SetOp::NotIn => !found,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    /// Order total in minor units.
    OrderTotal(Cmp, i64),
    Currency(SetOp, Vec<String>),
    Channel(SetOp, Vec<String>),
    Store(SetOp, Vec<String>),
    CustomerTier(SetOp, Vec<String>),
    /// Some line has one of these SKUs, with at least this quantity over all such lines. Every list of
    /// values in a condition is sorted and without repeats.
    Sku {
        values: Vec<String>,
        min_quantity: i64,
    },
    Category {
        values: Vec<String>,
        min_quantity: i64,
    },
    /// Bit `d` set for ISO weekday `d` (1 = Monday … 7 = Sunday), in the program's time zone.
    DayOfWeek(u8),
    /// Minutes after local midnight, `from` inclusive, `to` exclusive; wraps past midnight if `to < from`.
    TimeWindow {
        from: u16,
        to: u16,
    },
    /// Local days since 1970-01-01, inclusive.
    DateRange {
        from_day: i64,
        to_day: i64,
    },
    /// The customer's n-th order (1 = first).
    NthOrder(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    Down,
    Up,
    /// Half up.
    Nearest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A fixed bonus.
    Points {
        amount: i64,
        reason: Option<Arc<str>>,
    },
    /// `points` for every `unit_minor` of the order total (or of the lines the rule's SKU and category
    /// conditions match).
    PerCurrencyUnit {
        points: i64,
        unit_minor: i64,
        rounding: Rounding,
        matching_lines_only: bool,
        reason: Option<Arc<str>>,
    },
    /// Adds `percent - 100`% of the points the earn actions of all matching rules gave, after their caps
    /// (multipliers add up: two 200% promotions triple the base). A multiplier is a rule's only action.
    Multiplier {
        percent: i64,
        reason: Option<Arc<str>>,
    },
    Stamps {
        card: Arc<str>,
        count: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
    Year,
    Lifetime,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// Most points the rule gives one order.
    pub per_order: Option<i64>,
    /// Most points the rule gives one customer per period.
    pub per_customer: Option<(i64, Period)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub sku: String,
    pub category: String,
    pub quantity: i64,
    /// The line's amount in minor units.
    pub amount_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: String,
    pub total_minor: i64,
    pub currency: String,
    pub channel: String,
    pub store: String,
    pub lines: Vec<OrderLine>,
    /// When the order was placed, if the client said; `None` means when it is decided.
    pub placed_at_ms: Option<i64>,
}

impl Order {
    /// Checks every field against the engine's limits; the error names the field's path
    /// (`order.lines[3].quantity`).
    pub fn validate(&self) -> Result<(), FieldError> {
        fn text(field: impl Fn() -> String, value: &str, required: bool) -> Result<(), FieldError> {
            if required && value.is_empty() {
                return Err(FieldError::new(field(), "must not be empty"));
            }
            if value.len() > REF_BYTES_MAX {
                return Err(FieldError::new(field(), format!("must be at most {REF_BYTES_MAX} bytes")));
            }
            if value.chars().any(char::is_control) {
                return Err(FieldError::new(field(), "must not contain control characters"));
            }
            Ok(())
        }
        fn amount(field: impl Fn() -> String, value: i64) -> Result<(), FieldError> {
            if !(0..=MONEY_MINOR_ABS_MAX).contains(&value) {
                return Err(FieldError::new(field(), format!("must be within 0..={MONEY_MINOR_ABS_MAX}")));
            }
            Ok(())
        }
        text(|| "order.order_id".into(), &self.order_id, true)?;
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(FieldError::new("order.total.currency", "must be an ISO 4217 code such as EUR"));
        }
        amount(|| "order.total.amount_minor".into(), self.total_minor)?;
        text(|| "order.channel".into(), &self.channel, false)?;
        text(|| "order.store".into(), &self.store, false)?;
        if self.lines.len() > ORDER_LINES_MAX {
            return Err(FieldError::new("order.lines", format!("must have at most {ORDER_LINES_MAX} lines")));
        }
        for (i, line) in self.lines.iter().enumerate() {
            if !(1..=ORDER_LINE_QUANTITY_MAX).contains(&line.quantity) {
                return Err(FieldError::new(format!("order.lines[{i}].quantity"), format!("must be within 1..={ORDER_LINE_QUANTITY_MAX}")));
            }
            amount(|| format!("order.lines[{i}].amount_minor"), line.amount_minor)?;
            text(|| format!("order.lines[{i}].sku"), &line.sku, false)?;
            text(|| format!("order.lines[{i}].category"), &line.category, false)?;
        }
        Ok(())
    }
}

/// Which `period` contains `at_ms` in a program `utc_offset_minutes` east of UTC, as a number: the
/// local day, the ISO week (Monday to Sunday) or the month since 1970, the year, or 0 for `Lifetime`.
pub fn period_key(period: Period, at_ms: i64, utc_offset_minutes: i32) -> i64 {
    let day = When::of(at_ms, utc_offset_minutes).day;
    // 1970-01-01 was a Thursday: Monday 1969-12-29 starts week 0.
    let week = (day + 3).div_euclid(7);
    let (year, month) = civil(day);
    match period {
        Period::Day => day,
        Period::Week => week,
        Period::Month => (year - 1970) * 12 + month - 1,
        Period::Year => year,
        Period::Lifetime => 0,
    }
}

/// Year and month (1–12) of a day counted from 1970-01-01 (proleptic Gregorian; Howard Hinnant's
/// `civil_from_days`).
fn civil(day: i64) -> (i64, i64) {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// What the rules may know about the customer, as of the order.
#[derive(Clone, Copy)]
pub struct Customer<'a> {
    pub tier: Option<&'a str>,
    /// Orders the customer placed before this one.
    pub previous_orders: u64,
    /// Points `rule` already gave this customer in the `period` that contains the order.
    pub rule_points_in_period: &'a dyn Fn(&Rule, Period) -> i64,
}

impl std::fmt::Debug for Customer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Customer").field("tier", &self.tier).field("previous_orders", &self.previous_orders).finish_non_exhaustive()
    }
}

/// The order's local calendar facts in the program's time zone.
pub(super) struct When {
    pub(super) day: i64,
    pub(super) weekday: u8,
    pub(super) minute: u16,
}

impl When {
    pub(super) fn of(placed_at_ms: i64, utc_offset_minutes: i32) -> Self {
        let local = placed_at_ms.saturating_add(i64::from(utc_offset_minutes) * 60_000);
        let day = local.div_euclid(MS_PER_DAY);
        // 1970-01-01 was a Thursday (ISO 4).
        let weekday = u8::try_from((day + 3).rem_euclid(7) + 1).unwrap_or(1);
        let minute = u16::try_from(local.rem_euclid(MS_PER_DAY) / 60_000).unwrap_or(0);
        Self { day, weekday, minute }
    }
}
