//! Runs the program again with mimalloc's large pages on.
//!
//! At 1000 nodes the simulator's 1.7 GB of node state is read at random, and with 4 KiB
//! pages nearly every read also misses the TLB; with 2 MiB pages (transparent huge pages,
//! which this kernel gives on `madvise`) `scale-1000` ran 7 to 11 % faster for Weft and 15
//! to 30 % for flooding (docs/sim-speed.md, session 39), with the same report. mimalloc
//! reads its options once, from the environment, before `main` runs; setting them from
//! code takes its unsafe C API, which this workspace forbids. So the binaries that want
//! them (`weft-sim`, the speed example) start themselves again with the environment set.

use std::process::ExitCode;

/// Lets mimalloc back its heap with 2 MiB pages.
pub const LARGE_PAGES: (&str, &str) = ("MIMALLOC_ALLOW_LARGE_OS_PAGES", "1");
/// Keeps mimalloc from returning freed memory to the system: a huge page given back and
/// taken again is zeroed by the kernel each time (with large pages but purging on,
/// `scale-1000` spent 3.9 s in the kernel and was no faster than without them).
pub const NO_PURGE: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "-1");

/// Whether this process runs with large pages allowed, as mimalloc reads
/// [`LARGE_PAGES`] (a number other than 0, or `true`, `yes`, `on`).
pub fn allowed() -> bool {
    std::env::var(LARGE_PAGES.0).is_ok_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        matches!(v.as_str(), "true" | "yes" | "on") || v.parse::<i64>().is_ok_and(|n| n != 0)
    })
}

/// Runs this program again, with the same arguments, with [`LARGE_PAGES`] and
/// [`NO_PURGE`] set, unless the environment already sets [`LARGE_PAGES`] (either way:
/// `MIMALLOC_ALLOW_LARGE_OS_PAGES=0` runs without them and without a second process).
/// Returns the child's exit status (128 plus the signal that killed it), or `None` to run
/// here: large pages already decided, or a child that could not be started.
pub fn run_with_large_pages() -> Option<ExitCode> {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        if std::env::var_os(LARGE_PAGES.0).is_some() {
            return None;
        }
        let exe = std::env::current_exe().ok()?;
        let status = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(LARGE_PAGES.0, LARGE_PAGES.1)
            .env(NO_PURGE.0, NO_PURGE.1)
            .status()
            .ok()?;
        let code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(2);
        Some(ExitCode::from(u8::try_from(code).unwrap_or(2)))
    }
    #[cfg(not(unix))]
    {
        None
    }
}
