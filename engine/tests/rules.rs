//! The rule engine, given/when/then: each condition, each action, caps, time zones, and a table of bad
//! rule documents with the exact path each error names.

use tally_engine::domain::rules::{Customer, EvalError, Order, OrderLine, Period, Rule, evaluate, parse_rules};

/// 2026-03-04, a Wednesday, 15:00 UTC.
const WEDNESDAY_15H: i64 = 1_772_636_400_000;

fn order(total_minor: i64) -> Order {
    Order {
        order_id: "o-1".into(),
        total_minor,
        currency: "EUR".into(),
        channel: "pos".into(),
        store: "s-1".into(),
        lines: vec![
            OrderLine { sku: "latte".into(), category: "coffee".into(), quantity: 2, amount_minor: 800 },
            OrderLine { sku: "bagel".into(), category: "food".into(), quantity: 1, amount_minor: 450 },
        ],
        placed_at_ms: None,
    }
}

fn no_usage(_: &Rule, _: Period) -> i64 {
    0
}

fn customer() -> Customer<'static> {
    Customer { tier: Some("gold"), previous_orders: 0, rule_points_in_period: &no_usage }
}

/// Points the single rule `doc` gives `order` (0 if it does not match).
fn points(doc: &str, order: &Order, customer: &Customer<'_>) -> i64 {
    let rules = parse_rules(&format!("[{doc}]")).unwrap_or_else(|e| panic!("{doc}: {e}"));
    evaluate(&rules, order, customer, WEDNESDAY_15H, 0).unwrap().total_points
}

fn when(condition: &str) -> String {
    format!(r#"{{"id":"r","conditions":{condition},"actions":[{{"type":"points","amount":10}}]}}"#)
}

#[test]
fn each_condition_matches_what_it_says() {
    let o = order(1_250);
    let c = customer();
    let cases: &[(&str, i64)] = &[
        (r#"{"type":"order_total","operator":">=","value":1250}"#, 10),
        (r#"{"type":"order_total","operator":">","value":1250}"#, 0),
        (r#"{"type":"order_total","operator":"<","value":1251}"#, 10),
        (r#"{"type":"order_total","operator":"<=","value":1249}"#, 0),
        (r#"{"type":"order_total","operator":"==","value":1250}"#, 10),
        (r#"{"type":"order_total","operator":"!=","value":1250}"#, 0),
        (r#"{"type":"currency","value":"EUR"}"#, 10),
        (r#"{"type":"currency","operator":"not_in","value":["EUR","USD"]}"#, 0),
        (r#"{"type":"channel","value":["web","app"]}"#, 0),
        (r#"{"type":"store","operator":"in","value":["s-1"]}"#, 10),
        (r#"{"type":"customer_tier","value":["gold"]}"#, 10),
        (r#"{"type":"customer_tier","value":["silver"]}"#, 0),
        (r#"{"type":"sku","value":"latte","min_quantity":2}"#, 10),
        (r#"{"type":"sku","value":"latte","min_quantity":3}"#, 0),
        (r#"{"type":"category","value":["food"]}"#, 10),
        (r#"{"type":"day_of_week","value":[3]}"#, 10),
        (r#"{"type":"day_of_week","value":[6,7]}"#, 0),
        (r#"{"type":"time_window","from":"14:00","to":"17:00"}"#, 10),
        (r#"{"type":"time_window","from":"15:01","to":"15:00"}"#, 0),
        (r#"{"type":"time_window","from":"22:00","to":"15:01"}"#, 10),
        (r#"{"type":"time_window","from":"15:00","to":"24:00"}"#, 10),
        (r#"{"type":"date_range","from":"2026-03-01","to":"2026-03-04"}"#, 10),
        (r#"{"type":"date_range","from":"2026-03-05","to":"2026-12-31"}"#, 0),
        (r#"{"type":"first_order"}"#, 10),
        (r#"{"type":"nth_order","value":2}"#, 0),
        (r#"{"operator":"and","conditions":[{"type":"first_order"},{"type":"currency","value":"EUR"}]}"#, 10),
        (r#"{"operator":"and","conditions":[{"type":"first_order"},{"type":"currency","value":"USD"}]}"#, 0),
        (r#"{"operator":"or","conditions":[{"type":"currency","value":"USD"},{"type":"channel","value":"pos"}]}"#, 10),
        (r#"{"operator":"not","condition":{"type":"channel","value":"pos"}}"#, 0),
    ];
    for (condition, expected) in cases {
        assert_eq!(points(&when(condition), &o, &c), *expected, "{condition}");
    }
}

#[test]
fn time_conditions_use_the_programs_time_zone() {
    let rules = parse_rules(&format!("[{}]", when(r#"{"type":"time_window","from":"23:00","to":"23:59"}"#))).unwrap();
    let o = order(100);
    // 15:00 UTC is 23:00 in UTC+8 and still Wednesday; in UTC it is outside the window.
    assert_eq!(evaluate(&rules, &o, &customer(), WEDNESDAY_15H, 8 * 60).unwrap().total_points, 10);
    assert_eq!(evaluate(&rules, &o, &customer(), WEDNESDAY_15H, 0).unwrap().total_points, 0);
    let thursday = parse_rules(&format!("[{}]", when(r#"{"type":"day_of_week","value":[4]}"#))).unwrap();
    assert_eq!(evaluate(&thursday, &o, &customer(), WEDNESDAY_15H, 10 * 60).unwrap().total_points, 10, "01:00 Thursday in UTC+10");
}

#[test]
fn each_action_awards_what_it_says() {
    let c = customer();
    let per_unit = |rounding: &str, total: i64| {
        points(
            &format!(
                r#"{{"id":"r","actions":[{{"type":"points_per_currency_unit","points":3,"unit_minor":100,"rounding":"{rounding}"}}]}}"#
            ),
            &order(total),
            &c,
        )
    };
    assert_eq!((per_unit("down", 1_250), per_unit("up", 1_250), per_unit("nearest", 1_250)), (36, 39, 39));
    assert_eq!((per_unit("down", 1_249), per_unit("nearest", 1_249), per_unit("up", 1_200)), (36, 36, 36));
    // Only the coffee lines (800 of 1250) count on a matching_lines basis.
    let coffee = r#"{"id":"r","conditions":{"type":"category","value":"coffee"},
        "actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100,"basis":"matching_lines"}]}"#;
    assert_eq!(points(coffee, &order(1_250), &c), 8);

    let rules = parse_rules(
        r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]},
            {"id":"bonus","actions":[{"type":"points","amount":50,"reason":"welcome"}]},
            {"id":"double","name":"Double points week","actions":[{"type":"multiplier","percent":200}]},
            {"id":"half-more","actions":[{"type":"multiplier","percent":150}]},
            {"id":"card","actions":[{"type":"stamps","card":"coffee","count":2}]}]"#,
    )
    .unwrap();
    let breakdown = evaluate(&rules, &order(1_250), &c, WEDNESDAY_15H, 0).unwrap();
    let by_rule: Vec<(&str, i64, &str)> = breakdown.awards.iter().map(|a| (&*a.rule_id, a.points, &*a.reason)).collect();
    // Base 12 + 50 = 62; multipliers add 100% and 50% of it, each as its own line.
    assert_eq!(
        by_rule,
        [("base", 12, ""), ("bonus", 50, "welcome"), ("card", 0, ""), ("double", 62, "Double points week"), ("half-more", 31, "")]
    );
    assert_eq!(breakdown.total_points, 155);
    assert_eq!(breakdown.awards[2].stamps, [("coffee".into(), 2)]);
}

#[test]
fn caps_limit_a_rule_per_order_and_per_customer_period() {
    let doc = r#"{"id":"r","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":1}],
        "caps":{"per_order":1000,"per_customer":{"points":1500,"period":"month"}}}"#;
    let rules = parse_rules(&format!("[{doc}]")).unwrap();
    let fresh = evaluate(&rules, &order(5_000), &customer(), WEDNESDAY_15H, 0).unwrap();
    assert_eq!((fresh.total_points, fresh.awards[0].capped_points), (1_000, 4_000));
    let used = |_: &Rule, period: Period| if period == Period::Month { 1_200 } else { 0 };
    let later = Customer { rule_points_in_period: &used, ..customer() };
    assert_eq!(evaluate(&rules, &order(5_000), &later, WEDNESDAY_15H, 0).unwrap().total_points, 300);
    let spent = |_: &Rule, _: Period| 5_000;
    let done = Customer { rule_points_in_period: &spent, ..customer() };
    assert_eq!(evaluate(&rules, &order(5_000), &done, WEDNESDAY_15H, 0).unwrap().total_points, 0, "never negative");
}

#[test]
fn an_award_beyond_the_ledger_limit_is_an_error_not_an_overflow() {
    let doc = r#"{"id":"r","actions":[{"type":"points_per_currency_unit","points":1000000,"unit_minor":1}]}"#;
    let rules = parse_rules(&format!("[{doc}]")).unwrap();
    let error = evaluate(&rules, &order(1_000_000_000_000_000), &customer(), WEDNESDAY_15H, 0).unwrap_err();
    assert!(matches!(error, EvalError::AwardTooLarge { .. }), "{error}");
    // A cap brings a huge award back into range: that is an award, not an error.
    let capped = r#"{"id":"r","actions":[{"type":"points_per_currency_unit","points":1000000,"unit_minor":1}],"caps":{"per_order":1000}}"#;
    let rules = parse_rules(&format!("[{capped}]")).unwrap();
    let breakdown = evaluate(&rules, &order(1_000_000_000_000_000), &customer(), WEDNESDAY_15H, 0).unwrap();
    assert_eq!((breakdown.total_points, breakdown.awards[0].capped_points), (1_000, 1_000_000_000_000));
}

#[test]
fn bad_rule_documents_are_refused_naming_the_path() {
    let ok_action = r#"[{"type":"points","amount":5}]"#;
    let cases: Vec<(String, &str, &str)> = vec![
        ("{}".into(), "", "expected an array of rules"),
        ("[1]".into(), "[0]", "expected an object"),
        (r#"[{"actions":[]}]"#.into(), "[0].id", "is required"),
        (format!(r#"[{{"id":"a b","actions":{ok_action}}}]"#), "[0].id", "expected 1 or more"),
        (r#"[{"id":"r","actions":[]}]"#.into(), "[0].actions", "at least one action"),
        (format!(r#"[{{"id":"r","actions":{ok_action},"colour":"red"}}]"#), "[0].colour", "unknown field"),
        (format!(r#"[{{"id":"r","actions":{ok_action}}},{{"id":"r","actions":{ok_action}}}]"#), "[1].id", "duplicate rule id"),
        (r#"[{"id":"r","actions":[{"type":"teleport"}]}]"#.into(), "[0].actions[0].type", "unknown action type"),
        (r#"[{"id":"r","actions":[{"type":"points","amount":"5"}]}]"#.into(), "[0].actions[0].amount", "expected a number"),
        (r#"[{"id":"r","actions":[{"type":"points","amount":1.5}]}]"#.into(), "[0].actions[0].amount", "expected a whole number"),
        (r#"[{"id":"r","actions":[{"type":"points","amount":0}]}]"#.into(), "[0].actions[0].amount", "out of range"),
        (r#"[{"id":"r","actions":[{"type":"points","amount":5,"extra":1}]}]"#.into(), "[0].actions[0].extra", "unknown field"),
        (
            r#"[{"id":"r","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":0}]}]"#.into(),
            "[0].actions[0].unit_minor",
            "out of range 1..=",
        ),
        (
            r#"[{"id":"r","actions":[{"type":"points_per_currency_unit","points":1,"rounding":"banker"}]}]"#.into(),
            "[0].actions[0].rounding",
            "expected down, up or nearest",
        ),
        (r#"[{"id":"r","actions":[{"type":"multiplier","percent":100}]}]"#.into(), "[0].actions[0].percent", "out of range"),
        (r#"[{"id":"r","actions":[{"type":"stamps","count":1}]}]"#.into(), "[0].actions[0].card", "is required"),
        (
            format!(
                r#"[{{"id":"r","actions":{ok_action},"conditions":{{"operator":"and","conditions":[{{"type":"first_order"}},{{"type":"order_total","operator":">=","value":"x"}}]}}}}]"#
            ),
            "[0].conditions.conditions[1].value",
            "expected a number",
        ),
        (
            format!(r#"[{{"id":"r","actions":{ok_action},"conditions":{{"operator":"xor","conditions":[]}}}}]"#),
            "[0].conditions.operator",
            "unknown operator \"xor\"",
        ),
        (
            format!(r#"[{{"id":"r","actions":{ok_action},"conditions":{{"type":"order_total","operator":"=>","value":1}}}}]"#),
            "[0].conditions.operator",
            "unknown operator \"=>\"",
        ),
        (
            format!(r#"[{{"id":"r","actions":{ok_action},"conditions":{{"type":"weather","value":"sunny"}}}}]"#),
            "[0].conditions.type",
            "unknown condition type",
        ),
        (
            format!(r#"[{{"id":"r","actions":{ok_action},"conditions":{{"type":"day_of_week","value":[0]}}}}]"#),
            "[0].conditions.value[0]",
            "out of range 1..=7",
        ),
        (
            format!(r#"[{{"id":"r","actions":{ok_action},"conditions":{{"type":"time_window","from":"25:00","to":"10:00"}}}}]"#),
            "[0].conditions.from",
            "HH:MM",
        ),
        (
            format!(r#"[{{"id":"r","actions":{ok_action},"conditions":{{"type":"date_range","from":"2026-03-05","to":"2026-03-01"}}}}]"#),
            "[0].conditions.to",
            "is before",
        ),
        (
            format!(r#"[{{"id":"r","actions":{ok_action},"conditions":{{"type":"currency","value":[]}}}}]"#),
            "[0].conditions.value",
            "at least one value",
        ),
        (
            format!(r#"[{{"id":"r","actions":{ok_action},"conditions":{{"type":"sku","value":"x","min_qty":2}}}}]"#),
            "[0].conditions.min_qty",
            "unknown field",
        ),
        (
            format!(r#"[{{"id":"r","actions":{ok_action},"caps":{{"per_customer":{{"points":5,"period":"fortnight"}}}}}}]"#),
            "[0].caps.per_customer.period",
            "expected day, week",
        ),
        ("[".into(), "", "not JSON"),
        (
            r#"[{"id":"r","actions":[{"type":"points","amount":5},{"type":"multiplier","percent":200}]}]"#.into(),
            "[0].actions",
            "multiplier must be the rule's only action",
        ),
        (
            format!(r#"[{{"id":"r","actions":{ok_action},"conditions":{{"type":"currency","value":["EUR","eur"]}}}}]"#),
            "[0].conditions.value[1]",
            "ISO 4217",
        ),
        (
            format!(r#"[{{"id":"r","actions":{ok_action},"conditions":{{"type":"time_window","from":"+1:00","to":"10:00"}}}}]"#),
            "[0].conditions.from",
            "HH:MM",
        ),
        (r#"[{"id":"r","actions":[{"type":"stamps","card":"","count":1}]}]"#.into(), "[0].actions[0].card", "must not be empty"),
        (r#"[{"id":"r","actions":[{"type":"points","amount":18446744073709551615}]}]"#.into(), "[0].actions[0].amount", "out of range"),
    ];
    for (doc, path, says) in cases {
        let error = parse_rules(&doc).expect_err(&doc);
        assert_eq!(error.path, path, "{doc}: {error}");
        assert!(error.message.contains(says), "{doc}: {error}");
    }
    let deep = (0..10).fold(r#"{"type":"first_order"}"#.to_owned(), |inner, _| format!(r#"{{"operator":"not","condition":{inner}}}"#));
    let error = parse_rules(&format!(r#"[{{"id":"r","actions":{ok_action},"conditions":{deep}}}]"#)).unwrap_err();
    assert!(error.message.contains("nest deeper"), "{error}");
}
