//! Behaviour specific to the embedded log: durability across reopen, torn tails, corruption, segments.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use tally_engine::store::conformance::{event, stream};
use tally_engine::store::{EmbeddedOptions, EmbeddedStore, EventStore, ExpectedVersion, StoreError};

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join("log")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

async fn fill(store: &EmbeddedStore, streams: usize, per_stream: u64) {
    for n in 0..per_stream {
        for s in 0..streams {
            let events = vec![event(&format!("{s}-{n}-a")), event(&format!("{s}-{n}-b"))];
            store.append(&stream(&format!("t/wallet/{s}")), ExpectedVersion::Exact(n * 2), events).await.unwrap();
        }
    }
}

#[tokio::test]
async fn events_survive_a_reopen_and_the_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        fill(&store, 5, 10).await;
        store.close().await;
        store.read_all(1, usize::MAX).await.unwrap()
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let report = store.report().clone();
    assert_eq!((report.events, report.streams, report.torn_tail), (100, 5, None));
    assert_eq!(store.read_all(1, usize::MAX).await.unwrap(), before);
    assert_eq!(store.stream_version(&stream("t/wallet/3")).await.unwrap(), 20);
    assert_eq!(*store.head().borrow(), 100);
    // Appends continue where the log left off.
    let outcome = store.append(&stream("t/wallet/3"), ExpectedVersion::Exact(20), vec![event("next")]).await.unwrap();
    assert_eq!((outcome.first_version, outcome.first_position), (21, 101));
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path()).unwrap();
    let second = EmbeddedStore::open(dir.path());
    assert!(matches!(&second, Err(StoreError::Unavailable { reason }) if reason.contains("locked")), "{second:?}");
}

#[tokio::test]
async fn a_torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        fill(&store, 3, 4).await;
        store.close().await;
    }
    let last = segments(dir.path()).pop().unwrap();
    let intact_len = fs::metadata(&last).unwrap().len();
    // A crash mid-write leaves the start of a record (header and part of its body) at the end.
    let mut file = OpenOptions::new().append(true).open(&last).unwrap();
    file.write_all(&[0x54, 0x4c, 0x59, 0x31, 200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]).unwrap();
    drop(file);

    let store = EmbeddedStore::open(dir.path()).unwrap();
    let torn = store.report().torn_tail.clone().expect("the torn tail is reported");
    assert_eq!((torn.file, torn.offset, torn.bytes_dropped), (last.clone(), intact_len, 15));
    assert_eq!(fs::metadata(&last).unwrap().len(), intact_len, "the file is cut back to its last whole record");
    assert_eq!(store.report().events, 24, "every whole record is kept");
    store.append(&stream("t/wallet/0"), ExpectedVersion::Exact(8), vec![event("after-crash")]).await.unwrap();
}

#[tokio::test]
async fn a_tail_of_zeros_counts_as_torn() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        fill(&store, 1, 3).await;
        store.close().await;
    }
    let last = segments(dir.path()).pop().unwrap();
    OpenOptions::new().append(true).open(&last).unwrap().write_all(&[0; 4096]).unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.report().torn_tail.as_ref().unwrap().bytes_dropped, 4096);
    assert_eq!(store.report().events, 6);
}

#[tokio::test]
async fn corruption_before_the_tail_stops_start_up_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        fill(&store, 2, 5).await;
        store.close().await;
    }
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&last).unwrap();
    // Damage the first record's body: whole records follow it, so this is not a torn write.
    bytes[20] ^= 0xff;
    fs::write(&last, &bytes).unwrap();
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Corrupt { file, offset, reason }) => {
            assert_eq!((file, offset), (last, 0));
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected corruption to stop start-up, got {other:?}"),
    }
}

/// Issue 15, item 15: a whole last record with a bad checksum was cut off as a "torn tail", though it had
/// been acknowledged. The writer notes how far it acknowledged; damage below that stops the open.
#[tokio::test]
async fn damage_to_the_last_acknowledged_record_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        fill(&store, 2, 5).await;
        store.close().await;
    }
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&last).unwrap();
    let end = bytes.len();
    bytes[end - 3] ^= 0xff;
    fs::write(&last, &bytes).unwrap();
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Corrupt { file, reason, .. }) => {
            assert_eq!(file, last);
            assert!(reason.contains("acknowledged"), "{reason}");
        }
        other => panic!("expected acknowledged damage to stop start-up, got {other:?}"),
    }
    assert_eq!(fs::read(&last).unwrap().len(), end, "nothing was cut off");
}

#[tokio::test]
async fn corruption_is_reported_on_read_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    fill(&store, 2, 5).await;
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&last).unwrap();
    bytes[20] ^= 0xff;
    fs::write(&last, &bytes).unwrap();
    let read = store.read_stream(&stream("t/wallet/0"), 1, 10).await;
    assert!(matches!(&read, Err(StoreError::Corrupt { offset: 0, .. })), "{read:?}");
}

#[tokio::test]
async fn the_log_rolls_into_segments_and_reads_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions { segment_bytes_max: 4 * 1024 };
    {
        let store = EmbeddedStore::open_with(dir.path(), options.clone()).unwrap();
        fill(&store, 4, 25).await;
        store.close().await;
    }
    let files = segments(dir.path());
    assert!(files.len() > 5, "expected several segments, got {}", files.len());
    let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
    assert_eq!(store.report().segments, files.len());
    let all = store.read_all(1, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 200);
    assert!(all.iter().enumerate().all(|(i, e)| e.global_position == i as u64 + 1));
    let one = store.read_stream(&stream("t/wallet/2"), 1, usize::MAX).await.unwrap();
    assert_eq!(one.len(), 50);
    assert_eq!(one[49].data.payload, b"2-24-b");
}

#[tokio::test]
async fn a_missing_segment_in_the_middle_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open_with(dir.path(), EmbeddedOptions { segment_bytes_max: 2 * 1024 }).unwrap();
        fill(&store, 4, 20).await;
        store.close().await;
    }
    let files = segments(dir.path());
    fs::remove_file(&files[1]).unwrap();
    let result = EmbeddedStore::open(dir.path());
    assert!(matches!(&result, Err(StoreError::Corrupt { file, .. }) if *file == files[2]), "{result:?}");
}

#[tokio::test]
async fn appends_after_close_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.close().await;
    let result = store.append(&stream("t/wallet/x"), ExpectedVersion::Any, vec![event("late")]).await;
    assert!(matches!(result, Err(StoreError::Unavailable { .. })));
}

/// Issue 15, item 20: a log's identity is made once and kept in the log: the same after a reopen.
#[tokio::test]
async fn a_log_keeps_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let id = tally_engine::store::log_identity(&store, 1_000).await.unwrap();
        assert_eq!(tally_engine::store::log_identity(&store, 2_000).await.unwrap(), id);
        store.close().await;
        id
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(tally_engine::store::log_identity(&store, 3_000).await.unwrap(), first);
    let other = tempfile::tempdir().unwrap();
    let another = EmbeddedStore::open(other.path()).unwrap();
    assert_ne!(tally_engine::store::log_identity(&another, 1_000).await.unwrap(), first, "each log its own");
}

/// Issue 19 item 4: the embedded log's personal data keys live in `keys/` beside `log/`, survive a
/// reopen, and an erased one leaves no file behind, nor does a copy a crash left half-kept.
#[tokio::test]
async fn personal_data_keys_survive_a_reopen_and_an_erased_one_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, erased) = (stream("t/wallet/kept"), stream("t/wallet/erased"));
    let key = |byte| tally_engine::store::PersonalKey::from_bytes(&[byte; 32]).unwrap();
    let files = |dir: &Path| -> Vec<PathBuf> {
        let mut found = Vec::new();
        for folder in fs::read_dir(dir.join("keys")).unwrap() {
            for file in fs::read_dir(folder.unwrap().path()).unwrap() {
                found.push(file.unwrap().path());
            }
        }
        found
    };
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.keep_personal_key(&kept, &key(1)).await.unwrap();
        store.keep_personal_key(&erased, &key(2)).await.unwrap();
        assert_eq!(files(dir.path()).len(), 2, "one file per key");
        assert!(store.erase_personal_key(&erased).await.unwrap());
        store.close().await;
    }
    let [only] = files(dir.path()).try_into().unwrap();
    assert_eq!(fs::read(&only).unwrap(), [1; 32]);
    // A crash between writing a key and linking it into place leaves a temporary copy: opening removes it.
    let stray = only.with_extension("123.tmp");
    fs::write(&stray, [2; 32]).unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert!(!stray.exists(), "a half-kept key is removed at open");
    assert_eq!(store.personal_keys(&[kept, erased]).await.unwrap(), vec![Some(key(1)), None]);
}
