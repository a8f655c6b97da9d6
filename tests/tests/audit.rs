//! Issue 19: `AuditService` and `tally audit` against the real `tally` process. Every answer a change
//! gave (its wallet, version and position) is what a replay as of that change's recorded instant, or
//! its log position, gives back; the instant before it gives the state before it; the events between two
//! answers are the changes' own; the program's rules in force follow their publication.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::audit_service_client::AuditServiceClient;
use tally_proto::v1::keys_service_client::KeysServiceClient;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{
    AuthorizeRedemptionRequest, CreateKeyRequest, EarnRequest, EnrollRequest, ListRuleVersionsRequest, ProgramAsOfRequest,
    PublishRulesRequest, RedeemRequest, Role, WalletAsOfRequest, WalletAsOfResponse, WalletChangesRequest, WalletMutation,
    program_as_of_request, wallet_as_of_request,
};
use tally_tests::{Authed, Key, TallyServer};
use tonic::Code;
use tonic_types::StatusExt;

fn ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos / 1_000_000)
}

fn at(ms: i64) -> Option<wallet_as_of_request::AsOf> {
    Some(wallet_as_of_request::AsOf::At(prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }))
}

fn iso(ms: i64) -> String {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }.to_string()
}

async fn as_of(audit: &mut AuditServiceClient<Authed>, as_of: Option<wallet_as_of_request::AsOf>) -> WalletAsOfResponse {
    let request = WalletAsOfRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), as_of };
    audit.wallet_as_of(request).await.unwrap().into_inner()
}

/// The instant a change was recorded at (all its events share it).
fn recorded_ms(m: &WalletMutation) -> i64 {
    ms(m.transactions.last().unwrap().recorded_at.as_ref().unwrap())
}

async fn auditor_key(server: &TallyServer) -> Key {
    let mut keys = KeysServiceClient::new(server.channel().await);
    let request =
        CreateKeyRequest { tenant_id: "demo".into(), roles: vec![Role::Auditor as i32], label: "audit".into(), ..Default::default() };
    Key::new(&keys.create_key(request).await.unwrap().into_inner().token)
}

/// Makes a wallet's history: enrolment, earns, a hold, a redemption, a few milliseconds apart.
async fn history(wallets: &mut WalletServiceClient<Authed>) -> Vec<WalletMutation> {
    let (tenant_id, wallet_id) = (String::from("demo"), String::from("c-1"));
    let mut changes = Vec::new();
    let enroll = EnrollRequest {
        tenant_id: tenant_id.clone(),
        wallet_id: wallet_id.clone(),
        idempotency_key: "e".into(),
        customer_ref: "cust-1".into(),
        ..Default::default()
    };
    changes.push(wallets.enroll(enroll).await.unwrap().into_inner());
    for (key, points) in [("o-1", 100), ("o-2", 50)] {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let earn = EarnRequest {
            tenant_id: tenant_id.clone(),
            wallet_id: wallet_id.clone(),
            idempotency_key: key.into(),
            points,
            source_ref: key.into(),
            ..Default::default()
        };
        changes.push(wallets.earn(earn).await.unwrap().into_inner());
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let hold = AuthorizeRedemptionRequest {
        tenant_id: tenant_id.clone(),
        wallet_id: wallet_id.clone(),
        hold_id: "pos-1".into(),
        points: 30,
        reward_ref: "coffee".into(),
        timeout_seconds: 3600,
    };
    changes.push(wallets.authorize_redemption(hold).await.unwrap().into_inner());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let redeem = RedeemRequest {
        tenant_id: tenant_id.clone(),
        wallet_id: wallet_id.clone(),
        idempotency_key: "r-1".into(),
        points: 20,
        reward_ref: "mug".into(),
    };
    changes.push(wallets.redeem(redeem).await.unwrap().into_inner());
    // A hold that times out a second later: as of its instant it still counts, as of now it would not.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let short = AuthorizeRedemptionRequest {
        tenant_id,
        wallet_id,
        hold_id: "pos-2".into(),
        points: 7,
        reward_ref: "tea".into(),
        timeout_seconds: 1,
    };
    changes.push(wallets.authorize_redemption(short).await.unwrap().into_inner());
    // Instants are answered once settled (12 s); the test asks up to 1.5 s after the last change.
    tokio::time::sleep(Duration::from_millis(13_800)).await;
    changes
}

#[tokio::test]
async fn a_wallet_as_of_each_change_is_what_the_change_answered_and_the_changes_between_are_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut wallets = server.client().await;
    let changes = history(&mut wallets).await;
    let mut audit = AuditServiceClient::new(server.channel_with(auditor_key(&server).await).await);

    let before = as_of(&mut audit, at(recorded_ms(&changes[0]) - 1)).await;
    assert!(before.stopped_at.is_none(), "nothing before the enrolment: {before:?}");
    assert_eq!(before.wallet.as_ref().map(|w| (w.status, w.version, w.balance)), Some((0, 0, 0)));

    for (i, change) in changes.iter().enumerate() {
        let answered = change.wallet.as_ref().unwrap();
        for reply in [
            as_of(&mut audit, at(recorded_ms(change))).await,
            as_of(&mut audit, Some(wallet_as_of_request::AsOf::Position(change.position))).await,
        ] {
            // Time-dependent figures are computed at the instant (as of a position: the last event's).
            assert_eq!(reply.evaluated_at.as_ref().map(ms), Some(recorded_ms(change)), "change {i}");
            assert_eq!(reply.rules_version, 0, "no rules were published");
            let stopped = reply.stopped_at.as_ref().unwrap();
            assert_eq!((stopped.stream_version, stopped.global_position), (change.version, change.position), "change {i}");
            let w = reply.wallet.as_ref().unwrap();
            assert_eq!(
                (w.balance, w.held_points, w.available_points, w.lifetime_earned, w.lifetime_redeemed, w.version, w.customer_ref.as_str()),
                (
                    answered.balance,
                    answered.held_points,
                    answered.available_points,
                    answered.lifetime_earned,
                    answered.lifetime_redeemed,
                    answered.version,
                    answered.customer_ref.as_str()
                ),
                "change {i}"
            );
            // Where the points sit adds up to the balance.
            let in_lots: i64 =
                reply.lots.iter().map(|l| l.points + l.held).sum::<i64>() + reply.pending.iter().map(|p| p.points).sum::<i64>();
            assert_eq!(in_lots - reply.debt, w.balance, "change {i}: {reply:?}");
            assert_eq!(reply.holds.iter().map(|h| h.points).sum::<i64>(), w.held_points, "change {i}");
        }
        // A millisecond before it, the wallet is as the change before left it.
        if i > 0 && recorded_ms(&changes[i - 1]) < recorded_ms(change) {
            let earlier = as_of(&mut audit, at(recorded_ms(change) - 1)).await;
            assert_eq!(earlier.wallet.unwrap().version, changes[i - 1].version, "just before change {i}");
        }
    }
    let hold = as_of(&mut audit, at(recorded_ms(&changes[3]))).await;
    assert_eq!(
        hold.holds.iter().map(|h| (h.hold_id.as_str(), h.points, h.reward_ref.as_str())).collect::<Vec<_>>(),
        [("pos-1", 30, "coffee")]
    );
    let last = as_of(&mut audit, at(recorded_ms(&changes[5]))).await;
    assert_eq!(last.holds.iter().map(|h| h.hold_id.as_str()).collect::<Vec<_>>(), ["pos-1", "pos-2"], "by hold id");
    assert_eq!(last.wallet.as_ref().unwrap().available_points, 130 - 30 - 7, "the short hold still counts as of its instant");
    // The timers released it when it timed out; as of then, the log says so.
    let later = as_of(&mut audit, at(recorded_ms(&changes[5]) + 1_500)).await;
    assert_eq!(later.wallet.as_ref().unwrap().available_points, 130 - 30);
    assert_eq!(later.stopped_at.as_ref().map(|s| s.event_type.as_str()), Some("tally.v1.HoldReleased"));

    // The events between the enrolment and the redemption, a page of one at a time, are the changes' own.
    let (mut after_version, mut seen) = (changes[0].version, Vec::new());
    loop {
        let request = WalletChangesRequest {
            tenant_id: "demo".into(),
            wallet_id: "c-1".into(),
            after_version,
            up_to_version: changes[4].version,
            page_size: 1,
        };
        let page = audit.wallet_changes(request).await.unwrap().into_inner();
        assert!(page.transactions.len() <= 1);
        seen.extend(page.transactions);
        if page.next_after_version == 0 {
            break;
        }
        after_version = page.next_after_version;
    }
    let expected: Vec<_> = changes[1..5].iter().flat_map(|c| c.transactions.clone()).collect();
    assert_eq!(seen, expected);
    let page = |after_version, up_to_version| WalletChangesRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-1".into(),
        after_version,
        up_to_version,
        page_size: 0,
    };
    let everything = audit.wallet_changes(page(0, 0)).await.unwrap().into_inner();
    let head = later.stopped_at.as_ref().unwrap().stream_version;
    assert_eq!((everything.transactions.len() as u64, everything.next_after_version), (head, 0), "up_to 0: to the last event");
    let first_two = audit.wallet_changes(page(0, 2)).await.unwrap().into_inner();
    assert_eq!(first_two.transactions.iter().map(|t| t.version).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(first_two.next_after_version, 0);
    for after in [head, head + 1, u64::MAX] {
        let none = audit.wallet_changes(page(after, 0)).await.unwrap().into_inner();
        assert_eq!((none.transactions.len(), none.next_after_version), (0, 0), "after {after}");
    }

    // Precise refusals.
    let field = |status: tonic::Status| (status.code(), status.get_details_bad_request().map(|b| b.field_violations[0].field.clone()));
    let missing = WalletAsOfRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), as_of: None };
    assert_eq!(field(audit.wallet_as_of(missing).await.unwrap_err()), (Code::InvalidArgument, Some("as_of".into())));
    let bad_time = prost_types::Timestamp { seconds: 1, nanos: 2_000_000_000 };
    let bad =
        WalletAsOfRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), as_of: Some(wallet_as_of_request::AsOf::At(bad_time)) };
    assert_eq!(field(audit.wallet_as_of(bad).await.unwrap_err()), (Code::InvalidArgument, Some("at".into())));
    let nobody = WalletAsOfRequest { tenant_id: "demo".into(), wallet_id: "nobody".into(), as_of: at(recorded_ms(&changes[4])) };
    assert_eq!(audit.wallet_as_of(nobody).await.unwrap_err().code(), Code::NotFound);
    let unsettled = WalletAsOfRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-1".into(),
        as_of: at(i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap() - 8_000),
    };
    assert_eq!(field(audit.wallet_as_of(unsettled).await.unwrap_err()), (Code::InvalidArgument, Some("at".into())), "not settled yet");
    let beyond = WalletAsOfRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-1".into(),
        as_of: Some(wallet_as_of_request::AsOf::Position(later.stopped_at.as_ref().unwrap().global_position + 1_000)),
    };
    assert_eq!(field(audit.wallet_as_of(beyond).await.unwrap_err()), (Code::InvalidArgument, Some("position".into())));
    let bad_id = WalletAsOfRequest { tenant_id: "demo".into(), wallet_id: "no/pe".into(), as_of: at(0) };
    assert_eq!(field(audit.wallet_as_of(bad_id).await.unwrap_err()), (Code::InvalidArgument, Some("wallet_id".into())));
    let backwards =
        WalletChangesRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), after_version: 3, up_to_version: 2, page_size: 0 };
    assert_eq!(field(audit.wallet_changes(backwards).await.unwrap_err()), (Code::InvalidArgument, Some("up_to_version".into())));
    let no_end = tally_proto::v1::ExportLedgerRequest { tenant_id: "demo".into(), from: None, end: None };
    assert_eq!(field(audit.export_ledger(no_end).await.unwrap_err()), (Code::InvalidArgument, Some("to".into())));
    let backwards = tally_proto::v1::ExportLedgerRequest {
        tenant_id: "demo".into(),
        from: Some(prost_types::Timestamp { seconds: 2_000, nanos: 0 }),
        end: Some(tally_proto::v1::export_ledger_request::End::To(prost_types::Timestamp { seconds: 1_000, nanos: 0 })),
    };
    assert_eq!(field(audit.export_ledger(backwards).await.unwrap_err()), (Code::InvalidArgument, Some("from".into())));
    let beyond = tally_proto::v1::ExportLedgerRequest {
        tenant_id: "demo".into(),
        from: None,
        end: Some(tally_proto::v1::export_ledger_request::End::UpToPosition(1_000_000)),
    };
    assert_eq!(field(audit.export_ledger(beyond).await.unwrap_err()), (Code::InvalidArgument, Some("up_to_position".into())));
    let backwards = tally_proto::v1::ExportLedgerRequest {
        tenant_id: "demo".into(),
        from: Some(prost_types::Timestamp { seconds: 2_000, nanos: 0 }),
        end: Some(tally_proto::v1::export_ledger_request::End::To(prost_types::Timestamp { seconds: 1_000, nanos: 0 })),
    };
    assert_eq!(field(audit.export_ledger(backwards).await.unwrap_err()), (Code::InvalidArgument, Some("from".into())));
    let mut platform = AuditServiceClient::new(server.channel().await);
    let unknown = WalletAsOfRequest { tenant_id: "nope".into(), wallet_id: "c-1".into(), as_of: at(0) };
    assert_eq!(platform.wallet_as_of(unknown).await.unwrap_err().code(), Code::NotFound);
    // A point-of-sale key reads wallets, but not their past.
    let pos = {
        let mut keys = KeysServiceClient::new(server.channel().await);
        let request =
            CreateKeyRequest { tenant_id: "demo".into(), roles: vec![Role::Pos as i32], label: "till".into(), ..Default::default() };
        Key::new(&keys.create_key(request).await.unwrap().into_inner().token)
    };
    let mut till = AuditServiceClient::new(server.channel_with(pos).await);
    let request = WalletAsOfRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), as_of: at(recorded_ms(&changes[4])) };
    assert_eq!(till.wallet_as_of(request).await.unwrap_err().code(), Code::PermissionDenied);

    // The command line: the wallet between the first earn and the redemption, as JSON and as text.
    let (from, to) = (iso(recorded_ms(&changes[1])), iso(recorded_ms(&changes[4])));
    let run = |from: &str, to: &str, json: bool| {
        let mut command = std::process::Command::new(tally_tests::tally_binary());
        command.args(["audit", "replay", "--tenant", "demo", "--wallet", "c-1", "--as-of", from, "--diff", to, "--server", &server.url]);
        command.env("TALLY_API_KEY", server.platform_key());
        if json {
            command.arg("--json");
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let diff: serde_json::Value = serde_json::from_str(&run(&from, &to, true)).unwrap();
    assert_eq!(diff["from"]["wallet"]["balance"], 100);
    assert_eq!(diff["to"]["wallet"]["balance"], 130);
    assert_eq!(diff["changes"].as_array().unwrap().len(), 3, "{diff}");
    let balance = diff["differences"].as_array().unwrap().iter().find(|d| d["field"] == "balance").unwrap().clone();
    assert_eq!((balance["before"].clone(), balance["after"].clone()), (100.into(), 130.into()));
    // The second instant may come first: the earlier is "from".
    let reversed: serde_json::Value = serde_json::from_str(&run(&to, &from, true)).unwrap();
    assert_eq!((reversed["from"]["wallet"]["balance"].clone(), reversed["to"]["wallet"]["balance"].clone()), (100.into(), 130.into()));
    assert_eq!(reversed["changes"], diff["changes"]);
    let text = run(&from, &to, false);
    let changed = text.lines().any(|l| l.trim_start().starts_with("balance ") && l.ends_with("100 -> 130"));
    assert!(text.contains("3 events after it") && changed, "{text}");

    // The ledger for finance: the movements, the wallet's balances, a reconciliation that balances.
    let export = |format: &str| {
        let output = std::process::Command::new(tally_tests::tally_binary())
            .args([
                "audit",
                "export",
                "--tenant",
                "demo",
                "--to",
                &iso(recorded_ms(&changes[5]) + 1),
                "--format",
                format,
                "--server",
                &server.url,
            ])
            .env("TALLY_API_KEY", server.platform_key())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        (String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
    };
    let (jsonl, summary) = export("jsonl");
    let records: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let movements: Vec<(&str, i64)> = records
        .iter()
        .filter(|r| r["record"] == "movement")
        .map(|r| (r["kind"].as_str().unwrap(), r["points"].as_i64().unwrap()))
        .collect();
    assert_eq!(movements, [("earn", 100), ("earn", 50), ("redeem", -20)], "{jsonl}");
    let lots: Vec<i64> = records
        .iter()
        .filter(|r| r["record"] == "movement")
        .map(|r| r["lots"].as_array().unwrap().iter().map(|l| l["points"].as_i64().unwrap()).sum())
        .collect();
    assert_eq!(lots, [100, 50, 20], "each movement names the lots its points went into or came from: {jsonl}");
    let wallet = records.iter().find(|r| r["record"] == "wallet").unwrap();
    assert_eq!(
        (wallet["wallet_id"].clone(), wallet["opening_balance"].clone(), wallet["closing_balance"].clone()),
        ("c-1".into(), 0.into(), 130.into())
    );
    let reconciliation = records.last().unwrap();
    assert_eq!((reconciliation["record"].clone(), reconciliation["closing_liability"].clone()), ("reconciliation".into(), 130.into()));
    assert!(summary.contains("3 movements of 1 wallets") && summary.contains("the books balance"), "{summary}");
    let (csv, _) = export("csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("record,position,recorded_at,wallet_id")
            && lines[0].ends_with(",lots,expires_at")
            && lines[1].starts_with("movement,"),
        "{csv}"
    );
    assert!(lines.iter().any(|l| l.starts_with("wallet,c-1,0,130")) && lines.last().unwrap().starts_with("reconciliation,"), "{csv}");
}

#[tokio::test]
async fn a_program_as_of_an_instant_has_the_rules_then_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mut wallets = server.client().await;
    // A change of a wallet after each publication: its position is a point in the log after it.
    let mut positions = Vec::new();
    for (key, points) in [("v1", 1), ("v2", 2)] {
        let rules_json =
            format!(r#"[{{"id":"base","actions":[{{"type":"points_per_currency_unit","points":{points},"unit_minor":100}}]}}]"#);
        let publish = PublishRulesRequest { tenant_id: "demo".into(), idempotency_key: key.into(), rules_json, published_by: "ops".into() };
        admin.publish_rules(publish).await.unwrap();
        let enroll =
            EnrollRequest { tenant_id: "demo".into(), wallet_id: format!("c-{key}"), idempotency_key: "e".into(), ..Default::default() };
        positions.push(wallets.enroll(enroll).await.unwrap().into_inner().position);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(12_200)).await;
    let versions = admin.list_rule_versions(ListRuleVersionsRequest { tenant_id: "demo".into(), ..Default::default() }).await.unwrap();
    let versions = versions.into_inner().versions;
    let published: Vec<(u32, i64)> = versions.iter().map(|v| (v.version, ms(v.effective_from.as_ref().unwrap()))).collect();
    let (first, second) = (published[published.len() - 2], published[published.len() - 1]);
    let mut audit = AuditServiceClient::new(server.channel_with(auditor_key(&server).await).await);
    let mut in_force = async |instant: i64| {
        let as_of = program_as_of_request::AsOf::At(prost_types::Timestamp {
            seconds: instant.div_euclid(1000),
            nanos: (instant.rem_euclid(1000) * 1_000_000) as i32,
        });
        let reply = audit.program_as_of(ProgramAsOfRequest { tenant_id: "demo".into(), as_of: Some(as_of) }).await.unwrap().into_inner();
        let program = reply.program.unwrap().rules_version;
        assert_eq!(program, reply.rules_in_force.as_ref().map_or(0, |r| r.version));
        (program, reply.rules_in_force.map(|r| r.rules_json).unwrap_or_default())
    };
    let (version, json) = in_force(first.1).await;
    assert_eq!(version, first.0);
    assert!(json.contains(r#""points":1"#), "{json}");
    if first.1 < second.1 - 1 {
        assert_eq!(in_force(second.1 - 1).await.0, first.0);
    }
    let (version, json) = in_force(second.1).await;
    assert_eq!(version, second.0);
    assert!(json.contains(r#""points":2"#), "{json}");
    assert_eq!(in_force(0).await, (0, String::new()), "nothing was in force in 1970");

    // As of a log position: the program, and a wallet's rules in force, as they were there.
    for (position, version) in positions.iter().zip([first.0, second.0]) {
        let as_of = Some(program_as_of_request::AsOf::Position(*position));
        let reply = audit.program_as_of(ProgramAsOfRequest { tenant_id: "demo".into(), as_of }).await.unwrap().into_inner();
        assert_eq!(reply.program.unwrap().rules_version, version, "as of position {position}");
        let wallet_id = format!("c-v{}", if version == first.0 { 1 } else { 2 });
        let as_of = Some(wallet_as_of_request::AsOf::Position(*position));
        let wallet = audit.wallet_as_of(WalletAsOfRequest { tenant_id: "demo".into(), wallet_id, as_of }).await.unwrap().into_inner();
        assert_eq!(wallet.rules_version, version, "the wallet as of position {position}");
    }

    // `tally audit program` says the same.
    let output =
        server.cli().args(["audit", "program", "--tenant", "demo", "--as-of", &iso(first.1), "--server", &server.url]).output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success() && text.contains(&format!("rules version {} in force", first.0)), "{text}");
}

/// Issue 19 item 2: a checkpoint signed with a key held outside the log proves the log up to its position
/// is the one signed — even against a log rewritten with every link recomputed (which `verify` alone
/// finds intact), or one whose last events were cut off.
#[tokio::test]
async fn a_signed_checkpoint_catches_a_log_rewritten_with_its_links_recomputed() {
    use tally_engine::store::{EmbeddedStore, EventStore, ExpectedVersion, log_identity};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = EmbeddedStore::open(&data).unwrap();
        log_identity(&store, 1).await.unwrap();
        for v in 0..4 {
            for name in ["t/wallet/a", "t/wallet/b"] {
                let event = tally_engine::store::conformance::event(&format!("{name}-{v}"));
                store.append(&tally_engine::store::conformance::stream(name), ExpectedVersion::Exact(v), vec![event]).await.unwrap();
            }
        }
        store.close().await;
    }
    let tally = |args: &[&str]| {
        let output = std::process::Command::new(tally_tests::tally_binary()).args(args).output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr))
    };
    let store_url = |dir: &std::path::Path| format!("file://{}", dir.display());
    let (key, checkpoint) = (dir.path().join("signing.key"), dir.path().join("checkpoint.json"));
    let (ok, out) = tally(&["audit", "keygen", "--out", key.to_str().unwrap()]);
    assert!(ok, "{out}");
    let public = out.lines().next().unwrap().strip_prefix("public key: ").unwrap().to_owned();
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let (ok, out) = tally(&[
        "audit",
        "checkpoint",
        "--store",
        &store_url(&data),
        "--key",
        key.to_str().unwrap(),
        "--out",
        checkpoint.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("signed the log up to position 9"), "{out}");
    let verify = |dir: &std::path::Path, public: &str| {
        tally(&["audit", "verify", "--store", &store_url(dir), "--checkpoint", checkpoint.to_str().unwrap(), "--public-key", public])
    };
    let (ok, out) = verify(&data, &public);
    assert!(ok && out.contains("matches the checkpoint"), "{out}");

    // Rewritten: the same events, one payload changed, re-appended in order, so every link is recomputed.
    let events = {
        let store = EmbeddedStore::open(&data).unwrap();
        let events = store.read_all(1, 100).await.unwrap();
        store.close().await;
        events
    };
    let rewrite = |to: std::path::PathBuf, keep: usize, forge: Option<u64>| {
        let events = events.clone();
        async move {
            let store = EmbeddedStore::open(&to).unwrap();
            for mut event in events.into_iter().take(keep) {
                if Some(event.global_position) == forge {
                    event.data.payload = b"forged".to_vec();
                }
                store.append(&event.stream_id, ExpectedVersion::Exact(event.stream_version - 1), vec![event.data]).await.unwrap();
            }
            store.close().await;
        }
    };
    let forged = dir.path().join("forged");
    rewrite(forged.clone(), events.len(), Some(4)).await;
    let (ok, out) = tally(&["audit", "verify", "--store", &store_url(&forged)]);
    assert!(ok && out.contains("is intact"), "its links alone check out: {out}");
    let (ok, out) = verify(&forged, &public);
    assert!(!ok && out.contains("BROKEN: up to position 9 it is not the log signed"), "{out}");
    // Cut short: the last two events gone.
    let short = dir.path().join("short");
    rewrite(short.clone(), events.len() - 2, None).await;
    let (ok, out) = verify(&short, &public);
    assert!(!ok && out.contains("BROKEN: it ends at position 7, before the checkpoint"), "{out}");
    // A key the auditor does not hold proves nothing.
    let (ok, out) = tally(&["audit", "keygen", "--out", dir.path().join("other.key").to_str().unwrap()]);
    assert!(ok);
    let other = out.lines().next().unwrap().strip_prefix("public key: ").unwrap().to_owned();
    let (ok, out) = verify(&data, &other);
    assert!(!ok && out.contains("does not verify with the public key given"), "{out}");
    // Events after the checkpoint leave it valid: the log up to its position is unchanged.
    {
        let store = EmbeddedStore::open(&data).unwrap();
        let event = tally_engine::store::conformance::event("later");
        store.append(&tally_engine::store::conformance::stream("t/wallet/a"), ExpectedVersion::Exact(4), vec![event]).await.unwrap();
        store.close().await;
    }
    let (ok, out) = verify(&data, &public);
    assert!(ok && out.contains("matches the checkpoint"), "{out}");
}

/// Issue 19: `AuditService.VerifyLog` checks the log where it lives, while the server runs: a wallet's
/// stream chain for its tenant's auditor, the whole log for a platform key; an `UPDATE` of a payload in
/// PostgreSQL behind the server's back is named by position, stream and version.
#[tokio::test]
async fn verify_log_checks_the_running_servers_log_and_names_a_payload_changed_behind_its_back() {
    let database = tally_tests::TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = TallyServer::start(dir.path(), &["--store", &database.postgres_url]);
    let mut wallets = server.client().await;
    let changes = history_of(&mut wallets, 3).await;
    let verify = |wallet: &str| tally_proto::v1::VerifyLogRequest { tenant_id: "demo".into(), wallet_id: wallet.into() };
    let mut platform = AuditServiceClient::new(server.channel().await);
    let whole = platform.verify_log(verify("")).await.unwrap().into_inner();
    assert!(whole.intact && whole.broken.is_none(), "{whole:?}");
    assert_eq!((whole.events_checked, whole.head_position, whole.head_hash.len()), (whole.head_position, whole.head_position, 64));
    assert!(whole.head_position >= changes.last().unwrap().position);
    let mut auditor = AuditServiceClient::new(server.channel_with(auditor_key(&server).await).await);
    let own = auditor.verify_log(verify("c-1")).await.unwrap().into_inner();
    let last = changes.last().unwrap();
    assert_eq!((own.intact, own.events_checked, own.head_position), (true, last.version, last.position), "{own:?}");
    let refused = auditor.verify_log(verify("")).await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.get_details_bad_request().map(|b| b.field_violations[0].field.clone())),
        (Code::InvalidArgument, Some("wallet_id".into())),
        "the whole log holds every tenant's events"
    );

    let (sql, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let forged = changes[1].position;
    sql.execute("UPDATE tally_events SET payload = 'forged' WHERE global_position = $1", &[&i64::try_from(forged).unwrap()]).await.unwrap();
    for (who, reply) in [("platform", platform.verify_log(verify("")).await), ("auditor", auditor.verify_log(verify("c-1")).await)] {
        let reply = reply.unwrap().into_inner();
        assert!(!reply.intact, "{who}: {reply:?}");
        let broken = reply.broken.expect("the broken link is named");
        assert_eq!((broken.position, broken.stream.as_str(), broken.stream_version), (forged, "demo/wallet/c-1", 2), "{who}: {broken:?}");
    }
    server.terminate();
}

/// An enrolment and `earns` earns of wallet c-1.
async fn history_of(wallets: &mut WalletServiceClient<Authed>, earns: usize) -> Vec<WalletMutation> {
    let enroll = EnrollRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-1".into(),
        idempotency_key: "e".into(),
        customer_ref: "cust-1".into(),
        ..Default::default()
    };
    let mut changes = vec![wallets.enroll(enroll).await.unwrap().into_inner()];
    for n in 0..earns {
        let earn = EarnRequest {
            tenant_id: "demo".into(),
            wallet_id: "c-1".into(),
            idempotency_key: format!("o-{n}"),
            points: 10,
            source_ref: format!("o-{n}"),
            ..Default::default()
        };
        changes.push(wallets.earn(earn).await.unwrap().into_inner());
    }
    changes
}
