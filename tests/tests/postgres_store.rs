//! The PostgreSQL event store against a real server: the shared conformance suite, the gap problem
//! (a naive sequence-based log loses events for a follower; ours does not), and two stores (two nodes,
//! separate connection pools) appending to one log.

use std::sync::Arc;
use std::time::Duration;

use tally_engine::store::conformance::{self, event, stream};
use tally_engine::store::{EventStore, ExpectedVersion, PostgresStore, StoreError};
use tally_tests::TestDatabase;

async fn store(database: &TestDatabase) -> Arc<PostgresStore> {
    Arc::new(PostgresStore::connect(&database.url).await.unwrap())
}

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let databases = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| async {
        let database = TestDatabase::create().await;
        let store = store(&database).await as Arc<dyn EventStore>;
        databases.lock().unwrap().push(database);
        store
    })
    .await;
}

/// The classic gap: positions from a sequence commit out of order, and a follower that remembers "I have
/// read up to N" skips the event that commits late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_naive_sequence_log_loses_a_late_commit_for_followers() {
    let database = TestDatabase::create().await;
    let setup = client(&database.url).await;
    setup.batch_execute("CREATE TABLE naive (position BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)").await.unwrap();
    let slow = client(&database.url).await;
    let fast = client(&database.url).await;
    slow.batch_execute("BEGIN; INSERT INTO naive (body) VALUES ('slow')").await.unwrap(); // takes position 1, stays open
    fast.batch_execute("INSERT INTO naive (body) VALUES ('fast')").await.unwrap(); // position 2, committed
    let follower = client(&database.url).await;
    let seen: Vec<i64> = follower
        .query("SELECT position FROM naive WHERE position > 0 ORDER BY position", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec![2], "the follower sees 2 and checkpoints it");
    slow.batch_execute("COMMIT").await.unwrap();
    let next: Vec<i64> = follower
        .query("SELECT position FROM naive WHERE position > 2 ORDER BY position", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(next.is_empty(), "position 1 committed late and the follower, past 2, never sees it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_transaction_cannot_make_a_follower_skip_an_event() {
    let database = TestDatabase::create().await;
    let store = store(&database).await;
    // Another node's append, slow to commit: it holds the head lock with position 1 uncommitted.
    let slow = client(&database.url).await;
    slow.batch_execute(
        "BEGIN;
         SELECT position FROM tally_log_head FOR UPDATE;
         INSERT INTO tally_events (stream_id, stream_version, global_position, event_type, schema_version, recorded_at_ms,
           idempotency_key, command_fingerprint, causation_id, correlation_id, traceparent, tracestate, payload)
         VALUES ('t/wallet/slow', 1, 1, 'tally.test.Event', 1, 0, 'slow', 0, '', '', '', '', '\\x00');
         UPDATE tally_log_head SET position = 1;",
    )
    .await
    .unwrap();
    let appender = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.append(&stream("t/wallet/fast"), ExpectedVersion::Exact(0), vec![event("fast")]).await })
    };
    // The fast append waits for the slow one instead of overtaking it.
    assert!(tokio::time::timeout(Duration::from_millis(300), store.read_all(1, 10)).await.unwrap().unwrap().is_empty());
    assert!(!appender.is_finished(), "the second append waits for the first to commit");
    slow.batch_execute("COMMIT").await.unwrap();
    let outcome = appender.await.unwrap().unwrap();
    assert_eq!(outcome.first_position, 2);
    let positions: Vec<u64> = store.read_all(1, 10).await.unwrap().iter().map(|e| e.global_position).collect();
    assert_eq!(positions, vec![1, 2], "a follower sees 1 before 2, always");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_appending_to_one_stream_never_both_win() {
    let database = TestDatabase::create().await;
    let (a, b) = (store(&database).await, store(&database).await);
    let s = stream("t/wallet/shared");
    let mut tasks = Vec::new();
    for node in [a.clone(), b.clone()] {
        for writer in 0..4 {
            let (node, s) = (node.clone(), s.clone());
            tasks.push(tokio::spawn(async move {
                let mut won = 0;
                for n in 0..15 {
                    loop {
                        let version = node.stream_version(&s).await.unwrap();
                        match node.append(&s, ExpectedVersion::Exact(version), vec![event(&format!("{writer}-{n}"))]).await {
                            Ok(_) => {
                                won += 1;
                                break;
                            }
                            Err(StoreError::VersionConflict { .. }) => continue,
                            Err(other) => panic!("{other}"),
                        }
                    }
                }
                won
            }));
        }
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    assert_eq!(total, 120);
    let events = a.read_stream(&s, 1, 1000).await.unwrap();
    assert_eq!(events.len(), 120);
    assert!(events.iter().enumerate().all(|(i, e)| e.stream_version == i as u64 + 1 && e.global_position == i as u64 + 1));
    // Node B's follower hears about node A's appends (LISTEN/NOTIFY or polling).
    let mut head = b.head();
    tokio::time::timeout(Duration::from_secs(5), head.wait_for(|h| *h >= 120)).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tally_serve_runs_on_postgres_and_loses_nothing_to_kill_9() {
    use tally_proto::v1::{EarnRequest, EnrollRequest, GetWalletRequest};
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("--store={}", database.postgres_url);
    let mut server = tally_tests::TallyServer::start(dir.path(), &[&store]);
    let mut client = server.client().await;
    client
        .enroll(EnrollRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), idempotency_key: "e".into(), ..Default::default() })
        .await
        .unwrap();
    for n in 0..10 {
        let earn = EarnRequest {
            tenant_id: "demo".into(),
            wallet_id: "c-1".into(),
            idempotency_key: format!("o-{n}"),
            points: 7,
            reason: String::new(),
            source_ref: format!("o-{n}"),
            order_amount: None,
        };
        client.earn(earn).await.unwrap();
    }
    server.kill_9();
    let server = tally_tests::TallyServer::start(dir.path(), &[&store]);
    let wallet = server
        .client()
        .await
        .get_wallet(GetWalletRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!((wallet.get_ref().balance, wallet.get_ref().version), (70, 11));
    let local: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(local, ["platform.key"], "nothing but the first start's key was written to the local data directory");
    // The operator command finds the snapshots in the same database (none yet: fewer than 500 events).
    let stats = std::process::Command::new(tally_tests::tally_binary()).args(["snapshots", "stats", &store]).output().unwrap();
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    assert!(String::from_utf8_lossy(&stats.stdout).starts_with("0 snapshots of 0 wallets"), "{stats:?}");
}

#[test]
fn a_bad_store_url_fails_start_up_with_a_clear_message() {
    let output = std::process::Command::new(tally_tests::tally_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "esdb://localhost:2113"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("built without KurrentDB support") && stderr.contains("--features kurrentdb"), "{stderr}");
    let output = std::process::Command::new(tally_tests::tally_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "postgresql://nobody@127.0.0.1:1/none"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Where and as whom, never a password (issue 15, item 14).
    assert!(stderr.contains("cannot use the event log at postgres host=127.0.0.1 port=1 user=nobody dbname=none"), "{stderr}");
}

fn tally_copy(from: &str, to: &str) -> (bool, String) {
    let output =
        std::process::Command::new(tally_tests::tally_binary()).args(["store", "copy", "--from", from, "--to", to]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// A test event, with a digest made from its tag when `digest`.
fn with_digest_if(digest: bool, tag: &str) -> tally_engine::store::EventData {
    let made = std::array::from_fn(|i| tag.as_bytes().get(i).copied().unwrap_or(0xd1));
    tally_engine::store::EventData { command_fingerprint: 0, command_digest: digest.then_some(made), ..event(tag) }
}

async fn fill_embedded(dir: &std::path::Path, from_round: u64, rounds: u64) {
    let log = tally_engine::store::EmbeddedStore::open(dir).unwrap();
    for round in from_round..from_round + rounds {
        for s in 0..5u64 {
            // Interleaved streams, some appends with several events.
            // Every other event carries a command digest (as new events do), the rest none (as old ones).
            let events = (0..=(s % 3)).map(|i| with_digest_if(i % 2 == 0, &format!("{s}-{round}-{i}"))).collect::<Vec<_>>();
            let version = log.stream_version(&stream(&format!("t/wallet/{s}"))).await.unwrap();
            log.append(&stream(&format!("t/wallet/{s}")), ExpectedVersion::Exact(version), events).await.unwrap();
        }
    }
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_a_log_exactly_resumes_and_refuses_a_diverged_destination() {
    let source = tempfile::tempdir().unwrap();
    fill_embedded(source.path(), 0, 20).await;
    {
        // 300 consecutive events of one stream: more than one append may carry.
        let log = tally_engine::store::EmbeddedStore::open(source.path()).unwrap();
        for half in 0..2u64 {
            let events = (0..150).map(|i| event(&format!("long-{half}-{i}"))).collect();
            log.append(&stream("t/wallet/long"), ExpectedVersion::Exact(half * 150), events).await.unwrap();
        }
        log.close().await;
    }
    let database = TestDatabase::create().await;
    let from = format!("file://{}", source.path().display());

    let (ok, out) = tally_copy(&from, &database.postgres_url);
    assert!(ok, "{out}");
    assert!(out.contains("copied 480 events (0 were already there)") && out.contains("verified 480 events"), "{out}");

    // More events in the source: a second run copies only what is new (as after an interruption).
    fill_embedded(source.path(), 20, 2).await;
    let (ok, out) = tally_copy(&from, &database.postgres_url);
    assert!(ok, "{out}");
    assert!(out.contains("copied 18 events (480 were already there)") && out.contains("verified 498 events"), "{out}");

    // And back into a fresh embedded log: the same events, versions and positions (same checksum).
    let back = tempfile::tempdir().unwrap();
    let (ok, back_out) = tally_copy(&database.postgres_url, &format!("file://{}", back.path().display()));
    assert!(ok, "{back_out}");
    let checksum = |text: &str| text.split("checksum ").nth(1).unwrap()[..8].to_owned();
    assert_eq!(checksum(&back_out), checksum(&out));
    // Every field came through PostgreSQL and back, digests (and their absence) byte for byte.
    let read_all = |dir: std::path::PathBuf| async move {
        let log = tally_engine::store::EmbeddedStore::open(&dir).unwrap();
        let events = log.read_all(1, usize::MAX).await.unwrap();
        log.close().await;
        events
    };
    let (original, copied) = (read_all(source.path().to_owned()).await, read_all(back.path().to_owned()).await);
    assert_eq!(copied, original);
    let with_digests = original.iter().filter(|e| e.data.command_digest.is_some()).count();
    assert!(with_digests > 100 && with_digests < original.len(), "{with_digests} of {} events have a digest", original.len());

    // A destination that is not a prefix of the source is refused.
    let other = tempfile::tempdir().unwrap();
    {
        let log = tally_engine::store::EmbeddedStore::open(other.path()).unwrap();
        log.append(&stream("t/wallet/other"), ExpectedVersion::Exact(0), vec![event("x")]).await.unwrap();
        log.close().await;
    }
    let (ok, out) = tally_copy(&from, &format!("file://{}", other.path().display()));
    assert!(!ok && out.contains("not a prefix of the source"), "{out}");
}

/// Appends per child process: one event to its own stream and one to a stream every child contends for.
const CHILD_ROUNDS: u64 = 150;
const CHILDREN: u64 = 4;

/// One appender process of [`several_processes_share_one_log`]: it prints each acknowledged append as
/// `APPENDED <tag> <stream> <version> <position>`. Not a test on its own (it needs the parent's database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of several_processes_share_one_log"]
async fn appender_process() {
    let url = std::env::var("TALLY_APPENDER_URL").expect("run by several_processes_share_one_log");
    let me = std::env::var("TALLY_APPENDER_ID").expect("run by several_processes_share_one_log");
    let store = PostgresStore::connect(&url).await.unwrap();
    let own = stream(&format!("t/wallet/own-{me}"));
    // After the harness's "test appender_process ... ", which ends no line.
    let mut out = String::from("\n");
    for n in 0..CHILD_ROUNDS {
        let tag = format!("{me}-own-{n}");
        let done = store.append(&own, ExpectedVersion::Exact(n), vec![event(&tag)]).await.unwrap();
        out += &format!("APPENDED {tag} {own} {} {}\n", done.first_version, done.first_position);
        // Every child contends for the same three streams: a lost race is a conflict, then a retry.
        let shared = stream(&format!("t/wallet/shared-{}", n % 3));
        let tag = format!("{me}-shared-{n}");
        loop {
            let version = store.stream_version(&shared).await.unwrap();
            match store.append(&shared, ExpectedVersion::Exact(version), vec![event(&tag)]).await {
                Ok(done) => {
                    out += &format!("APPENDED {tag} {shared} {} {}\n", done.first_version, done.first_position);
                    break;
                }
                Err(StoreError::VersionConflict { .. }) => {}
                Err(other) => panic!("{other}"),
            }
        }
    }
    store.close();
    // Printed at the end, in one piece, so the harness's own lines cannot interleave.
    std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes()).unwrap();
}

/// The conformance properties across OS processes: several processes append to one PostgreSQL log at
/// once (each its own stream, and all of them three shared streams) while a follower in this process
/// reads it. Every acknowledged append is in the log exactly once, where its process was told; stream
/// versions and global positions are dense; the follower saw every position in order, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_share_one_log() {
    let database = TestDatabase::create().await;
    // Migrated here first, so the children find the schema in place.
    let log = store(&database).await;
    let children: Vec<std::process::Child> = (0..CHILDREN)
        .map(|id| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "appender_process", "--nocapture", "--test-threads", "1"])
                .env("TALLY_APPENDER_URL", &database.url)
                .env("TALLY_APPENDER_ID", id.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let total = CHILDREN * CHILD_ROUNDS * 2;
    let mut follower = tally_engine::store::Follower::new(Arc::clone(&log) as Arc<dyn EventStore>, 0);
    let mut seen = Vec::new();
    while (seen.len() as u64) < total {
        let batch = tokio::time::timeout(Duration::from_secs(60), follower.next_batch(100)).await.expect("the log grows").unwrap().unwrap();
        seen.extend(batch);
    }
    let positions: Vec<u64> = seen.iter().map(|e| e.global_position).collect();
    assert_eq!(positions, (1..=total).collect::<Vec<_>>(), "the follower saw every position, in order");

    let mut told = std::collections::HashMap::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        for line in stdout.lines().filter_map(|l| l.strip_prefix("APPENDED ")) {
            let [tag, stream, version, position] = line.split(' ').collect::<Vec<_>>()[..] else { panic!("{line}") };
            let place = (stream.to_owned(), version.parse::<u64>().unwrap(), position.parse::<u64>().unwrap());
            assert!(told.insert(tag.to_owned(), place).is_none(), "{tag} acknowledged twice");
        }
    }
    assert_eq!(told.len() as u64, total, "every append was acknowledged once");
    let everything = log.read_all(1, total as usize + 10).await.unwrap();
    assert_eq!(everything.len() as u64, total, "nothing more in the log than was acknowledged");
    let mut versions: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for event in &everything {
        let tag = String::from_utf8(event.data.payload.clone()).unwrap();
        let place = (event.stream_id.to_string(), event.stream_version, event.global_position);
        assert_eq!(told.get(&tag), Some(&place), "{tag} is where its process was told");
        let version = versions.entry(event.stream_id.as_str()).or_default();
        *version += 1;
        assert_eq!(event.stream_version, *version, "{} has dense versions", event.stream_id);
    }
    assert_eq!(versions.len() as u64, CHILDREN + 3);
}

/// Issue 16 item 6: `sslmode=require` encrypts the log's connections and verifies the server against
/// `sslrootcert` (this machine's PostgreSQL serves TLS with Debian's snakeoil certificate for localhost);
/// a root that did not sign the server's certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_connects_over_verified_tls_when_the_url_requires_it() {
    const SERVER_CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    assert!(std::path::Path::new(SERVER_CERT).exists(), "the local PostgreSQL's certificate {SERVER_CERT} is needed");
    let database = TestDatabase::create().await;
    let over_tcp = database.url.replace("host=/var/run/postgresql", "host=localhost port=5432");
    let tls = PostgresStore::connect(&format!("{over_tcp} sslmode=require sslrootcert={SERVER_CERT}")).await.unwrap();
    tls.append(&stream("tls"), ExpectedVersion::Exact(0), vec![event("over TLS")]).await.unwrap();
    assert_eq!(tls.read_stream(&stream("tls"), 1, 10).await.unwrap().len(), 1);
    let admin = client(&database.url).await;
    let encrypted: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND datname = current_database() \
             AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted > 0, "the store's connections are encrypted");

    let dir = tempfile::tempdir().unwrap();
    let stranger =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
    let wrong_root = dir.path().join("other-ca.pem");
    std::fs::write(&wrong_root, stranger.pem()).unwrap();
    let refused = PostgresStore::connect(&format!("{over_tcp} sslmode=require sslrootcert={}", wrong_root.display())).await.unwrap_err();
    assert!(refused.to_string().to_lowercase().contains("certificate"), "{refused}");
}

/// Issue 19 item 2: rows changed behind the engine's back — a payload updated, a row deleted, two rows'
/// payloads swapped, a whole stream removed — are each named by `verify`: the first broken link's
/// position, stream and version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_first_row_changed_deleted_or_swapped_behind_the_log() {
    use tally_engine::audit::verify::verify_log;
    let database = TestDatabase::create().await;
    let log = store(&database).await;
    // Positions 1..=12: streams a, b, c in turn, four events each.
    for v in 0..4 {
        for name in ["t/wallet/a", "t/wallet/b", "t/wallet/c"] {
            log.append(&stream(name), ExpectedVersion::Exact(v), vec![event(&format!("{name}-{v}"))]).await.unwrap();
        }
    }
    let verified = verify_log(log.as_ref(), |_| {}).await.unwrap().unwrap();
    assert_eq!((verified.events, verified.linked), (12, 12));
    let sql = client(&database.url).await;
    sql.batch_execute("CREATE TABLE pristine AS SELECT * FROM tally_events").await.unwrap();
    let restore = "DELETE FROM tally_events; INSERT INTO tally_events SELECT * FROM pristine";
    let cases = [
        ("an UPDATE of a payload", "UPDATE tally_events SET payload = 'forged' WHERE global_position = 5", (5, "t/wallet/b", 2)),
        ("a DELETE of a row", "DELETE FROM tally_events WHERE global_position = 7", (7, "", 0)),
        (
            "two rows' payloads swapped",
            "UPDATE tally_events e SET payload = p.payload FROM pristine p
             WHERE (e.global_position, p.global_position) IN ((4, 10), (10, 4))",
            (4, "t/wallet/a", 2),
        ),
        ("a whole stream removed", "DELETE FROM tally_events WHERE stream_id = 't/wallet/c'", (3, "", 0)),
    ];
    let cases = cases.into_iter().chain([("the last rows deleted", "DELETE FROM tally_events WHERE global_position > 10", (11, "", 0))]);
    for (what, change, (position, stream_id, version)) in cases {
        sql.batch_execute(change).await.unwrap();
        let (broken, _) = verify_log(log.as_ref(), |_| {}).await.unwrap().unwrap_err();
        assert_eq!((broken.position, broken.stream.as_str(), broken.stream_version), (position, stream_id, version), "{what}: {broken}");
        sql.batch_execute(restore).await.unwrap();
        assert!(verify_log(log.as_ref(), |_| {}).await.unwrap().is_ok(), "restored after {what}");
    }
    // A copy of a changed log does not launder the change: the destination's own links disagree with
    // the source's stored ones, and the copy says so.
    sql.batch_execute("UPDATE tally_events SET payload = 'forged' WHERE global_position = 5").await.unwrap();
    let copy = tempfile::tempdir().unwrap();
    let (ok, out) = tally_copy(&database.postgres_url, &format!("file://{}", copy.path().display()));
    assert!(!ok && out.contains("position 5") && out.contains("stored hash links do not match"), "{out}");
}

/// A PostgreSQL log written before the chains (its link columns empty), and events appended later by a
/// node that predates them, at a new stream and in the middle of one: the next chaining node links them
/// from their contents, in place, and new events chain on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_without_links_are_linked_by_the_next_node() {
    use tally_engine::audit::verify::verify_log;
    let database = TestDatabase::create().await;
    let sql = client(&database.url).await;
    {
        let log = store(&database).await;
        for v in 0..3 {
            log.append(&stream("t/wallet/old"), ExpectedVersion::Exact(v), vec![event(&format!("old-{v}"))]).await.unwrap();
        }
        log.close();
    }
    let linked = verify_log(store(&database).await.as_ref(), |_| {}).await.unwrap().unwrap().head;
    // As a build before the chains left it.
    sql.batch_execute(
        "UPDATE tally_events SET stream_hash = NULL, log_hash = NULL; UPDATE tally_log_head SET log_hash = NULL, log_hash_position = 0",
    )
    .await
    .unwrap();
    let log = store(&database).await;
    let relinked = verify_log(log.as_ref(), |_| {}).await.unwrap().unwrap();
    assert_eq!((relinked.linked, relinked.head), (3, linked), "linked in place, from the contents alone, to the same links");
    log.append(&stream("t/wallet/old"), ExpectedVersion::Exact(3), vec![event("new-3")]).await.unwrap();
    // An older node appends without links, behind this node's back: a new stream, and one mid-stream.
    sql.batch_execute(
        "INSERT INTO tally_events (global_position, stream_id, stream_version, event_type, schema_version, recorded_at_ms, idempotency_key,
           command_fingerprint, causation_id, correlation_id, traceparent, tracestate, payload)
         VALUES (5, 't/wallet/other', 1, 'tally.test.Event', 1, 1, 'k5', 0, '', '', '', '', 'from an old node'),
                (6, 't/wallet/old', 5, 'tally.test.Event', 1, 1, 'k6', 0, '', '', '', '', 'from an old node too');
         UPDATE tally_log_head SET position = 6",
    )
    .await
    .unwrap();
    log.append(&stream("t/wallet/other"), ExpectedVersion::Exact(1), vec![event("other-2")]).await.unwrap();
    log.append(&stream("t/wallet/old"), ExpectedVersion::Exact(5), vec![event("new-6")]).await.unwrap();
    let verified = verify_log(log.as_ref(), |_| {}).await.unwrap().unwrap();
    assert_eq!((verified.events, verified.linked), (8, 8));
}
