//! Issue 19 item 2: the embedded log's hash chains. An event changed on disk with its record checksum
//! recomputed (so the log still opens) is named by `verify` — position, stream, version; re-hashing the
//! changed event alone breaks the next link; the chains carry on across a restart; and a log written
//! before the chains (the golden log) is linked from position 1, its first stored links chaining onto
//! the computed ones.

mod common;

use std::path::Path;

use prost::Message;
use tally_engine::audit::verify::{verify_log, verify_stream};
use tally_engine::store::chain;
use tally_engine::store::conformance::{event, stream};
use tally_engine::store::{EmbeddedStore, EventStore, ExpectedVersion};
use tally_proto::v1::LogRecord;

/// Writes three streams, five single-event appends each, interleaved: positions 1..=15.
async fn write_log(dir: &Path) {
    let store = EmbeddedStore::open(dir).unwrap();
    for v in 0..5 {
        for name in ["t/wallet/a", "t/wallet/b", "t/wallet/c"] {
            store.append(&stream(name), ExpectedVersion::Exact(v), vec![event(&format!("{name}-{v}"))]).await.unwrap();
        }
    }
    store.close().await;
}

/// The only segment of the log in `dir`.
fn segment(dir: &Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("log")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.pop().unwrap()
}

/// Rewrites the record holding `position` with `change` applied to its envelopes, and a checksum that
/// matches again: what someone with write access to the files could do.
fn tamper(dir: &Path, position: u64, change: impl Fn(&mut tally_proto::v1::EventEnvelope)) {
    let path = segment(dir);
    let bytes = std::fs::read(&path).unwrap();
    let (mut out, mut at) = (Vec::new(), 0);
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &bytes[at + 12..at + 12 + len];
        let mut record = LogRecord::decode(body).unwrap();
        let mut touched = false;
        for envelope in &mut record.events {
            if envelope.global_position == position {
                change(envelope);
                touched = true;
            }
        }
        let body = if touched { record.encode_to_vec() } else { body.to_vec() };
        out.extend_from_slice(&bytes[at..at + 4]);
        out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        at += 12 + len;
    }
    // And the note of how far the log was acknowledged, which a shorter file would otherwise contradict.
    let note = dir.join("log.acknowledged");
    let mut acknowledged = std::fs::read(&note).unwrap();
    acknowledged[8..16].copy_from_slice(&(out.len() as u64).to_le_bytes());
    std::fs::write(&note, acknowledged).unwrap();
    std::fs::write(&path, out).unwrap();
}

#[tokio::test]
async fn an_event_changed_on_disk_is_named_by_verify_even_with_its_checksum_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path()).await;
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let verified = verify_log(&store, |_| {}).await.unwrap().unwrap();
        assert_eq!((verified.events, verified.linked), (15, 15));
    }
    // Position 8 is stream b's version 3: its payload changed, its checksum made right.
    tamper(dir.path(), 8, |e| e.payload = b"t/wallet/b-2 but more".to_vec());
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.report().torn_tail, None, "the log opens: the checksum matches");
    let (broken, before) = verify_log(&store, |_| {}).await.unwrap().unwrap_err();
    assert_eq!((broken.position, broken.stream.as_str(), broken.stream_version), (8, "t/wallet/b", 3));
    assert!(broken.reason.contains("stream hash"), "{broken}");
    assert_eq!(before.events, 7, "everything before it checked out");
    let (in_stream, _) = verify_stream(&store, &stream("t/wallet/b")).await.unwrap().unwrap_err();
    assert_eq!((in_stream.position, in_stream.stream_version), (8, 3));
    assert!(verify_stream(&store, &stream("t/wallet/a")).await.unwrap().is_ok(), "another stream is intact");
}

/// Changes position 4 (stream a, version 2) and recomputes its own two links correctly, as a tamperer
/// who knows the algorithm would.
async fn forge_and_relink_position_4(dir: &Path) {
    let events = EmbeddedStore::open(dir).unwrap().read_all(1, 100).await.unwrap();
    let (previous_in_stream, previous_in_log) = (events[0].links.unwrap().stream, events[2].links.unwrap().log);
    tamper(dir, 4, |e| {
        e.idempotency_key = "key-forged".into();
        e.stream_hash.clear();
        e.log_hash.clear();
        chain::link(e, &previous_in_stream, &previous_in_log);
    });
}

#[tokio::test]
async fn rehashing_a_changed_event_alone_breaks_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path()).await;
    forge_and_relink_position_4(dir.path()).await;
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (broken, _) = verify_log(&store, |_| {}).await.unwrap().unwrap_err();
    assert_eq!(broken.position, 5, "position 4 now checks out, and position 5's log link no longer does: {broken}");
    assert!(broken.reason.contains("log hash"), "{broken}");
    let (in_stream, _) = verify_stream(&store, &stream("t/wallet/a")).await.unwrap().unwrap_err();
    assert_eq!((in_stream.position, in_stream.stream_version), (7, 3), "and the stream's next event");
}

#[tokio::test]
async fn the_chains_carry_on_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path()).await;
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.append(&stream("t/wallet/a"), ExpectedVersion::Exact(5), vec![event("after")]).await.unwrap();
    store.append(&stream("t/wallet/d"), ExpectedVersion::Exact(0), vec![event("new")]).await.unwrap();
    let verified = verify_log(&store, |_| {}).await.unwrap().unwrap();
    assert_eq!((verified.events, verified.linked), (17, 17));
}

#[tokio::test]
async fn a_log_written_before_the_chains_is_linked_from_its_first_event() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/log-v1"), dir.path());
    let legacy = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let verified = verify_log(&store, |_| {}).await.unwrap().unwrap();
        assert_eq!(verified.linked, 0, "the golden log predates the chains");
        // New events chain onto the links computed for the old ones.
        let old = stream("golden/wallet/carol");
        let version = store.stream_version(&old).await.unwrap();
        store.append(&old, ExpectedVersion::Exact(version), vec![event("carol-after")]).await.unwrap();
        store.append(&stream("golden/wallet/dave"), ExpectedVersion::Exact(0), vec![event("dave")]).await.unwrap();
        let after = verify_log(&store, |_| {}).await.unwrap().unwrap();
        assert_eq!((after.events, after.linked), (verified.events + 2, 2));
        store.close().await;
        verified.events
    };
    // An old event changed: it has no link of its own to break, so the first stored link after it does.
    tamper(dir.path(), 3, |e| e.payload.push(0));
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (broken, _) = verify_log(&store, |_| {}).await.unwrap().unwrap_err();
    assert_eq!(broken.position, legacy + 1, "{broken}");
}

/// Runs the auditor's own checker, `docs/verify_chain.py`, on a data directory: its one line, and
/// whether it found the log intact.
fn python_verifier(dir: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/verify_chain.py");
    let output = std::process::Command::new("python3").arg(&script).arg(dir).output().expect("python3 runs (the machine has CPython 3.11)");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn hex(hash: &[u8]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn the_python_verifier_agrees_with_verify() {
    // Old events and new ones: the same head, computed independently from the files.
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/log-v1"), dir.path());
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.append(&stream("golden/wallet/erin"), ExpectedVersion::Exact(0), vec![event("erin-1"), event("erin-2")]).await.unwrap();
        let verified = verify_log(&store, |_| {}).await.unwrap().unwrap();
        store.close().await;
        let (position, head) = verified.head.unwrap();
        let (intact, line) = python_verifier(dir.path());
        assert!(intact, "{line}");
        assert_eq!(line, format!("intact: {position} events, 2 with stored links, log hash at position {position}: {}", hex(&head)));
    }
    // A changed event, its checksum recomputed: both name the same position.
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path()).await;
    tamper(dir.path(), 8, |e| e.payload = b"forged".to_vec());
    let (intact, line) = python_verifier(dir.path());
    assert!(!intact && line.starts_with("BROKEN at position 8 (t/wallet/b version 3): its stream hash"), "{line}");
    // The changed event rehashed: both name the next link.
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path()).await;
    forge_and_relink_position_4(dir.path()).await;
    let (intact, line) = python_verifier(dir.path());
    assert!(!intact && line.starts_with("BROKEN at position 5 (t/wallet/b version 2): its log hash"), "{line}");
    // Links taken away: both name the first event without them.
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path()).await;
    for position in 11..=15 {
        tamper(dir.path(), position, |e| {
            e.stream_hash.clear();
            e.log_hash.clear();
        });
    }
    let (intact, line) = python_verifier(dir.path());
    assert!(!intact && line.starts_with("BROKEN at position 11 (t/wallet/b version 4): it carries no hash links"), "{line}");
    // A byte flipped without fixing the checksum: the files themselves are damaged.
    let path = segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let (intact, line) = python_verifier(dir.path());
    assert!(!intact && line.contains("fails its checksum"), "{line}");
}

#[tokio::test]
async fn links_taken_away_or_events_cut_off_the_end_are_found() {
    // Links stripped from position 8 on (and the event at 8 changed): the first event without links
    // after linked ones is the break.
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path()).await;
    for position in 8..=15 {
        tamper(dir.path(), position, |e| {
            e.stream_hash.clear();
            e.log_hash.clear();
            if e.global_position == 8 {
                e.payload = b"forged".to_vec();
            }
        });
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (broken, _) = verify_log(&store, |_| {}).await.unwrap().unwrap_err();
    assert_eq!((broken.position, broken.stream.as_str()), (8, "t/wallet/b"), "{broken}");
    assert!(broken.reason.contains("no hash links"), "{broken}");
    let (in_stream, _) = verify_stream(&store, &stream("t/wallet/b")).await.unwrap().unwrap_err();
    assert_eq!(in_stream.position, 8, "{in_stream}");
    drop(store);

    // The last records cut off at a record's end: the note of what was acknowledged says otherwise.
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path()).await;
    let path = segment(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let (mut at, mut ends) = (0, Vec::new());
    while at < bytes.len() {
        at += 12 + u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        ends.push(at);
    }
    std::fs::write(&path, &bytes[..ends[ends.len() - 3]]).unwrap();
    let refused = EmbeddedStore::open(dir.path()).unwrap_err().to_string();
    assert!(refused.contains("acknowledged events are missing"), "{refused}");
}
