//! Reading the next image while the Front runs on this one.

use anyhow::Result;

/// Calls `process(item, load(&item))` for every item, in order. With more than one compute thread
/// (rayon's pool: `RAYON_NUM_THREADS`, default the cores), `load` (decode and letterbox) runs one
/// item ahead on a thread of its own, overlapping the Front; with one, everything runs on the
/// calling thread, as one thread was asked for. Stops at `process`'s first error.
pub fn pipelined<T: Send, L: Send>(items: Vec<T>, load: impl Fn(&T) -> L + Sync, mut process: impl FnMut(T, L) -> Result<()>) -> Result<()> {
    if rayon::current_num_threads() <= 1 {
        return items.into_iter().try_for_each(|item| {
            let loaded = load(&item);
            process(item, loaded)
        });
    }
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let load = &load;
        scope.spawn(move || {
            for item in items {
                let loaded = load(&item);
                // The receiver is gone only after an error: stop loading.
                if tx.send((item, loaded)).is_err() {
                    break;
                }
            }
        });
        rx.into_iter().try_for_each(|(item, loaded)| process(item, loaded))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In order, every item once, loaded ahead on one thread or on the caller's, and an error stops
    /// it without hanging on the loader.
    #[test]
    fn pipelined_keeps_order_and_stops_at_an_error() {
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut seen = Vec::new();
                pipelined((0..50).collect(), |&i| i * 10, |i, l| {
                    seen.push((i, l));
                    Ok(())
                })
                .unwrap();
                assert_eq!(seen, (0..50).map(|i| (i, i * 10)).collect::<Vec<_>>());
                let mut count = 0;
                let err = pipelined((0..1000).collect(), |&i| i, |i, _| {
                    count += 1;
                    if i == 3 { anyhow::bail!("stop at {i}") } else { Ok(()) }
                });
                assert_eq!(err.unwrap_err().to_string(), "stop at 3");
                assert_eq!(count, 4);
            });
        }
    }
}
