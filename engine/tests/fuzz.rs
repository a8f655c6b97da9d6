//! Fuzzing without a nightly toolchain (issue 15): random bytes and structure-aware inputs against every
//! decoder of bytes from outside — log segments as the embedded log opens them, stored events through
//! the codec, rules documents — must give a value or an error, never a panic, never a hang.
//!
//! A short run is part of the test suite; a long one is
//! `PROPTEST_CASES=1000000 cargo test --release -p tally-engine --test fuzz` (proptest reads the variable).

use proptest::prelude::*;
use tally_engine::codec;
use tally_engine::domain::Change;
use tally_engine::domain::program::ProgramChange;
use tally_engine::domain::rules::parse_rules;
use tally_engine::store::{EmbeddedStore, EventData, EventMetadata, EventStore, RecordedEvent, StreamId};

/// Every type name a stored event may have, and some it may not.
fn event_type() -> impl Strategy<Value = String> {
    let known: Vec<String> = Change::EVENT_TYPES
        .iter()
        .chain(ProgramChange::EVENT_TYPES)
        .map(|t| (*t).to_owned())
        .chain(["tally.v1.OrderClaimed".into()])
        .collect();
    prop_oneof![proptest::sample::select(known), "[a-zA-Z.]{0,40}"]
}

fn recorded(event_type: String, schema_version: u32, payload: Vec<u8>) -> RecordedEvent {
    RecordedEvent {
        stream_id: StreamId::new("acme/wallet/c-1").unwrap(),
        stream_version: 1,
        global_position: 1,
        data: EventData {
            event_type,
            schema_version,
            recorded_at_ms: 0,
            idempotency_key: "k".into(),
            command_fingerprint: 0,
            command_digest: None,
            metadata: EventMetadata::default(),
            payload,
        },
        links: None,
    }
}

/// JSON documents of the shapes rules are written in, with values of every type in every place.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1e300f64..1e300).prop_map(serde_json::Value::from),
        prop_oneof![
            "[a-z_]{0,12}",
            Just("points".to_owned()),
            Just("sku".to_owned()),
            Just("and".to_owned()),
            Just("12:30".to_owned()),
            Just("2026-02-30".to_owned()),
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        let keys = prop_oneof![
            Just("id".to_owned()),
            Just("type".to_owned()),
            Just("operator".to_owned()),
            Just("conditions".to_owned()),
            Just("condition".to_owned()),
            Just("actions".to_owned()),
            Just("value".to_owned()),
            Just("amount".to_owned()),
            Just("caps".to_owned()),
            Just("from".to_owned()),
            Just("to".to_owned()),
            "[a-z_]{1,10}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(keys, inner, 0..6).prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn log_cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse::<u32>().ok()).map_or(64, |c| (c / 100).max(64))
}

proptest! {
    #[test]
    fn stored_events_decode_or_are_refused(event_type in event_type(), schema in 0u32..3, payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec::decode(recorded(event_type.clone(), schema, payload.clone()));
        let _ = codec::decode_program(recorded(event_type.clone(), schema, payload.clone()));
        let _ = codec::decode_claim(recorded(event_type, schema, payload));
    }

    #[test]
    fn rules_documents_parse_or_are_refused_with_a_path(text in ".{0,200}", document in json()) {
        let _ = parse_rules(&text);
        let _ = parse_rules(&document.to_string());
        let _ = parse_rules(&serde_json::Value::Array(vec![document]).to_string());
    }
}

proptest! {
    // Each case writes and opens a log: a hundredth of PROPTEST_CASES, at least 64.
    #![proptest_config(ProptestConfig { cases: log_cases(), ..ProptestConfig::default() })]

    #[test]
    fn a_log_of_random_bytes_opens_or_is_refused(garbage in proptest::collection::vec(any::<u8>(), 0..2048), keep in 0usize..3) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            // Some valid records first, then the bytes.
            {
                let store = EmbeddedStore::open(dir.path()).unwrap();
                for n in 0..keep {
                    let data = recorded("tally.v1.WalletEnrolled".into(), 1, Vec::new()).data;
                    let stream = StreamId::new(&format!("acme/wallet/w-{n}")).unwrap();
                    store.append(&stream, tally_engine::store::ExpectedVersion::Exact(0), vec![data]).await.unwrap();
                }
                store.close().await;
            }
            let segment = std::fs::read_dir(dir.path().join("log")).unwrap().next().unwrap().unwrap().path();
            let mut bytes = std::fs::read(&segment).unwrap();
            bytes.extend_from_slice(&garbage);
            std::fs::write(&segment, bytes).unwrap();
            if let Ok(store) = EmbeddedStore::open(dir.path()) {
                let _ = store.read_all(1, 100).await;
                store.close().await;
            }
        });
    }
}
