//! Tally's public protobuf contract, generated from the `.proto` files beside this crate.
//!
//! `tally.v1` holds the persisted event schema (what the log stores, forever) and the gRPC APIs
//! (`WalletService`). The `.proto` files are the source of truth; this crate only compiles them.

pub mod codec;

/// Package `tally.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::doc_markdown, unused_qualifications, missing_debug_implementations, rust_2018_idioms)]
    include!(concat!(env!("OUT_DIR"), "/tally.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every `tally.v1` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tally_descriptor.bin"));
