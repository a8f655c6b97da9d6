//! Orders and rule awards between the wire and the engine. Validation is the engine's
//! (`rules::Order::validate`); this only converts, and reports a missing message or a bad timestamp.

use tally_engine::domain::rules;
use tally_proto::v1 as pb;
use tonic::Status;

use crate::status;

/// Milliseconds since the Unix epoch of a wire timestamp between 1970 and 9999.
pub fn millis(field: &str, at: &prost_types::Timestamp) -> Result<i64, Status> {
    at.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(at.nanos / 1_000_000)))
        .filter(|ms| (0..=253_402_300_799_999).contains(ms) && (0..1_000_000_000).contains(&at.nanos))
        .ok_or_else(|| status::invalid(field, "must be a valid time between 1970 and 9999"))
}

/// The engine's order from the wire's, validated.
pub fn from_wire(order: Option<pb::Order>) -> Result<rules::Order, Status> {
    let order = order.ok_or_else(|| status::invalid("order", "is required"))?;
    let total = order.total.ok_or_else(|| status::invalid("order.total", "is required"))?;
    let placed_at_ms = order.placed_at.as_ref().map(|at| millis("order.placed_at", at)).transpose()?;
    let order = rules::Order {
        order_id: order.order_id,
        total_minor: total.amount_minor,
        currency: total.currency,
        channel: order.channel,
        store: order.store,
        lines: order
            .lines
            .into_iter()
            .map(|l| rules::OrderLine { sku: l.sku, category: l.category, quantity: l.quantity, amount_minor: l.amount_minor })
            .collect(),
        placed_at_ms,
    };
    order.validate().map_err(|e| status::from_field_error(&e))?;
    Ok(order)
}

/// A recorded award as the wire shows it.
pub fn award(a: &pb::EarnedByRule) -> pb::RuleAward {
    pb::RuleAward {
        rule_id: a.rule_id.clone(),
        points: a.points,
        capped_points: a.capped_points,
        reason: a.reason.clone(),
        stamps: a.stamps.clone(),
    }
}
