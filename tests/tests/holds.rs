//! POS two-phase redemption over gRPC in the real `tally` process: authorize, capture part, void, and
//! a hold left uncaptured expiring on its own — also when the server was SIGKILLed while it was open.

use std::time::Duration;

use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{
    AuthorizeRedemptionRequest, CaptureRedemptionRequest, EarnRequest, EnrollRequest, GetWalletRequest, ListTransactionsRequest,
    TransactionKind, VoidRedemptionRequest, Wallet,
};
use tally_tests::{Authed, TallyServer};
use tonic::Code;
use tonic_types::StatusExt;

fn authorize(hold: &str, points: i64, timeout_seconds: u32) -> AuthorizeRedemptionRequest {
    AuthorizeRedemptionRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-1".into(),
        hold_id: hold.into(),
        points,
        reward_ref: "coffee".into(),
        timeout_seconds,
    }
}

fn capture(hold: &str, points: Option<i64>) -> CaptureRedemptionRequest {
    CaptureRedemptionRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), hold_id: hold.into(), points }
}

async fn wallet(client: &mut WalletServiceClient<Authed>) -> Wallet {
    client
        .get_wallet(GetWalletRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the wallet holds nothing (the timers run once a second).
async fn released(client: &mut WalletServiceClient<Authed>) -> Wallet {
    for _ in 0..100 {
        let w = wallet(client).await;
        if w.held_points == 0 {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the hold did not expire: {:?}", wallet(client).await);
}

#[tokio::test]
async fn holds_are_captured_voided_or_expire_even_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TallyServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
    client.enroll(enroll).await.unwrap();
    let earn = EarnRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-1".into(),
        idempotency_key: "o-1".into(),
        points: 100,
        reason: String::new(),
        source_ref: "o-1".into(),
        order_amount: None,
    };
    client.earn(earn).await.unwrap();

    let held = client.authorize_redemption(authorize("pos-1", 60, 0)).await.unwrap().into_inner();
    let w = held.wallet.unwrap();
    assert_eq!((w.balance, w.held_points, w.available_points), (100, 60, 40));
    assert_eq!(held.transactions[0].kind, TransactionKind::Held as i32);
    let status = client.authorize_redemption(authorize("pos-2", 41, 0)).await.unwrap_err();
    assert_eq!(status.get_details_precondition_failure().unwrap().violations[0].r#type, "INSUFFICIENT_POINTS");

    let captured = client.capture_redemption(capture("pos-1", Some(50))).await.unwrap().into_inner();
    assert_eq!((captured.balance, captured.transactions[0].points, captured.transactions[0].held_points), (50, -50, 60));
    assert!(client.capture_redemption(capture("pos-1", Some(50))).await.unwrap().into_inner().replayed, "each step is idempotent");
    let void = VoidRedemptionRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), hold_id: "pos-1".into() };
    let status = client.void_redemption(void).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.get_details_precondition_failure().unwrap().violations[0].r#type, "HOLD_NOT_OPEN");

    client.authorize_redemption(authorize("pos-3", 20, 0)).await.unwrap();
    let void = VoidRedemptionRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), hold_id: "pos-3".into() };
    assert_eq!(client.void_redemption(void).await.unwrap().into_inner().wallet.unwrap().available_points, 50);

    // Uncaptured: it expires by itself.
    client.authorize_redemption(authorize("pos-4", 10, 1)).await.unwrap();
    assert_eq!(released(&mut client).await.available_points, 50);
    let status = client.capture_redemption(capture("pos-4", None)).await.unwrap_err();
    assert_eq!(status.get_details_precondition_failure().unwrap().violations[0].r#type, "HOLD_NOT_OPEN");

    // Open when the server dies: the restarted server's timers find it in the log and expire it.
    client.authorize_redemption(authorize("pos-5", 30, 2)).await.unwrap();
    server.kill_9();
    let server = TallyServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    assert_eq!(wallet(&mut client).await.held_points, 30);
    let w = released(&mut client).await;
    assert_eq!((w.balance, w.available_points), (50, 50));
    let history = client
        .list_transactions(ListTransactionsRequest {
            tenant_id: "demo".into(),
            wallet_id: "c-1".into(),
            page_size: 3,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .transactions;
    assert_eq!((history[0].kind, history[0].reference.as_str(), history[0].points), (TransactionKind::Released as i32, "pos-5", 0));
}

#[tokio::test]
async fn the_wallet_command_line_shows_holds_and_names_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    let tally = |args: &[&str]| {
        let output = server.cli().args(args).args(["--server", &server.url]).output().unwrap();
        assert!(output.status.success(), "tally {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    tally(&["wallet", "enroll", "--wallet", "cli-1", "--key", "e-1"]);
    tally(&["wallet", "earn", "--wallet", "cli-1", "--key", "o-1", "--points", "80"]);
    let hold = AuthorizeRedemptionRequest { wallet_id: "cli-1".into(), ..authorize("pos-1", 30, 0) };
    client.authorize_redemption(hold).await.unwrap();
    let shown: serde_json::Value = serde_json::from_str(&tally(&["wallet", "show", "--wallet", "cli-1", "--json"])).unwrap();
    assert_eq!(
        (shown["balance"].as_i64(), shown["held_points"].as_i64(), shown["available_points"].as_i64()),
        (Some(80), Some(30), Some(50))
    );
    let history = tally(&["wallet", "history", "--wallet", "cli-1"]);
    assert!(history.lines().next().unwrap().contains("held"), "{history}");
    assert!(!history.contains("unknown"), "{history}");
}

/// Issue 15, item 17: the command line prints the key it made up before sending, and when the server
/// cannot be reached it retries with that same key and says which key to send again.
#[test]
fn the_command_line_names_its_key_and_retries_with_it() {
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let output = std::process::Command::new(tally_tests::tally_binary())
        .args(["wallet", "earn", "--wallet", "w-1", "--points", "5", "--server", &format!("http://{unreachable}")])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let key = stderr.lines().find_map(|line| line.strip_prefix("idempotency key ")).expect("the key, before anything else");
    assert_eq!(stderr.matches("retrying in").count(), 4, "{stderr}");
    assert!(stderr.contains(&format!("idempotency key {key})")), "the last error names the key: {stderr}");
}
