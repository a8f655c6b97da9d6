//! Snapshots in the real `tally` process: taken while serving, used after a restart, and purged by the
//! operator command without losing anything.

use std::process::Command;

use tally_proto::v1::{EarnRequest, EnrollRequest, GetWalletRequest};
use tally_tests::{TallyServer, tally_binary};

fn tally(args: &[&str]) -> String {
    let output = Command::new(tally_binary()).args(args).output().expect("tally runs");
    assert!(output.status.success(), "tally {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[tokio::test]
async fn snapshots_are_taken_used_and_purged_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut server = TallyServer::start(dir.path(), &["--snapshot-every-events", "5"]);
    let mut client = server.client().await;
    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
    client.enroll(enroll).await.unwrap();
    for n in 0..22 {
        let earn = EarnRequest {
            tenant_id: "demo".into(),
            wallet_id: "c-1".into(),
            idempotency_key: format!("o-{n}"),
            points: 3,
            reason: String::new(),
            source_ref: format!("o-{n}"),
            order_amount: None,
        };
        client.earn(earn).await.unwrap();
    }
    assert!(server.terminate().success());
    let stats = tally(&["snapshots", "stats", "--data", data]);
    assert!(stats.starts_with("2 snapshots of 1 wallets"), "{stats}");

    let get = GetWalletRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), ..Default::default() };
    let mut server = TallyServer::start(dir.path(), &[]);
    let wallet = server.client().await.get_wallet(get.clone()).await.unwrap().into_inner();
    assert_eq!((wallet.balance, wallet.version), (66, 23), "recovered from snapshot + tail");
    assert!(server.terminate().success());

    let purged = tally(&["snapshots", "purge", "--data", data]);
    assert!(purged.starts_with("deleted 2 snapshots"), "{purged}");
    let server = TallyServer::start(dir.path(), &[]);
    let wallet = server.client().await.get_wallet(get).await.unwrap().into_inner();
    assert_eq!((wallet.balance, wallet.version), (66, 23), "recovered by full replay");
}

/// Issue 15, item 12: derived stores are not the truth. Snapshots or a local read model that cannot be
/// opened (here: eight bytes of 0xff over sled's `conf`) are moved aside and rebuilt from the log with a
/// warning; the server serves, and `tally snapshots purge` works on a damaged store without opening it.
#[tokio::test]
async fn damaged_derived_stores_are_set_aside_and_the_server_serves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut server = TallyServer::start(dir.path(), &["--snapshot-every-events", "5"]);
    let mut client = server.client().await;
    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
    client.enroll(enroll).await.unwrap();
    for n in 0..12 {
        let key = format!("o-{n}");
        let earn = EarnRequest {
            tenant_id: "demo".into(),
            wallet_id: "c-1".into(),
            idempotency_key: key.clone(),
            points: 2,
            reason: String::new(),
            source_ref: key,
            order_amount: None,
        };
        client.earn(earn).await.unwrap();
    }
    assert!(server.terminate().success());
    let damage = |store: &str| {
        let conf = dir.path().join(store).join("conf");
        let mut bytes = std::fs::read(&conf).unwrap();
        bytes[..8].copy_from_slice(&[0xff; 8]);
        std::fs::write(&conf, bytes).unwrap();
    };
    damage("snapshots");
    damage("read-models");

    let mut server = TallyServer::start(dir.path(), &["--snapshot-every-events", "5"]);
    let get = GetWalletRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), ..Default::default() };
    let wallet = server.client().await.get_wallet(get.clone()).await.unwrap().into_inner();
    assert_eq!((wallet.balance, wallet.version), (24, 13), "served from the log");
    assert!(server.terminate().success());
    let stderr = server.stderr();
    assert!(stderr.contains("moved aside"), "{stderr}");
    let aside = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.unwrap().file_name().into_string().ok());
    let aside: Vec<String> = aside.filter(|name| name.contains(".damaged-")).collect();
    assert_eq!(aside.len(), 2, "{aside:?}");

    damage("snapshots");
    let purged = tally(&["snapshots", "purge", "--data", data]);
    assert!(purged.starts_with("deleted the snapshot store"), "{purged}");
    let server = TallyServer::start(dir.path(), &[]);
    let wallet = server.client().await.get_wallet(get).await.unwrap().into_inner();
    assert_eq!(wallet.balance, 24);
}

/// Issue 15, item 20: snapshots follow one log. A node's snapshots of another log (its data directory
/// pointed at another log, a restored directory) could be trusted for a stream of the same name; they
/// are purged at start and the wallet is what its own log says.
#[tokio::test]
async fn snapshots_of_another_log_are_purged_at_start() {
    async fn fill(server: &TallyServer, earns: u32, points: i64) {
        let mut client = server.client().await;
        let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
        client.enroll(enroll).await.unwrap();
        for n in 0..earns {
            let key = format!("o-{n}");
            let earn = EarnRequest {
                tenant_id: "demo".into(),
                wallet_id: "c-1".into(),
                idempotency_key: key.clone(),
                points,
                reason: String::new(),
                source_ref: key,
                order_amount: None,
            };
            client.earn(earn).await.unwrap();
        }
    }
    let args = ["--snapshot-every-events", "5"];
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut server = TallyServer::start(a.path(), &args);
    fill(&server, 12, 3).await;
    assert!(server.terminate().success());
    let mut server = TallyServer::start(b.path(), &args);
    fill(&server, 15, 7).await;
    assert!(server.terminate().success());

    // b's data directory gets a's snapshots (and the note of the log they follow).
    std::fs::remove_dir_all(b.path().join("snapshots")).unwrap();
    let copy = Command::new("cp").arg("-r").arg(a.path().join("snapshots")).arg(b.path()).status().unwrap();
    assert!(copy.success());
    std::fs::copy(a.path().join("snapshots.log"), b.path().join("snapshots.log")).unwrap();

    let mut server = TallyServer::start(b.path(), &args);
    let get = GetWalletRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), ..Default::default() };
    let wallet = server.client().await.get_wallet(get).await.unwrap().into_inner();
    assert_eq!((wallet.balance, wallet.version), (105, 16), "b's own log, not a's snapshot plus b's tail");
    assert!(server.terminate().success());
    assert!(server.stderr().contains("snapshots were of another log"), "{}", server.stderr());
}
