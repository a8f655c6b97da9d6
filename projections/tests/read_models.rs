//! The read models against a direct fold of the log: after seeded random workloads, after failed
//! batches, across rebuilds with writes going on, and with events they must quarantine. PostgreSQL tests use a real
//! server (`TALLY_TEST_PG_URL`, one throwaway database per test).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Workload, fold_log};
use tally_engine::codec;
use tally_engine::domain::{Change, CommandFingerprint, Event, TenantId, WalletId};
use tally_engine::limits::BALANCE_ABS_MAX;
use tally_engine::store::{EventData, EventMetadata, EventStore, ExpectedVersion, InMemoryStore, StreamId};
use tally_projections::model::{DayStats, Fold};
use tally_projections::movement::MovementKind;
use tally_projections::postgres::{WalletCursor, WalletOrder, date_of_day};
use tally_projections::runner::{RebuildPhase, RunState};
use tally_projections::{PostgresReadModel, Projection, ReadModel, RunnerOptions, SledReadModel};
use tally_proto::v1::{PointsEarned, WalletEnrolledV2};
use tally_tests::TestDatabase;

const WAIT: Duration = Duration::from_secs(60);

fn store() -> Arc<dyn EventStore> {
    InMemoryStore::new()
}

/// Opens the sled model again; sled's flusher thread lets go of the directory shortly after a drop.
async fn reopen(dir: &std::path::Path) -> SledReadModel {
    for _ in 0..100 {
        if let Ok(model) = SledReadModel::open(dir) {
            return model;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    SledReadModel::open(dir).expect("reopen the sled read model")
}

fn options(batch_size: usize) -> RunnerOptions {
    RunnerOptions { batch_size, rebuild_batch_size: batch_size * 3, retry_max: Duration::from_millis(100), trace_calls: false }
}

/// A plain connection to the test database, to look at (or tamper with) what the read model wrote.
async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn caught_up(projection: &Projection, store: &Arc<dyn EventStore>) {
    let head = *store.head().borrow();
    tokio::time::timeout(WAIT, projection.wait_for(head)).await.expect("projection caught up in time").expect("projection runs");
}

fn assert_sled_matches(model: &SledReadModel, fold: &Fold) {
    for ((tenant, wallet), expected) in &fold.wallets {
        let (summary, as_of) = model.wallet(tenant, wallet).unwrap();
        assert_eq!(summary.as_ref(), Some(expected), "summary of {tenant}/{wallet}");
        assert_eq!(as_of, fold.position);
        // Page through the whole history, newest first, 7 at a time.
        let mut entries = Vec::new();
        let mut before = None;
        loop {
            let page = model.history(tenant, wallet, before, 7).unwrap();
            let Some(last) = page.entries.last() else { break };
            before = Some(last.position);
            entries.extend(page.entries);
        }
        entries.reverse();
        assert_eq!(entries.len() as u64, expected.events, "history length of {tenant}/{wallet}");
        let mut balance = 0;
        for (version, entry) in entries.iter().enumerate() {
            balance += entry.points;
            assert_eq!(entry.stream_version, version as u64 + 1);
            assert_eq!(entry.balance_after, balance);
        }
        assert_eq!(balance, expected.balance);
    }
    assert_eq!(model.wallet("acme", "never-seen").unwrap().0, None);
}

async fn assert_postgres_matches(model: &PostgresReadModel, db: &TestDatabase, fold: &Fold) {
    let client = sql(&db.url).await;
    assert_eq!(model.checkpoint().await.unwrap(), fold.position);

    // wallets, paged both ways.
    for order in [WalletOrder::Balance, WalletOrder::LastActivity] {
        for tenant in ["acme", "globex"] {
            let mut seen = BTreeMap::new();
            let mut cursor: Option<WalletCursor> = None;
            let mut previous: Option<i64> = None;
            loop {
                let page = model.list_wallets(tenant, order, 9, cursor.as_ref()).await.unwrap();
                assert_eq!(page.as_of_position, fold.position);
                for row in &page.wallets {
                    let value = if order == WalletOrder::Balance { row.summary.balance } else { row.summary.last_activity_ms };
                    assert!(previous.is_none_or(|p| p >= value), "{order:?} order");
                    previous = Some(value);
                    assert!(seen.insert(row.wallet_id.clone(), row.summary.clone()).is_none(), "wallet listed twice");
                }
                cursor = page.next;
                if cursor.is_none() {
                    break;
                }
            }
            let expected: BTreeMap<_, _> =
                fold.wallets.iter().filter(|((t, _), _)| t == tenant).map(|((_, w), s)| (w.clone(), s.clone())).collect();
            assert_eq!(seen, expected, "wallets of {tenant} by {order:?}");
        }
    }

    // ledger_entries, one row per movement but enrolments.
    let rows = client
        .query("SELECT position, tenant_id, wallet_id, stream_version, kind, points, reason, reference, idempotency_key FROM tally_read.ledger_entries ORDER BY position", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), fold.ledger.len());
    for (row, m) in rows.iter().zip(&fold.ledger) {
        assert_eq!(row.get::<_, i64>(0) as u64, m.position);
        assert_eq!((row.get::<_, &str>(1), row.get::<_, &str>(2)), (&*m.tenant, &*m.wallet));
        assert_eq!(row.get::<_, i64>(3) as u64, m.stream_version);
        assert_eq!(row.get::<_, &str>(4), m.kind.as_str());
        assert_eq!(row.get::<_, i64>(5), m.points);
        assert_eq!((row.get::<_, &str>(6), row.get::<_, &str>(7), row.get::<_, &str>(8)), (&*m.reason, &*m.reference, &*m.idempotency_key));
    }

    // program_daily_stats through the API, day by day and in total.
    for tenant in ["acme", "globex"] {
        let days: Vec<(i64, DayStats)> = fold.days.iter().filter(|((t, _), _)| t == tenant).map(|((_, d), s)| (*d, *s)).collect();
        let (first, last) = (days.first().unwrap().0, days.last().unwrap().0);
        let stats = model.program_stats(tenant, date_of_day(first), date_of_day(last)).await.unwrap();
        assert_eq!(stats.as_of_position, fold.position);
        let expected: Vec<_> = days.iter().map(|(d, s)| (date_of_day(*d), *s)).collect();
        assert_eq!(stats.days, expected, "daily stats of {tenant}");
        assert_eq!(stats.totals.active_wallets as usize, fold.active_between(tenant, first, last));

        // Daily stats and liability agree with the ledger.
        let ledger_sum: i64 = client
            .query_one("SELECT coalesce(sum(points), 0)::int8 FROM tally_read.ledger_entries WHERE tenant_id = $1", &[&tenant])
            .await
            .unwrap()
            .get(0);
        assert_eq!(stats.totals.net_points(), ledger_sum, "daily stats of {tenant} sum to the ledger");
        let (liability, as_of) = model.liability(tenant).await.unwrap();
        assert_eq!(as_of, fold.position);
        assert_eq!(liability, fold.liability[tenant], "liability of {tenant}");
        assert_eq!(liability.outstanding_points + liability.negative_points, ledger_sum, "liability of {tenant} is the ledger's sum");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_read_model_equals_a_fold_of_the_log_after_random_workloads() {
    for seed in 1..=4u64 {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        let mut workload = Workload::new(seed, 40);
        workload.run(&*store, 600).await;
        let model = Arc::new(SledReadModel::open(dir.path()).unwrap());
        let projection = Projection::spawn(Arc::clone(&store), model.clone(), options(1 + seed as usize * 37));
        workload.run(&*store, 600).await;
        caught_up(&projection, &store).await;
        assert_sled_matches(&model, &fold_log(&store).await);

        // Stop, reopen, go on from the checkpoint: nothing applied twice.
        projection.stop().await;
        drop(model);
        let model = Arc::new(reopen(dir.path()).await);
        workload.run(&*store, 300).await;
        let projection = Projection::spawn(Arc::clone(&store), model.clone(), options(500));
        caught_up(&projection, &store).await;
        assert_sled_matches(&model, &fold_log(&store).await);
        projection.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_model_equals_a_fold_of_the_log_after_random_workloads() {
    for seed in 1..=3u64 {
        let db = TestDatabase::create().await;
        let store = store();
        let mut workload = Workload::new(seed, 30);
        workload.run(&*store, 500).await;
        let model = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
        let projection = Projection::spawn(Arc::clone(&store), model.clone(), options(1 + seed as usize * 53));
        workload.run(&*store, 500).await;
        caught_up(&projection, &store).await;
        let fold = fold_log(&store).await;
        // The workload covers every kind of movement that changes a balance.
        let kinds = [
            MovementKind::Earn,
            MovementKind::Redeem,
            MovementKind::Reverse,
            MovementKind::Purchase,
            MovementKind::Expire,
            MovementKind::Transfer,
        ];
        for kind in kinds {
            assert!(fold.ledger.iter().any(|m| m.kind == kind), "no {kind:?} in the workload");
        }
        assert_postgres_matches(&model, &db, &fold).await;
        projection.stop().await;

        // A second connect (a restart) keeps the live generation and its checkpoint.
        let model = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
        workload.run(&*store, 200).await;
        let projection = Projection::spawn(Arc::clone(&store), model.clone(), options(64));
        caught_up(&projection, &store).await;
        assert_postgres_matches(&model, &db, &fold_log(&store).await).await;
        projection.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_midway_is_rolled_back_and_retried_without_counting_twice() {
    let db = TestDatabase::create().await;
    let store = store();
    let mut workload = Workload::new(7, 20);
    workload.run(&*store, 400).await;
    let head = *store.head().borrow();
    let client = sql(&db.url).await;
    let model = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    // The ledger rows of the batch go in first; refuse one in the middle of the log, so every later
    // write of that batch (wallets, stats, checkpoint) must roll back with it.
    let poison_at = (head / 2) as i64;
    client
        .batch_execute(&format!(
            "CREATE FUNCTION tally_read_g1.fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.position = {poison_at} THEN RAISE EXCEPTION 'injected failure at %', NEW.position; END IF; RETURN NEW; END $$;
             CREATE TRIGGER fail_once BEFORE INSERT ON tally_read_g1.ledger_entries FOR EACH ROW EXECUTE FUNCTION tally_read_g1.fail_once();"
        ))
        .await
        .unwrap();
    let projection = Projection::spawn(Arc::clone(&store), model.clone(), options(50));
    let mut status = projection.watch();
    let stuck =
        tokio::time::timeout(WAIT, status.wait_for(|s| matches!(s.state, RunState::Retrying { .. }))).await.unwrap().unwrap().clone();
    assert!(matches!(&stuck.state, RunState::Retrying { error } if error.contains("injected failure")), "{stuck:?}");
    assert!(model.checkpoint().await.unwrap() < poison_at as u64);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(model.checkpoint().await.unwrap() < poison_at as u64, "nothing past the failing batch is committed");

    client.batch_execute("DROP TRIGGER fail_once ON tally_read_g1.ledger_entries").await.unwrap();
    caught_up(&projection, &store).await;
    assert_eq!(projection.status().state, RunState::Running);
    assert_postgres_matches(&model, &db, &fold_log(&store).await).await;
    projection.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_batch_that_fails_is_retried_without_losing_what_the_replay_holds() {
    let db = TestDatabase::create().await;
    let store = store();
    let mut workload = Workload::new(8, 20);
    workload.run(&*store, 400).await;
    let head = *store.head().borrow();
    let client = sql(&db.url).await;
    let model = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    let generation = model.create_generation().await.unwrap();
    // The first insert of this ledger row fails, once (a sequence is not rolled back with it).
    client
        .batch_execute(&format!(
            "CREATE SEQUENCE tally_read_g{generation}.failures;
             CREATE FUNCTION tally_read_g{generation}.fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.position = {} AND nextval('tally_read_g{generation}.failures') = 1 THEN
                 RAISE EXCEPTION 'injected failure at %', NEW.position; END IF; RETURN NEW; END $$;
             CREATE TRIGGER fail_once BEFORE INSERT ON tally_read_g{generation}.ledger_entries
                 FOR EACH ROW EXECUTE FUNCTION tally_read_g{generation}.fail_once();",
            head / 2
        ))
        .await
        .unwrap();
    let mut replay = tally_projections::replay::Replay::spawn(Arc::clone(&store), 0, 100);
    let (mut checkpoint, mut failures) = (0, 0);
    while let Some(batch) = replay.next().await {
        let batch = batch.unwrap();
        while let Err(error) = model.apply(generation, checkpoint, batch.through, Arc::clone(&batch.movements)).await {
            assert!(error.to_string().contains("injected failure"), "{error}");
            failures += 1;
        }
        checkpoint = batch.through;
    }
    assert_eq!(failures, 1);
    model.promote(generation).await.unwrap();
    assert_postgres_matches(&model, &db, &fold_log(&store).await).await;
}

async fn rebuild_with_writes_going_on(model: Arc<dyn ReadModel>, store: Arc<dyn EventStore>, workload: Workload) -> Workload {
    let projection = Projection::spawn(Arc::clone(&store), model, options(200));
    caught_up(&projection, &store).await;
    let before = projection.status().generation;
    let writer = {
        let store = Arc::clone(&store);
        let mut workload = workload;
        tokio::spawn(async move {
            for _ in 0..20 {
                workload.run(&*store, 50).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            workload
        })
    };
    let mut progress = projection.rebuild().await.unwrap();
    assert!(matches!(projection.rebuild().await, Err(tally_projections::ProjectionError::RebuildRunning { .. })));
    let done = tokio::time::timeout(WAIT, progress.wait_for(|p| p.is_finished())).await.unwrap().unwrap().clone();
    assert_eq!(done.phase, RebuildPhase::Done, "{done:?}");
    let workload = writer.await.unwrap();
    caught_up(&projection, &store).await;
    let status = projection.status();
    assert_eq!(status.generation, done.generation);
    assert!(status.generation > before);
    projection.stop().await;
    workload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_rebuild_while_writes_continue_swaps_in_a_complete_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = store();
    let mut workload = Workload::new(11, 50);
    workload.run(&*store, 3_000).await;
    let model = Arc::new(SledReadModel::open(dir.path()).unwrap());
    rebuild_with_writes_going_on(model.clone(), Arc::clone(&store), workload).await;
    assert_sled_matches(&model, &fold_log(&store).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rebuild_while_writes_continue_swaps_in_a_complete_model() {
    let db = TestDatabase::create().await;
    let store = store();
    let mut workload = Workload::new(12, 50);
    workload.run(&*store, 3_000).await;
    let model = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    rebuild_with_writes_going_on(model.clone(), Arc::clone(&store), workload).await;
    assert_postgres_matches(&model, &db, &fold_log(&store).await).await;
    let client = sql(&db.url).await;
    let schemas: Vec<String> = client
        .query("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tally_read_g%' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(schemas, ["tally_read_g2"], "the old generation is dropped after the swap");
    // The replay went in without the secondary indexes; the promotion built them.
    let indexes = |schema: &'static str| {
        let client = &client;
        async move {
            let sql = "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 ORDER BY 1";
            client.query(sql, &[&schema]).await.unwrap().iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()
        }
    };
    let rebuilt = indexes("tally_read_g2").await;
    for index in ["ledger_entries_by_wallet", "wallets_by_activity", "wallets_by_balance"] {
        assert!(rebuilt.iter().any(|i| i == index), "{index} missing: {rebuilt:?}");
    }
    let tables: i64 = client.query_one("SELECT count(*) FROM pg_tables WHERE tablename = 'deferred_indexes'", &[]).await.unwrap().get(0);
    assert_eq!(tables, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_holding_more_wallets_than_it_may_keep_writes_them_out_and_goes_on() {
    let db = TestDatabase::create().await;
    let store = store();
    let mut workload = Workload::new(14, 50);
    workload.run(&*store, 3_000).await;
    // 50 wallets, of which a replay may keep 10 in memory: written out after the first batch.
    let model = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap().with_replay_wallets_max(10));
    rebuild_with_writes_going_on(model.clone(), Arc::clone(&store), workload).await;
    assert_postgres_matches(&model, &db, &fold_log(&store).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_leaves_the_live_model_untouched() {
    let db = TestDatabase::create().await;
    let store = store();
    let mut workload = Workload::new(13, 50);
    workload.run(&*store, 3_000).await;
    let dir = tempfile::tempdir().unwrap();
    let sled: Arc<dyn ReadModel> = Arc::new(SledReadModel::open(dir.path()).unwrap());
    let postgres: Arc<dyn ReadModel> = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    for model in [sled, postgres] {
        let projection = Projection::spawn(Arc::clone(&store), model, options(10));
        caught_up(&projection, &store).await;
        let live = projection.status().generation;
        let mut progress = projection.rebuild().await.unwrap();
        progress.wait_for(|p| p.checkpoint > 0).await.unwrap();
        drop(progress);
        let mut status = projection.watch();
        let cancelled = tokio::time::timeout(WAIT, status.wait_for(|s| s.rebuild.as_ref().is_some_and(|p| p.is_finished())))
            .await
            .unwrap()
            .unwrap()
            .clone();
        assert_eq!(cancelled.rebuild.unwrap().phase, RebuildPhase::Cancelled);
        assert_eq!(cancelled.generation, live, "the live generation did not change");
        workload.run(&*store, 100).await;
        caught_up(&projection, &store).await;
        projection.stop().await;
    }
    let fold = fold_log(&store).await;
    // The sled model stopped before the PostgreSQL round's writes: it resumes from its checkpoint.
    let reopened = Arc::new(reopen(dir.path()).await);
    let projection = Projection::spawn(Arc::clone(&store), reopened.clone(), options(10));
    caught_up(&projection, &store).await;
    projection.stop().await;
    assert_sled_matches(&reopened, &fold);
    let postgres = PostgresReadModel::connect(&db.url).await.unwrap();
    assert_postgres_matches(&postgres, &db, &fold).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_quarantined_named_in_the_status_and_the_rest_applied() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store();
    let mut workload = Workload::new(5, 10);
    workload.run(&*store, 100).await;
    let stream = codec::wallet_stream(&TenantId::parse("acme").unwrap(), &WalletId::parse("poisoned").unwrap());
    let poison = EventData {
        event_type: "tally.v1.PointsTeleported".to_owned(),
        schema_version: 1,
        recorded_at_ms: common::START_MS,
        idempotency_key: "x".to_owned(),
        command_fingerprint: 0,
        command_digest: None,
        metadata: EventMetadata::default(),
        payload: vec![1, 2, 3],
    };
    let at = store.append(&stream, ExpectedVersion::Exact(0), vec![poison]).await.unwrap().first_position;
    workload.run(&*store, 100).await;
    // The reference: the log without the poison event.
    let fold = fold_skipping(&store, &[]).await;
    let sled = Arc::new(SledReadModel::open(dir.path()).unwrap());
    let postgres = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    for model in [sled.clone() as Arc<dyn ReadModel>, postgres.clone()] {
        let projection = Projection::spawn(Arc::clone(&store), model, options(1));
        caught_up(&projection, &store).await;
        let status = projection.status();
        assert_eq!(status.state, RunState::Running);
        assert_eq!(status.quarantined, 1, "{status:?}");
        let quarantined = &status.recent_quarantined[0];
        assert_eq!(
            (quarantined.position, quarantined.stream.as_str(), quarantined.event_type.as_str()),
            (at, "acme/wallet/poisoned", "tally.v1.PointsTeleported")
        );
        // A rebuild quarantines it again, and says so.
        rebuilt(&projection).await;
        caught_up(&projection, &store).await;
        let status = projection.status();
        assert_eq!((status.quarantined, status.recent_quarantined[0].position), (1, at), "{status:?}");
        projection.stop().await;
    }
    assert_sled_matches(&sled, &fold);
    assert_postgres_matches(&postgres, &db, &fold).await;
}

/// The log's fold without the poison events and the events at `skipped` (those a read model quarantined).
async fn fold_skipping(store: &Arc<dyn EventStore>, skipped: &[u64]) -> Fold {
    fold_skipping_tenant(store, skipped, "").await
}

/// Rebuilds through the runner and waits for the swap.
async fn rebuilt(projection: &Projection) {
    let mut progress = projection.rebuild().await.unwrap();
    let done = tokio::time::timeout(WAIT, progress.wait_for(|p| p.is_finished())).await.unwrap().unwrap().clone();
    assert_eq!(done.phase, RebuildPhase::Done, "{done:?}");
}

/// An event written straight to the log, past the domain.
fn raw(key: &str, change: Change, recorded_at_ms: i64) -> EventData {
    let event = Event { idempotency_key: key.to_owned(), command_fingerprint: CommandFingerprint::Blake3([0; 16]), recorded_at_ms, change };
    codec::encode(&event, &EventMetadata::default())
}

fn enrolled(_key: &str) -> Change {
    Change::Enrolled(WalletEnrolledV2::default())
}

fn earned(points: i64, reason: &str) -> Change {
    Change::Earned(PointsEarned { points, reason: reason.to_owned(), source_ref: "order".to_owned(), ..PointsEarned::default() })
}

/// Issue 15 item 3: a tenant's events that cannot be stored, or sums past `i64`, among other tenants'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_unstorable_events_are_quarantined_and_other_tenants_keep_following() {
    const MEGA_WALLETS: usize = 9_300;
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store();
    let mut workload = Workload::new(11, 20);
    let at = common::START_MS;
    let append = |stream: &str, events: Vec<EventData>| {
        let store = Arc::clone(&store);
        let stream = StreamId::new(stream).unwrap();
        async move { store.append(&stream, ExpectedVersion::Any, events).await.unwrap().first_position }
    };
    workload.run(&*store, 150).await;
    // Written before the domain refused control characters: stored with U+FFFD, not quarantined.
    append("rogue/wallet/nul-reason", vec![raw("r1", enrolled("r1"), at), raw("r2", earned(40, "bad\0reason"), at)]).await;
    // An id PostgreSQL cannot store (sled can): both events quarantined there.
    let nul_id = append("rogue/wallet/a\0b", vec![raw("r3", enrolled("r3"), at), raw("r4", earned(5, "x"), at)]).await;
    workload.run(&*store, 150).await;
    // More than a wallet may ever hold: poison for every read model.
    let too_big = append("rogue/wallet/huge", vec![raw("r5", earned(2 * BALANCE_ABS_MAX, "x"), at)]).await;
    // Each wallet at the largest balance: the tenant's sums pass i64.
    for i in 0..MEGA_WALLETS {
        let key = format!("m{i}");
        append(
            &format!("mega/wallet/m-{i}"),
            vec![raw(&key, enrolled(&key), at), raw(&format!("{key}e"), earned(BALANCE_ABS_MAX, "x"), at)],
        )
        .await;
        if i % 1_000 == 0 {
            workload.run(&*store, 10).await;
        }
    }
    workload.run(&*store, 150).await;

    let postgres = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    let sled = Arc::new(SledReadModel::open(dir.path()).unwrap());
    // Large rebuild batches, so a batch's in-memory sums would pass i64 too.
    let options = RunnerOptions { batch_size: 500, rebuild_batch_size: 50_000, retry_max: Duration::from_millis(100), trace_calls: false };
    for (model, quarantined) in [(postgres.clone() as Arc<dyn ReadModel>, vec![nul_id, nul_id + 1, too_big]), (sled.clone(), vec![too_big])]
    {
        let projection = Projection::spawn(Arc::clone(&store), model, options);
        for rebuild in [false, true] {
            if rebuild {
                rebuilt(&projection).await;
            }
            caught_up(&projection, &store).await;
            let status = projection.status();
            assert_eq!(status.state, RunState::Running, "{status:?}");
            assert_eq!(status.quarantined, quarantined.len() as u64, "{status:?}");
            let mut listed: Vec<u64> = status.recent_quarantined.iter().map(|q| q.position).collect();
            listed.reverse();
            assert_eq!(listed, quarantined, "newest first: {status:?}");
        }
        projection.stop().await;
    }

    // Every other tenant's figures equal the fold, in both read models; the rogue tenant's too, without
    // the quarantined events (and its text made storable).
    let fold = fold_skipping_tenant(&store, &[nul_id, nul_id + 1], "mega").await;
    assert_postgres_matches(&postgres, &db, &fold).await;
    let rogue = postgres.list_wallets("rogue", WalletOrder::Balance, 10, None).await.unwrap();
    let rogue: Vec<_> = rogue.wallets.iter().map(|w| (w.wallet_id.as_str(), w.summary.balance)).collect();
    assert_eq!(rogue, [("nul-reason", 40)], "the NUL id's wallet and the poison event left no row");
    let client = sql(&db.url).await;
    let reason: String =
        client.query_one("SELECT reason FROM tally_read.ledger_entries WHERE wallet_id = 'nul-reason'", &[]).await.unwrap().get(0);
    assert_eq!(reason, "bad\u{fffd}reason");
    let listed: Vec<(i64, String)> = client
        .query("SELECT position, stream FROM tally_read.quarantined_events ORDER BY position", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(listed[0], (nul_id as i64, "rogue/wallet/a\u{fffd}b".to_owned()));
    assert_eq!(listed.len(), 3);

    // The mega tenant: every wallet there, its sum stored exactly, and a clear answer where it does not fit.
    let sums: (String, i64) = client
        .query_one("SELECT outstanding_points::text, wallets FROM tally_read.tenant_liability WHERE tenant_id = 'mega'", &[])
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(sums, ((i128::from(BALANCE_ABS_MAX) * MEGA_WALLETS as i128).to_string(), MEGA_WALLETS as i64));
    let error = postgres.liability("mega").await.unwrap_err();
    assert!(matches!(error, tally_projections::ProjectionError::OutOfRange(_)), "{error}");
    let day = date_of_day(tally_projections::model::day_of(at));
    let error = postgres.program_stats("mega", day, day).await.unwrap_err();
    assert!(matches!(error, tally_projections::ProjectionError::OutOfRange(_)), "{error}");
    let top = postgres.list_wallets("mega", WalletOrder::Balance, 1, None).await.unwrap();
    assert_eq!(top.wallets[0].summary.balance, BALANCE_ABS_MAX);

    // sled keeps the NUL id's wallet; only the poison event is missing.
    let fold = fold_skipping_tenant(&store, &[], "mega").await;
    assert_sled_matches(&sled, &fold);
    assert_eq!(sled.wallet("mega", "m-9").unwrap().0.unwrap().balance, BALANCE_ABS_MAX);
}

/// [`fold_skipping`], but `tenant` (whose sums a fold in `i64` cannot hold) only in the ledger.
async fn fold_skipping_tenant(store: &Arc<dyn EventStore>, skipped: &[u64], tenant: &str) -> Fold {
    let events = store.read_all(1, usize::MAX).await.unwrap();
    let last = events.last().map_or(0, |e| e.global_position);
    let mut fold = Fold::default();
    for m in tally_projections::movement::decode_events(events).movements.iter().filter(|m| !skipped.contains(&m.position)) {
        if &*m.tenant != tenant {
            fold.apply(m);
        } else if m.kind != MovementKind::Enroll {
            fold.ledger.push(m.clone());
        }
    }
    fold.position = last;
    fold
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_one_reporting_database_never_count_twice() {
    let db = TestDatabase::create().await;
    let store = store();
    let mut workload = Workload::new(21, 40);
    workload.run(&*store, 300).await;
    // Two nodes, each with its own runner, writing to the same read model.
    let first = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    let second = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    let a = Projection::spawn(Arc::clone(&store), first.clone(), options(17));
    let b = Projection::spawn(Arc::clone(&store), second, options(29));
    for _ in 0..10 {
        workload.run(&*store, 100).await;
        tokio::task::yield_now().await;
    }
    caught_up(&a, &store).await;
    caught_up(&b, &store).await;
    assert_postgres_matches(&first, &db, &fold_log(&store).await).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_following_the_old_generation_moves_to_the_one_another_node_promoted() {
    let db = TestDatabase::create().await;
    let store = store();
    let mut workload = Workload::new(22, 40);
    workload.run(&*store, 300).await;
    let first = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    let second = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    let b = Projection::spawn(Arc::clone(&store), second.clone(), options(29));
    caught_up(&b, &store).await;
    let old = b.status().generation;
    // The first node rebuilds and promotes while the second follows the old generation under writes.
    let generation = first.create_generation().await.unwrap();
    let mut replay = tally_projections::replay::Replay::spawn(Arc::clone(&store), 0, 97);
    let mut checkpoint = 0;
    while let Some(batch) = replay.next().await {
        let batch = batch.unwrap();
        first.apply(generation, checkpoint, batch.through, batch.movements).await.unwrap();
        checkpoint = batch.through;
    }
    // Catch up what the second node applied meanwhile, then promote (as the runner's swap does).
    loop {
        match first.promote(generation).await {
            Ok(()) => break,
            Err(tally_projections::ProjectionError::Behind { .. }) => {
                let events = store.read_all(checkpoint + 1, 1_000).await.unwrap();
                let through = events.last().unwrap().global_position;
                let movements = tally_projections::movement::decode_batch(events).unwrap().into();
                first.apply(generation, checkpoint, through, movements).await.unwrap();
                checkpoint = through;
            }
            Err(other) => panic!("{other}"),
        }
    }
    for _ in 0..5 {
        workload.run(&*store, 100).await;
        tokio::task::yield_now().await;
    }
    caught_up(&b, &store).await;
    assert!(b.status().generation > old, "the second node follows the promoted generation");
    assert_postgres_matches(&second, &db, &fold_log(&store).await).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_running_on_one_node_is_not_taken_for_abandoned_by_another_until_its_process_is_gone() {
    let db = TestDatabase::create().await;
    let first = PostgresReadModel::connect(&db.url).await.unwrap();
    let second = PostgresReadModel::connect(&db.url).await.unwrap();
    let rebuilding = first.create_generation().await.unwrap();
    // However long it has been idle, the first node still rebuilds it.
    assert!(matches!(second.create_generation().await, Err(tally_projections::ProjectionError::RebuildRunning { .. })));
    // The first node's process goes (its sessions close): the generation is abandoned, and dropped.
    drop(first);
    let started = std::time::Instant::now();
    let generation = loop {
        match second.create_generation().await {
            Ok(generation) => break generation,
            Err(tally_projections::ProjectionError::RebuildRunning { .. }) if started.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("{other}"),
        }
    };
    assert!(generation > rebuilding);
    let client = sql(&db.url).await;
    let left: i64 = client
        .query_one("SELECT count(*) FROM tally_read_generations WHERE generation = $1", &[&i32::try_from(rebuilding).unwrap()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the abandoned generation was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_postgres_log_under_steady_writes_keeps_up() {
    let db = TestDatabase::create().await;
    let store: Arc<dyn EventStore> = Arc::new(tally_engine::store::PostgresStore::connect(&db.url).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(SledReadModel::open(dir.path()).unwrap());
    let projection = Projection::spawn(Arc::clone(&store), model.clone(), options(100));
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut workload = Workload::new(31, 30);
            for _ in 0..40 {
                workload.run(&*store, 20).await;
            }
        })
    };
    writer.await.unwrap();
    caught_up(&projection, &store).await;
    assert_sled_matches(&model, &fold_log(&store).await);
    projection.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_generation_from_before_numeric_sums_is_migrated_and_its_views_keep_their_grants() {
    let db = TestDatabase::create().await;
    let store = store();
    // Nothing was sealed nor erased before either existed.
    Workload::new(13, 10).before_sealing().run(&*store, 200).await;
    let model = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    let projection = Projection::spawn(Arc::clone(&store), model.clone(), options(50));
    caught_up(&projection, &store).await;
    projection.stop().await;
    // Back to what version 2 left: BIGINT sums, no quarantine table, views over them, a reader's grant.
    let client = sql(&db.url).await;
    // Roles are the server's, not the database's: one of this process's own, dropped at the end.
    let reader = format!("tally_bi_reader_{}", std::process::id());
    client
        .batch_execute(&format!(
            "DROP VIEW tally_read.program_daily_stats, tally_read.tenant_liability, tally_read.quarantined_events, tally_read.wallets;
             ALTER TABLE tally_read_g1.wallets DROP COLUMN customer_erased, DROP COLUMN customer_sealed;
             ALTER TABLE tally_read_g1.program_daily_stats ALTER COLUMN points_issued TYPE BIGINT, ALTER COLUMN points_expired TYPE BIGINT,
                 DROP COLUMN points_transferred;
             ALTER TABLE tally_read_g1.tenant_liability ALTER COLUMN outstanding_points TYPE BIGINT;
             DROP TABLE tally_read_g1.quarantined_events;
             DELETE FROM tally_read_g1.reporting_migrations WHERE version >= 3;
             CREATE VIEW tally_read.wallets AS SELECT * FROM tally_read_g1.wallets;
             CREATE VIEW tally_read.program_daily_stats AS SELECT * FROM tally_read_g1.program_daily_stats;
             CREATE VIEW tally_read.tenant_liability AS SELECT * FROM tally_read_g1.tenant_liability;
             CREATE ROLE {reader};
             GRANT SELECT ON tally_read.tenant_liability, tally_read.wallets TO {reader};"
        ))
        .await
        .unwrap();
    let model = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    let projection = Projection::spawn(Arc::clone(&store), model.clone(), options(50));
    Workload::named(14, 10, "later").run(&*store, 100).await;
    caught_up(&projection, &store).await;
    assert_eq!(projection.status().quarantined, 0);
    projection.stop().await;
    assert_postgres_matches(&model, &db, &fold_log(&store).await).await;
    let types: Vec<String> = client
        .query(
            "SELECT data_type::text FROM information_schema.columns WHERE table_schema = 'tally_read'
             AND (table_name, column_name) IN (('program_daily_stats', 'points_issued'), ('tenant_liability', 'outstanding_points'))",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(types, ["numeric", "numeric"]);
    for view in ["tenant_liability", "wallets"] {
        let granted: bool =
            client.query_one(&format!("SELECT has_table_privilege('{reader}', 'tally_read.{view}', 'SELECT')"), &[]).await.unwrap().get(0);
        assert!(granted, "the grant on tally_read.{view} is kept");
    }
    client.batch_execute(&format!("DROP OWNED BY {reader}; DROP ROLE {reader}")).await.unwrap();
}

/// Issue 17: a read model several nodes share has one runner at a time. The second stands by, showing
/// the holder's checkpoint; when the first stops (or its process dies: its session ends), the second
/// takes over within the lease poll and the read model keeps following the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runner_at_a_time_follows_a_shared_read_model_and_another_takes_over() {
    use tally_projections::RunState;
    let db = TestDatabase::create().await;
    let store = store();
    Workload::new(21, 10).run(&*store, 100).await;
    let first_model = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    let first = Projection::spawn(Arc::clone(&store), first_model, options(50));
    caught_up(&first, &store).await;
    let second_model = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    let second = Projection::spawn(Arc::clone(&store), second_model.clone(), options(50));
    let mut watch = second.watch();
    tokio::time::timeout(WAIT, watch.wait_for(|s| s.state == RunState::Standby)).await.expect("stands by").unwrap();
    Workload::named(22, 10, "while-first").run(&*store, 100).await;
    caught_up(&first, &store).await;
    assert_eq!(second.status().state, RunState::Standby, "one runner at a time");
    assert_eq!(second.status().events_applied, 0, "the standby applied nothing");
    let refused = second.rebuild().await.map(drop).unwrap_err();
    assert!(matches!(refused, tally_projections::ProjectionError::Standby { .. }), "a rebuild is the running node's: {refused:?}");

    let handed_over = std::time::Instant::now();
    first.stop().await;
    Workload::named(23, 10, "after-first").run(&*store, 100).await;
    caught_up(&second, &store).await;
    eprintln!("the standby took over and caught up {:?} after the runner stopped", handed_over.elapsed());
    assert_eq!(second.status().state, RunState::Running);
    second.stop().await;
    assert_postgres_matches(&second_model, &db, &fold_log(&store).await).await;
}
