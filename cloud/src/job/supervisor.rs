//! The processes the job starts: each with its output in a log file, waited on with clear errors
//! (a failure quotes the end of its log), and all stopped on Ctrl-C, SIGTERM or when the job
//! fails, so that nothing outlives it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Every child the job started and has not reaped yet.
#[derive(Clone, Default)]
pub struct Supervisor {
    children: Arc<Mutex<Vec<Running>>>,
}

struct Running {
    name: String,
    child: Child,
}

/// A started child: its unique name and its log file.
pub struct Handle {
    pub name: String,
    pub log: PathBuf,
}

impl Supervisor {
    /// A supervisor whose children are all killed on Ctrl-C or SIGTERM (the job then exits with 130).
    pub fn with_signal_handler() -> Result<Self> {
        let me = Self::default();
        let handler = me.clone();
        ctrlc::set_handler(move || {
            eprintln!("\ninterrupted: stopping every process the job started");
            // Exit while holding the lock, so the job's own thread cannot report the children's
            // deaths as failures in the meantime.
            let mut children = handler.lock();
            kill(&mut children);
            std::process::exit(130);
        })
        .context("cannot install the Ctrl-C handler")?;
        Ok(me)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Running>> {
        // A panic while holding the lock leaves the list intact: keep using it.
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `cmd` with stdin closed and stdout and stderr written to `log`.
    pub fn spawn(&self, name: &str, mut cmd: Command, log: &Path) -> Result<Handle> {
        let file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        cmd.stdout(file.try_clone()?).stderr(file).stdin(Stdio::null());
        tracing::debug!(name, command = ?cmd, log = %log.display(), "starting");
        let child = cmd.spawn().with_context(|| format!("cannot start {name} ({})", cmd.get_program().to_string_lossy()))?;
        self.lock().push(Running { name: name.to_string(), child });
        Ok(Handle { name: name.to_string(), log: log.to_path_buf() })
    }

    /// The exit status of `h` if it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&self, h: &Handle) -> Result<Option<ExitStatus>> {
        let mut children = self.lock();
        let Some(i) = children.iter().position(|r| r.name == h.name) else { bail!("{} is not running", h.name) };
        let status = children[i].child.try_wait().with_context(|| format!("cannot wait for {}", h.name))?;
        if status.is_some() {
            children.remove(i);
        }
        Ok(status)
    }

    /// Waits until `h` exits successfully; a failure quotes the end of its log.
    pub fn wait_ok(&self, h: &Handle) -> Result<()> {
        loop {
            if let Some(status) = self.try_wait(h)? {
                return check(h, status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops `h`: SIGTERM, then SIGKILL if it has not exited after `grace`. Returns its status.
    pub fn stop(&self, h: &Handle, grace: Duration) -> Result<ExitStatus> {
        let pid = match self.lock().iter().find(|r| r.name == h.name) {
            Some(r) => Pid::from_raw(i32::try_from(r.child.id()).context("pid out of range")?),
            None => bail!("{} is not running", h.name),
        };
        // The child is not reaped yet (it is in our list), so the pid is still ours.
        let _ = signal::kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Some(status) = self.try_wait(h)? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(name = %h.name, ?grace, "did not stop after SIGTERM: killing");
        let mut children = self.lock();
        let i = children.iter().position(|r| r.name == h.name).context("child vanished")?;
        let mut r = children.remove(i);
        let _ = r.child.kill();
        Ok(r.child.wait()?)
    }

    /// Kills every child still running and reaps it.
    pub fn kill_all(&self) {
        kill(&mut self.lock());
    }
}

fn kill(children: &mut Vec<Running>) {
    for mut r in children.drain(..) {
        tracing::debug!(name = %r.name, "killing");
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
}

/// `Ok` for a successful exit; otherwise an error quoting the last lines of the child's log.
pub fn check(h: &Handle, status: ExitStatus) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    bail!("{} failed ({status}); last lines of {}:\n{}", h.name, h.log.display(), log_tail(&h.log, 15))
}

/// The last `n` lines of a log file (empty if it cannot be read).
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The binary `name` next to the running executable (cargo builds both into one directory).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let path = exe.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!("{} not found next to {}: build both binaries (`cargo build --release`)", path.display(), exe.display());
    }
    Ok(path)
}
