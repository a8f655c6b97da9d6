//! Issue 16 item 7: request rates and quotas against the real `tally` process. A key or tenant over its
//! rate gets RESOURCE_EXHAUSTED with `retry-after` and recovers after waiting; one tenant being throttled
//! throttles no other; a tenant publishes at most 100 rules versions a rolling day; and calls without a
//! valid key cost the server nothing that grows — its memory stays flat and the log is neither read nor
//! written for them.

use std::time::{Duration, Instant};

use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::keys_service_client::KeysServiceClient;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{CreateKeyRequest, EnrollRequest, GetWalletRequest, PublishRulesRequest, Role};
use tally_tests::{Authed, Key, TallyServer, TestDatabase};
use tonic::Code;
use tonic_types::StatusExt;

async fn create_key(server: &TallyServer, tenant: &str) -> String {
    let mut keys = KeysServiceClient::new(server.channel().await);
    let request = CreateKeyRequest { tenant_id: tenant.into(), roles: vec![Role::Pos as i32], label: "till".into(), ..Default::default() };
    keys.create_key(request).await.unwrap().into_inner().token
}

fn key_id(token: &str) -> &str {
    token.split('_').nth(1).unwrap()
}

async fn enroll(server: &TallyServer, tenant: &str, wallet: &str) {
    let request = EnrollRequest { tenant_id: tenant.into(), wallet_id: wallet.into(), idempotency_key: "e".into(), ..Default::default() };
    server.client().await.enroll(request).await.unwrap();
}

fn read(tenant: &str, wallet: &str) -> GetWalletRequest {
    GetWalletRequest { tenant_id: tenant.into(), wallet_id: wallet.into(), ..Default::default() }
}

/// Reads `c-1` until a call is refused; the refusal and the calls answered before it.
async fn until_refused(client: &mut WalletServiceClient<Authed>, tenant: &str) -> (tonic::Status, usize) {
    for answered in 0..1_000 {
        if let Err(status) = client.get_wallet(read(tenant, "c-1")).await {
            return (status, answered);
        }
    }
    panic!("1,000 calls in a row and no refusal");
}

/// The wait a refusal asks for: its `retry-after` (whole seconds) and its `RetryInfo` (exact).
fn retry_after(status: &tonic::Status) -> (u64, Duration) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let seconds = status.metadata().get("retry-after").expect("retry-after metadata").to_str().unwrap().parse().unwrap();
    let exact = status.get_details_retry_info().expect("a RetryInfo detail").retry_delay.expect("a delay");
    (seconds, exact)
}

#[tokio::test]
async fn a_key_over_its_rate_waits_as_told_and_throttles_no_other_key() {
    let dir = tempfile::tempdir().unwrap();
    // 5 calls at once, then one every 200 ms.
    let server = TallyServer::start(dir.path(), &["--tenant", "acme,globex", "--rate-per-key", "5"]);
    for tenant in ["acme", "globex"] {
        enroll(&server, tenant, "c-1").await;
    }
    let till = create_key(&server, "acme").await;
    let mut acme = WalletServiceClient::new(server.channel_with(Key::new(&till)).await);
    let mut acme_other = WalletServiceClient::new(server.channel_with(Key::new(&create_key(&server, "acme").await)).await);
    let mut globex = WalletServiceClient::new(server.channel_with(Key::new(&create_key(&server, "globex").await)).await);

    let started = Instant::now();
    let (refused, answered) = until_refused(&mut acme, "acme").await;
    assert!(answered >= 5, "the burst of 5 is answered first, then refusals; {answered} answered");
    assert!(refused.message().contains(&format!("rate limit of API key {}", key_id(&till))), "{refused:?}");
    let (seconds, exact) = retry_after(&refused);
    assert_eq!(seconds, 1, "retry-after is whole seconds, rounded up");
    assert!(exact > Duration::ZERO && exact <= Duration::from_millis(200), "one call's worth at 5/s: {exact:?}");
    eprintln!("key refused after {answered} calls in {:?}, retry after {exact:?}", started.elapsed());

    // Nobody else is throttled: the tenant's other key, another tenant's key, the platform key.
    acme_other.get_wallet(read("acme", "c-1")).await.unwrap();
    globex.get_wallet(read("globex", "c-1")).await.unwrap();
    server.client().await.get_wallet(read("acme", "c-1")).await.unwrap();

    // Waiting as told is enough.
    tokio::time::sleep(exact).await;
    acme.get_wallet(read("acme", "c-1")).await.unwrap();
}

#[tokio::test]
async fn a_tenant_over_its_rate_refuses_all_its_keys_and_no_other_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &["--tenant", "acme,globex", "--rate-per-tenant", "4:8", "--rate-per-key", "off"]);
    for tenant in ["acme", "globex"] {
        enroll(&server, tenant, "c-1").await;
    }
    let mut first = WalletServiceClient::new(server.channel_with(Key::new(&create_key(&server, "acme").await)).await);
    let mut second = WalletServiceClient::new(server.channel_with(Key::new(&create_key(&server, "acme").await)).await);
    let mut globex = WalletServiceClient::new(server.channel_with(Key::new(&create_key(&server, "globex").await)).await);

    let (refused, answered) = until_refused(&mut first, "acme").await;
    assert!(answered >= 8, "the tenant's burst of 8 comes first; {answered} answered");
    assert!(refused.message().contains("rate limit of tenant acme"), "{refused:?}");
    // The tenant's other key too (within a call or two: the bucket refills a cell every 250 ms).
    let (refused, answered) = until_refused(&mut second, "acme").await;
    assert!(answered <= 2 && refused.message().contains("rate limit of tenant acme"), "{answered} answered, then {refused:?}");
    let (seconds, exact) = retry_after(&refused);
    assert!(seconds == 1 && exact <= Duration::from_millis(250), "{seconds} s, {exact:?}");

    globex.get_wallet(read("globex", "c-1")).await.unwrap();
    // A platform key acting on the tenant counts against no tenant's rate.
    server.client().await.get_wallet(read("acme", "c-1")).await.unwrap();

    tokio::time::sleep(exact).await;
    second.get_wallet(read("acme", "c-1")).await.unwrap();
}

#[tokio::test]
async fn a_tenant_publishes_at_most_a_hundred_rules_versions_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &["--tenant", "acme,globex"]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let publish = |tenant: &str, key: String| PublishRulesRequest {
        tenant_id: tenant.into(),
        idempotency_key: key,
        rules_json: r#"[{"id":"base","actions":[{"type":"points","amount":1}]}]"#.into(),
        published_by: "ops".into(),
    };
    for n in 0..100 {
        admin.publish_rules(publish("acme", format!("v{n}"))).await.unwrap();
    }
    let refused = admin.publish_rules(publish("acme", "v100".into())).await.unwrap_err();
    assert!(refused.message().contains("100 rules versions were published in the last 24 hours"), "{refused:?}");
    let (seconds, exact) = retry_after(&refused);
    assert!(exact > Duration::from_secs(86_000) && exact <= Duration::from_secs(86_400), "a day after the first: {exact:?}");
    assert_eq!(seconds, exact.as_secs() + u64::from(exact.subsec_nanos() > 0));
    // A retry of a version already published is still answered; another tenant is not counted.
    assert_eq!(admin.publish_rules(publish("acme", "v99".into())).await.unwrap().into_inner().rules_version, 100);
    assert_eq!(admin.publish_rules(publish("globex", "v0".into())).await.unwrap().into_inner().rules_version, 1);
}

/// A tenant opens at most `--wallets-max` wallets, counted in the log: across a restart too; an enrolled
/// wallet's retry is still answered and another tenant has its own count.
#[tokio::test]
async fn a_tenant_opens_at_most_its_bound_of_wallets() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--tenant", "acme,globex", "--wallets-max", "2"];
    let mut server = TallyServer::start(dir.path(), &args);
    enroll(&server, "acme", "c-1").await;
    enroll(&server, "acme", "c-2").await;
    let third = || EnrollRequest { tenant_id: "acme".into(), wallet_id: "c-3".into(), idempotency_key: "e".into(), ..Default::default() };
    let refused = server.client().await.enroll(third()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("the tenant has opened 2 wallets, as many as it may"), "{refused:?}");
    assert!(refused.message().contains("--wallets-max"), "says what raises it: {refused:?}");
    let violation = &refused.get_details_quota_failure().expect("a QuotaFailure detail").violations[0];
    assert_eq!(violation.subject, "wallets-per-tenant");
    assert!(refused.metadata().get("retry-after").is_none(), "waiting frees nothing");
    enroll(&server, "acme", "c-1").await;
    enroll(&server, "globex", "c-1").await;
    let missing = server.client().await.get_wallet(read("acme", "c-3")).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "the refused wallet was not opened");

    server.terminate();
    let server = TallyServer::start(dir.path(), &args);
    assert_eq!(server.client().await.enroll(third()).await.unwrap_err().code(), Code::ResourceExhausted, "counted in the log");
    drop(server);
    let raised = TallyServer::start(dir.path(), &["--tenant", "acme,globex", "--wallets-max", "3"]);
    raised.client().await.enroll(third()).await.unwrap();
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/<pid>/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What PostgreSQL has done with the log's table so far: scans, rows read, and the log's head position.
#[derive(Debug, Clone, Copy)]
struct LogActivity {
    scans: i64,
    rows_read: i64,
    head: i64,
}

async fn log_activity(database: &TestDatabase) -> LogActivity {
    let (client, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    // The server's backends report their counters when a transaction ends, at most once a second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    client.batch_execute("SELECT pg_stat_clear_snapshot()").await.unwrap();
    let row = client
        .query_one(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0), coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0), \
                    (SELECT position FROM tally_log_head) \
             FROM pg_stat_user_tables WHERE relname = 'tally_events'",
            &[],
        )
        .await
        .unwrap();
    LogActivity { scans: row.get(0), rows_read: row.get(1), head: row.get(2) }
}

/// `calls` reads of distinct wallets (each would activate a wallet and read its stream if it got in),
/// over `CONNECTIONS` connections with `TASKS` callers each, cycling through `keys`; every answer must be
/// UNAUTHENTICATED. Returns how long they took.
async fn unauthenticated_calls(server: &TallyServer, keys: &[Key], calls: usize, round: usize) -> Duration {
    const CONNECTIONS: usize = 4;
    const TASKS: usize = 16;
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for connection in 0..CONNECTIONS {
        let channel = server.raw_channel().await;
        for task in 0..TASKS {
            let caller = connection * TASKS + task;
            let key = keys[caller % keys.len()].clone();
            let mut client = WalletServiceClient::new(tonic::service::interceptor::InterceptedService::new(channel.clone(), key));
            let share = calls / (CONNECTIONS * TASKS) + usize::from(caller < calls % (CONNECTIONS * TASKS));
            callers.spawn(async move {
                for i in 0..share {
                    let wallet = format!("w-{round}-{caller}-{i}");
                    let got = client.get_wallet(read("demo", &wallet)).await.unwrap_err();
                    assert_eq!(got.code(), Code::Unauthenticated, "{got:?}");
                }
            });
        }
    }
    while let Some(done) = callers.join_next().await {
        done.unwrap();
    }
    started.elapsed()
}

#[tokio::test]
async fn calls_without_a_valid_key_cost_no_memory_and_never_reach_the_log() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[&format!("--store={}", database.postgres_url)]);
    enroll(&server, "demo", "c-1").await;
    let platform = server.platform_key();
    let mut wrong_secret = platform.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == '0' { '1' } else { '0' });
    let unknown_key = format!("tally_{}_{}", "0".repeat(16), "0".repeat(64));
    let keys = [Key::none(), Key::new(&wrong_secret), Key::new(&unknown_key), Key::new("not a token")];

    // Warm up: connections, buffers and the allocator's pools reach their working size.
    unauthenticated_calls(&server, &keys, 10_000, 0).await;
    let (rss_before, log_before) = (rss_kib(server.pid()), log_activity(&database).await);
    let between = Instant::now();
    let took = unauthenticated_calls(&server, &keys, 50_000, 1).await;
    let (rss_after, log_after) = (rss_kib(server.pid()), log_activity(&database).await);
    let between = between.elapsed();
    let rate = 50_000.0 / took.as_secs_f64();
    eprintln!(
        "50,000 unauthenticated calls in {took:?} ({rate:.0} calls/s); RSS {rss_before} KiB -> {rss_after} KiB; \
         log {log_before:?} -> {log_after:?} over {between:?}"
    );
    assert!(rss_after <= rss_before + 2 * 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB");
    assert_eq!(log_after.head, log_before.head, "nothing was appended");
    assert_eq!(log_after.rows_read, log_before.rows_read, "no event was read");
    // The keys' refresher reads `$keys` once a second (finding nothing new); nothing else scans the log.
    let scans = log_after.scans - log_before.scans;
    assert!(scans <= 2 * i64::try_from(between.as_secs()).unwrap() + 5, "{scans} scans of the log in {between:?}");
}
