//! Read models in the real `tally` process: the ReportingService and ProjectionsService over gRPC, a
//! SIGKILL in the middle of a load, a restart, a rebuild, and then both read models checked against
//! a fold of the log the server wrote.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tally_engine::store::{EmbeddedStore, EventStore};
use tally_projections::model::Fold;
use tally_projections::movement::decode_batch;
use tally_projections::{PostgresReadModel, SledReadModel};
use tally_proto::v1::projections_service_client::ProjectionsServiceClient;
use tally_proto::v1::reporting_service_client::ReportingServiceClient;
use tally_proto::v1::{
    EarnRequest, EnrollRequest, LiabilityRequest, ListProjectionsRequest, ListWalletsRequest, ProgramStatsRequest,
    RebuildProjectionRequest, RedeemRequest, WalletOrder,
};
use tally_tests::{Authed, TallyServer, TestDatabase};
use tonic::Code;
use tonic_types::StatusExt;

const TENANT: &str = "acme";

/// Enrolls and earns (now and then redeems) on `callers` wallets until the server dies; returns the
/// highest log position any call was acknowledged at.
async fn load(channel: Authed, callers: usize, acked: Arc<AtomicU64>) {
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let mut client = tally_proto::v1::wallet_service_client::WalletServiceClient::new(channel.clone());
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                let wallet = format!("load-{c}");
                let enroll = EnrollRequest {
                    tenant_id: TENANT.into(),
                    wallet_id: wallet.clone(),
                    idempotency_key: format!("{wallet}-enroll"),
                    customer_ref: format!("cust-{c}"),
                    ..Default::default()
                };
                if client.enroll(enroll).await.is_err() {
                    return;
                }
                for n in 0u64.. {
                    let key = format!("{wallet}-{n}");
                    let reply = if n % 5 == 4 {
                        let redeem = RedeemRequest {
                            tenant_id: TENANT.into(),
                            wallet_id: wallet.clone(),
                            idempotency_key: key,
                            points: 15,
                            reward_ref: "mug".into(),
                        };
                        client.redeem(redeem).await
                    } else {
                        let earn = EarnRequest {
                            tenant_id: TENANT.into(),
                            wallet_id: wallet.clone(),
                            idempotency_key: key.clone(),
                            points: 10,
                            reason: "order".into(),
                            source_ref: key,
                            order_amount: None,
                        };
                        client.earn(earn).await
                    };
                    match reply {
                        Ok(reply) => {
                            acked.fetch_max(reply.into_inner().position, Ordering::Relaxed);
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

/// Waits until each of the `expected` projections has applied the log up to `position`; returns the head.
async fn caught_up(projections: &mut ProjectionsServiceClient<Authed>, position: u64, expected: usize) -> u64 {
    for _ in 0..600 {
        let list = projections.list_projections(ListProjectionsRequest {}).await.unwrap().into_inner().projections;
        assert_eq!(list.len(), expected, "{list:?}");
        assert!(list.iter().all(|p| p.state == "running" || p.state == "starting"), "{list:?}");
        if list.iter().all(|p| p.checkpoint >= position && p.checkpoint == p.log_head) {
            return list[0].log_head;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("projections did not catch up with position {position} in 60 s");
}

async fn all_wallets(reporting: &mut ReportingServiceClient<Authed>) -> BTreeMap<String, (i64, i64, u64)> {
    let mut wallets = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let request = ListWalletsRequest { tenant_id: TENANT.into(), order_by: WalletOrder::LastActivity.into(), page_size: 7, page_token };
        let page = reporting.list_wallets(request).await.unwrap().into_inner();
        for w in page.wallets {
            assert!(wallets.insert(w.wallet_id, (w.balance, w.lifetime_earned, w.events)).is_none(), "a wallet listed twice");
        }
        if page.next_page_token.is_empty() {
            return wallets;
        }
        page_token = page.next_page_token;
    }
}

async fn fold_of(dir: &std::path::Path) -> Fold {
    let store = EmbeddedStore::open(dir).expect("open the log the server wrote");
    let mut fold = Fold::default();
    let mut position = 1;
    loop {
        let events = store.read_all(position, 10_000).await.unwrap();
        let Some(last) = events.last().map(|e| e.global_position) else { break };
        decode_batch(events).unwrap().iter().for_each(|m| fold.apply(m));
        position = last + 1;
    }
    store.close().await;
    fold
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_survive_kill_9_mid_load_and_a_rebuild_over_grpc() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--reporting-db", db.postgres_url.as_str(), "--tenant", "acme,globex"];
    let mut server = TallyServer::start(dir.path(), &args);
    let acked = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(load(server.channel().await, 16, Arc::clone(&acked)));
    for _ in 0..600 {
        if acked.load(Ordering::Relaxed) >= 1_500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill_9();
    load.await.unwrap();
    let acked = acked.load(Ordering::Relaxed);
    assert!(acked >= 1_500, "the load got going");

    let mut server = TallyServer::start(dir.path(), &args);
    let channel = server.channel().await;
    let mut projections = ProjectionsServiceClient::new(channel.clone());
    let mut reporting = ReportingServiceClient::new(channel.clone());
    let head = caught_up(&mut projections, acked, 2).await;

    let before_rebuild = all_wallets(&mut reporting).await;
    let liability = reporting.liability(LiabilityRequest { tenant_id: TENANT.into() }).await.unwrap().into_inner();
    assert_eq!(liability.as_of_position, head);
    // The ledger export for finance, read from the log up to the same position, closes at the same
    // liability, and balances (issue 19 item 3).
    let export = tally_proto::v1::ExportLedgerRequest {
        tenant_id: TENANT.into(),
        from: None,
        end: Some(tally_proto::v1::export_ledger_request::End::UpToPosition(head)),
    };
    let mut stream =
        tally_proto::v1::audit_service_client::AuditServiceClient::new(channel.clone()).export_ledger(export).await.unwrap().into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await.unwrap() {
        last = message.item;
    }
    let Some(tally_proto::v1::export_ledger_response::Item::Reconciliation(r)) = last else {
        panic!("the export ends with its reconciliation")
    };
    assert_eq!((r.as_of_position, r.closing_liability), (head, liability.outstanding_points + liability.negative_points));
    let net = r.issued + r.purchased - r.redeemed - r.reversed + r.adjusted - r.forfeited - r.expired;
    assert_eq!(r.opening_liability + net, r.closing_liability, "{r:?}");
    let stats = reporting
        .program_stats(ProgramStatsRequest { tenant_id: TENANT.into(), from_day: "2000-01-01".into(), to_day: "2000-12-31".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.days.is_empty(), "nothing happened in 2000");

    // Rebuild the reporting model over gRPC while it keeps answering.
    let mut progress = projections.rebuild_projection(RebuildProjectionRequest { name: "reporting".into() }).await.unwrap().into_inner();
    let mut last = None;
    while let Some(p) = progress.message().await.unwrap() {
        last = Some(p);
    }
    let last = last.expect("progress was reported");
    assert_eq!((last.phase.as_str(), last.generation), ("done", 2), "{last:?}");
    assert_eq!(all_wallets(&mut reporting).await, before_rebuild, "the rebuilt model answers the same");

    // Bad calls are named.
    let status = projections.rebuild_projection(RebuildProjectionRequest { name: "nope".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let request = ListWalletsRequest { tenant_id: TENANT.into(), order_by: 0, page_size: 5, page_token: "a:1:x".into() };
    let status = reporting.list_wallets(request).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "page_token");
    let status = reporting.liability(LiabilityRequest { tenant_id: "initech".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let request = ProgramStatsRequest { tenant_id: TENANT.into(), from_day: "2026-02-30".into(), to_day: "2026-03-01".into() };
    let status = reporting.program_stats(request).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "from_day");
    assert!(server.terminate().success());

    // Both read models equal a fold of the log the server wrote.
    let fold = fold_of(dir.path()).await;
    let expected: BTreeMap<String, (i64, i64, u64)> = fold
        .wallets
        .iter()
        .filter(|((t, _), _)| t == TENANT)
        .map(|((_, w), s)| (w.clone(), (s.balance, s.lifetime_earned, s.events)))
        .collect();
    assert_eq!(before_rebuild, expected);
    assert_eq!((liability.outstanding_points, liability.negative_points, liability.wallets), {
        let l = fold.liability[TENANT];
        (l.outstanding_points, l.negative_points, l.wallets)
    });
    let sled = SledReadModel::open(dir.path().join("read-models")).unwrap();
    for ((tenant, wallet), summary) in &fold.wallets {
        assert_eq!(sled.wallet(tenant, wallet).unwrap(), (Some(summary.clone()), fold.position), "{tenant}/{wallet}");
    }
    let postgres = PostgresReadModel::connect(&db.url).await.unwrap();
    assert_eq!(postgres.checkpoint().await.unwrap(), fold.position);
    assert_eq!(postgres.liability(TENANT).await.unwrap(), (fold.liability[TENANT], fold.position));
}

#[tokio::test]
async fn without_a_reporting_database_reporting_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &["--local-read-model", "false"]);
    let channel = server.channel().await;
    let status = ReportingServiceClient::new(channel.clone()).liability(LiabilityRequest { tenant_id: "demo".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("--reporting-db"), "{status:?}");
    let list = ProjectionsServiceClient::new(channel).list_projections(ListProjectionsRequest {}).await.unwrap().into_inner();
    assert!(list.projections.is_empty());
}

#[tokio::test]
async fn projection_lag_is_a_prometheus_metric() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", tally_tests::free_port());
    let server = TallyServer::start(dir.path(), &["--metrics-listen", &metrics]);
    let mut client = server.client().await;
    let enroll = EnrollRequest { tenant_id: "demo".into(), wallet_id: "m-1".into(), idempotency_key: "e".into(), ..Default::default() };
    let position = client.enroll(enroll).await.unwrap().into_inner().position;
    caught_up(&mut ProjectionsServiceClient::new(server.channel().await), position, 1).await;
    let body = tally_tests::scrape_metrics(&metrics).await;
    // The log holds the `demo` program's creation and the enrolment.
    for metric in [
        "tally_projection_lag_events{projection=\"wallet_activity\"} 0".to_owned(),
        format!("tally_projection_checkpoint{{projection=\"wallet_activity\"}} {position}"),
    ] {
        assert!(body.contains(&metric), "{metric} missing from\n{body}");
    }
    assert!(body.contains("tally_projection_lag_seconds{projection=\"wallet_activity\"}"), "{body}");

    // The operator's commands.
    let tally = |args: &[&str]| {
        let output = server.cli().args(args).output().unwrap();
        assert!(output.status.success(), "tally {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let status = tally(&["projections", "status", "--server", &server.url]);
    assert!(status.contains("wallet_activity") && status.contains("running"), "{status}");
    let rebuilt = tally(&["projections", "rebuild", "wallet_activity", "--server", &server.url]);
    assert!(rebuilt.starts_with("rebuilt wallet_activity: generation 2 is live"), "{rebuilt}");
    let output = server.cli().args(["projections", "rebuild", "nope", "--server", &server.url]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("NOT_FOUND: no projection \"nope\""), "{output:?}");
}
