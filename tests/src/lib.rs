//! Black-box tests of Tally: real processes, real clients, crashes. The tests live in `tests/`; this
//! library holds what they share, and `src/bin/` the helper processes they start and kill.

/// Events per append in the crash appender: a crash must never leave part of one visible.
pub const CRASH_EVENTS_PER_APPEND: u64 = 3;

/// The payload the crash appender writes for a stream version, so a reader can check every byte.
pub fn crash_payload(stream: &str, version: u64) -> Vec<u8> {
    format!("{stream}:{version}").into_bytes()
}
