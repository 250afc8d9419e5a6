//! Weft's routing logic, pure (no I/O, no clock): RTT estimation, network coordinates,
//! latency graphs, constrained shortest paths and relay choice.
//!
//! **Not built yet.** This crate is a placeholder in the workspace layout; the routing
//! issue (#5) fills it. Nothing here is used by other crates, and nothing pretends to work.
