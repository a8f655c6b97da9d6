//! Issue 20 item 3: points transfers against the real `tally` process. The program decides whether points
//! may move and how many; a transfer moves them once, keeping their date; a closed target sends them back;
//! a refusal moves nothing and answers with its reason and field. The server is killed (it aborts itself,
//! as `kill -9` would stop it) between every pair of steps; after a restart the same call ends the
//! transfer exactly once, and the tenant's books balance from the log (transfers net to zero).

use std::time::Duration;

use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{
    CloseRequest, EarnRequest, EnrollRequest, GetWalletRequest, ListFlowsRequest, ListTransactionsRequest, SetTransferPolicyRequest,
    TransactionKind, TransferPointsRequest,
};
use tally_tests::{Authed, TallyServer};
use tonic::Code;
use tonic_types::StatusExt;

/// The points between two steps of a transfer, as the engine names them (`TRANSFER_CRASH_POINTS`).
const TRANSFER_CRASH_POINTS: [&str; 5] = ["transfer_started", "sent", "received", "returned", "transfer_ended"];

async fn allow(admin: &mut AdminServiceClient<Authed>, key: &str, allowed: bool, per_transfer: i64, per_day: i64) {
    let request = SetTransferPolicyRequest {
        tenant_id: "demo".into(),
        idempotency_key: key.into(),
        allowed,
        max_points_per_transfer: per_transfer,
        max_points_per_day: per_day,
        set_by: "ops".into(),
    };
    let program = admin.set_transfer_policy(request).await.unwrap().into_inner();
    assert_eq!(program.transfer_policy.map(|p| (p.allowed, p.max_points_per_transfer)), Some((allowed, per_transfer)));
}

async fn open(wallets: &mut WalletServiceClient<Authed>, wallet: &str, points: i64) {
    let enroll = EnrollRequest {
        tenant_id: "demo".into(),
        wallet_id: wallet.into(),
        idempotency_key: format!("enroll-{wallet}"),
        ..Default::default()
    };
    wallets.enroll(enroll).await.unwrap();
    if points > 0 {
        let earn = EarnRequest {
            tenant_id: "demo".into(),
            wallet_id: wallet.into(),
            idempotency_key: format!("earn-{wallet}"),
            points,
            source_ref: format!("order-{wallet}"),
            ..Default::default()
        };
        wallets.earn(earn).await.unwrap();
    }
}

async fn close(wallets: &mut WalletServiceClient<Authed>, wallet: &str) {
    let close = CloseRequest {
        tenant_id: "demo".into(),
        wallet_id: wallet.into(),
        idempotency_key: format!("close-{wallet}"),
        reason: "left".into(),
    };
    wallets.close(close).await.unwrap();
}

fn transfer(from: &str, to: &str, points: i64, id: &str) -> TransferPointsRequest {
    TransferPointsRequest {
        tenant_id: "demo".into(),
        wallet_id: from.into(),
        to_wallet_id: to.into(),
        points,
        transfer_id: id.into(),
        reason: "for a friend".into(),
    }
}

async fn balance(wallets: &mut WalletServiceClient<Authed>, wallet: &str) -> i64 {
    wallets
        .get_wallet(GetWalletRequest { tenant_id: "demo".into(), wallet_id: wallet.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .balance
}

/// The reason a FAILED_PRECONDITION names in its PreconditionFailure, and the field it is about.
fn reason(status: &tonic::Status) -> (String, String) {
    let violation = status.get_details_precondition_failure().and_then(|f| f.violations.first().cloned());
    violation.map(|v| (v.r#type, v.subject)).unwrap_or_default()
}

/// The field a NOT_FOUND or INVALID_ARGUMENT names in its BadRequest.
fn field(status: &tonic::Status) -> String {
    status.get_details_bad_request().and_then(|b| b.field_violations.first().map(|v| v.field.clone())).unwrap_or_default()
}

#[tokio::test]
async fn a_transfer_moves_points_once_as_the_program_allows_and_a_refusal_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(&dir.path().join("data"), &["--tenant", "demo"]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mut wallets = server.client().await;
    open(&mut wallets, "ann", 2_000).await;
    open(&mut wallets, "bob", 0).await;

    // Not until the program allows it.
    let denied = wallets.transfer_points(transfer("ann", "bob", 100, "t-1")).await.unwrap_err();
    assert_eq!((denied.code(), reason(&denied).0), (Code::FailedPrecondition, "TRANSFERS_NOT_ALLOWED".to_owned()));
    allow(&mut admin, "transfers-v1", true, 500, 700).await;

    let sent = wallets.transfer_points(transfer("ann", "bob", 300, "t-1")).await.unwrap().into_inner();
    assert_eq!((sent.points, sent.balance, sent.replayed, sent.to_wallet_id.as_str()), (300, 1_700, false, "bob"));
    let again = wallets.transfer_points(transfer("ann", "bob", 300, "t-1")).await.unwrap().into_inner();
    assert!(again.replayed && again.position == sent.position && again.balance == 1_700, "{again:?}");
    assert_eq!((balance(&mut wallets, "ann").await, balance(&mut wallets, "bob").await), (1_700, 300));

    // Both histories show it, each with the other wallet.
    let history = |wallet: &str| ListTransactionsRequest { tenant_id: "demo".into(), wallet_id: wallet.into(), ..Default::default() };
    let ann = wallets.list_transactions(history("ann")).await.unwrap().into_inner().transactions;
    let out = ann.iter().find(|t| t.kind == TransactionKind::TransferSent as i32).expect("sent");
    assert_eq!((out.points, out.reference.as_str(), out.counterpart_wallet_id.as_str()), (-300, "t-1", "bob"));
    let bob = wallets.list_transactions(history("bob")).await.unwrap().into_inner().transactions;
    let came = bob.iter().find(|t| t.kind == TransactionKind::TransferReceived as i32).expect("received");
    assert_eq!((came.points, came.counterpart_wallet_id.as_str()), (300, "ann"));

    // Refusals, each with its reason and field; none moves a point.
    let capped = wallets.transfer_points(transfer("ann", "bob", 501, "t-2")).await.unwrap_err();
    assert_eq!(reason(&capped), ("TRANSFER_CAP_EXCEEDED".to_owned(), "points".to_owned()));
    let day = wallets.transfer_points(transfer("ann", "bob", 500, "t-3")).await.unwrap_err();
    assert_eq!(reason(&day), ("TRANSFER_DAILY_CAP_EXCEEDED".to_owned(), "points".to_owned()), "300 + 500 is past 700");
    let poor = wallets.transfer_points(transfer("bob", "ann", 400, "t-4")).await.unwrap_err();
    assert_eq!(reason(&poor), ("INSUFFICIENT_POINTS".to_owned(), "balance".to_owned()));
    let itself = wallets.transfer_points(transfer("ann", "ann", 10, "t-5")).await.unwrap_err();
    assert_eq!((itself.code(), field(&itself)), (Code::InvalidArgument, "to_wallet_id".to_owned()));
    let nobody = wallets.transfer_points(transfer("ann", "nobody", 10, "t-6")).await.unwrap_err();
    assert_eq!((nobody.code(), field(&nobody)), (Code::NotFound, "to_wallet_id".to_owned()));
    let zero = wallets.transfer_points(transfer("ann", "bob", 0, "t-7")).await.unwrap_err();
    assert_eq!((zero.code(), field(&zero)), (Code::InvalidArgument, "points".to_owned()));
    let reused = wallets.transfer_points(transfer("ann", "bob", 10, "t-1")).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);

    // A closed target sends them back.
    open(&mut wallets, "cy", 0).await;
    close(&mut wallets, "cy").await;
    let back = wallets.transfer_points(transfer("ann", "cy", 200, "t-8")).await.unwrap_err();
    assert_eq!(reason(&back), ("TARGET_WALLET_CLOSED".to_owned(), "to_wallet_id".to_owned()));
    assert_eq!((balance(&mut wallets, "ann").await, balance(&mut wallets, "bob").await), (1_700, 300));
    let ann = wallets.list_transactions(history("ann")).await.unwrap().into_inner().transactions;
    assert!(ann.iter().any(|t| t.kind == TransactionKind::TransferReturned as i32 && t.points == 200 && t.reference == "t-8"));
    // A transfer that came back does not count against the day: 300 + 400 is within 700.
    wallets.transfer_points(transfer("ann", "bob", 400, "t-9")).await.unwrap();
    assert_eq!((balance(&mut wallets, "ann").await, balance(&mut wallets, "bob").await), (1_300, 700));
}

#[tokio::test]
async fn a_server_killed_between_any_two_steps_ends_the_transfer_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = TallyServer::start(&data, &["--tenant", "demo"]);
    {
        let mut admin = AdminServiceClient::new(server.channel().await);
        let mut wallets = server.client().await;
        allow(&mut admin, "transfers-v1", true, 0, 0).await;
        open(&mut wallets, "ann", 10_000).await;
        open(&mut wallets, "bob", 0).await;
        open(&mut wallets, "cy", 0).await;
        close(&mut wallets, "cy").await;
    }
    server.terminate();
    let mut arrived = 0;
    for (i, point) in TRANSFER_CRASH_POINTS.iter().enumerate() {
        // To bob (it arrives) and to cy (closed: it comes back, through the "returned" point).
        for to in ["bob", "cy"] {
            if *point == "returned" && to == "bob" {
                continue;
            }
            let request = transfer("ann", to, 100, &format!("t-{i}-{to}"));
            let mut dying = TallyServer::start_with_env(&data, &["--tenant", "demo"], &[("TALLY_TEST_CRASH_AT", point)]);
            let mut wallets = dying.client().await;
            assert!(wallets.transfer_points(request.clone()).await.is_err(), "{point}: the server died before answering");
            let status = dying.wait_exit(Duration::from_secs(30)).expect("the server aborted itself");
            assert!(!status.success(), "{point}: aborted, not stopped cleanly");

            let mut server = TallyServer::start(&data, &["--tenant", "demo"]);
            let mut wallets = server.client().await;
            match (to, wallets.transfer_points(request).await) {
                ("bob", Ok(done)) => {
                    let done = done.into_inner();
                    assert_eq!(done.points, 100, "{point}");
                    arrived += 100;
                }
                ("cy", Err(status)) => assert_eq!(reason(&status).0, "TARGET_WALLET_CLOSED", "{point}"),
                (_, other) => panic!("{point} to {to}: {other:?}"),
            }
            server.terminate();
        }
    }
    let server = TallyServer::start(&data, &["--tenant", "demo"]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mut wallets = server.client().await;
    // One more, whose position is past every other.
    let last = wallets.transfer_points(transfer("ann", "bob", 50, "t-last")).await.unwrap().into_inner();
    arrived += 50;
    assert_eq!(balance(&mut wallets, "ann").await, 10_000 - arrived, "each transfer that arrived left once, each returned came back");
    assert_eq!(balance(&mut wallets, "bob").await, arrived, "each arrived once");
    assert_eq!(arrived, 450);
    let open_flows = admin.list_flows(ListFlowsRequest { tenant_id: "demo".into(), stuck_only: false }).await.unwrap().into_inner();
    assert!(open_flows.flows.is_empty(), "{open_flows:?}");
    // The whole tenant's books, from the log: transfers net to zero.
    let up_to = last.position;
    let out = server
        .cli()
        .args(["audit", "export", "--tenant", "demo", "--up-to-position", &up_to.to_string(), "--server", server.url.as_str()])
        .args(["--out", dir.path().join("ledger.csv").to_str().unwrap()])
        .output()
        .unwrap();
    let verdict = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && verdict.contains("the books balance"), "{verdict}");
    assert!(verdict.contains("transferred 0"), "every transfer ended: {verdict}");
}

#[tokio::test]
async fn staff_move_points_from_the_command_line_and_see_them_in_both_histories() {
    use tally_proto::v1::keys_service_client::KeysServiceClient;
    use tally_proto::v1::{CreateKeyRequest, Role};
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(&dir.path().join("data"), &["--tenant", "demo"]);
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mut wallets = server.client().await;
    allow(&mut admin, "transfers-v1", true, 0, 0).await;
    open(&mut wallets, "ann", 500).await;
    open(&mut wallets, "bob", 0).await;
    let mut keys = KeysServiceClient::new(server.channel().await);
    let request =
        CreateKeyRequest { tenant_id: "demo".into(), roles: vec![Role::Staff as i32], label: "desk".into(), ..Default::default() };
    let staff_key = keys.create_key(request).await.unwrap().into_inner().token;
    // A staff key, as the help desk holds it.
    let run = |args: &[&str]| {
        let mut command = server.cli();
        command.env_remove("TALLY_KEY_FILE").env("TALLY_API_KEY", &staff_key);
        command.arg("wallet").args(args).args(["--tenant", "demo", "--server", server.url.as_str()]).output().unwrap()
    };
    let send = ["transfer", "--wallet", "ann", "--to", "bob", "--points", "120", "--key", "gift-1", "--reason", "birthday"];
    let unnamed = run(&send);
    assert!(
        !unnamed.status.success() && String::from_utf8_lossy(&unnamed.stderr).contains("x-staff-id"),
        "a staff key names its staff member"
    );
    let send = [&send[..], &["--staff", "s-7"]].concat();
    let out = run(&send);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sent 120 points to bob; balance 380");
    assert!(String::from_utf8_lossy(&run(&send).stdout).contains("answered before"), "the same key again is a retry");
    let history = run(&["history", "--wallet", "bob"]);
    assert!(String::from_utf8_lossy(&history.stdout).contains("transfer received"), "{}", String::from_utf8_lossy(&history.stdout));
    let poor = run(&["transfer", "--wallet", "bob", "--to", "ann", "--points", "121", "--key", "gift-2", "--staff", "s-7"]);
    let refused = String::from_utf8_lossy(&poor.stderr);
    assert!(!poor.status.success() && refused.contains("insufficient points"), "{refused}");
    assert_eq!((balance(&mut wallets, "ann").await, balance(&mut wallets, "bob").await), (380, 120));
}

#[tokio::test]
async fn tally_bench_transfers_points_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(&dir.path().join("data"), &["--tenant", "demo"]);
    let args = ["bench", "--transfer", "--requests", "200", "--concurrency", "8", "--wallets", "16"];
    let out = server.cli().args(args).args(["--read-percent", "0", "--tenant", "demo", "--server", server.url.as_str()]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!report.contains("errors"), "every transfer completed: {report}");
    let moved: i64 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("mutating").and_then(|rest| rest.split_whitespace().next()).and_then(|n| n.parse().ok()))
        .expect("a count of mutating calls");
    assert!(moved >= 200, "{report}");
    // A point each, between the bench's own wallets: what they hold together is what they were given.
    let mut wallets = server.client().await;
    let mut total = 0;
    for w in 0..16 {
        total += balance(&mut wallets, &format!("bench-{w}")).await;
    }
    assert_eq!(total, 16 * 1_000_000_000, "{report}");
}
