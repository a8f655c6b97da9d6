//! Cluster membership on ractor_cluster, shard placement of wallets over live nodes, routing of wallet
//! calls to their owner, and hand-off when membership changes. Nothing is built here yet; a single node
//! routes through the engine's local wallet registry.
