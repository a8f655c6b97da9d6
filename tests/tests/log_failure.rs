//! Issue 15, item 7: a log that can no longer be written (here: its disk is full) stops the server —
//! health NOT_SERVING at once, calls in flight drained, exit non-zero with the reason — instead of
//! serving reads beside dead writes and saying at shutdown that everything acknowledged is durable.
//!
//! The data directory is a 1 MiB tmpfs mounted for the test (CI runs as root).

use std::process::Command;
use std::time::Duration;

use tally_proto::v1::{EarnRequest, EnrollRequest};
use tally_tests::TallyServer;

struct Mount(tempfile::TempDir);

impl Mount {
    fn tmpfs(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path()).status();
        assert!(status.as_ref().is_ok_and(|s| s.success()), "this test mounts a tmpfs (it needs root, as CI runs): {status:?}");
        Self(dir)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_stops_the_server_with_a_reason_and_a_failed_exit() {
    let mount = Mount::tmpfs("1m");
    let mut server = TallyServer::start(mount.0.path(), &["--snapshot-every-events", "0", "--local-read-model", "false"]);
    let mut client = server.client().await;
    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() };
    client.enroll(enroll).await.unwrap();
    let mut acknowledged = 0;
    let mut refused = None;
    for n in 0..20_000 {
        let key = format!("order-{n:05}");
        let earn = EarnRequest {
            tenant_id: "demo".into(),
            wallet_id: "c-1".into(),
            idempotency_key: key.clone(),
            points: 1,
            reason: "r".repeat(200),
            source_ref: key,
            order_amount: None,
        };
        match client.earn(earn).await {
            Ok(_) => acknowledged += 1,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("a 1 MiB disk fills up");
    assert!(acknowledged > 100, "{acknowledged} acknowledged before the disk filled");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let status = server.wait_exit(Duration::from_secs(60)).expect("the server stops by itself");
    assert!(!status.success(), "a non-zero exit");
    let stderr = server.stderr();
    assert!(stderr.contains("can no longer be written"), "{stderr}");
    assert!(!stderr.contains("stopped cleanly"), "{stderr}");
}
