//! The conformance suite every `EventStore` backend must pass. Call [`run_all`] from a backend's tests
//! with a factory that returns a fresh, empty store for each case.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use super::{Append, CommandDigest, EventData, EventMetadata, EventStore, ExpectedVersion, Follower, StoreError, StreamId};
use crate::limits::{APPEND_EVENTS_MAX, COMMAND_DIGEST_BYTES, EVENT_PAYLOAD_BYTES_MAX};

/// A small event whose payload says which stream and sequence number it came from.
pub fn event(tag: &str) -> EventData {
    EventData {
        event_type: "tally.test.Event".into(),
        schema_version: 1,
        recorded_at_ms: 1_700_000_000_123,
        idempotency_key: format!("key-{tag}"),
        command_fingerprint: 0xfeed_f00d,
        command_digest: None,
        metadata: EventMetadata {
            causation_id: "cause".into(),
            correlation_id: "corr".into(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: String::new(),
            principal: "0123456789abcdef".into(),
            principal_roles: "pos,staff".into(),
            staff_id: "s-42".into(),
        },
        payload: tag.as_bytes().to_vec(),
    }
}

pub fn stream(name: &str) -> StreamId {
    StreamId::new(name).expect("valid test stream id")
}

/// Runs every case against fresh stores from `make`, the hash chains included.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventStore>>,
{
    chains_link_every_event(make().await).await;
    personal_keys_are_kept_once_and_erased_for_good(make().await).await;
    run_without_chains(make).await;
}

/// A wallet's personal data key is kept once (a second keep answers the first key), read back in
/// batches with `None` where there is none, and erased for good: a keep after the erasure makes a new
/// key, never the old one.
pub async fn personal_keys_are_kept_once_and_erased_for_good(store: Arc<dyn EventStore>) {
    use super::PersonalKey;
    let (a, b, none) = (stream("t/wallet/a"), stream("t/wallet/b"), stream("t/wallet/none"));
    let first = PersonalKey::from_bytes(&[1; 32]).expect("32 bytes");
    let second = PersonalKey::from_bytes(&[2; 32]).expect("32 bytes");
    assert_eq!(store.keep_personal_key(&a, &first).await.expect("keep"), first);
    assert_eq!(store.keep_personal_key(&a, &second).await.expect("keep again"), first, "the first key stays");
    assert_eq!(store.keep_personal_key(&b, &second).await.expect("keep"), second);
    let keys = store.personal_keys(&[b.clone(), none.clone(), a.clone()]).await.expect("read");
    assert_eq!(keys, vec![Some(second.clone()), None, Some(first.clone())]);
    assert!(store.erase_personal_key(&a).await.expect("erase"), "it had a key");
    assert!(!store.erase_personal_key(&a).await.expect("erase again"), "it has none now");
    assert!(!store.erase_personal_key(&none).await.expect("erase"), "never had one");
    assert_eq!(store.personal_keys(&[a.clone(), b.clone()]).await.expect("read"), vec![None, Some(second.clone())]);
    assert_eq!(store.keep_personal_key(&a, &second).await.expect("keep anew"), second, "a new key, not the erased one");
    assert_eq!(store.personal_keys(&[]).await.expect("read nothing"), Vec::new());
}

/// Every case but the hash chains, for a backend that keeps none (KurrentDB).
pub async fn run_without_chains<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventStore>>,
{
    append_and_read_back(make().await).await;
    command_digests_round_trip(make().await).await;
    one_winner_per_version(make().await).await;
    concurrent_appenders_build_a_dense_stream(make().await).await;
    multi_event_appends_are_atomic(make().await).await;
    global_order_matches_stream_order(make().await).await;
    follower_sees_no_gaps(make().await).await;
    size_limits(make().await).await;
    thousands_of_streams(make().await).await;
    appends_in_order_land_in_order(make().await).await;
}

/// Every event is linked into its stream's hash chain and the log's, in position order, exactly as a
/// verifier computes the links from the events alone; bulk appends too.
pub async fn chains_link_every_event(store: Arc<dyn EventStore>) {
    use super::chain::{GENESIS, log_link};
    let (a, b) = (stream("t/wallet/chain-a"), stream("t/wallet/chain-b"));
    store.append(&a, ExpectedVersion::Exact(0), vec![event("a1"), event("a2")]).await.unwrap();
    store.append(&b, ExpectedVersion::Exact(0), vec![event("b1")]).await.unwrap();
    store.append(&a, ExpectedVersion::Exact(2), vec![event("a3")]).await.unwrap();
    let mut bulk: Vec<Append> = (0..20)
        .map(|i| Append { stream: b.clone(), expected: ExpectedVersion::Exact(1 + i), events: vec![event(&format!("b{i}"))] })
        .collect();
    // A refused append amid the batch links nothing: the chains go on from the one before it.
    bulk.insert(10, Append { stream: a.clone(), expected: ExpectedVersion::Exact(0), events: vec![event("stale")] });
    let outcomes = store.append_in_order(bulk).await;
    assert_eq!(outcomes.iter().filter(|o| o.is_err()).count(), 1);
    assert!(matches!(outcomes[10], Err(StoreError::VersionConflict { .. })));
    let all = store.read_all(1, 1_000).await.unwrap();
    assert_eq!(all.len(), 24);
    let mut log = GENESIS;
    for event in &all {
        let links = event.links.unwrap_or_else(|| panic!("position {} has no links", event.global_position));
        log = log_link(&log, &links.stream);
        assert_eq!(links.log, log, "the log chain at position {}", event.global_position);
    }
    for s in [&a, &b] {
        let events = store.read_stream(s, 1, 1_000).await.unwrap();
        let stored: Vec<_> = events.iter().map(|e| e.links.unwrap().stream).collect();
        assert_eq!(stored, crate::audit::verify::expected_links(&events), "the chain of {s}");
    }
    let verified = crate::audit::verify::verify_log(store.as_ref(), |_| {}).await.unwrap().unwrap();
    assert_eq!((verified.events, verified.linked, verified.head.map(|h| h.1)), (24, 24, Some(log)));
    let stream_b = crate::audit::verify::verify_stream(store.as_ref(), &b).await.unwrap().unwrap();
    assert_eq!((stream_b.events, stream_b.linked), (21, 21));
}

pub async fn appends_in_order_land_in_order(store: Arc<dyn EventStore>) {
    let s = |i: usize| stream(&format!("t/wallet/bulk-{}", i % 7));
    store.append(&s(3), ExpectedVersion::Exact(0), vec![event("first")]).await.unwrap();
    let mut versions = [0u64; 7];
    versions[3] = 1;
    let mut appends = Vec::new();
    for i in 0..500 {
        let events: Vec<EventData> = (0..1 + i % 3).map(|k| event(&format!("bulk-{i}-{k}"))).collect();
        appends.push(Append { stream: s(i), expected: ExpectedVersion::Exact(versions[i % 7]), events: events.clone() });
        versions[i % 7] += events.len() as u64;
    }
    // One stale expectation in the middle: only that append is refused.
    appends.insert(250, Append { stream: s(3), expected: ExpectedVersion::Exact(0), events: vec![event("stale")] });
    let outcomes = store.append_in_order(appends.clone()).await;
    assert_eq!(outcomes.len(), 501);
    let mut position = 1;
    for (i, (append, outcome)) in appends.iter().zip(&outcomes).enumerate() {
        if i == 250 {
            assert!(matches!(outcome, Err(StoreError::VersionConflict { expected: 0, .. })), "{outcome:?}");
            continue;
        }
        let outcome = outcome.as_ref().unwrap_or_else(|e| panic!("append {i}: {e}"));
        assert_eq!(outcome.first_position, position + 1, "append {i} lands in the order given");
        position = outcome.last_position;
        let read = store.read_all(outcome.first_position, append.events.len()).await.unwrap();
        assert_eq!(read.iter().map(|e| &e.data).collect::<Vec<_>>(), append.events.iter().collect::<Vec<_>>());
    }
    assert_eq!(*store.head().borrow(), position);
}

pub async fn append_and_read_back(store: Arc<dyn EventStore>) {
    let s = stream("t/wallet/read-back");
    assert_eq!(store.stream_version(&s).await.unwrap(), 0);
    assert!(store.read_stream(&s, 1, 10).await.unwrap().is_empty());
    let outcome = store.append(&s, ExpectedVersion::Exact(0), vec![event("a")]).await.unwrap();
    assert_eq!((outcome.first_version, outcome.last_version, outcome.first_position, outcome.last_position), (1, 1, 1, 1));
    // Read-your-writes: visible to every read as soon as the append resolved.
    let read = store.read_stream(&s, 1, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].data, event("a"), "every field survives the round trip");
    assert_eq!((read[0].stream_version, read[0].global_position), (1, 1));
    assert_eq!(*store.head().borrow(), 1);
    store.append(&s, ExpectedVersion::Any, vec![event("b"), event("c")]).await.unwrap();
    let tail = store.read_stream(&s, 2, 1).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].data.payload, b"b");
    assert_eq!(store.read_all(2, 10).await.unwrap().iter().map(|e| e.global_position).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(store.stream_version(&s).await.unwrap(), 3);
}

/// The 128-bit command digest comes back byte for byte where an event has one and stays absent where it
/// has none, beside each other in one append and across appends committed together.
pub async fn command_digests_round_trip(store: Arc<dyn EventStore>) {
    let s = stream("t/wallet/digests");
    let with = |tag: &str, digest: CommandDigest| EventData { command_fingerprint: 0, command_digest: Some(digest), ..event(tag) };
    // All zeros (not "none"), all ones, every position distinct, and a single trailing bit: nothing is
    // trimmed, padded, or read as absent.
    let mut last_bit = [0; COMMAND_DIGEST_BYTES];
    last_bit[COMMAND_DIGEST_BYTES - 1] = 1;
    let digests: [CommandDigest; 4] =
        [[0; COMMAND_DIGEST_BYTES], [0xff; COMMAND_DIGEST_BYTES], std::array::from_fn(|i| (i as u8) * 17), last_bit];
    let first = vec![with("d0", digests[0]), event("none"), with("d1", digests[1])];
    store.append(&s, ExpectedVersion::Exact(0), first.clone()).await.unwrap();
    let together = vec![
        Append { stream: s.clone(), expected: ExpectedVersion::Exact(3), events: vec![with("d2", digests[2])] },
        Append {
            stream: stream("t/wallet/digests-2"),
            expected: ExpectedVersion::Exact(0),
            events: vec![event("none-2"), with("d3", digests[3])],
        },
    ];
    for outcome in store.append_in_order(together.clone()).await {
        outcome.unwrap();
    }
    let expected: Vec<EventData> = first.into_iter().chain(together.into_iter().flat_map(|a| a.events)).collect();
    let all = store.read_all(1, 100).await.unwrap();
    assert_eq!(all.into_iter().map(|e| e.data).collect::<Vec<_>>(), expected, "every field, the digest included, survives");
    let digests_read: Vec<_> = store.read_stream(&s, 1, 10).await.unwrap().into_iter().map(|e| e.data.command_digest).collect();
    assert_eq!(digests_read, [Some(digests[0]), None, Some(digests[1]), Some(digests[2])]);
}

pub async fn one_winner_per_version(store: Arc<dyn EventStore>) {
    let s = stream("t/wallet/race");
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = Arc::clone(&store);
            let s = s.clone();
            tokio::spawn(async move { store.append(&s, ExpectedVersion::Exact(0), vec![event(&format!("racer-{i}"))]).await })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::VersionConflict { expected: 0, actual: 1, .. }) => {}
            Err(other) => panic!("expected a version conflict, got {other}"),
        }
    }
    assert_eq!(wins, 1, "exactly one appender wins version 1");
    assert_eq!(store.stream_version(&s).await.unwrap(), 1);
}

pub async fn concurrent_appenders_build_a_dense_stream(store: Arc<dyn EventStore>) {
    const WRITERS: usize = 8;
    const EACH: usize = 25;
    let s = stream("t/wallet/contended");
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            let s = s.clone();
            tokio::spawn(async move {
                let mut conflicts = 0;
                for n in 0..EACH {
                    loop {
                        let version = store.stream_version(&s).await.unwrap();
                        match store.append(&s, ExpectedVersion::Exact(version), vec![event(&format!("{w}-{n}"))]).await {
                            Ok(outcome) => {
                                assert_eq!(outcome.first_version, version + 1);
                                break;
                            }
                            Err(StoreError::VersionConflict { .. }) => conflicts += 1,
                            Err(other) => panic!("unexpected {other}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let events = store.read_stream(&s, 1, usize::MAX).await.unwrap();
    assert_eq!(events.len(), WRITERS * EACH);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.stream_version, i as u64 + 1, "versions are dense");
    }
    let mut per_writer: HashMap<String, usize> = HashMap::new();
    for e in &events {
        let tag = String::from_utf8(e.data.payload.clone()).unwrap();
        let (writer, n) = tag.split_once('-').unwrap();
        let seen = per_writer.entry(writer.to_owned()).or_default();
        assert_eq!(n.parse::<usize>().unwrap(), *seen, "each writer's events keep their order");
        *seen += 1;
    }
}

pub async fn multi_event_appends_are_atomic(store: Arc<dyn EventStore>) {
    let s = stream("t/wallet/atomic");
    let other = stream("t/wallet/other");
    store.append(&other, ExpectedVersion::Exact(0), vec![event("x")]).await.unwrap();
    let outcome = store.append(&s, ExpectedVersion::Exact(0), (0..5).map(|i| event(&i.to_string())).collect()).await.unwrap();
    assert_eq!((outcome.first_version, outcome.last_version), (1, 5));
    assert_eq!(outcome.last_position - outcome.first_position, 4, "one append takes consecutive positions");
    let conflict = store.append(&s, ExpectedVersion::Exact(3), vec![event("late-1"), event("late-2")]).await;
    assert!(matches!(conflict, Err(StoreError::VersionConflict { expected: 3, actual: 5, .. })), "{conflict:?}");
    assert_eq!(store.stream_version(&s).await.unwrap(), 5, "a refused append leaves nothing behind");
    assert_eq!(store.read_all(1, 100).await.unwrap().len(), 6);
}

pub async fn global_order_matches_stream_order(store: Arc<dyn EventStore>) {
    let tasks: Vec<_> = (0..10)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let s = stream(&format!("t/wallet/order-{w}"));
                for n in 0..20u64 {
                    store.append(&s, ExpectedVersion::Exact(n), vec![event(&format!("{w}:{n}"))]).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let all = store.read_all(1, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 200);
    let mut last_version: HashMap<StreamId, u64> = HashMap::new();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.global_position, i as u64 + 1, "global positions are dense");
        let last = last_version.entry(e.stream_id.clone()).or_default();
        assert_eq!(e.stream_version, *last + 1, "each stream's order holds in the global order");
        *last = e.stream_version;
    }
    // Paging through the global log gives the same sequence.
    let mut paged = Vec::new();
    let mut from = 1;
    loop {
        let page = store.read_all(from, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        from = last.global_position + 1;
        paged.extend(page);
    }
    assert_eq!(paged, all);
}

pub async fn follower_sees_no_gaps(store: Arc<dyn EventStore>) {
    const TOTAL: u64 = 300;
    let mut follower = Follower::new(Arc::clone(&store), 0);
    let reader = tokio::spawn(async move {
        let mut seen = 0u64;
        while seen < TOTAL {
            let batch = follower.next_batch(16).await.unwrap().expect("store still open");
            for e in batch {
                assert_eq!(e.global_position, seen + 1, "a follower never skips a position");
                seen += 1;
            }
        }
        seen
    });
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let s = stream(&format!("t/wallet/follow-{w}"));
                for n in 0..TOTAL / 6 {
                    store.append(&s, ExpectedVersion::Exact(n), vec![event(&n.to_string())]).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), TOTAL);
}

pub async fn size_limits(store: Arc<dyn EventStore>) {
    let s = stream("t/wallet/sizes");
    let mut largest = event("big");
    largest.payload = vec![7; EVENT_PAYLOAD_BYTES_MAX];
    store.append(&s, ExpectedVersion::Exact(0), vec![largest.clone()]).await.unwrap();
    assert_eq!(store.read_stream(&s, 1, 1).await.unwrap()[0].data.payload.len(), EVENT_PAYLOAD_BYTES_MAX);
    let mut too_big = largest;
    too_big.payload.push(0);
    assert!(matches!(store.append(&s, ExpectedVersion::Any, vec![too_big]).await, Err(StoreError::EventTooLarge { .. })));
    assert!(matches!(store.append(&s, ExpectedVersion::Any, vec![]).await, Err(StoreError::EmptyAppend)));
    let many = (0..=APPEND_EVENTS_MAX).map(|i| event(&i.to_string())).collect();
    assert!(matches!(store.append(&s, ExpectedVersion::Any, many).await, Err(StoreError::TooManyEvents { .. })));
    let mut heavy = event("heavy");
    heavy.payload = vec![1; EVENT_PAYLOAD_BYTES_MAX];
    let over_total = vec![heavy; 20];
    assert!(matches!(store.append(&s, ExpectedVersion::Any, over_total).await, Err(StoreError::AppendTooLarge { .. })));
    assert_eq!(store.stream_version(&s).await.unwrap(), 1, "refused appends leave nothing behind");
}

pub async fn thousands_of_streams(store: Arc<dyn EventStore>) {
    const STREAMS: usize = 2000;
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in (w..STREAMS).step_by(8) {
                    let s = stream(&format!("t/wallet/many-{i}"));
                    store.append(&s, ExpectedVersion::Exact(0), vec![event(&format!("{i}-a")), event(&format!("{i}-b"))]).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for i in (0..STREAMS).step_by(97) {
        let s = stream(&format!("t/wallet/many-{i}"));
        let events = store.read_stream(&s, 1, 10).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.data.payload.clone()).collect::<Vec<_>>(),
            vec![format!("{i}-a").into_bytes(), format!("{i}-b").into_bytes()]
        );
    }
    assert_eq!(store.read_all(1, usize::MAX).await.unwrap().len(), STREAMS * 2);
}
