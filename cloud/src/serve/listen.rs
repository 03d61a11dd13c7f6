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
