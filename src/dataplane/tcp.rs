//! The proxy's TCP connections: tokio's `TcpStream` (its readiness, registration and
//! shutdown), with reads and writes made as raw system calls (rustix) instead of through
//! glibc's `recv`/`send`.
//!
//! glibc's socket calls are thread-cancellation points: in a multi-threaded process each one
//! flips the thread's cancel type with two atomic compare-and-swaps around the system call.
//! devmesh makes four such calls per proxied request on each hop and cancels no thread, and
//! a profile charged those swaps 7.6% of its user-space cycles on the passthrough (profile
//! step 17 in docs/PERFORMANCE.md). Most of that was the stall of draining earlier stores,
//! which the system call then pays instead: without them, user cycles per request measured
//! 0-7% lower depending on the path. nginx's single-threaded workers never make the swaps.
//!
//! Readiness is handled as tokio's own `TcpStream` does: a read or write waits for the
//! socket's readiness, and a short read or write (the socket is drained, or its send buffer
//! full) clears it, so the next call waits for the next event instead of first failing with
//! `EAGAIN`.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::workers::{Connecting, LocalEnd};

/// A connected TCP stream registered with the current runtime; for a connection a worker
/// made to a loopback address, its local address recorded for the accepting side.
#[derive(Debug)]
pub struct Tcp(TcpStream, #[allow(dead_code)] /* held: dropped with the connection */ Option<LocalEnd>);

impl Tcp {
    #[cfg(test)]
    pub fn new(stream: TcpStream) -> Tcp {
        Tcp(stream, None)
    }

    /// Registers a connected std stream (already non-blocking) with the current runtime.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<Tcp> {
        TcpStream::from_std(stream).map(|s| Tcp(s, None))
    }

    /// Connects to `addr`. On a worker, a loopback destination may be one of devmesh's own
    /// listeners: the local address is recorded with the worker as soon as the kernel picks
    /// it (in the `connect` call, before the handshake is awaited), so that the accepting
    /// side finds it ([`LocalEnd`]).
    pub async fn connect(addr: SocketAddr) -> io::Result<Tcp> {
        let worker = match super::workers::index() {
            Some(w) if addr.ip().is_loopback() => w,
            _ => return TcpStream::connect(addr).await.map(|s| Tcp(s, None)),
        };
        let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
        let fd =
            rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC, None)?;
        // Known before the call: the accept can come before `getsockname` below.
        let connecting = Connecting::start(addr, worker);
        match rustix::net::connect(&fd, &addr) {
            Ok(()) | Err(Errno::INPROGRESS) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let local = SocketAddr::try_from(rustix::net::getsockname(&fd)?)
            .map_err(|_| io::Error::other("a TCP socket without an IP address"))?;
        let end: LocalEnd = connecting.established(local);
        let stream = TcpStream::from_std(std::net::TcpStream::from(fd))?;
        // As tokio's own connect: writable once the handshake ended, either way.
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        stream.peer_addr()?;
        Ok(Tcp(stream, Some(end)))
    }
}

/// Addresses, options, peeking and readiness are tokio's.
impl Deref for Tcp {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.0
    }
}

/// `Ok(n)`, with readiness cleared when the call moved fewer bytes than it could: tokio's
/// `try_io` clears readiness exactly when its closure answers `WouldBlock`, so a short
/// transfer is reported that way and its count kept in `moved`.
fn short_is_drained(result: rustix::io::Result<usize>, wanted: usize, moved: &mut usize) -> io::Result<()> {
    let n = result?;
    *moved = n;
    if n > 0 && n < wanted { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(()) }
}

/// The result of one transfer attempt: `Some(n)` once bytes moved (or the call ended with 0),
/// `None` when the socket was not ready after all (wait again).
fn settle(result: io::Result<()>, moved: usize) -> io::Result<Option<usize>> {
    match result {
        Ok(()) => Ok(Some(moved)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((moved > 0).then_some(moved)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(e),
    }
}

impl AsyncRead for Tcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let tcp = &self.0;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            let wanted = buf.remaining();
            let mut moved = 0;
            #[allow(unsafe_code)]
            // SAFETY: `recv` only writes initialized bytes into the unfilled part, and nothing
            // here de-initializes any of it.
            let unfilled = unsafe { buf.unfilled_mut() };
            let result = tcp.try_io(Interest::READABLE, || {
                let got =
                    rustix::net::recv(tcp, &mut *unfilled, RecvFlags::empty()).map(|((filled, _), _)| filled.len());
                short_is_drained(got, wanted, &mut moved)
            });
            if let Some(n) = settle(result, moved)? {
                #[allow(unsafe_code)]
                // SAFETY: the kernel wrote `n` bytes at the front of the unfilled part.
                unsafe {
                    buf.assume_init(n);
                }
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl Tcp {
    /// One write of `wanted` bytes by `send`, once the socket is writable.
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        wanted: usize,
        send: impl Fn(&TcpStream) -> rustix::io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let tcp = &self.0;
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            let mut moved = 0;
            let result = tcp.try_io(Interest::WRITABLE, || short_is_drained(send(tcp), wanted, &mut moved));
            if let Some(n) = settle(result, moved)? {
                return Poll::Ready(Ok(n));
            }
        }
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_send(cx, data.len(), |tcp| rustix::net::send(tcp, data, SendFlags::NOSIGNAL))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let wanted = bufs.iter().map(|b| b.len()).sum();
        self.poll_send(cx, wanted, |tcp| rustix::io::writev(tcp, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (Tcp, Tcp) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(Tcp::connect(addr), listener.accept());
        (client.unwrap(), Tcp::new(accepted.unwrap().0))
    }

    /// `b`'s next read, started before `a` writes, waits for and returns what `a` writes later.
    async fn reads_late_bytes(mut a: Tcp, b: &mut Tcp) {
        let late = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            a.write_all(b"late").await.unwrap();
            a
        });
        let mut rest = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), b.read(&mut rest)).await.unwrap().unwrap();
        assert_eq!(&rest[..n], b"late");
        drop(late.await.unwrap());
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_eof_is_seen() {
        let (mut a, mut b) = pair().await;
        a.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 16];
        let n = b.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"ping");
        let bufs = [IoSlice::new(b"po"), IoSlice::new(b"ng")];
        let n = b.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, 4);
        let mut back = [0u8; 4];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
        b.shutdown().await.unwrap();
        assert_eq!(a.read(&mut got).await.unwrap(), 0, "the peer's shutdown reads as EOF");
    }

    /// A short read clears readiness: the next read waits for new bytes (and gets them)
    /// rather than spinning or failing, and a read into a small buffer leaves the rest queued.
    #[tokio::test]
    async fn a_drained_socket_waits_for_the_next_bytes() {
        let (mut a, mut b) = pair().await;
        a.write_all(b"abcdef").await.unwrap();
        let mut small = [0u8; 4];
        b.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"abcd");
        let mut rest = [0u8; 64];
        let n = b.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"ef");
        reads_late_bytes(a, &mut b).await;
    }

    /// Readiness can be stale (another reader drained the socket after the event): the
    /// read then waits for the next bytes instead of reporting an end of stream.
    #[tokio::test]
    async fn stale_readiness_is_not_an_end_of_stream() {
        let (mut a, mut b) = pair().await;
        a.write_all(b"x").await.unwrap();
        b.readable().await.unwrap();
        let mut one = [0u8; 1];
        let (got, _) = rustix::net::recv(&*b, &mut one[..], RecvFlags::empty()).unwrap();
        assert_eq!(got, 1, "drained behind tokio's back");
        reads_late_bytes(a, &mut b).await;
    }

    /// The proxy's pattern on a client connection: the socket is watched while a request is
    /// in flight, then read again for the next request, with the client's next bytes arriving
    /// before, during or after the response. No wake-up may be lost: 300 exchanges with
    /// varied timing (pipelined, immediate, delayed) all complete.
    #[tokio::test]
    async fn watched_while_in_flight_then_read_again_loses_no_wakeup() {
        let (mut client, mut server) = pair().await;
        const N: u32 = 300;
        let serve = async move {
            let mut buf = bytes::BytesMut::with_capacity(64);
            for i in 0..N {
                while !buf.contains(&b'\n') {
                    assert!(server.read_buf(&mut buf).await.unwrap() > 0, "request {i}");
                }
                let at = buf.iter().position(|&b| b == b'\n').unwrap();
                let _ = buf.split_to(at + 1);
                let work = tokio::time::sleep(std::time::Duration::from_micros(u64::from(i % 4) * 150));
                tokio::pin!(work);
                loop {
                    tokio::select! {
                        biased;
                        _ = &mut work => break,
                        read = server.read_buf(&mut buf), if buf.len() < 32 => {
                            assert!(read.unwrap() > 0, "client left during request {i}");
                        }
                    }
                }
                server.write_all(b"ok\n").await.unwrap();
            }
        };
        let call = async move {
            let mut got = Vec::new();
            for i in 0..N {
                client.write_all(b"req\n").await.unwrap();
                if i % 5 == 1 && i + 1 < N {
                    // Pipelined: the next request goes out while this one is in flight.
                    client.write_all(b"req\n").await.unwrap();
                }
                if i % 5 == 2 {
                    continue;
                }
                if i % 3 == 0 {
                    tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                }
                let mut one = [0u8; 3];
                client.read_exact(&mut one).await.unwrap();
                got.push(one);
                if i % 5 == 1 && i + 1 < N {
                    client.read_exact(&mut one).await.unwrap();
                    got.push(one);
                }
            }
            got
        };
        let (_, got) = tokio::time::timeout(std::time::Duration::from_secs(20), async { tokio::join!(serve, call) })
            .await
            .expect("every exchange completed");
        assert!(got.iter().all(|r| r == b"ok\n"));
    }

    /// Writing more than the socket's send buffer takes waits for room instead of failing:
    /// 8 MiB through, in order, while the reader drains at its own pace.
    #[tokio::test]
    async fn a_full_send_buffer_waits_for_room() {
        let (mut a, mut b) = pair().await;
        let data: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let writer = async move {
            a.write_all(&data).await.unwrap();
            a.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let reader = b.read_to_end(&mut got);
        let both = async { tokio::join!(writer, reader).1 };
        tokio::time::timeout(std::time::Duration::from_secs(20), both).await.expect("the transfer finished").unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect, "bytes arrived intact and in order");
    }

    /// Writing to a peer that has gone is an error, not a SIGPIPE.
    #[tokio::test]
    async fn writing_to_a_closed_peer_is_an_error() {
        let (mut a, b) = pair().await;
        drop(b);
        let mut failed = false;
        for _ in 0..100 {
            if a.write_all(&[0u8; 64 * 1024]).await.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(failed, "writes to a closed peer fail");
    }
}
