//! The simulator's heap: mimalloc on transparent huge pages, with freed memory kept.
//!
//! At 1000 nodes most of a run is memory latency over 1.7 GB of node state read at random,
//! and with 4 KiB pages nearly every such read also misses the TLB. mimalloc asks the
//! kernel for transparent huge pages (2 MiB) with `madvise` on its segments, which the
//! kernel's THP setting `madvise` (this machine's) and `always` grant. What it must not do
//! is return freed memory to the kernel and take it back: each huge page taken back is
//! zeroed whole (with purging on, `scale-1000` spent 3.9 s in the kernel and was no faster
//! than on 4 KiB pages). With purging off (`MIMALLOC_PURGE_DELAY=-1`), `scale-1000` ran
//! 7 to 11 % faster for Weft and 15 to 30 % for flooding, with the same report
//! (docs/sim-speed.md, session 39).
//!
//! mimalloc reads its options once, from the environment, before `main` runs; setting them
//! from code takes its unsafe C API, which this workspace forbids. So the binaries that want
//! it (`weft-sim`, the speed example) replace themselves (`exec`: same process, same
//! arguments) with the variable set, unless the environment already sets it. Opt out with
//! `MIMALLOC_ALLOW_THP=0` (no huge pages) or any `MIMALLOC_PURGE_DELAY` of your own. Tools
//! that follow a process (valgrind, perf) see the replacement as the same process.

/// Keeps mimalloc from returning freed memory to the kernel.
pub const NO_PURGE: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "-1");

/// The value of the mimalloc option variable `name`, which mimalloc matches without regard
/// to case.
fn option(name: &str) -> Option<String> {
    std::env::vars_os()
        .find(|(k, _)| k.to_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
        .map(|(_, v)| v.to_string_lossy().into_owned())
}

/// Replaces this process with a run of the same program and arguments with [`NO_PURGE`]
/// set, unless the environment sets `MIMALLOC_PURGE_DELAY` already. Returns only when it
/// does not replace it (set already, or the `exec` failed: then it runs as it is, and says
/// so on standard error).
pub fn keep_freed_memory() {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        if option(NO_PURGE.0).is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(NO_PURGE.0, NO_PURGE.1)
            .exec();
        eprintln!(
            "weft-sim: running with mimalloc's default purging: could not restart with {}={}: {err}",
            NO_PURGE.0, NO_PURGE.1
        );
    }
}

/// How this process's heap is kept, for the end of a run: whether freed memory is kept
/// and how much of the heap is on transparent huge pages (Linux; from
/// `/proc/self/smaps_rollup`).
pub fn describe() -> String {
    let purging = match option(NO_PURGE.0) {
        Some(v) if v.trim() == NO_PURGE.1 => "freed memory kept".to_string(),
        Some(v) => format!("purge delay {v}"),
        None => "default purging".to_string(),
    };
    let huge = std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|text| huge_pages_kib(&text))
        .map_or_else(
            || "huge pages unknown".to_string(),
            |kib| format!("{} MiB on transparent huge pages", kib / 1024),
        );
    format!("allocator: mimalloc, {purging}, {huge}")
}

/// The `AnonHugePages` figure of a `smaps_rollup` text, in KiB.
fn huge_pages_kib(smaps: &str) -> Option<u64> {
    smaps.lines().find_map(|line| {
        let rest = line.strip_prefix("AnonHugePages:")?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_huge_page_figure_is_read_from_smaps() {
        let text = "Rss:             1840468 kB\nAnonHugePages:   1081344 kB\nShmemHugePages:        0 kB\n";
        assert_eq!(huge_pages_kib(text), Some(1_081_344));
        assert_eq!(huge_pages_kib("Rss: 12 kB\n"), None);
    }
}
