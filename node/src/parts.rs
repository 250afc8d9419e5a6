//! CPU-bound work on independent items spread over the machine's cores: signing a large
//! publish batch (`http.rs`), verifying a long run read from the store (`store.rs`).
//! Hand-written on `std::thread::scope` rather than a pool crate (rayon): two call sites,
//! each a blocking section of a thread that waits for the result anyway, and a few
//! threads spawned per large batch cost microseconds against milliseconds of Ed25519.

/// Splits `items` into up to one part per core, each of at least `part_min` items (fewer
/// items than two parts: one part, on the calling thread), and runs `f` on each part with
/// the index of its first item, the first part on the calling thread. Returns the parts'
/// results in order, or `None` when a part's thread panicked (a panic of the first part,
/// on the calling thread, is the caller's).
pub(crate) fn in_parts<T: Send, R: Send>(
    items: Vec<T>,
    part_min: usize,
    f: impl Fn(usize, Vec<T>) -> R + Sync,
) -> Option<Vec<R>> {
    // Asked once: `available_parallelism` reads cgroup files on Linux, I/O that has no
    // place on every call.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = (*CORES
        .get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())))
    .min(items.len() / part_min.max(1))
    .max(1);
    if threads == 1 {
        return Some(vec![f(0, items)]);
    }
    let per = items.len().div_ceil(threads);
    let mut parts = Vec::with_capacity(threads);
    let mut rest = items;
    while rest.len() > per {
        let tail = rest.split_off(per);
        parts.push(std::mem::replace(&mut rest, tail));
    }
    parts.push(rest);
    let f = &f;
    std::thread::scope(|s| {
        let mut parts = parts.into_iter().enumerate();
        let (_, mine) = parts.next().unwrap_or_default();
        let others: Vec<_> = parts
            .map(|(k, part)| s.spawn(move || f(k * per, part)))
            .collect();
        let mut out = Vec::with_capacity(others.len() + 1);
        out.push(f(0, mine));
        for h in others {
            out.push(h.join().ok()?);
        }
        Some(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_item_once_in_order_with_their_first_index() {
        for (len, part_min) in [(0, 4), (3, 4), (7, 4), (8, 4), (1000, 4), (1001, 1)] {
            let items: Vec<usize> = (0..len).collect();
            let parts = in_parts(items, part_min, |first, part| {
                assert!(part.first().is_none_or(|x| *x == first));
                part
            })
            .unwrap();
            assert!(parts.iter().all(|p| p.len() >= part_min.min(len)));
            let flat: Vec<usize> = parts.into_iter().flatten().collect();
            assert_eq!(flat, (0..len).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_panicking_part_is_none_not_a_panic() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores < 2 {
            return; // one part, on the calling thread: nothing to catch
        }
        let r = in_parts((0..100).collect::<Vec<u32>>(), 10, |first, part| {
            assert!(first == 0, "a part after the first panics");
            part.len()
        });
        assert_eq!(r, None);
    }
}
