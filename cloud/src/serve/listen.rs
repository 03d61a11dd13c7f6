//! The listening socket under hostile load: at most `max_connections` connections at once (the rest
//! wait in the kernel's backlog, costing no descriptor), a backoff instead of a spin when accept
//! fails for lack of descriptors (EMFILE/ENFILE), and per connection a handshake deadline (its
//! first bytes must arrive within `handshake`) and an idle timeout (nothing read for `idle`; a
//! live client answers the server's HTTP/2 keepalive pings, so only a dead or silent one trips it).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a client must send before the handshake deadline: the HTTP/2 connection preface (24
/// bytes; a TLS ClientHello is longer, and tonic's TLS handshake timeout covers the rest).
const HANDSHAKE_BYTES: usize = 24;
/// First and longest pause after accept fails for lack of descriptors.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Connection limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake: Duration,
    pub idle: Duration,
}

/// The accepted connections of `listener`, as tonic's `serve_with_incoming*` takes them. Dropping
/// the stream (the server stops accepting) closes the listening socket.
pub fn incoming(listener: TcpListener, limits: Limits) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(accept_loop(listener, tx, limits));
    ReceiverStream::new(rx)
}

async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<io::Result<Conn>>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = BACKOFF.0;
    // Warned once each time the limit is reached.
    let mut full = false;
    loop {
        let now_full = slots.available_permits() == 0;
        if now_full && !full {
            tracing::warn!(max_connections = limits.max_connections, "connection limit reached; new connections wait in the backlog");
        }
        full = now_full;
        let slot = tokio::select! {
            () = tx.closed() => return,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = BACKOFF.0;
                // TCP_NODELAY: without it, Nagle holds back the small WINDOW_UPDATE and ack frames
                // until the peer's delayed ACK (40 ms), which capped a stream at ~1 MB per 40 ms.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                if tx.send(Ok(Conn::new(stream, slot, limits))).await.is_err() {
                    return;
                }
            }
            Err(e) if out_of_descriptors(&e) => {
                tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "cannot accept: out of file descriptors; pausing");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
            }
            // The peer gave up before accept (ECONNABORTED and the like): nothing to do.
            Err(e) => tracing::debug!(error = %e, "accept failed"),
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// An accepted connection: holds its slot of the connection limit until dropped, and fails its
/// reads once the handshake deadline or the idle timeout passes.
pub struct Conn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Bytes still to read before the handshake deadline is lifted.
    handshake_left: usize,
    idle: Duration,
    last_read: Instant,
    deadline: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, limits: Limits) -> Self {
        let now = Instant::now();
        let deadline = Box::pin(tokio::time::sleep_until(now + limits.handshake));
        Self { stream, _slot: slot, handshake_left: HANDSHAKE_BYTES, idle: limits.idle, last_read: now, deadline }
    }

    /// `Ready` with the error once the deadline has passed with nothing read since; re-arms it otherwise.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.handshake_left > 0 {
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 or TLS handshake before the deadline"));
            }
            let next = self.last_read + self.idle;
            if next <= Instant::now() {
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "connection idle past the timeout"));
            }
            self.deadline.as_mut().reset(next);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    this.last_read = Instant::now();
                    if this.handshake_left > 0 {
                        this.handshake_left = this.handshake_left.saturating_sub(read);
                        if this.handshake_left == 0 {
                            this.deadline.as_mut().reset(this.last_read + this.idle);
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.poll_deadline(cx) {
                Poll::Ready(e) => {
                    tracing::debug!(error = %e, "closing a connection");
                    Poll::Ready(Err(e))
                }
                Poll::Pending => Poll::Pending,
            },
            failed => failed,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

/// Raises the soft limit on open files to the hard limit; returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
        tracing::info!(from = soft, to = hard, "raised the open-file limit to its hard limit");
    }
    Ok(hard.max(soft))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    async fn listening(limits: Limits) -> (std::net::SocketAddr, ReceiverStream<io::Result<Conn>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, incoming(listener, limits))
    }

    #[test]
    fn a_connection_silent_past_the_idle_timeout_is_cut_and_a_talking_one_is_not() {
        runtime().block_on(async {
            let idle = Duration::from_millis(300);
            let (addr, mut conns) = listening(Limits { max_connections: 8, handshake: Duration::from_secs(10), idle }).await;
            let (mut silent, mut talking) = (std::net::TcpStream::connect(addr).unwrap(), std::net::TcpStream::connect(addr).unwrap());
            silent.write_all(&[0; HANDSHAKE_BYTES]).unwrap();
            talking.write_all(&[0; HANDSHAKE_BYTES]).unwrap();
            let (mut a, mut b) = (conns.next().await.unwrap().unwrap(), conns.next().await.unwrap().unwrap());
            let mut buf = [0u8; 64];
            assert_eq!(a.read(&mut buf).await.unwrap(), HANDSHAKE_BYTES);
            assert_eq!(b.read(&mut buf).await.unwrap(), HANDSHAKE_BYTES);
            let started = Instant::now();
            // The talking client sends a byte every 100 ms for four idle timeouts: every read succeeds.
            let talker = std::thread::spawn(move || {
                for _ in 0..12 {
                    std::thread::sleep(Duration::from_millis(100));
                    talking.write_all(&[1]).unwrap();
                }
                talking
            });
            for _ in 0..12 {
                assert_eq!(b.read(&mut buf).await.unwrap(), 1, "a connection that talks was cut");
            }
            let _talking = talker.join().unwrap();
            // The silent one was cut once idle for the timeout, not before.
            let err = a.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
            assert!(started.elapsed() >= idle);
            drop(silent);
        });
    }

    #[test]
    fn a_connection_without_a_handshake_is_cut_at_the_deadline() {
        runtime().block_on(async {
            let (addr, mut conns) = listening(Limits { max_connections: 8, handshake: Duration::from_millis(200), idle: Duration::from_secs(60) }).await;
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            client.write_all(&[0; HANDSHAKE_BYTES - 1]).unwrap();
            let mut conn = conns.next().await.unwrap().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(conn.read(&mut buf).await.unwrap(), HANDSHAKE_BYTES - 1);
            let err = conn.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
            assert!(err.to_string().contains("handshake"), "{err}");
        });
    }

    /// Run in a child process of its own (it lowers the process's open-file limit): the parent
    /// re-runs this test binary on this test alone, with `CHILD` set.
    #[test]
    fn accept_pauses_while_out_of_descriptors_instead_of_spinning_and_recovers() {
        const CHILD: &str = "MISTNET_TEST_EMFILE_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "serve::listen::tests::accept_pauses_while_out_of_descriptors_instead_of_spinning_and_recovers", "--nocapture", "--test-threads", "1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && log.contains("1 passed"), "the child test failed:\n{log}");
            return;
        }
        runtime().block_on(async {
            let (addr, mut conns) = listening(Limits { max_connections: 1000, handshake: Duration::from_secs(30), idle: Duration::from_secs(60) }).await;
            // Connected in the kernel's backlog, not yet accepted.
            let clients: Vec<std::net::TcpStream> = (0..4).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
            // Every descriptor number below the limit taken: accept fails with EMFILE.
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
            let highest = std::fs::read_dir("/proc/self/fd").unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok()).max().unwrap();
            setrlimit(Resource::RLIMIT_NOFILE, highest + 1, hard).unwrap();
            let mut fillers = Vec::new();
            while let Ok(f) = std::fs::File::open("/dev/null") {
                fillers.push(f);
            }
            let cpu = || {
                let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
                let (user, system) = (u.user_time(), u.system_time());
                (user.tv_sec() + system.tv_sec()) as f64 + (user.tv_usec() + system.tv_usec()) as f64 / 1e6
            };
            let before = cpu();
            assert!(tokio::time::timeout(Duration::from_millis(1500), conns.next()).await.is_err(), "accepted with no descriptor free");
            let spent = cpu() - before;
            // A loop retrying accept at once would burn most of the 1.5 s; the pauses cost nothing.
            assert!(spent < 0.3, "the accept loop spun: {spent:.2} s of CPU in 1.5 s out of descriptors");
            // Descriptors free again: every waiting client is accepted after the pause.
            drop(fillers);
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
            for _ in &clients {
                let conn = tokio::time::timeout(Duration::from_secs(5), conns.next()).await.expect("not accepted once descriptors were free");
                conn.unwrap().unwrap();
            }
        });
    }
}
