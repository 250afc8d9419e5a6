//! Weft's routing logic, pure (no I/O, no clock, no global RNG): RTT estimation, network
//! coordinates, the link-state latency graph, constrained shortest paths and relay choice.
//!
//! - [`rtt`]: per-peer RTT estimate (window minimum, smoothing, hysteresis).
//! - [`coord`]: Vivaldi coordinates with height, to estimate RTTs never measured; the
//!   serializable [`coord::Coordinate`] is what membership records will carry.
//! - [`linkstate`]: the newest link report of every node, bounded, and the
//!   [`linkstate::LatencyGraph`] built from them.
//! - [`paths`]: Dijkstra with a transit predicate, and single-relay choice, with optional
//!   coordinate estimates for missing links.
//!
//! Node ids are generic (`N: Ord + Copy`): the mesh will use `weft_fabric::OriginKey`, tests
//! and benchmarks use integers, and this crate does not pull in the fabric's crypto stack.
//! Ordered ids also make every result deterministic (ties broken by id).
//!
//! **Not wired in yet**: nothing in the mesh core, the node, the HTTP API or the simulator
//! scenarios uses this crate so far.

pub mod coord;
pub mod linkstate;
pub mod paths;
pub mod rtt;

pub use coord::{Coordinate, VivaldiClient};
pub use linkstate::{LatencyGraph, LinkStateDb, ReportOutcome};
pub use paths::{RelayChoice, Route, Routes, best_relay, shortest_paths};
pub use rtt::RttEstimator;
