//! `weft-agent`: Weft's edge agent for devices.
//!
//! **Not built yet** (issue 8). This binary exists so the workspace has its final layout; it
//! does nothing but say so and exit with a failure status.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("weft-agent: the edge agent is not built yet (issue 8); see README.md, Status");
    ExitCode::FAILURE
}
