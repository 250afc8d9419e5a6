//! Weft's policy logic, pure (no I/O, no clock): signed bundles, jurisdictions, residency
//! classes, access rules, egress transforms, limits, and decisions with reasons.
//!
//! **Not built yet.** This crate is a placeholder in the workspace layout; the policy issue
//! (#6) fills it. Nothing here is used by other crates, and nothing pretends to work.
