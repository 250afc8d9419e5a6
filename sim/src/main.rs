//! `weft-sim`: Weft's deterministic simulator.
//!
//! **Not built yet** (issue 3). This binary exists so the workspace has its final layout; it
//! does nothing but say so and exit with a failure status.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("weft-sim: the simulator is not built yet (issue 3); see README.md, Status");
    ExitCode::FAILURE
}
