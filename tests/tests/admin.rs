//! AdminService in the real `tally` process: a program is created, its rules published (a bad
//! document refused with the path in it), orders simulated against the version in force when they
//! were placed, and all of it found again after a SIGKILL.

use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::{
    CreateProgramRequest, GetProgramRequest, ListRuleVersionsRequest, Money, Order, OrderLine, PublishRulesRequest, ReturnPolicy,
    SimulateOrderRequest,
};
use tally_tests::TallyServer;
use tonic::Code;
use tonic_types::StatusExt;

const RULES_V1: &str = r#"[
  {"id":"base","name":"1 point per euro","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]},
  {"id":"coffee","conditions":{"type":"category","value":"coffee","min_quantity":2},
   "actions":[{"type":"stamps","card":"coffee-card","count":1},{"type":"points","amount":20,"reason":"two coffees"}]},
  {"id":"first-order","conditions":{"operator":"and","conditions":[{"type":"first_order"},{"type":"order_total","operator":">=","value":2000}]},
   "actions":[{"type":"points","amount":500,"reason":"First order bonus"}]}
]"#;

fn order(placed_at: Option<prost_types::Timestamp>) -> Order {
    Order {
        order_id: "o-1".into(),
        total: Some(Money { amount_minor: 2_550, currency: "EUR".into() }),
        channel: "pos".into(),
        store: "s-1".into(),
        lines: vec![OrderLine { sku: "latte".into(), category: "coffee".into(), quantity: 2, amount_minor: 900 }],
        placed_at,
    }
}

#[tokio::test]
async fn programs_rules_and_simulated_orders_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TallyServer::start(dir.path(), &[]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let status = admin.get_program(GetProgramRequest { tenant_id: "acme".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let create = CreateProgramRequest {
        tenant_id: "acme".into(),
        idempotency_key: "create".into(),
        name: "Acme Rewards".into(),
        utc_offset_minutes: 60,
        return_policy: ReturnPolicy::AllowNegative.into(),
    };
    let created = admin.create_program(create.clone()).await.unwrap().into_inner();
    assert_eq!((created.name.as_str(), created.rules_version, created.replayed), ("Acme Rewards", 0, false));
    assert!(admin.create_program(create).await.unwrap().into_inner().replayed, "a retry changes nothing");

    let bad = PublishRulesRequest {
        tenant_id: "acme".into(),
        idempotency_key: "bad".into(),
        rules_json: r#"[{"id":"r","actions":[{"type":"points","amount":"lots"}]}]"#.into(),
        published_by: "ops".into(),
    };
    let status = admin.publish_rules(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "rules_json");
    assert!(status.message().contains("[0].actions[0].amount: expected a number"), "{status:?}");

    let before_rules = prost_types::Timestamp { seconds: 1_000_000_000, nanos: 0 };
    let simulated = admin
        .simulate_order(SimulateOrderRequest {
            tenant_id: "acme".into(),
            order: Some(order(None)),
            customer_tier: String::new(),
            previous_orders: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((simulated.total_points, simulated.rules_version), (0, 0), "no rules yet");

    let publish = PublishRulesRequest {
        tenant_id: "acme".into(),
        idempotency_key: "v1".into(),
        rules_json: RULES_V1.into(),
        published_by: "ops".into(),
    };
    assert_eq!(admin.publish_rules(publish).await.unwrap().into_inner().rules_version, 1);

    let simulate = |previous_orders, placed_at| SimulateOrderRequest {
        tenant_id: "acme".into(),
        order: Some(order(placed_at)),
        customer_tier: "gold".into(),
        previous_orders,
    };
    let first = admin.simulate_order(simulate(0, None)).await.unwrap().into_inner();
    let awards: Vec<(&str, i64)> = first.awards.iter().map(|a| (a.rule_id.as_str(), a.points)).collect();
    assert_eq!(awards, [("base", 25), ("coffee", 20), ("first-order", 500)]);
    assert_eq!((first.total_points, first.rules_version), (545, 1));
    assert_eq!(first.awards[1].stamps[0].card, "coffee-card");
    let repeat = admin.simulate_order(simulate(3, None)).await.unwrap().into_inner();
    assert_eq!(repeat.total_points, 45, "no first-order bonus on the fourth order");
    let old = admin.simulate_order(simulate(0, Some(before_rules))).await.unwrap().into_inner();
    assert_eq!(old.rules_version, 0, "an order placed before any rules earns nothing");

    let mut bad_order = simulate(0, None);
    bad_order.order.as_mut().unwrap().lines[0].quantity = 0;
    let status = admin.simulate_order(bad_order).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "order.lines[0].quantity");

    // Everything is in the log: a SIGKILL loses none of it.
    server.kill_9();
    let server = TallyServer::start(dir.path(), &[]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let versions = admin
        .list_rule_versions(ListRuleVersionsRequest { tenant_id: "acme".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 1);
    assert_eq!((versions[0].version, versions[0].published_by.as_str(), versions[0].rules_json.as_str()), (1, "ops", RULES_V1));
    let program = admin.get_program(GetProgramRequest { tenant_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!((program.utc_offset_minutes, program.rules_version), (60, 1));
}

/// Issue 15, item 11: rules documents up to the limit can be published, and every version can be listed
/// however large they are (a page stops before the reply's limit; it once broke after ~9 large ones).
#[tokio::test]
async fn large_rule_versions_are_published_and_listed_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let create = CreateProgramRequest {
        tenant_id: "big".into(),
        idempotency_key: "create".into(),
        name: "Big".into(),
        utc_offset_minutes: 0,
        return_policy: ReturnPolicy::AllowNegative.into(),
    };
    admin.create_program(create).await.unwrap();
    // A thousand SKUs of 55 characters: about 58 KB, just inside the 60 KiB limit.
    let skus: Vec<String> = (0..1_000).map(|i| format!("\"sku-{i:0>50}\"")).collect();
    let rules = format!(
        r#"[{{"id":"skus","conditions":{{"type":"sku","value":[{}]}},"actions":[{{"type":"points","amount":1}}]}}]"#,
        skus.join(",")
    );
    assert!(rules.len() > 55_000 && rules.len() <= 60 * 1024, "{}", rules.len());
    for n in 0..12 {
        let publish = PublishRulesRequest {
            tenant_id: "big".into(),
            idempotency_key: format!("v{n}"),
            rules_json: rules.clone(),
            published_by: "ops".into(),
        };
        admin.publish_rules(publish).await.unwrap();
    }
    let (mut listed, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let request = ListRuleVersionsRequest { tenant_id: "big".into(), page_size: 0, page_token: token };
        let page = admin.list_rule_versions(request).await.unwrap().into_inner();
        listed.extend(page.versions.iter().map(|v| v.version));
        pages += 1;
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(listed, (1..=12).collect::<Vec<u32>>());
    assert!(pages > 1, "twelve 58 KB versions do not fit one reply");
    let two = admin.list_rule_versions(ListRuleVersionsRequest { tenant_id: "big".into(), page_size: 2, page_token: String::new() });
    let two = two.await.unwrap().into_inner();
    assert_eq!((two.versions.len(), two.next_page_token.as_str()), (2, "v3"));
}
