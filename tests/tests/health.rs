//! Issue 18: health tells the truth. A node on a PostgreSQL log says NOT_SERVING — for the wallets and
//! for the server as a whole — while the log's database refuses it, with the reason logged and in a
//! metric, and SERVING again once the database takes it back; reads of the health service never fail.

use std::time::{Duration, Instant};

use tally_tests::{TallyServer, TestDatabase, free_port, scrape_metrics};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn status(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    let request = HealthCheckRequest { service: service.into() };
    ServingStatus::try_from(client.check(request).await.unwrap().into_inner().status).unwrap()
}

/// Waits (at most 15 s) until `service` says `wanted`; how long it took.
async fn until(client: &mut HealthClient<tonic::transport::Channel>, service: &str, wanted: ServingStatus) -> Duration {
    let started = Instant::now();
    loop {
        let now = status(client, service).await;
        if now == wanted {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{service:?} still {now:?} after 15 s, not {wanted:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_not_serving_while_the_log_cannot_be_reached_and_serving_when_it_can() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let store = format!("--store={}", database.postgres_url);
    let server = TallyServer::start(dir.path(), &[&store, "--tenant", "acme", "--metrics-listen", &metrics]);
    let mut health = HealthClient::new(server.raw_channel().await);
    for service in ["", "tally.v1.WalletService"] {
        assert_eq!(status(&mut health, service).await, ServingStatus::Serving);
    }

    // The database stops taking this node: no new connections, the open ones ended.
    let admin = database.admin().await;
    let name = database.name();
    admin.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await.unwrap();
    admin.query(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"), &[]).await.unwrap();
    let down = until(&mut health, "tally.v1.WalletService", ServingStatus::NotServing).await;
    assert_eq!(status(&mut health, "").await, ServingStatus::NotServing, "the server as a whole");
    assert_eq!(status(&mut health, "tally.v1.ClusterService").await, ServingStatus::Serving, "what needs no log still serves");
    let body = scrape_metrics(&metrics).await;
    assert!(body.contains("tally_log_writable 0"), "{body}");
    assert!(server.stderr().contains("the log cannot be written"), "the reason is logged");
    eprintln!("NOT_SERVING {down:?} after the database refused the node");

    admin.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await.unwrap();
    let up = until(&mut health, "tally.v1.WalletService", ServingStatus::Serving).await;
    eprintln!("SERVING again {up:?} after the database took it back");
    assert_eq!(status(&mut health, "").await, ServingStatus::Serving);
    assert!(scrape_metrics(&metrics).await.contains("tally_log_writable 1"));
    // And it serves: a wallet enrolled through the reconnected log.
    let mut client = server.client().await;
    let enroll = tally_proto::v1::EnrollRequest {
        tenant_id: "acme".into(),
        wallet_id: "h-1".into(),
        idempotency_key: "e".into(),
        ..Default::default()
    };
    client.enroll(enroll).await.unwrap();
}
