//! Crash test of the embedded log: a child process appends through the real backend and prints every
//! acknowledged append; we SIGKILL it at random moments, reopen the log, and check that every
//! acknowledged event is there and no partial append is visible.
//!
//! `TALLY_CRASH_CYCLES` sets the number of kill/restart cycles (default 50); `TALLY_CRASH_SEED` the seed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_engine::store::{EmbeddedStore, EventStore};
use tally_tests::{CRASH_EVENTS_PER_APPEND, crash_payload};

const STREAMS: usize = 16;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_never_loses_an_acknowledged_append() {
    let cycles: usize = env_or("TALLY_CRASH_CYCLES", 50);
    let seed: u64 = env_or("TALLY_CRASH_SEED", 0x0c0f_fee0);
    eprintln!("crash test: {cycles} cycles, seed {seed} (TALLY_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // Highest acknowledged version per stream, over all cycles.
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut torn_tails = 0;
    let mut total_acks = 0;
    for cycle in 0..cycles {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally-crash-appender"))
            .arg(dir.path())
            .arg(STREAMS.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready", "cycle {cycle}: the appender opened the log");
        let reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<String>>());
        tokio::time::sleep(Duration::from_millis(rng.random_range(2..60))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for line in reader.join().unwrap() {
            let mut parts = line.split(' ');
            let (Some("ack"), Some(stream), Some(_first), Some(last)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
                continue; // a line cut by the kill
            };
            let Ok(last) = last.parse::<u64>() else { continue };
            let entry = acked.entry(stream.to_owned()).or_default();
            *entry = (*entry).max(last);
            total_acks += 1;
        }

        let store = EmbeddedStore::open(dir.path()).unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        torn_tails += usize::from(store.report().torn_tail.is_some());
        let all = store.read_all(1, usize::MAX).await.unwrap();
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.global_position, i as u64 + 1, "cycle {cycle}: dense global log");
            assert_eq!(e.data.payload, crash_payload(e.stream_id.as_str(), e.stream_version), "cycle {cycle}: event bytes intact");
        }
        for s in 0..STREAMS {
            let name = format!("crash/wallet/s{s}");
            let stream = tally_engine::store::StreamId::new(&name).unwrap();
            let version = store.stream_version(&stream).await.unwrap();
            assert_eq!(version % CRASH_EVENTS_PER_APPEND, 0, "cycle {cycle}: {name} shows part of an append (version {version})");
            let acknowledged = acked.get(&name).copied().unwrap_or(0);
            assert!(version >= acknowledged, "cycle {cycle}: {name} lost acknowledged events: has {version}, acked {acknowledged}");
        }
        drop(store);
    }
    eprintln!("crash test: {total_acks} acknowledged appends checked over {cycles} kills; {torn_tails} torn tails truncated");
    assert!(total_acks > 0, "the appender acknowledged something");
}
