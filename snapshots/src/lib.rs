//! Snapshots of wallet state: the `SnapshotStore` trait, its sled and Postgres backends, and the policy
//! that decides when to take one. Snapshots are derived data: a bad one is ignored and the wallet is
//! rebuilt from the log. Nothing is built here yet; wallets currently recover by full replay.
