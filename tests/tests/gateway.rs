//! The real `tally serve` process driven by generated tonic clients: the walkthrough, idempotent
//! retries, status codes with the field named, health, reflection, SIGKILL and SIGTERM.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{
    EarnRequest, EnrollRequest, GetWalletRequest, ListTransactionsRequest, RedeemRequest, ReverseRequest, TransactionKind, WalletMutation,
};
use tally_tests::{Authed, TallyServer};
use tonic::Code;
use tonic_types::StatusExt;

const TENANT: &str = "demo";

fn enroll(wallet: &str) -> EnrollRequest {
    EnrollRequest {
        tenant_id: TENANT.into(),
        wallet_id: wallet.into(),
        idempotency_key: format!("enroll-{wallet}"),
        customer_ref: "crm-1".into(),
        ..Default::default()
    }
}

fn earn(wallet: &str, key: &str, points: i64) -> EarnRequest {
    EarnRequest {
        tenant_id: TENANT.into(),
        wallet_id: wallet.into(),
        idempotency_key: key.into(),
        points,
        reason: "order".into(),
        source_ref: key.into(),
        order_amount: None,
    }
}

fn redeem(wallet: &str, key: &str, points: i64) -> RedeemRequest {
    RedeemRequest { tenant_id: TENANT.into(), wallet_id: wallet.into(), idempotency_key: key.into(), points, reward_ref: "mug".into() }
}

fn history(wallet: &str, page_size: u32, page_token: &str) -> ListTransactionsRequest {
    ListTransactionsRequest { tenant_id: TENANT.into(), wallet_id: wallet.into(), page_size, page_token: page_token.into() }
}

/// Asserts the status code and that the `google.rpc.BadRequest` detail names `field`.
fn assert_field_error(status: &tonic::Status, code: Code, field: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let bad_request = status.get_details_bad_request().unwrap_or_else(|| panic!("no BadRequest detail in {status:?}"));
    assert_eq!(bad_request.field_violations[0].field, field, "{status:?}");
    assert!(status.message().contains(field), "the message names the field: {}", status.message());
}

#[tokio::test]
async fn enroll_earn_redeem_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut client = server.client().await;

    let enrolled = client.enroll(enroll("c-1")).await.unwrap().into_inner();
    assert_eq!((enrolled.version, enrolled.balance, enrolled.replayed), (1, 0, false));
    let earned = client.earn(earn("c-1", "order-1", 120)).await.unwrap().into_inner();
    assert_eq!((earned.balance, earned.version), (120, 2));
    assert!(earned.position >= 2);
    assert_eq!(earned.transactions[0].kind, TransactionKind::Earned as i32);
    let redeemed = client.redeem(redeem("c-1", "pos-7", 20)).await.unwrap().into_inner();
    assert_eq!((redeemed.balance, redeemed.wallet.unwrap().lifetime_redeemed), (100, 20));
    let reversed = client
        .reverse(ReverseRequest {
            tenant_id: TENANT.into(),
            wallet_id: "c-1".into(),
            idempotency_key: "refund-1".into(),
            source_ref: "order-1".into(),
            points: Some(20),
            reason: "returned item".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reversed.balance, 80);

    let wallet = client
        .get_wallet(GetWalletRequest { tenant_id: TENANT.into(), wallet_id: "c-1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((wallet.balance, wallet.lifetime_earned, wallet.lifetime_reversed, wallet.version), (80, 120, 20, 4));

    let page = client.list_transactions(history("c-1", 3, "")).await.unwrap().into_inner();
    let kinds: Vec<i32> = page.transactions.iter().map(|t| t.kind).collect();
    assert_eq!(
        kinds,
        vec![TransactionKind::Reversed as i32, TransactionKind::Redeemed as i32, TransactionKind::Earned as i32],
        "newest first"
    );
    assert_eq!(page.transactions.iter().map(|t| t.points).collect::<Vec<_>>(), vec![-20, -20, 120]);
    let older = client.list_transactions(history("c-1", 3, &page.next_page_token)).await.unwrap().into_inner();
    assert_eq!(older.transactions.len(), 1);
    assert_eq!(older.transactions[0].kind, TransactionKind::Enrolled as i32);
    assert!(older.next_page_token.is_empty());
}

#[tokio::test]
async fn a_retried_earn_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    client.enroll(enroll("c-1")).await.unwrap();
    let first = client.earn(earn("c-1", "order-9", 50)).await.unwrap().into_inner();
    client.earn(earn("c-1", "order-10", 5)).await.unwrap();
    let retry = client.earn(earn("c-1", "order-9", 50)).await.unwrap().into_inner();
    assert!(retry.replayed);
    assert_eq!((retry.balance, retry.version, retry.position), (first.balance, first.version, first.position));
    assert_eq!(retry.transactions, first.transactions, "the same events as the first time");
    assert_eq!(retry.wallet.unwrap().balance, 55, "nothing was added by the retry");
    let reused = client.earn(earn("c-1", "order-9", 51)).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");
    let all = client.list_transactions(history("c-1", 0, "")).await.unwrap().into_inner();
    assert_eq!(all.transactions.len(), 3);
}

#[tokio::test]
async fn bad_calls_get_a_status_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &["--tenant", "demo,strict:cap-at-zero"]);
    let mut client = server.client().await;
    client.enroll(enroll("c-1")).await.unwrap();
    client.earn(earn("c-1", "order-1", 10)).await.unwrap();

    let beyond = client.redeem(redeem("c-1", "pos-1", 11)).await.unwrap_err();
    assert_eq!(beyond.code(), Code::FailedPrecondition, "{beyond:?}");
    assert!(beyond.message().contains("insufficient points"), "{}", beyond.message());

    assert_field_error(&client.earn(earn("", "k", 10)).await.unwrap_err(), Code::InvalidArgument, "wallet_id");
    assert_field_error(&client.earn(earn("c-1", "k", -5)).await.unwrap_err(), Code::InvalidArgument, "points");
    assert_field_error(&client.earn(earn("c-1", "", 5)).await.unwrap_err(), Code::InvalidArgument, "idempotency_key");
    let mut unknown_tenant = earn("c-1", "k", 5);
    unknown_tenant.tenant_id = "nope".into();
    assert_field_error(&client.earn(unknown_tenant).await.unwrap_err(), Code::NotFound, "tenant_id");
    let missing = client
        .get_wallet(GetWalletRequest { tenant_id: TENANT.into(), wallet_id: "nobody".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(client.list_transactions(history("nobody", 10, "")).await.unwrap_err().code(), Code::NotFound);
    assert_field_error(&client.list_transactions(history("c-1", 10, "garbage")).await.unwrap_err(), Code::InvalidArgument, "page_token");
    assert_eq!(
        client.enroll(EnrollRequest { idempotency_key: "other".into(), ..enroll("c-1") }).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    // An oversized message is refused with a status, and the server keeps serving.
    let mut huge = earn("c-1", "huge", 1);
    huge.reason = "x".repeat(200 * 1024);
    let refused = client.earn(huge).await.unwrap_err();
    assert!(matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument), "{refused:?}");
    let still =
        client.get_wallet(GetWalletRequest { tenant_id: TENANT.into(), wallet_id: "c-1".into(), ..Default::default() }).await.unwrap();
    assert_eq!(still.into_inner().balance, 10);
    // A reason that fits the message limit but not the domain's limit names the field.
    let mut long = earn("c-1", "long", 1);
    long.reason = "x".repeat(1000);
    assert_field_error(&client.earn(long).await.unwrap_err(), Code::InvalidArgument, "reason");
    // Issue 15: a NUL in a reason never reaches the log (it stalled the PostgreSQL read model), and the
    // engine's key space is not a client's.
    let mut nul = earn("c-1", "nul", 1);
    nul.reason = "a\0b".into();
    assert_field_error(&client.earn(nul).await.unwrap_err(), Code::InvalidArgument, "reason");
    assert_field_error(&client.earn(earn("c-1", "tally:capture:pos-1", 1)).await.unwrap_err(), Code::InvalidArgument, "idempotency_key");
    // Request metadata is stored in every event: bounded, and a malformed traceparent is dropped.
    let mut request = tonic::Request::new(earn("c-1", "big-id", 1));
    request.metadata_mut().insert("x-request-id", "r".repeat(15_000).parse().unwrap());
    assert_field_error(&client.earn(request).await.unwrap_err(), Code::InvalidArgument, "x-request-id");
    let mut request = tonic::Request::new(earn("c-1", "odd-trace", 1));
    request.metadata_mut().insert("traceparent", "t".repeat(15_000).parse().unwrap());
    assert_eq!(client.earn(request).await.unwrap().into_inner().balance, 11);
}

#[tokio::test]
async fn health_is_serving_and_reflection_lists_the_services() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "tally.v1.WalletService"] {
        let reply = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(reply.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut replies = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let reply = replies.message().await.unwrap().expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else { panic!("unexpected {reply:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["tally.v1.WalletService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }

    // Clients that speak only the older v1alpha reflection (older grpcurl, grpcio-reflection) too.
    use tonic_reflection::pb::v1alpha;
    let mut reflection = v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let reply = replies.message().await.unwrap().expect("one reply");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected {reply:?}")
    };
    assert!(list.service.iter().any(|s| s.name == "tally.v1.WalletService"), "{list:?}");
}

type Acked = Arc<Mutex<HashMap<String, (String, u64)>>>;

/// Earns from `callers` concurrent clients until the server dies; records every acknowledged call and
/// publishes how many there are.
async fn load(client: WalletServiceClient<Authed>, callers: usize, acked: Acked, count: tokio::sync::watch::Sender<usize>) {
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let mut client = client.clone();
            let acked = Arc::clone(&acked);
            let count = count.clone();
            tokio::spawn(async move {
                let wallet = format!("load-{c}");
                if client.enroll(enroll(&wallet)).await.is_err() {
                    return;
                }
                for n in 0.. {
                    let key = format!("{wallet}-order-{n}");
                    match client.earn(earn(&wallet, &key, 10)).await {
                        Ok(reply) => {
                            let reply: WalletMutation = reply.into_inner();
                            let acknowledged = {
                                let mut acked = acked.lock().unwrap();
                                acked.insert(key, (wallet.clone(), reply.version));
                                acked.len()
                            };
                            count.send_replace(acknowledged);
                        }
                        Err(_) => return, // the server died
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TallyServer::start(dir.path(), &[]);
    let acked: Acked = Arc::default();
    let (count, mut counted) = tokio::sync::watch::channel(0);
    let load = tokio::spawn(load(server.client().await, 32, Arc::clone(&acked), count));
    // Wait until the load is really under way, then kill without warning.
    tokio::time::timeout(Duration::from_secs(60), counted.wait_for(|n| *n >= 500)).await.expect("the load got going").unwrap();
    server.kill_9();
    load.await.unwrap();
    let acked = acked.lock().unwrap().clone();

    let server = TallyServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    let mut highest: HashMap<String, u64> = HashMap::new();
    for (wallet, version) in acked.values() {
        let entry = highest.entry(wallet.clone()).or_default();
        *entry = (*entry).max(*version);
    }
    for (wallet, version) in &highest {
        let now = client
            .get_wallet(GetWalletRequest { tenant_id: TENANT.into(), wallet_id: wallet.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(now.version >= *version, "{wallet}: acknowledged version {version}, after restart {}", now.version);
    }
    // Every acknowledged earn is found again: a retry with its key is answered as already done.
    for (key, (wallet, version)) in acked.iter().take(200) {
        let retry = client.earn(earn(wallet, key, 10)).await.unwrap().into_inner();
        assert!(retry.replayed, "{key} was acknowledged but is not in the log");
        assert_eq!(retry.version, *version);
    }
}

#[tokio::test]
async fn sigterm_exits_cleanly_with_everything_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TallyServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    client.enroll(enroll("c-1")).await.unwrap();
    for n in 0..20 {
        client.earn(earn("c-1", &format!("o-{n}"), 5)).await.unwrap();
    }
    let status = server.terminate();
    assert!(status.success(), "tally exits 0 after SIGTERM: {status:?}");

    let server = TallyServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    let wallet = client
        .get_wallet(GetWalletRequest { tenant_id: TENANT.into(), wallet_id: "c-1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((wallet.balance, wallet.version), (100, 21));
}

/// A server is ready to be stopped as soon as it says it listens: SIGTERM right after the readiness line
/// (nothing served yet) must still take the orderly way out and exit 0, not kill the process.
#[tokio::test]
async fn sigterm_right_after_the_readiness_line_exits_cleanly() {
    for attempt in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut server = TallyServer::start(dir.path(), &[]);
        let status = server.terminate();
        assert!(status.success(), "attempt {attempt}: tally exits 0 after SIGTERM: {}", tally_tests::describe(status));
    }
}

/// Issue 15, item 21: bytes that are not the expected message are the caller's mistake.
#[tokio::test]
async fn undecodable_requests_are_invalid_argument() {
    /// EarnRequest's wire shape, but `tenant_id` (field 1) as bytes: it can carry what a string cannot.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawEarn {
        #[prost(bytes = "vec", tag = "1")]
        tenant_id: Vec<u8>,
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/tally.v1.WalletService/Earn");
    let codec = tonic_prost::ProstCodec::<RawEarn, WalletMutation>::default();
    let not_utf8 = RawEarn { tenant_id: vec![0xff, 0xfe, 0x00] };
    let status = grpc.unary(tonic::Request::new(not_utf8), path, codec).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // The server goes on serving.
    let mut client = server.client().await;
    client.enroll(enroll("c-1")).await.unwrap();
}

/// Issue 15, item 5: a page of 500 transactions with long reasons (over 64 KiB encoded) is sent, not
/// answered OUT_OF_RANGE; replies are bounded by construction, not by the encoder's refusal.
#[tokio::test]
async fn a_full_page_of_long_transactions_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    client.enroll(enroll("c-1")).await.unwrap();
    for n in 0..320 {
        let mut request = earn("c-1", &format!("order-{n}"), 1);
        request.reason = "r".repeat(256);
        client.earn(request).await.unwrap();
    }
    let page = client.list_transactions(history("c-1", 500, "")).await.unwrap().into_inner();
    assert_eq!(page.transactions.len(), 321);
    assert!(prost::Message::encoded_len(&page) > 64 * 1024, "the page is larger than a request may be");
    assert!(page.next_page_token.is_empty());
}

#[tokio::test]
async fn wallets_that_do_not_exist_are_not_found_for_reads_and_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    for i in 0..50 {
        let ghost = format!("ghost-{i}");
        let read = client
            .get_wallet(GetWalletRequest { tenant_id: TENANT.into(), wallet_id: ghost.clone(), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(read.code(), Code::NotFound, "{read:?}");
        let earned = client.earn(earn(&ghost, "k", 1)).await.unwrap_err();
        assert_eq!(earned.code(), Code::NotFound, "{earned:?}");
    }
    // Input errors still come first, as before.
    assert_field_error(&client.earn(earn("ghost-1", "k", -5)).await.unwrap_err(), Code::InvalidArgument, "points");
    client.enroll(enroll("ghost-1")).await.unwrap();
    assert_eq!(client.earn(earn("ghost-1", "k", 3)).await.unwrap().into_inner().balance, 3);
}

/// Issue 15 (fuzzing): random protobuf messages — valid framing, random fields and values — sent to
/// every RPC of a real server are answered with a status a client can act on, never INTERNAL or UNKNOWN,
/// and the server keeps serving. `TALLY_FUZZ_CALLS` sets the calls per RPC (a long run: 10000).
#[tokio::test]
async fn random_requests_to_every_rpc_get_an_actionable_status() {
    use rand::{Rng, SeedableRng};

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    /// A message of random fields 1–10: varints (small, large, negative) and length-delimited values
    /// (ids from a small set, random text, random bytes).
    fn message(rng: &mut rand::rngs::StdRng, depth: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.random_range(0..8) {
            let field = rng.random_range(1..=10u64);
            if rng.random_bool(0.4) {
                varint(&mut out, field << 3);
                let value = match rng.random_range(0..4) {
                    0 => rng.random_range(0..5),
                    1 => rng.random_range(0..2_000_000),
                    2 => u64::MAX - rng.random_range(0..1_000),
                    _ => rng.random(),
                };
                varint(&mut out, value);
            } else {
                varint(&mut out, (field << 3) | 2);
                let value: Vec<u8> = match rng.random_range(0..4) {
                    0 => ["demo", "c-1", "acme", "", "pos-1", "order-1"][rng.random_range(0..6)].as_bytes().to_vec(),
                    1 => (0..rng.random_range(0..40)).map(|_| rng.random_range(b' '..=b'~')).collect(),
                    2 if depth < 2 => message(rng, depth + 1),
                    _ => (0..rng.random_range(0..40)).map(|_| rng.random()).collect(),
                };
                varint(&mut out, value.len() as u64);
                out.extend(value);
            }
        }
        out
    }

    let rpcs = [
        "tally.v1.WalletService/Enroll",
        "tally.v1.WalletService/Earn",
        "tally.v1.WalletService/Redeem",
        "tally.v1.WalletService/Adjust",
        "tally.v1.WalletService/Reverse",
        "tally.v1.WalletService/EarnForOrder",
        "tally.v1.WalletService/RefundOrder",
        "tally.v1.WalletService/AuthorizeRedemption",
        "tally.v1.WalletService/CaptureRedemption",
        "tally.v1.WalletService/VoidRedemption",
        "tally.v1.WalletService/PurchaseCredits",
        "tally.v1.WalletService/AddStamps",
        "tally.v1.WalletService/Close",
        "tally.v1.WalletService/EraseCustomer",
        "tally.v1.WalletService/GetWallet",
        "tally.v1.WalletService/ListTransactions",
        "tally.v1.AdminService/CreateProgram",
        "tally.v1.AdminService/PublishRules",
        "tally.v1.AdminService/GetProgram",
        "tally.v1.AdminService/ListRuleVersions",
        "tally.v1.AdminService/DefineCreditPackage",
        "tally.v1.AdminService/SetExpiryPolicy",
        "tally.v1.AdminService/SetPendingPeriod",
        "tally.v1.AdminService/SetRefundWindow",
        "tally.v1.AdminService/DefineTiers",
        "tally.v1.AdminService/DefineStampCard",
        "tally.v1.AdminService/SimulateOrder",
        "tally.v1.ReportingService/ListWallets",
        "tally.v1.ReportingService/ProgramStats",
        "tally.v1.ReportingService/Liability",
        "tally.v1.ProjectionsService/ListProjections",
        "tally.v1.KeysService/CreateKey",
        "tally.v1.KeysService/ListKeys",
        "tally.v1.KeysService/RevokeKey",
    ];
    let calls: usize = std::env::var("TALLY_FUZZ_CALLS").ok().and_then(|n| n.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    for rpc in rpcs {
        for _ in 0..calls {
            let body = message(&mut rng, 0);
            if let Err(status) = tally_tests::raw_call(&mut grpc, rpc, body.clone()).await {
                assert!(
                    !matches!(status.code(), Code::Internal | Code::Unknown | Code::DataLoss),
                    "{rpc} answered {status:?} to {body:02x?}"
                );
            }
        }
    }
    let mut client = server.client().await;
    client.enroll(enroll("after-fuzz")).await.unwrap();
}
