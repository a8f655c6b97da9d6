//! Tally's engine: the pure wallet domain, the event log (the `EventStore` trait and its backends), and
//! the supervised wallet actors that decide commands and append their events before replying.
//!
//! Layering inside the crate: `domain` ← `codec` ← `store` ← `actors`. The domain knows nothing of the
//! others; the store knows envelopes and bytes, never wallets.

pub mod actors;
pub mod audit;
pub mod clock;
pub mod codec;
pub mod domain;
pub mod limits;
pub mod personal;
pub mod store;
pub mod traces;

/// Hash map for hot paths: foldhash is several times faster than SipHash on short keys and still seeded
/// per process, so crafted keys cannot force collisions.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
