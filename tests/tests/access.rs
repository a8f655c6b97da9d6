//! Issue 16: who may call what, against the real `tally` process. The expectations come from the README's
//! table "Who may call what", so the documentation and the server cannot drift apart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_proto::v1::keys_service_client::KeysServiceClient;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{CreateKeyRequest, EarnRequest, EnrollRequest, GetWalletRequest, ListKeysRequest, RevokeKeyRequest, Role};
use tally_tests::{Key, TallyServer, TestDatabase};
use tonic::Code;

/// The README's table: each RPC (`package.Service/Method`) and the roles with a ✓.
fn readme_table() -> BTreeMap<String, Vec<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut lines = readme.lines().skip_while(|l| !l.starts_with("| RPC | pos |"));
    let header: Vec<String> = lines.next().expect("the README has the table").split('|').map(|c| c.trim().to_owned()).collect();
    let mut table = BTreeMap::new();
    for line in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let roles = (2..header.len() - 1).filter(|&i| cells[i] == "✓").map(|i| header[i].clone()).collect();
        table.insert(format!("tally.v1.{}", cells[1].replacen('.', "/", 1)), roles);
    }
    table
}

/// An encoded request whose field 1 is `tenant` (every request's `tenant_id` is field 1, but
/// CreateKey's, which is field 1 too, and the few without a tenant).
fn request(tenant: &str) -> Vec<u8> {
    let mut body = vec![0x0a, u8::try_from(tenant.len()).unwrap()];
    body.extend_from_slice(tenant.as_bytes());
    body
}

/// RPCs that name no tenant in field 1.
const NO_TENANT: &[&str] =
    &["tally.v1.ProjectionsService/ListProjections", "tally.v1.ProjectionsService/RebuildProjection", "tally.v1.KeysService/RevokeKey"];

async fn create_key(
    keys: &mut KeysServiceClient<tally_tests::Authed>,
    tenant: &str,
    roles: &[Role],
    expires_in: Option<Duration>,
) -> String {
    let expires_at = expires_in.map(|d| prost_types::Timestamp::from(std::time::SystemTime::now() + d));
    let request = CreateKeyRequest {
        tenant_id: tenant.into(),
        roles: roles.iter().map(|r| *r as i32).collect(),
        label: "test".into(),
        expires_at,
        ..Default::default()
    };
    keys.create_key(request).await.unwrap().into_inner().token
}

fn code(result: &Result<(), tonic::Status>) -> Code {
    result.as_ref().err().map_or(Code::Ok, tonic::Status::code)
}

#[tokio::test]
async fn every_rpc_answers_every_role_as_the_readme_says() {
    let table = readme_table();
    assert_eq!(table.len(), 53, "every RPC of the protos is in the README's table");
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &["--tenant", "acme,globex"]);
    // A wallet in the other tenant, so that "it exists" could leak if anything were read first.
    let mut platform = server.client().await;
    let enroll = EnrollRequest { tenant_id: "globex".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
    platform.enroll(enroll).await.unwrap();

    let mut keys = KeysServiceClient::new(server.channel().await);
    let mut principals: Vec<(String, Key)> = Vec::new();
    for (name, role) in [
        ("pos", Role::Pos),
        ("storefront", Role::Storefront),
        ("staff", Role::Staff),
        ("operator", Role::Operator),
        ("auditor", Role::Auditor),
    ] {
        principals.push((name.into(), Key::new(&create_key(&mut keys, "acme", &[role], None).await)));
    }
    principals.push(("platform".into(), Key::new(&server.platform_key())));
    let revoked = create_key(&mut keys, "acme", &[Role::Pos], None).await;
    let revoked_id = revoked.split('_').nth(1).unwrap().to_owned();
    keys.revoke_key(RevokeKeyRequest { key_id: revoked_id, reason: "test".into() }).await.unwrap();
    let expired = create_key(&mut keys, "acme", &[Role::Pos], Some(Duration::from_millis(1_500))).await;
    let mut wrong_secret = server.platform_key();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == '0' { '1' } else { '0' });
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let refused = [
        ("no key", Key::none()),
        ("revoked", Key::new(&revoked)),
        ("expired", Key::new(&expired)),
        ("wrong secret", Key::new(&wrong_secret)),
    ];

    let mut failures = Vec::new();
    let mut calls = 0;
    for (rpc, allowed) in &table {
        for (who, key) in principals.iter().chain(refused.iter().map(|(w, k)| (w.to_string(), k.clone())).collect::<Vec<_>>().iter()) {
            let mut grpc = tonic::client::Grpc::new(server.channel_with(key.clone()).await);
            for tenant in ["acme", "globex"] {
                let got = code(&tally_tests::raw_call(&mut grpc, rpc, request(tenant)).await);
                calls += 1;
                let authenticated = principals.iter().any(|(w, _)| w == who);
                let role_allowed = allowed.contains(who);
                let other_tenant = tenant == "globex" && who != "platform" && !NO_TENANT.contains(&rpc.as_str());
                let ok = match (authenticated, role_allowed, other_tenant) {
                    (false, _, _) => got == Code::Unauthenticated,
                    (true, false, _) | (true, true, true) => got == Code::PermissionDenied,
                    (true, true, false) => !matches!(got, Code::PermissionDenied | Code::Unauthenticated),
                };
                if !ok {
                    failures.push(format!("{rpc} by {who} for {tenant}: {got:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {calls} calls answered against the README's table:\n{}", failures.len(), failures.join("\n"));
    // An RPC the table does not list is for nobody, the platform included.
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    let got = tally_tests::raw_call(&mut grpc, "tally.v1.WalletService/Teleport", request("acme")).await;
    assert_eq!(code(&got), Code::PermissionDenied);
    // Health and reflection need no key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.raw_channel().await);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
}

#[tokio::test]
async fn a_tenant_key_acts_for_its_tenant_only_and_operators_manage_their_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &["--tenant", "acme,globex"]);
    let mut keys = KeysServiceClient::new(server.channel().await);
    let pos = create_key(&mut keys, "acme", &[Role::Pos], None).await;
    let mut till = WalletServiceClient::new(server.channel_with(Key::new(&pos)).await);
    // The tenant may be left out: it comes from the key.
    let enroll = EnrollRequest { wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
    let wallet = till.enroll(enroll).await.unwrap().into_inner().wallet.unwrap();
    assert_eq!(wallet.tenant_id, "acme");
    let earn = EarnRequest {
        tenant_id: "acme".into(),
        wallet_id: "c-1".into(),
        idempotency_key: "o-1".into(),
        points: 10,
        source_ref: "o-1".into(),
        ..Default::default()
    };
    assert_eq!(till.earn(earn).await.unwrap().into_inner().balance, 10);
    let other = GetWalletRequest { tenant_id: "globex".into(), wallet_id: "c-1".into(), ..Default::default() };
    assert_eq!(till.get_wallet(other).await.unwrap_err().code(), Code::PermissionDenied);
    // A platform key must say which tenant.
    let mut platform = server.client().await;
    let unnamed = GetWalletRequest { tenant_id: String::new(), wallet_id: "c-1".into(), ..Default::default() };
    assert_eq!(platform.get_wallet(unnamed).await.unwrap_err().code(), Code::InvalidArgument);

    let operator = create_key(&mut keys, "acme", &[Role::Operator], None).await;
    let mut acme_keys = KeysServiceClient::new(server.channel_with(Key::new(&operator)).await);
    let cashier = create_key(&mut acme_keys, "", &[Role::Pos], None).await;
    assert!(cashier.starts_with("tally_"));
    let listed = acme_keys.list_keys(ListKeysRequest::default()).await.unwrap().into_inner().keys;
    assert_eq!(listed.len(), 3, "the acme keys: pos, operator, the cashier's");
    assert!(listed.iter().all(|k| k.tenant_id == "acme"));
    let platform_key_id = server.platform_key().split('_').nth(1).unwrap().to_owned();
    let revoke = RevokeKeyRequest { key_id: platform_key_id, reason: "takeover".into() };
    assert_eq!(acme_keys.revoke_key(revoke).await.unwrap_err().code(), Code::NotFound, "another scope's key is not there");
    let escalate = CreateKeyRequest { roles: vec![Role::Platform as i32], ..Default::default() };
    assert_eq!(acme_keys.create_key(escalate).await.unwrap_err().code(), Code::PermissionDenied);
    let foreign = CreateKeyRequest { tenant_id: "globex".into(), roles: vec![Role::Pos as i32], ..Default::default() };
    assert_eq!(acme_keys.create_key(foreign).await.unwrap_err().code(), Code::PermissionDenied);
    // Operator keys come from the platform: a stolen one can neither copy itself nor lock others out.
    let copy = CreateKeyRequest { roles: vec![Role::Operator as i32], ..Default::default() };
    assert_eq!(acme_keys.create_key(copy).await.unwrap_err().code(), Code::PermissionDenied);
    let operator_id = operator.split('_').nth(1).unwrap().to_owned();
    let lock_out = RevokeKeyRequest { key_id: operator_id, reason: "takeover".into() };
    assert_eq!(acme_keys.revoke_key(lock_out).await.unwrap_err().code(), Code::NotFound);
    // A key made by an expiring key expires with it at the latest.
    let short = create_key(&mut keys, "acme", &[Role::Operator], Some(Duration::from_secs(3_600))).await;
    let mut short_keys = KeysServiceClient::new(server.channel_with(Key::new(&short)).await);
    let child = short_keys
        .create_key(CreateKeyRequest { roles: vec![Role::Pos as i32], ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    let parent_expiry = keys.list_keys(ListKeysRequest::default()).await.unwrap().into_inner().keys;
    let parent_expiry = parent_expiry.iter().find(|k| short.contains(&k.key_id)).unwrap().expires_at;
    assert_eq!(child.expires_at, parent_expiry, "the child of an expiring key expires with it");
    let listed_by_platform = keys.list_keys(ListKeysRequest::default()).await.unwrap().into_inner().keys;
    assert_eq!(listed_by_platform.len(), 6, "every key, the platform's own included");

    // Revoked on this node: refused at once.
    let cashier_id = cashier.split('_').nth(1).unwrap().to_owned();
    let revoked = acme_keys.revoke_key(RevokeKeyRequest { key_id: cashier_id.clone(), reason: "left".into() }).await.unwrap().into_inner();
    assert!(revoked.revoked_at.is_some());
    let mut gone = WalletServiceClient::new(server.channel_with(Key::new(&cashier)).await);
    let read = GetWalletRequest { tenant_id: "acme".into(), wallet_id: "c-1".into(), ..Default::default() };
    assert_eq!(gone.get_wallet(read).await.unwrap_err().code(), Code::Unauthenticated);

    // Secrets never reach the server's log.
    let log = server.stderr();
    for token in [&pos, &operator, &cashier, &server.platform_key()] {
        let secret = token.rsplit('_').next().unwrap();
        assert!(!log.contains(secret), "a key's secret is in the server's log");
    }
}

/// Two nodes on one PostgreSQL log: a key made on one works on the other, and a key revoked on one stops
/// working on the other, each within the refresh bound (1 s; asserted with room for a slow machine).
#[tokio::test]
async fn a_key_revoked_on_one_node_stops_working_on_another_within_the_bound() {
    let database = TestDatabase::create().await;
    let store = format!("--store={}", database.postgres_url);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TallyServer::start(dir_a.path(), &[&store]);
    let b = TallyServer::start(dir_b.path(), &[&store]);
    assert!(!dir_b.path().join("platform.key").exists(), "the second node finds the log's keys and makes none");
    let mut keys = KeysServiceClient::new(a.channel().await);
    let token = create_key(&mut keys, "demo", &[Role::Auditor], None).await;
    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
    WalletServiceClient::new(a.channel().await).enroll(enroll).await.unwrap();
    let mut on_b = WalletServiceClient::new(b.channel_with(Key::new(&token)).await);
    let read = GetWalletRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), ..Default::default() };
    let until = |want: Code| {
        let mut on_b = on_b.clone();
        let read = read.clone();
        async move {
            let started = Instant::now();
            loop {
                let got = on_b.get_wallet(read.clone()).await.map_or_else(|s| s.code(), |_| Code::Ok);
                if got == want || started.elapsed() > Duration::from_secs(10) {
                    return (got, started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (got, took) = until(Code::Ok).await;
    assert_eq!(got, Code::Ok);
    assert!(took < Duration::from_secs(5), "a new key worked on the other node after {took:?}");
    let key_id = token.split('_').nth(1).unwrap().to_owned();
    keys.revoke_key(RevokeKeyRequest { key_id, reason: "test".into() }).await.unwrap();
    let (got, took) = until(Code::Unauthenticated).await;
    assert_eq!(got, Code::Unauthenticated);
    assert!(took < Duration::from_secs(5), "a revoked key still worked on the other node after {took:?}");
    eprintln!("revocation reached the other node in {took:?}");
    assert_eq!(on_b.get_wallet(read).await.unwrap_err().code(), Code::Unauthenticated);
}

/// Every change records the key that made it and its roles, beside the free-text notes; what the engine
/// does by itself records none.
#[tokio::test]
async fn the_log_records_which_key_made_each_change() {
    let database = TestDatabase::create().await;
    let store = format!("--store={}", database.postgres_url);
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[&store, "--tenant", "acme"]);
    let mut keys = KeysServiceClient::new(server.channel().await);
    let pos = create_key(&mut keys, "acme", &[Role::Pos], None).await;
    let operator = create_key(&mut keys, "acme", &[Role::Operator, Role::Auditor], None).await;
    let id = |token: &str| token.split('_').nth(1).unwrap().to_owned();
    let mut till = WalletServiceClient::new(server.channel_with(Key::new(&pos)).await);
    till.enroll(EnrollRequest { wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() }).await.unwrap();
    let earn =
        EarnRequest { wallet_id: "c-1".into(), idempotency_key: "o-1".into(), points: 5, source_ref: "o-1".into(), ..Default::default() };
    till.earn(earn).await.unwrap();
    let mut admin = tally_proto::v1::admin_service_client::AdminServiceClient::new(server.channel_with(Key::new(&operator)).await);
    let rules = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]}]"#;
    let publish = tally_proto::v1::PublishRulesRequest {
        idempotency_key: "r-1".into(),
        rules_json: rules.into(),
        published_by: "says Alice".into(),
        ..Default::default()
    };
    admin.publish_rules(publish).await.unwrap();

    // A staff key's changes name the staff member: in the request (Adjust's staff_ref) or as x-staff-id.
    let staff = create_key(&mut keys, "acme", &[Role::Staff], None).await;
    let mut counter = WalletServiceClient::new(server.channel_with(Key::new(&staff)).await);
    let adjust = |key: &str, staff_ref: &str| tally_proto::v1::AdjustRequest {
        wallet_id: "c-1".into(),
        idempotency_key: key.into(),
        points: 3,
        reason: "goodwill".into(),
        staff_ref: staff_ref.into(),
        ..Default::default()
    };
    let unnamed = counter.adjust(adjust("a-1", "")).await.unwrap_err();
    assert_eq!(unnamed.code(), Code::InvalidArgument);
    assert!(unnamed.message().contains("x-staff-id"), "{}", unnamed.message());
    counter.adjust(adjust("a-2", "s-7")).await.unwrap();
    let mut close = tonic::Request::new(tally_proto::v1::CloseRequest {
        wallet_id: "c-1".into(),
        idempotency_key: "close".into(),
        reason: "customer asked".into(),
        ..Default::default()
    });
    close.metadata_mut().insert("x-staff-id", "s-9".parse().unwrap());
    counter.close(close).await.unwrap();

    let (client, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let staffed = client
        .query("SELECT event_type, staff_id FROM tally_events WHERE principal = $1 ORDER BY global_position", &[&id(&staff)])
        .await
        .unwrap();
    let staffed: Vec<(String, String)> = staffed.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        staffed,
        [("tally.v1.PointsAdjusted".to_owned(), "s-7".to_owned()), ("tally.v1.WalletClosed".to_owned(), "s-9".to_owned())],
        "each change names its staff member"
    );
    let rows = client
        .query("SELECT stream_id, event_type, principal, principal_roles FROM tally_events ORDER BY global_position", &[])
        .await
        .unwrap();
    let recorded: Vec<(String, String, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    let platform = id(&server.platform_key());
    let by = |stream: &str, event_type: &str| {
        recorded
            .iter()
            .find(|r| r.0 == stream && r.1 == event_type)
            .map(|r| (r.2.clone(), r.3.clone()))
            .unwrap_or_else(|| panic!("{stream} {event_type} in {recorded:?}"))
    };
    assert_eq!(by("acme/wallet/c-1", "tally.v1.WalletEnrolledV2"), (id(&pos), "pos".to_owned()));
    assert_eq!(by("acme/wallet/c-1", "tally.v1.PointsEarned"), (id(&pos), "pos".to_owned()));
    assert_eq!(by("acme/program", "tally.v1.RulesPublished"), (id(&operator), "operator,auditor".to_owned()));
    assert_eq!(by("$keys", "tally.v1.KeyCreated"), (String::new(), String::new()), "the first key, made by the start itself");
    let made_by_platform = recorded.iter().filter(|r| r.0 == "$keys" && r.2 == platform).count();
    assert_eq!(made_by_platform, 3, "the three keys the platform key made: {recorded:?}");
    assert_eq!(by("acme/program", "tally.v1.ProgramCreated"), (String::new(), String::new()), "the start's own program");
}

/// Issue 16 item 8: an order's placement time chooses its rules and cap periods, so only a till (which may
/// have been offline) backdates one; a storefront sends orders placed now.
#[tokio::test]
async fn only_a_pos_key_backdates_an_order() {
    use tally_proto::v1::{EarnForOrderRequest, Money, Order, OrderLine};
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &["--tenant", "acme"]);
    let mut admin = tally_proto::v1::admin_service_client::AdminServiceClient::new(server.channel().await);
    let rules = r#"[{"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]}]"#;
    let publish = tally_proto::v1::PublishRulesRequest {
        tenant_id: "acme".into(),
        idempotency_key: "r-1".into(),
        rules_json: rules.into(),
        published_by: "ops".into(),
    };
    admin.publish_rules(publish).await.unwrap();
    let mut keys = KeysServiceClient::new(server.channel().await);
    let (pos, shop) =
        (create_key(&mut keys, "acme", &[Role::Pos], None).await, create_key(&mut keys, "acme", &[Role::Storefront], None).await);
    let mut platform = server.client().await;
    platform
        .enroll(EnrollRequest { tenant_id: "acme".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() })
        .await
        .unwrap();
    let order = |id: &str, ago: Duration| EarnForOrderRequest {
        tenant_id: "acme".into(),
        wallet_id: "c-1".into(),
        order: Some(Order {
            order_id: id.into(),
            total: Some(Money { amount_minor: 1_000, currency: "EUR".into() }),
            lines: vec![OrderLine { sku: "mug".into(), category: "home".into(), quantity: 1, amount_minor: 1_000 }],
            placed_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now() - ago)),
            ..Default::default()
        }),
    };
    let mut shop = WalletServiceClient::new(server.channel_with(Key::new(&shop)).await);
    let refused = shop.earn_for_order(order("web-1", Duration::from_secs(3_600))).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("order.placed_at"), "{}", refused.message());
    // Placed after the rules were published (they choose what an order earns), within the skew allowed.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(shop.earn_for_order(order("web-2", Duration::from_secs(1))).await.unwrap().into_inner().balance, 10);
    let mut till = WalletServiceClient::new(server.channel_with(Key::new(&pos)).await);
    let offline = till.earn_for_order(order("pos-1", Duration::from_secs(2 * 86_400))).await.unwrap().into_inner();
    assert_eq!((offline.balance, offline.transactions.len()), (10, 1), "accepted; no rules were in force two days ago");
}

/// `tally keys` through a server, and on the log itself when the platform key is lost: a new platform key
/// made offline works once the server is back, and the lost one, revoked offline, no longer does.
#[tokio::test]
async fn the_cli_manages_keys_through_the_server_and_on_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TallyServer::start(dir.path(), &[]);
    let run = |command: &mut std::process::Command| {
        let output = command.output().unwrap();
        assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let created =
        run(server.cli().args(["keys", "create", "--tenant", "demo", "--role", "pos", "--label", "till 3", "--server", &server.url]));
    let pos = created.lines().last().unwrap().to_owned();
    assert!(pos.starts_with("tally_") && created.contains("till 3"), "{created}");
    let shown = std::process::Command::new(tally_tests::tally_binary())
        .args(["wallet", "show", "--wallet", "nobody", "--server", &server.url])
        .env("TALLY_API_KEY", &pos)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&shown.stderr).contains("NOT_FOUND"), "the till's key reads wallets: {shown:?}");
    let listed = run(server.cli().args(["keys", "list", "--server", &server.url]));
    assert_eq!(listed.lines().count(), 2, "{listed}");

    let lost = server.platform_key();
    server.terminate();
    let store = format!("file://{}", dir.path().display());
    let made =
        run(std::process::Command::new(tally_tests::tally_binary()).args(["keys", "create", "--role", "platform", "--store", &store]));
    let fresh = made.lines().last().unwrap().to_owned();
    let lost_id = lost.split('_').nth(1).unwrap();
    run(std::process::Command::new(tally_tests::tally_binary()).args(["keys", "revoke", lost_id, "--reason", "lost", "--store", &store]));
    let listed = run(std::process::Command::new(tally_tests::tally_binary()).args(["keys", "list", "--store", &store]));
    assert!(listed.lines().any(|l| l.contains("(platform)") && l.contains("by offline") && !l.contains("REVOKED")), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with(lost_id) && l.contains("REVOKED") && l.contains("by offline")), "{listed}");

    let server = TallyServer::start(dir.path(), &[]);
    let read = GetWalletRequest { tenant_id: "demo".into(), wallet_id: "nobody".into(), ..Default::default() };
    let mut with_fresh = WalletServiceClient::new(server.channel_with(Key::new(&fresh)).await);
    assert_eq!(with_fresh.get_wallet(read.clone()).await.unwrap_err().code(), Code::NotFound);
    let mut with_lost = WalletServiceClient::new(server.channel_with(Key::new(&lost)).await);
    assert_eq!(with_lost.get_wallet(read).await.unwrap_err().code(), Code::Unauthenticated);
}

/// A server run without keys serves every caller as the platform, but makes and revokes no keys: one made
/// there would outlive the experiment.
#[tokio::test]
async fn a_server_without_keys_makes_no_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &["--insecure-no-auth"]);
    assert!(!dir.path().join("platform.key").exists(), "no key is made for a server that checks none");
    let mut anyone = WalletServiceClient::new(server.raw_channel().await);
    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
    anyone.enroll(enroll).await.unwrap();
    let mut keys = KeysServiceClient::new(server.raw_channel().await);
    let request = CreateKeyRequest { roles: vec![Role::Platform as i32], ..Default::default() };
    assert_eq!(keys.create_key(request).await.unwrap_err().code(), Code::FailedPrecondition);
}
