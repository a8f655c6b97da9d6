//! The gRPC edge of Tally: tonic services for storefronts and POS terminals, the one mapping from engine
//! errors to gRPC status codes, the command-line client and load tool, and the settings of the `tally`
//! binary, which is the one place that wires concrete backends together.
//!
//! Architecture Invariant: only this crate knows tonic, `Status` and the generated API types.

pub mod access;
pub mod admin;
pub mod admission;
pub mod audit;
pub mod auditctl;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster_status;
pub mod clusterctl;
pub mod config;
pub mod copy;
pub mod credentials;
pub mod derived;
pub mod exportctl;
pub mod flowsctl;
pub mod health;
mod identifiers;
pub mod keyctl;
pub mod keys;
pub mod limits;
pub mod ops;
pub mod orders;
pub mod quota;
pub mod redact;
pub mod reporting;
pub mod rewards;
pub mod routing;
mod sampling;
pub mod server;
pub mod service;
pub mod status;
pub mod telemetry;
mod transactions;
mod transfers;
