//! Tally's public protobuf contract, generated from the `.proto` files beside this crate.
//!
//! `tally.v1` holds the persisted event schema (what the log stores, forever) and, as the gateway grows,
//! the gRPC APIs. The `.proto` files are the source of truth; this crate only compiles them.

/// Package `tally.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::doc_markdown, unused_qualifications, missing_debug_implementations)]
    include!(concat!(env!("OUT_DIR"), "/tally.v1.rs"));
}
