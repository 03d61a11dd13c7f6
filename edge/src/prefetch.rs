//! The edge's per-image work as a pipeline: the next image is read and letterboxed, and the last
//! one encoded and written, while the Front runs on this one.

use anyhow::Result;

/// For every item, in order: `load(&item)` (decode and letterbox), `compute(&item, loaded)` (the
/// Front) and `finish(item, computed)` (encode and write). With more than one compute thread
/// (rayon's pool: `RAYON_NUM_THREADS`, default the cores), `load` runs one item ahead and
/// `finish` one behind, each on a thread of its own, so that they overlap the Front; with one,
/// everything runs on the calling thread, as one thread was asked for. `finish` sees the items in
/// order (a seeded noise stream stays the same). Stops at the first error of `compute` or `finish`.
pub fn pipelined<T: Send, L: Send, C: Send>(
    items: Vec<T>,
    load: impl Fn(&T) -> L + Sync,
    mut compute: impl FnMut(&T, L) -> Result<C>,
    mut finish: impl FnMut(T, C) -> Result<()> + Send,
) -> Result<()> {
    if rayon::current_num_threads() <= 1 {
        return items.into_iter().try_for_each(|item| {
            let loaded = load(&item);
            let computed = compute(&item, loaded)?;
            finish(item, computed)
        });
    }
    std::thread::scope(|scope| {
        let load = &load;
        let (loaded_tx, loaded_rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for item in items {
                let loaded = load(&item);
                // The receiver is gone only after an error: stop loading.
                if loaded_tx.send((item, loaded)).is_err() {
                    break;
                }
            }
        });
        let (computed_tx, computed_rx) = std::sync::mpsc::sync_channel::<(T, C)>(1);
        let finisher = scope.spawn(move || computed_rx.into_iter().try_for_each(|(item, computed)| finish(item, computed)));
        let mut result = Ok(());
        for (item, loaded) in loaded_rx {
            match compute(&item, loaded) {
                // A closed channel means `finish` failed: its error is returned below.
                Ok(computed) => {
                    if computed_tx.send((item, computed)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(computed_tx);
        let finished = finisher.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        result.and(finished)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In order, every item once through all three stages, on one thread or on three, and an error in
    /// either stage stops it without hanging on the others.
    #[test]
    fn pipelined_keeps_order_and_stops_at_an_error() {
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut seen = Vec::new();
                pipelined((0..50).collect(), |&i| i * 10, |&i, l| Ok((i, l)), |i, c| {
                    seen.push((i, c));
                    Ok(())
                })
                .unwrap();
                assert_eq!(seen, (0..50).map(|i| (i, (i, i * 10))).collect::<Vec<_>>());
                let mut finished = 0;
                let err = pipelined((0..1000).collect(), |&i| i, |&i, _| if i == 3 { anyhow::bail!("compute stops at {i}") } else { Ok(i) }, |_, _| {
                    finished += 1;
                    Ok(())
                });
                assert_eq!(err.unwrap_err().to_string(), "compute stops at 3");
                assert_eq!(finished, 3);
                let err = pipelined((0..1000).collect(), |&i| i, |_, l| Ok(l), |i, _| if i == 5 { anyhow::bail!("finish stops at {i}") } else { Ok(()) });
                assert_eq!(err.unwrap_err().to_string(), "finish stops at 5");
            });
        }
    }
}
