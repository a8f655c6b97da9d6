//! Projection workers: follow the global event log from a checkpoint and build CQRS read models in
//! PostgreSQL and sled, storing each checkpoint atomically with the writes it covers. Nothing is built
//! here yet; the engine's `EventStore::follow` is the entry point these workers will use.
