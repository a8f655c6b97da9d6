//! The gRPC edge of Tally: tonic services for storefronts and POS terminals, the mapping from domain
//! errors to gRPC status codes, and the `tally` binary that wires concrete backends together. Nothing is
//! built here yet; see the engine crate for the wallet API the services will call.
