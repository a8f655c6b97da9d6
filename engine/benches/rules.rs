//! Rule evaluation: an order of 20 lines against 50 rules of every kind (target ≤ 20 µs), and a 200-line
//! order against a document near the 60 KiB limit (36 rules of 20 SKUs and one list of 400 categories).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tally_engine::domain::rules::{Customer, Order, OrderLine, Period, Rule, evaluate, parse_rules};

/// A Wednesday, 15:00 UTC.
const PLACED_AT_MS: i64 = 1_772_636_400_000;

fn rules() -> Vec<Rule> {
    let mut docs = Vec::new();
    for i in 0..50 {
        let doc = match i % 5 {
            0 => format!(
                r#"{{"id":"base-{i}","actions":[{{"type":"points_per_currency_unit","points":1,"unit_minor":100}}],
                    "conditions":{{"operator":"and","conditions":[{{"type":"currency","value":["EUR","USD"]}},{{"type":"channel","value":"web"}}]}}}}"#
            ),
            1 => format!(
                r#"{{"id":"sku-{i}","conditions":{{"operator":"or","conditions":[{{"type":"sku","value":["sku-{i}","sku-3"],"min_quantity":2}},
                    {{"type":"category","value":"coffee"}}]}},
                    "actions":[{{"type":"points_per_currency_unit","points":2,"unit_minor":100,"basis":"matching_lines","rounding":"nearest"}}],
                    "caps":{{"per_order":500,"per_customer":{{"points":5000,"period":"month"}}}}}}"#
            ),
            2 => format!(
                r#"{{"id":"happy-{i}","conditions":{{"operator":"and","conditions":[{{"type":"day_of_week","value":[1,2,3,4,5]}},
                    {{"type":"time_window","from":"14:00","to":"17:00"}},{{"operator":"not","condition":{{"type":"store","value":"s-9"}}}}]}},
                    "actions":[{{"type":"points","amount":50}}]}}"#
            ),
            3 => format!(
                r#"{{"id":"promo-{i}","conditions":{{"operator":"and","conditions":[{{"type":"date_range","from":"2026-01-01","to":"2026-12-31"}},
                    {{"type":"order_total","operator":">=","value":5000}},{{"type":"customer_tier","value":["gold","silver"]}}]}},
                    "actions":[{{"type":"multiplier","percent":150}}]}}"#
            ),
            _ => format!(
                r#"{{"id":"first-{i}","conditions":{{"operator":"or","conditions":[{{"type":"first_order"}},{{"type":"nth_order","value":10}}]}},
                    "actions":[{{"type":"points","amount":500}},{{"type":"stamps","card":"coffee","count":1}}]}}"#
            ),
        };
        docs.push(doc);
    }
    parse_rules(&format!("[{}]", docs.join(","))).expect("valid rules")
}

fn order() -> Order {
    Order {
        order_id: "o-1".into(),
        total_minor: 12_345,
        currency: "EUR".into(),
        channel: "web".into(),
        store: "s-1".into(),
        lines: (0..20)
            .map(|i| OrderLine {
                sku: format!("sku-{i}"),
                category: if i % 4 == 0 { "coffee" } else { "food" }.into(),
                quantity: 2,
                amount_minor: 617,
            })
            .collect(),
        // 2026-03-04 (a Wednesday) 15:00 UTC.
        placed_at_ms: None,
    }
}

fn bench(c: &mut Criterion) {
    let rules = rules();
    let order = order();
    let usage = |_: &Rule, _: Period| 100;
    let customer = Customer { tier: Some("gold"), previous_orders: 9, rule_points_in_period: &usage };
    let breakdown = evaluate(&rules, &order, &customer, PLACED_AT_MS, 0).unwrap();
    assert!(breakdown.awards.len() >= 40, "most rules match: {}", breakdown.awards.len());
    c.bench_function("rules/evaluate_20_lines_50_rules", |b| {
        b.iter(|| evaluate(black_box(&rules), black_box(&order), &customer, PLACED_AT_MS, 0))
    });
}

/// 36 rules of 20 SKUs each and one of 400 categories, about 57 KB of JSON.
fn big_document() -> Vec<Rule> {
    let list = |n: usize, prefix: &str| (0..n).map(|i| format!("\"{prefix}-{i:0>40}\"")).collect::<Vec<_>>().join(",");
    let mut docs: Vec<String> = (0..36)
        .map(|r| {
            format!(
                r#"{{"id":"r{r}","conditions":{{"type":"sku","value":[{}]}},"actions":[{{"type":"points","amount":1}}]}}"#,
                list(20, &format!("r{r}"))
            )
        })
        .collect();
    docs.push(format!(
        r#"{{"id":"many","conditions":{{"type":"category","value":[{}]}},"actions":[{{"type":"points","amount":1}}]}}"#,
        list(400, "cat")
    ));
    let json = format!("[{}]", docs.join(","));
    assert!(json.len() <= 60 * 1024, "{}", json.len());
    parse_rules(&json).expect("valid rules")
}

fn big(c: &mut Criterion) {
    let rules = big_document();
    let mut order = order();
    order.lines = (0..200)
        .map(|i| OrderLine { sku: format!("sku-{i}"), category: format!("category-{i}"), quantity: 1, amount_minor: 100 })
        .collect();
    let usage = |_: &Rule, _: Period| 0;
    let customer = Customer { tier: None, previous_orders: 0, rule_points_in_period: &usage };
    c.bench_function("rules/evaluate_200_lines_60KB_document", |b| {
        b.iter(|| evaluate(black_box(&rules), black_box(&order), &customer, PLACED_AT_MS, 0))
    });
}

criterion_group!(benches, bench, big);
criterion_main!(benches);
