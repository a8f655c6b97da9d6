//! Issue 15, item 4: a clock that disagrees with the log. `tally serve` checks the system clock against
//! the log's latest event at start: behind it, or further ahead than `--clock-jump-max-hours`, it does not
//! start (points would expire and holds time out for good by a wrong clock) unless the operator confirms
//! with `--accept-clock-jump`.

use std::process::Command;

use tally_engine::codec;
use tally_engine::domain::{Change, CommandFingerprint, Event, TenantId, WalletId};
use tally_engine::store::{EmbeddedStore, EventMetadata, EventStore, ExpectedVersion};
use tally_proto::v1::{GetWalletRequest, WalletEnrolledV2};
use tally_tests::{TallyServer, tally_binary};

const DAY_MS: i64 = 86_400_000;

/// A data directory whose log's only event was recorded `offset_ms` from now.
async fn log_recorded_at(offset_ms: i64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (tenant, wallet) = (TenantId::parse("demo").unwrap(), WalletId::parse("c-1").unwrap());
    let enrolled = WalletEnrolledV2 { tenant_id: "demo".into(), wallet_id: "c-1".into(), customer: None };
    let event = Event {
        idempotency_key: "e".into(),
        command_fingerprint: CommandFingerprint::Fnv64(1),
        recorded_at_ms: now + offset_ms,
        change: Change::Enrolled(enrolled),
    };
    let data = vec![codec::encode(&event, &EventMetadata::default())];
    store.append(&codec::wallet_stream(&tenant, &wallet), ExpectedVersion::Exact(0), data).await.unwrap();
    store.close().await;
    dir
}

fn refused_start(dir: &tempfile::TempDir) -> String {
    let output =
        Command::new(tally_binary()).args(["serve", "--listen", "127.0.0.1:0", "--data", dir.path().to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success(), "it must not start");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_clock_far_ahead_of_the_log_stops_the_start_until_the_operator_confirms() {
    let dir = log_recorded_at(-30 * DAY_MS).await;
    let stderr = refused_start(&dir);
    assert!(stderr.contains("hours ahead of the log's latest event") && stderr.contains("--accept-clock-jump"), "{stderr}");
    let server = TallyServer::start(dir.path(), &["--accept-clock-jump"]);
    let wallet = server
        .client()
        .await
        .get_wallet(GetWalletRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), ..Default::default() })
        .await;
    assert_eq!(wallet.unwrap().into_inner().version, 1);
}

#[tokio::test]
async fn a_clock_behind_the_log_stops_the_start_and_confirmed_goes_on_from_the_logs_time() {
    let dir = log_recorded_at(30 * DAY_MS).await;
    let stderr = refused_start(&dir);
    assert!(stderr.contains("hours behind the log's latest event"), "{stderr}");
    let server = TallyServer::start(dir.path(), &["--accept-clock-jump"]);
    let mut client = server.client().await;
    let earn = tally_proto::v1::EarnRequest {
        tenant_id: "demo".into(),
        wallet_id: "c-1".into(),
        idempotency_key: "o-1".into(),
        points: 5,
        reason: String::new(),
        source_ref: "o-1".into(),
        order_amount: None,
    };
    let earned = client.earn(earn).await.unwrap().into_inner();
    let recorded = earned.transactions[0].recorded_at.as_ref().unwrap().seconds * 1000;
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    assert!(recorded >= now + 29 * DAY_MS, "recorded at the log's time, not before its latest event");
}
