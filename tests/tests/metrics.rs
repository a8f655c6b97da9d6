//! Issue 18: the metrics an SRE reads, from a real `tally serve` after a scripted workload — each call
//! counted under its RPC and status code (edge refusals and unknown paths too) and timed; the wallet
//! registry's figures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{AuthorizeRedemptionRequest, EarnRequest, EnrollRequest, GetWalletRequest};
use tally_tests::{TallyServer, free_port, raw_call, scrape_metrics};

/// The value of the series `name` whose labels are exactly `labels`.
fn value(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
        if series_name != name {
            return None;
        }
        let found: BTreeMap<&str, &str> = rest
            .trim_end_matches('}')
            .split(',')
            .filter(|pair| !pair.is_empty())
            .filter_map(|pair| pair.split_once('=').map(|(k, v)| (k, v.trim_matches('"'))))
            .collect();
        (found == labels.iter().copied().collect()).then(|| value.parse().unwrap())
    })
}

#[tokio::test]
async fn calls_and_wallets_are_counted_and_timed() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = TallyServer::start(dir.path(), &["--metrics-listen", &metrics, "--snapshot-every-events", "2"]);
    let mut client = server.client().await;
    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "m-1".into(), idempotency_key: "e".into(), ..Default::default() };
    client.enroll(enroll).await.unwrap();
    for n in 0..3 {
        let earn = EarnRequest {
            tenant_id: "demo".into(),
            wallet_id: "m-1".into(),
            idempotency_key: format!("k-{n}"),
            source_ref: format!("o-{n}"),
            points: 10,
            ..Default::default()
        };
        client.earn(earn).await.unwrap();
    }
    let missing = client.get_wallet(GetWalletRequest { tenant_id: "demo".into(), wallet_id: "nobody".into(), ..Default::default() }).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
    // Refused at the edge: no key.
    let mut anonymous = WalletServiceClient::new(server.raw_channel().await);
    let refused = anonymous.get_wallet(GetWalletRequest { tenant_id: "demo".into(), wallet_id: "m-1".into(), ..Default::default() }).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
    // A path no service serves, twice under different names: one series, not two.
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    for path in ["/tally.v1.Nope/One", "/x/Two"] {
        let status = raw_call(&mut grpc, path, Vec::new()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "no role may call what is not in the policy");
    }

    // A hold of one second, which the timers release when it is due.
    let hold = AuthorizeRedemptionRequest {
        tenant_id: "demo".into(),
        wallet_id: "m-1".into(),
        hold_id: "h-1".into(),
        points: 5,
        timeout_seconds: 1,
        ..Default::default()
    };
    client.authorize_redemption(hold).await.unwrap();

    let wallets = ("service", "tally.v1.WalletService");
    let started = Instant::now();
    let body = loop {
        // The registry's figures are published every second; the timers' once the hold was released.
        let body = scrape_metrics(&metrics).await;
        let published = value(&body, "tally_wallets_active", &[]).is_some_and(|n| n > 0.0)
            && value(&body, "tally_timers_lateness_seconds_count", &[]).is_some_and(|n| n >= 1.0);
        if published || started.elapsed() > Duration::from_secs(10) {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let count = |method: &str, code: &str| value(&body, "tally_rpc_requests_total", &[wallets, ("method", method), ("code", code)]);
    assert_eq!(count("Enroll", "OK"), Some(1.0), "{body}");
    assert_eq!(count("Earn", "OK"), Some(3.0), "{body}");
    assert_eq!(count("GetWallet", "NOT_FOUND"), Some(1.0), "{body}");
    assert_eq!(count("GetWallet", "UNAUTHENTICATED"), Some(1.0), "{body}");
    let unknown = [("service", "unknown"), ("method", "unknown"), ("code", "PERMISSION_DENIED")];
    assert_eq!(value(&body, "tally_rpc_requests_total", &unknown), Some(2.0), "{body}");
    let timed = value(&body, "tally_rpc_duration_seconds_count", &[wallets, ("method", "Earn")]);
    assert_eq!(timed, Some(3.0), "{body}");
    let under_ten_seconds = value(&body, "tally_rpc_duration_seconds_bucket", &[wallets, ("method", "Earn"), ("le", "10")]);
    assert_eq!(under_ten_seconds, Some(3.0), "a histogram with buckets, not a summary: {body}");
    assert_eq!(value(&body, "tally_wallets_active", &[]), Some(1.0), "{body}");
    assert!(value(&body, "tally_wallet_activations_total", &[]).is_some_and(|n| n >= 1.0), "{body}");
    for counter in [
        "tally_wallet_passivations_total",
        "tally_wallet_crashes_total",
        "tally_wallet_quarantines_total",
        "tally_wallet_quarantine_refusals_total",
    ] {
        assert_eq!(value(&body, counter, &[]), Some(0.0), "{counter} in {body}");
    }
    // Every command's wait in its wallet's mailbox is timed; nothing is waiting now.
    assert!(value(&body, "tally_wallet_queue_seconds_count", &[]).is_some_and(|n| n >= 4.0), "{body}");
    for gauge in ["tally_wallet_mailbox_messages", "tally_wallet_mailbox_deepest_messages", "tally_timers_due_wallets"] {
        assert_eq!(value(&body, gauge, &[]), Some(0.0), "{gauge} in {body}");
    }
    assert!(value(&body, "tally_timers_wallets_scheduled", &[]).is_some(), "{body}");
    let late_under_ten_seconds = value(&body, "tally_timers_lateness_seconds_bucket", &[("le", "86400")]);
    assert_eq!(late_under_ten_seconds, value(&body, "tally_timers_lateness_seconds_count", &[]), "{body}");
    // The log: four appends (the demo program's creation, the enrolment and its count, three earns: at
    // least four group commits), their events and bytes; health's view of it.
    let embedded = [("store", "embedded")];
    assert!(value(&body, "tally_store_commit_seconds_count", &embedded).is_some_and(|n| n >= 4.0), "{body}");
    assert!(value(&body, "tally_store_batch_appends_bucket", &[("store", "embedded"), ("le", "1024")]).is_some_and(|n| n >= 4.0), "{body}");
    assert!(value(&body, "tally_store_appended_events_total", &embedded).is_some_and(|n| n >= 4.0), "{body}");
    assert!(value(&body, "tally_store_appended_bytes_total", &embedded).is_some_and(|n| n > 100.0), "{body}");
    assert_eq!(value(&body, "tally_log_writable", &[]), Some(1.0), "{body}");
    // Snapshots every two events: some taken; none rejected, each reason shown at zero.
    assert!(value(&body, "tally_snapshots_saved_total", &[]).is_some_and(|n| n >= 1.0), "{body}");
    for reason in ["wrong_version", "unreadable", "ahead_of_log"] {
        assert_eq!(value(&body, "tally_snapshots_rejected_total", &[("reason", reason)]), Some(0.0), "{body}");
    }

    // Every series the Grafana dashboard in docs/ draws is one this server serves (cluster series only
    // exist on cluster nodes, the reporting projection's only with --reporting-db).
    let dashboard = include_str!("../../docs/grafana/tally-dashboard.json");
    let json: serde_json::Value = serde_json::from_str(dashboard).expect("the dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 6), "the dashboard has its panels");
    let used: std::collections::BTreeSet<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("tally_") && !word.starts_with("tally_cluster_"))
        .collect();
    for name in &used {
        let served = body.lines().any(|line| !line.starts_with('#') && line.starts_with(name));
        assert!(served, "the dashboard uses {name}, which /metrics does not serve:\n{body}");
    }
    assert!(used.len() >= 8, "{used:?}");
}
