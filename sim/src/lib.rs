//! `weft-sim`: Weft's deterministic discrete-event simulator of the mesh.
//!
//! The library holds what the `weft-sim` binary and its tests share:
//!
//! - [`catalog`]: real cloud regions with their metadata and a complete round-trip-time
//!   matrix, measured where the data has the pair and derived (and labelled so) elsewhere;
//! - [`engine`]: the deterministic discrete-event engine running fabric nodes (and the
//!   [`baseline`] strategies) over the modelled WAN, with faults, invariants and metrics;
//! - [`allocator`]: the binaries keep mimalloc's freed memory, on transparent huge pages;
//! - [`html`]: the HTML report with SVG charts (`--html DIR`);
//! - [`plan`]: scenario + catalog -> the engine's resolved plan;
//! - [`report`]: summary figures, terminal table and JSON;
//! - [`scenario`]: the TOML scenario format (topology, network, workloads, faults, checks,
//!   baselines), validated against a catalog, and the deterministic numbering of nodes;
//! - [`sweep`]: `weft-sim sweep`, one scenario over a range of seeds (the seed range, each
//!   seed's outcome from its report, the summary);
//! - [`tables`]: table workloads (keyed writes), the replicas every node keeps, and their
//!   comparison with a reference replay.
//!
//! `docs/sim.md` documents both for people who write scenarios.

pub mod allocator;
pub mod baseline;
pub mod catalog;
pub mod engine;
pub mod html;
pub mod plan;
mod queue;
pub mod report;
pub mod residency;
pub mod scenario;
pub mod sweep;
pub mod tables;
#[cfg(feature = "handler-timing")]
pub mod timing;

mod toml_text;
