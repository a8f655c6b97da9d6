//! Helper process for the crash test: appends through the real embedded log as fast as it can from many
//! tasks and prints one line per acknowledged append, until it is killed.
//!
//! Usage: `tally-crash-appender <data dir> <streams>`. Prints `ready`, then `ack <stream> <first version>
//! <last version>` per acknowledged append.

use std::io::Write;
use std::sync::Arc;

use tally_engine::store::{EmbeddedStore, EventData, EventStore, ExpectedVersion, StreamId};
use tally_tests::{CRASH_EVENTS_PER_APPEND, crash_payload};

fn event(stream: &str, version: u64) -> EventData {
    EventData {
        event_type: "tally.test.Crash".into(),
        schema_version: 1,
        recorded_at_ms: 0,
        idempotency_key: format!("{stream}:{version}"),
        command_fingerprint: 0,
        command_digest: Some([version.to_le_bytes(), version.to_be_bytes()].concat().try_into().expect("16 bytes")),
        metadata: Default::default(),
        payload: crash_payload(stream, version),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: tally-crash-appender <data dir> <streams>")?;
    let streams: usize = args.next().ok_or("missing <streams>")?.parse()?;
    let store = Arc::new(EmbeddedStore::open(&dir)?);
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    writeln!(out.lock().map_err(|_| "stdout poisoned")?, "ready")?;
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let store = Arc::clone(&store);
            let out = Arc::clone(&out);
            tokio::spawn(async move {
                let name = format!("crash/wallet/s{i}");
                let stream = StreamId::new(&name)?;
                let mut version = store.stream_version(&stream).await?;
                loop {
                    let events = (1..=CRASH_EVENTS_PER_APPEND).map(|j| event(&name, version + j)).collect();
                    let outcome = store.append(&stream, ExpectedVersion::Exact(version), events).await?;
                    version = outcome.last_version;
                    let mut out = out.lock().map_err(|_| "stdout poisoned")?;
                    writeln!(out, "ack {name} {} {}", outcome.first_version, outcome.last_version)?;
                    out.flush()?;
                }
                #[allow(unreachable_code)]
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .collect();
    for task in tasks {
        task.await?.map_err(|e| e.to_string())?;
    }
    Ok(())
}
