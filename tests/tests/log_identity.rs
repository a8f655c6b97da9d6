//! Issue 15, item 20: a read model follows one log. A fresh data directory pointed at a reporting
//! database that another log filled used to answer that log's figures as its own; now every log has an
//! identity (stream `$log`), each read model records the log it follows, and another log is refused.

use std::process::Command;

use tally_proto::v1::{EarnRequest, EnrollRequest};
use tally_tests::{TallyServer, TestDatabase, tally_binary};

#[tokio::test]
async fn a_read_model_built_from_one_log_refuses_another() {
    let db = TestDatabase::create().await;
    let first = tempfile::tempdir().unwrap();
    let args = ["--reporting-db", db.postgres_url.as_str()];
    let mut server = TallyServer::start(first.path(), &args);
    let mut client = server.client().await;
    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
    client.enroll(enroll).await.unwrap();
    let earn = EarnRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-1".into(),
        idempotency_key: "o-1".into(),
        points: 80,
        reason: String::new(),
        source_ref: "o-1".into(),
        order_amount: None,
    };
    client.earn(earn).await.unwrap();
    assert!(server.terminate().success());

    // The same log again: the read model follows it.
    let mut again = TallyServer::start(first.path(), &args);
    assert!(again.terminate().success());

    // Another log (a fresh data directory) with the same reporting database: refused, saying why.
    let second = tempfile::tempdir().unwrap();
    let output = Command::new(tally_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data", second.path().to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(!output.status.success(), "it must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the reporting read model was built from another log"), "{stderr}");
}
