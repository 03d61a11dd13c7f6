//! Log output of both binaries: tracing to stderr, filtered by `RUST_LOG` (default `info`), with
//! colours only when stderr is a terminal (so log files stay plain text). A failed log write is
//! never fatal.

use std::io::IsTerminal;

/// Installs the global tracing subscriber. Call once, first thing in `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr on a full disk) is dropped. By default the
        // subscriber reports that with `eprintln!`, which panics when stderr fails too: it killed
        // the store's writer thread on its first log line after a failed write.
        .log_internal_errors(false)
        .init();
}
