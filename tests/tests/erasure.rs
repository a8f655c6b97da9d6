//! Issue 19 item 4: erasure without breaking the proof, against the real `tally` process. A customer's
//! reference is stored only sealed (the log's bytes never hold it); `EraseCustomer` destroys the wallet's
//! key and records the erasure, after which no read path — the wallet, its history, the reporting read
//! model, the audit API, the ledger export — returns it, while the wallet keeps its balance across a
//! restart (a full replay) and `tally audit verify` still passes. A neighbour's customer is untouched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tally_proto::v1::audit_service_client::AuditServiceClient;
use tally_proto::v1::keys_service_client::KeysServiceClient;
use tally_proto::v1::reporting_service_client::ReportingServiceClient;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{
    CreateKeyRequest, EarnRequest, EnrollRequest, EraseCustomerRequest, ExportLedgerRequest, GetWalletRequest, ListTransactionsRequest,
    ListWalletsRequest, Role, TransactionKind, WalletAsOfRequest, WalletOrder, export_ledger_request, wallet_as_of_request,
};
use tally_tests::{Authed, Key, TallyServer, TestDatabase};
use tonic::Code;
use tonic_types::StatusExt;

const SECRET: &str = "cust-4471-anna.berg";
const NEIGHBOUR: &str = "cust-1-neighbour";

async fn key(server: &TallyServer, role: Role) -> Key {
    let mut keys = KeysServiceClient::new(server.channel().await);
    let request = CreateKeyRequest { tenant_id: "demo".into(), roles: vec![role as i32], label: "erasure".into(), ..Default::default() };
    Key::new(&keys.create_key(request).await.unwrap().into_inner().token)
}

fn erase(wallet: &str, key: &str, reason: &str) -> EraseCustomerRequest {
    EraseCustomerRequest { tenant_id: "demo".into(), wallet_id: wallet.into(), idempotency_key: key.into(), reason: reason.into() }
}

async fn get(wallets: &mut WalletServiceClient<Authed>, wallet: &str) -> tally_proto::v1::Wallet {
    wallets
        .get_wallet(GetWalletRequest { tenant_id: "demo".into(), wallet_id: wallet.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
            found.push(path);
        }
    }
    found
}

/// The reporting read model's row of `wallet`, once it shows `erased`.
async fn reported(reporting: &mut ReportingServiceClient<Authed>, wallet: &str, erased: bool) -> tally_proto::v1::WalletSummary {
    for _ in 0..300 {
        let request = ListWalletsRequest {
            tenant_id: "demo".into(),
            order_by: WalletOrder::LastActivity.into(),
            page_size: 100,
            page_token: String::new(),
        };
        let page = reporting.list_wallets(request).await.unwrap().into_inner();
        if let Some(row) = page.wallets.into_iter().find(|w| w.wallet_id == wallet && w.customer_erased == erased) {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the reporting read model never showed {wallet} with customer_erased = {erased}");
}

#[tokio::test]
async fn an_erased_customer_reads_as_erased_everywhere_while_the_wallet_replays_and_the_log_verifies() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--reporting-db", db.postgres_url.as_str(), "--tenant", "demo"];
    let mut server = TallyServer::start(&data, &args);
    let mut wallets = server.client().await;
    let mut enrolled_at = Vec::new();
    for (wallet, customer_ref) in [("c-1", SECRET), ("c-2", NEIGHBOUR)] {
        let enroll = EnrollRequest {
            tenant_id: "demo".into(),
            wallet_id: wallet.into(),
            idempotency_key: "e".into(),
            customer_ref: customer_ref.into(),
            ..Default::default()
        };
        let enrolled = wallets.enroll(enroll.clone()).await.unwrap().into_inner();
        assert_eq!(enrolled.wallet.as_ref().unwrap().customer_ref, customer_ref, "the enrolment answers the reference");
        enrolled_at.push(enrolled.position);
        // A retry is recognised (its sealed bytes are the recorded ones), not refused as another payload.
        let retried = wallets.enroll(enroll).await.unwrap().into_inner();
        assert_eq!((retried.replayed, retried.wallet.unwrap().customer_ref.as_str()), (true, customer_ref));
        let earn = EarnRequest {
            tenant_id: "demo".into(),
            wallet_id: wallet.into(),
            idempotency_key: "o-1".into(),
            points: 120,
            source_ref: "o-1".into(),
            ..Default::default()
        };
        wallets.earn(earn).await.unwrap();
    }
    assert_eq!(get(&mut wallets, "c-1").await.customer_ref, SECRET);
    let channel = server.channel().await;
    let mut reporting = ReportingServiceClient::new(channel.clone());
    assert_eq!(reported(&mut reporting, "c-1", false).await.customer_ref, SECRET, "opened as the row is read");
    // Sealed: neither the log, nor the keys beside it, nor either read model ever holds it in clear.
    let (pg, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let in_clear = async || -> i64 {
        let sql =
            "SELECT count(*) FROM tally_read.wallets WHERE customer_ref = $1 OR position(convert_to($1, 'UTF8') in customer_sealed) > 0";
        pg.query_one(sql, &[&SECRET]).await.unwrap().get(0)
    };
    assert_eq!(in_clear().await, 0, "the reporting read model keeps it sealed");
    for folder in ["log", "keys", "read-models"] {
        assert_eq!(files_holding(&data.join(folder), SECRET.as_bytes()), Vec::<PathBuf>::new(), "{folder}");
    }

    // Precise refusals: a reason is required; a POS key may not erase; an unknown wallet is not found.
    let field = |status: tonic::Status| (status.code(), status.get_details_bad_request().map(|b| b.field_violations[0].field.clone()));
    assert_eq!(field(wallets.erase_customer(erase("c-1", "x-1", "")).await.unwrap_err()), (Code::InvalidArgument, Some("reason".into())));
    let mut pos = WalletServiceClient::new(server.channel_with(key(&server, Role::Pos).await).await);
    assert_eq!(pos.erase_customer(erase("c-1", "x-1", "ticket 7")).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(wallets.erase_customer(erase("nobody", "x-1", "ticket 7")).await.unwrap_err().code(), Code::NotFound);

    // An operator erases: the answer shows it; a retry answers the same; another request is refused.
    let mut operator = WalletServiceClient::new(server.channel_with(key(&server, Role::Operator).await).await);
    let erased = operator.erase_customer(erase("c-1", "x-1", "ticket 7")).await.unwrap().into_inner();
    let wallet = erased.wallet.as_ref().unwrap();
    assert_eq!((wallet.customer_ref.as_str(), wallet.customer_erased, wallet.balance), ("", true, 120));
    let recorded: Vec<_> = erased.transactions.iter().map(|t| (t.kind, t.reason.as_str(), t.points)).collect();
    assert_eq!(recorded, [(TransactionKind::CustomerErased as i32, "ticket 7", 0)]);
    let again = operator.erase_customer(erase("c-1", "x-1", "ticket 7")).await.unwrap().into_inner();
    assert_eq!((again.replayed, again.position), (true, erased.position));
    let twice = operator.erase_customer(erase("c-1", "x-2", "ticket 8")).await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition, "{twice:?}");
    // An enrolment retried after the erasure finds no key to seal with: refused as such, nothing re-created.
    let late = EnrollRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-1".into(),
        idempotency_key: "e".into(),
        customer_ref: SECRET.into(),
        ..Default::default()
    };
    let refused = wallets.enroll(late).await.unwrap_err();
    assert_eq!((refused.code(), refused.message().contains("erased")), (Code::FailedPrecondition, true), "{refused:?}");
    // Nor does an enrolment refused for anything else leave a key behind.
    let bad = EnrollRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-3".into(),
        idempotency_key: "e".into(),
        customer_ref: "a\u{7}b".into(),
        ..Default::default()
    };
    assert_eq!(field(wallets.enroll(bad).await.unwrap_err()), (Code::InvalidArgument, Some("customer_ref".into())));

    // Every read path: the wallet, its history, the read model, the audit API, the ledger export.
    let now = get(&mut wallets, "c-1").await;
    assert_eq!((now.customer_ref.as_str(), now.customer_erased, now.balance), ("", true, 120));
    assert_eq!(get(&mut wallets, "c-2").await.customer_ref, NEIGHBOUR, "the neighbour is untouched");
    let history = wallets
        .list_transactions(ListTransactionsRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), ..Default::default() })
        .await;
    let history = format!("{:?}", history.unwrap().into_inner());
    assert!(!history.contains(SECRET), "{history}");
    let row = reported(&mut reporting, "c-1", true).await;
    assert_eq!((row.customer_ref.as_str(), row.balance), ("", 120));
    assert_eq!(in_clear().await, 0);
    assert_eq!(reported(&mut reporting, "c-2", false).await.customer_ref, NEIGHBOUR);
    let mut audit = AuditServiceClient::new(server.channel_with(key(&server, Role::Auditor).await).await);
    // As of its enrolment, long before the erasure, the customer reads as erased too.
    let as_of = |wallet: &str, position| WalletAsOfRequest {
        tenant_id: "demo".into(),
        wallet_id: wallet.into(),
        as_of: Some(wallet_as_of_request::AsOf::Position(position)),
    };
    let past = audit.wallet_as_of(as_of("c-1", enrolled_at[0])).await.unwrap().into_inner().wallet.unwrap();
    assert_eq!((past.version, past.customer_ref.as_str(), past.customer_erased), (1, "", true));
    let neighbour = audit.wallet_as_of(as_of("c-2", erased.position)).await.unwrap().into_inner().wallet.unwrap();
    assert_eq!((neighbour.customer_ref.as_str(), neighbour.customer_erased), (NEIGHBOUR, false));
    let export =
        ExportLedgerRequest { tenant_id: "demo".into(), from: None, end: Some(export_ledger_request::End::UpToPosition(erased.position)) };
    let mut rows = audit.export_ledger(export).await.unwrap().into_inner();
    let mut exported = String::new();
    while let Some(row) = rows.message().await.unwrap() {
        exported.push_str(&format!("{row:?}"));
    }
    assert!(!exported.is_empty() && !exported.contains(SECRET), "{exported}");

    // The key is gone from disk (the neighbour's stays), and a restart replays the wallet from the log.
    server.terminate();
    let keys: Vec<_> = std::fs::read_dir(data.join("keys"))
        .unwrap()
        .flat_map(|folder| std::fs::read_dir(folder.unwrap().path()).unwrap())
        .map(|file| file.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1, "only the neighbour's key is left: {keys:?}");
    let output = std::process::Command::new(tally_tests::tally_binary())
        .args(["audit", "verify", "--store", &format!("file://{}", data.display())])
        .output()
        .unwrap();
    assert!(output.status.success(), "verify: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let mut server = TallyServer::start(&data, &args);
    let mut wallets = server.client().await;
    let replayed = get(&mut wallets, "c-1").await;
    assert_eq!((replayed.customer_ref.as_str(), replayed.customer_erased, replayed.balance), ("", true, 120));
    assert_eq!(get(&mut wallets, "c-2").await.customer_ref, NEIGHBOUR);
    // The CLI erases too (the platform key here), and shows the wallet as erased.
    let tally = |args: &[&str]| {
        let output = server.cli().args(args).args(["--server", &server.url]).output().unwrap();
        assert!(output.status.success(), "tally {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    tally(&["wallet", "erase-customer", "--wallet", "c-2", "--key", "x-9", "--reason", "ticket 9"]);
    let shown = tally(&["wallet", "show", "--wallet", "c-2"]);
    assert!(shown.contains("customer erased") && !shown.contains(NEIGHBOUR), "{shown}");
    // Stopped before the test database is dropped, which waits for its connections to close.
    server.terminate();
}
