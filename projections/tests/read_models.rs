//! The read models against a direct fold of the log: after seeded random workloads, after failed
//! batches, across rebuilds with writes going on, and on a poison event. PostgreSQL tests use a real
//! server (`TALLY_TEST_PG_URL`, one throwaway database per test).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Workload, fold_log};
use tally_engine::codec;
use tally_engine::domain::{TenantId, WalletId};
use tally_engine::store::{EventData, EventMetadata, EventStore, ExpectedVersion, InMemoryStore};
use tally_projections::model::{DayStats, Fold};
use tally_projections::movement::MovementKind;
use tally_projections::postgres::{WalletCursor, WalletOrder, date_of_day};
use tally_projections::runner::{RebuildPhase, RunState};
use tally_projections::{PostgresReadModel, Projection, ReadModel, RunnerOptions, SledReadModel};
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
    RunnerOptions { batch_size, rebuild_batch_size: batch_size * 3, retry_max: Duration::from_millis(100) }
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
        for kind in [MovementKind::Earn, MovementKind::Redeem, MovementKind::Reverse, MovementKind::Purchase, MovementKind::Expire] {
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
async fn a_poison_event_stops_the_projection_and_names_the_event() {
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
        metadata: EventMetadata::default(),
        payload: vec![1, 2, 3],
    };
    let at = store.append(&stream, ExpectedVersion::Exact(0), vec![poison]).await.unwrap().first_position;
    workload.run(&*store, 100).await;
    let mut fold_before = Fold::default();
    for m in tally_projections::movement::decode_batch(store.read_all(1, (at - 1) as usize).await.unwrap()).unwrap() {
        fold_before.apply(&m);
    }
    let sled = Arc::new(SledReadModel::open(dir.path()).unwrap());
    let postgres = Arc::new(PostgresReadModel::connect(&db.url).await.unwrap());
    for model in [sled.clone() as Arc<dyn ReadModel>, postgres.clone()] {
        // One event a batch: everything before the poison event is applied, nothing from it on.
        let projection = Projection::spawn(Arc::clone(&store), model, options(1));
        let mut status = projection.watch();
        let failed =
            tokio::time::timeout(WAIT, status.wait_for(|s| matches!(s.state, RunState::Failed { .. }))).await.unwrap().unwrap().clone();
        let RunState::Failed { error } = &failed.state else { unreachable!() };
        assert!(
            error.contains(&format!("position {at}"))
                && error.contains("acme/wallet/poisoned")
                && error.contains("tally.v1.PointsTeleported"),
            "{error}"
        );
        assert_eq!(failed.checkpoint, at - 1, "everything before the poison event is applied, nothing after");
        assert!(projection.wait_for(at).await.is_err());
        projection.stop().await;
    }
    assert_sled_matches(&sled, &fold_before);
    assert_eq!(postgres.checkpoint().await.unwrap(), at - 1);
    assert_eq!(postgres.liability("acme").await.unwrap(), (fold_before.liability["acme"], at - 1));
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
