//! An HTTP/1.1 client exchange that runs inside the calling task, as Pingora does: the request
//! is encoded into the connection's own buffer and written at once, the response head is parsed
//! in place (httparse) and the body is decoded from the socket as the downstream connection
//! polls it. No dispatcher task, no channel between tasks, no allocation per request once the
//! connection is pooled. It carries requests whose body is already complete (empty or
//! buffered for retries), which is what nearly all proxied requests are; streamed uploads,
//! upgrades and CONNECT keep using hyper's client (`pool.rs`).
//!
//! Framing follows RFC 9112: no body for HEAD, 1xx, 204 and 304; chunked when
//! `transfer-encoding` ends in `chunked`; `content-length` otherwise; else until close.
//! Interim 1xx responses are skipped (the request body was sent whole, so `100 Continue`
//! means nothing to the client, and `expect` is not forwarded, as Envoy does by default).
//! Chunked trailers are read and dropped.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode, Version as HttpVersion};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

use super::addr_map::AddrMap;
use super::body::{Body, BoxError, ProxyBody};
use super::clock;
use super::error::ProxyError;
use super::pool::Stream;

/// The largest response head accepted (Envoy's default header limit is 60 KiB).
const MAX_HEAD: usize = 60 * 1024;
/// Headers parsed per response head before it is refused.
const MAX_HEADERS: usize = 100;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Interim (1xx) responses accepted before the final one.
const MAX_INTERIM: usize = 16;
/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 256;

/// One upstream HTTP/1.1 connection with its buffers.
pub struct Conn {
    io: Stream,
    read: BytesMut,
    write: Vec<u8>,
}

impl Conn {
    pub fn new(io: Stream) -> Box<Conn> {
        Box::new(Conn { io, read: BytesMut::with_capacity(READ_CHUNK), write: Vec::with_capacity(1024) })
    }

    /// Whether an idle connection can take a request: nothing to read and not closed. A
    /// peer that closed (EOF), reset, or sent bytes nobody asked for makes it unusable.
    fn usable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        self.read.reserve(1);
        matches!(poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.read), Poll::Pending)
    }

    /// Writes the encoded request and reads until a final (non-1xx) response head is parsed.
    async fn exchange(&mut self, head_request: bool) -> Result<Head, Failure> {
        let written = async {
            self.io.write_all(&self.write).await?;
            self.io.flush().await
        };
        if let Err(e) = written.await {
            return Err(Failure { error: reset(&e), nothing_received: true });
        }
        let mut interim = 0;
        loop {
            if !self.read.is_empty() {
                match parse_head(&mut self.read, head_request) {
                    Ok(Some(head)) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                        return Err(protocol("101 to a request that asked for no upgrade"));
                    }
                    Ok(Some(_)) if interim >= MAX_INTERIM => return Err(protocol("too many 1xx responses")),
                    Ok(Some(head)) if head.status.is_informational() => {
                        interim += 1;
                        continue;
                    }
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) if self.read.len() < MAX_HEAD => {}
                    Ok(None) => return Err(too_large()),
                    Err(e) => return Err(e),
                }
            }
            self.read.reserve(READ_CHUNK);
            match self.io.read_buf(&mut self.read).await {
                Ok(0) => {
                    return Err(Failure {
                        error: ProxyError::UpstreamReset("connection termination".into()),
                        nothing_received: self.read.is_empty() && interim == 0,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Failure { error: reset(&e), nothing_received: self.read.is_empty() && interim == 0 });
                }
            }
        }
    }
}

/// Why an exchange failed, and whether the request may be sent again on another connection
/// (nothing came back on a pooled connection the peer had just closed).
struct Failure {
    error: ProxyError,
    nothing_received: bool,
}

fn reset(e: &io::Error) -> ProxyError {
    ProxyError::UpstreamReset(match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => "connection reset".into(),
        _ => e.to_string(),
    })
}

/// A response head over Envoy's limit (60 KiB): 502 `UPE`, as Envoy answers.
fn too_large() -> Failure {
    Failure { error: ProxyError::UpstreamProtocol("response headers too large".into()), nothing_received: false }
}

fn protocol(what: &str) -> Failure {
    Failure { error: ProxyError::UpstreamReset(format!("protocol error: {what}")), nothing_received: false }
}

/// Whether the request can go through this codec: its body is already complete, and it is
/// not an upgrade or a CONNECT.
pub fn eligible_request(req: &http::Request<Body>) -> bool {
    let complete = match req.body() {
        Body::Empty | Body::Full(_) => true,
        Body::Incoming(i) | Body::Counted(i, _) => http_body::Body::is_end_stream(i),
        Body::H1(_) => false,
    };
    complete && eligible_head(req.method(), req.headers())
}

/// Whether a request head can go through this codec (given a complete body).
pub fn eligible_head(method: &Method, headers: &HeaderMap) -> bool {
    method != Method::CONNECT && !super::headers::is_upgrade(headers)
}

/// Encodes the request head (origin form, HTTP/1.1) and body into `dst`.
fn encode(parts: &Parts, body: &[u8], dst: &mut Vec<u8>) {
    dst.clear();
    dst.extend_from_slice(parts.method.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING || name == header::EXPECT {
            continue;
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    let bodiless_method = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE | Method::CONNECT
    );
    if !body.is_empty() || had_length || !bodiless_method {
        dst.extend_from_slice(b"content-length: ");
        dst.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    dst.extend_from_slice(body);
}

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: HttpVersion,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// Parses a response head from the front of `buf`, consuming it. `None`: incomplete.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, Failure> {
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(protocol("too many response headers")),
        Err(e) => return Err(protocol(&e.to_string())),
    };
    if len > MAX_HEAD {
        return Err(too_large());
    }
    let status = resp.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or_else(|| protocol("bad status"))?;
    let version = if resp.version == Some(0) { HttpVersion::HTTP_10 } else { HttpVersion::HTTP_11 };
    // Values are copied out of the connection's buffer, not shared with it: a shared slice
    // costs an atomic reference count taken and released per header, and keeps the buffer
    // from being reused in place while the response head lives (profile step 13).
    let count = resp.headers.len();
    // Room for what the proxy adds on the way back (service time, `server`).
    let mut headers = HeaderMap::with_capacity(count + 3);
    let mut framing = None;
    let mut chunked = false;
    let mut keep_alive = version == HttpVersion::HTTP_11;
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| protocol("bad header name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| protocol("bad header value"))?;
        if name == header::CONTENT_LENGTH {
            let n = super::headers::parse_content_length(value.as_bytes());
            match (n, framing) {
                (Some(n), None) => framing = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Err(protocol("bad content-length")),
            }
        } else if name == header::TRANSFER_ENCODING {
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == HttpVersion::HTTP_10 {
                    keep_alive = true;
                }
            }
        }
        headers.append(name, value);
    }
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Length(0)
    } else if headers.contains_key(header::TRANSFER_ENCODING) {
        // Transfer-Encoding overrides Content-Length, which a proxy must then drop (RFC 9112 §6.3).
        headers.remove(header::CONTENT_LENGTH);
        // A transfer coding other than chunked last can only be delimited by closing.
        if chunked { Framing::Chunked } else { Framing::UntilClose }
    } else {
        framing.map_or(Framing::UntilClose, Framing::Length)
    };
    if framing == Framing::UntilClose {
        keep_alive = false;
    }
    buf.advance(len);
    Ok(Some(Head { status, version, headers, framing, keep_alive }))
}

/// The in-task client's reading of a whole upstream response held in `bytes`: its head, then
/// its body decoded as far as the bytes go. `(status, body bytes)`, or the protocol error the
/// proxy would answer 502/503 for. What the fuzz target `h1_response` drives.
pub fn read_response(bytes: &[u8], head_request: bool) -> Result<(u16, usize), String> {
    let mut buf = BytesMut::from(bytes);
    let head = match parse_head(&mut buf, head_request) {
        Ok(Some(h)) => h,
        Ok(None) => return Err("incomplete head".into()),
        Err(f) => return Err(f.error.to_string()),
    };
    let mut state = State::start(head.framing);
    let mut body = 0;
    // Every turn consumes bytes or ends: bounded by the input.
    for _ in 0..=bytes.len() + 2 {
        match decode(&mut state, &mut buf) {
            Ok(Some(frame)) => body += frame.data_ref().map_or(0, Bytes::len),
            Ok(None) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok((head.status.as_u16(), body))
}

/// Names one idle list: a pool set (a proxy's, see `pool.rs`), an endpoint, a transport.
/// The lists themselves are per thread, as Envoy's connection pools are per worker: a
/// connection is taken and returned by the worker that runs the request, with no lock and
/// no atomic reference count (profile step 13 in docs/PERFORMANCE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Idle {
    owner: u64,
    addr: SocketAddr,
    mtls: bool,
}

/// Connections with when they went idle (coarse monotonic ms: the idle limit is in seconds).
type IdleConns = Vec<(Box<Conn>, u64)>;

thread_local! {
    static IDLE: RefCell<AddrMap<Idle, IdleConns>> = RefCell::new(AddrMap::default());
}

impl Idle {
    /// The list of `owner`'s connections to `addr` (plain or mTLS).
    pub fn of(owner: u64, addr: SocketAddr, mtls: bool) -> Idle {
        Idle { owner, addr, mtls }
    }

    /// A list no other pool set shares.
    #[cfg(test)]
    pub fn unique() -> Idle {
        Idle::of(owner_id(), SocketAddr::from(([0, 0, 0, 0], 0)), false)
    }

    /// The most recently used connection that is still usable; stale ones are closed.
    fn take(self, max_idle: std::time::Duration) -> Option<Box<Conn>> {
        let mut stale = Vec::new();
        let found = IDLE
            .try_with(|m| {
                let mut m = m.try_borrow_mut().ok()?;
                let conns = m.get_mut(&self)?;
                let now = clock::monotonic_ms();
                while let Some((mut c, since)) = conns.pop() {
                    if u128::from(now.saturating_sub(since)) < max_idle.as_millis() && c.usable() {
                        return Some(c);
                    }
                    stale.push(c);
                }
                None
            })
            .ok()
            .flatten();
        // Closed outside the borrow: dropping a connection runs no code of ours, but keep
        // the map's borrow as short as possible.
        drop(stale);
        found
    }

    /// Back to this thread's list (closed instead when the list is full or the thread ends).
    fn put(self, conn: Box<Conn>) {
        let _ = IDLE.try_with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                let conns = m.entry(self).or_default();
                if conns.len() < MAX_IDLE {
                    conns.push((conn, clock::monotonic_ms()));
                }
            }
        });
    }
}

/// A new owner id for [`Idle::of`]: one per pool set.
pub fn owner_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Sends a request whose body is complete (see `eligible`) over a pooled connection of
/// `idle`, connecting with `connect` when none is usable. A pooled connection that turns out
/// to have been closed before anything came back is replaced, for idempotent methods (as
/// browsers and Go's transport do), up to three times.
pub async fn send<F, Fut>(
    idle: Idle,
    max_idle: std::time::Duration,
    parts: &Parts,
    data: &[u8],
    connect: F,
) -> Result<Response<ProxyBody>, ProxyError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Stream, ProxyError>>,
{
    let head_request = parts.method == Method::HEAD;
    let replayable = parts.method.is_idempotent();
    for _ in 0..4 {
        let (mut conn, pooled) = match idle.take(max_idle) {
            Some(c) => (c, true),
            // Boxed: connecting (TCP, TLS) is a large future, and rare on a warm pool.
            None => (Conn::new(Box::pin(connect()).await?), false),
        };
        let mut write = std::mem::take(&mut conn.write);
        encode(parts, data, &mut write);
        conn.write = write;
        match conn.exchange(head_request).await {
            Ok(head) => {
                let mut resp = Response::new(ProxyBody::empty());
                *resp.status_mut() = head.status;
                *resp.version_mut() = head.version;
                *resp.headers_mut() = head.headers;
                let body =
                    H1Body { conn: Some(conn), state: State::start(head.framing), keep_alive: head.keep_alive, idle };
                if body.state == State::Done {
                    body.release();
                } else {
                    *resp.body_mut() = ProxyBody::new(Body::H1(body));
                }
                return Ok(resp);
            }
            Err(f) if pooled && replayable && f.nothing_received => continue,
            Err(f) => return Err(f.error),
        }
    }
    Err(ProxyError::UpstreamReset("connections closed before the request could be sent".into()))
}

/// Where the body decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Bytes left of a content-length body.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Bytes left of the current chunk.
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd,
    /// Reading (and dropping) trailer lines up to the empty one.
    Trailers,
    UntilClose,
    Done,
}

impl State {
    fn start(f: Framing) -> State {
        match f {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        }
    }
}

/// A response body read straight from the upstream connection, which goes back to its pool
/// when the body ends cleanly.
pub struct H1Body {
    conn: Option<Box<Conn>>,
    state: State,
    keep_alive: bool,
    idle: Idle,
}

fn body_error(what: &'static str) -> BoxError {
    Box::new(io::Error::new(io::ErrorKind::UnexpectedEof, what))
}

/// Where the first CRLF of `buf` starts (the length of the line before it).
fn line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

impl H1Body {
    /// Returns the connection to the pool when the exchange left it clean.
    fn release(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.read.is_empty()
        {
            self.idle.put(conn);
        }
    }
}

/// Below this, body bytes are copied out of the connection's buffer rather than shared with
/// it: a copy of a small chunk costs less than the atomic reference count a shared slice
/// takes and releases, and leaves the buffer free to be reused in place.
const COPY_BELOW: usize = 4096;

/// The first `n` buffered bytes, removed from `conn_read`.
fn take(conn_read: &mut BytesMut, n: usize) -> Bytes {
    if n < COPY_BELOW {
        let data = Bytes::copy_from_slice(&conn_read[..n]);
        conn_read.advance(n);
        data
    } else {
        conn_read.split_to(n).freeze()
    }
}

/// Decodes what is buffered; `Ok(None)` asks for more bytes (or, in `State::Done`, ends).
fn decode(state: &mut State, conn_read: &mut BytesMut) -> Result<Option<Frame<Bytes>>, BoxError> {
    loop {
        match *state {
            State::Done => return Ok(None),
            State::Length(left) | State::ChunkData(left) => {
                if conn_read.is_empty() {
                    return Ok(None);
                }
                let n = (left as usize).min(conn_read.len());
                let data = take(conn_read, n);
                let left = left - n as u64;
                *state = match (*state, left) {
                    (State::Length(_), 0) => State::Done,
                    (State::Length(_), l) => State::Length(l),
                    (_, 0) => State::ChunkEnd,
                    (_, l) => State::ChunkData(l),
                };
                return Ok(Some(Frame::data(data)));
            }
            State::ChunkSize => {
                let Some(end) = line(conn_read) else {
                    return if conn_read.len() > 1024 { Err(body_error("bad chunk size line")) } else { Ok(None) };
                };
                let digits = conn_read[..end].split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
                let size = std::str::from_utf8(digits)
                    .ok()
                    .filter(|s| !s.is_empty() && s.len() <= 15)
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or_else(|| body_error("bad chunk size"))?;
                conn_read.advance(end + 2);
                *state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
            }
            State::ChunkEnd => {
                if conn_read.len() < 2 {
                    return Ok(None);
                }
                if &conn_read[..2] != b"\r\n" {
                    return Err(body_error("chunk not followed by CRLF"));
                }
                conn_read.advance(2);
                *state = State::ChunkSize;
            }
            State::Trailers => {
                let Some(end) = line(conn_read) else {
                    return if conn_read.len() > MAX_HEAD { Err(body_error("trailers too large")) } else { Ok(None) };
                };
                conn_read.advance(end + 2);
                if end == 0 {
                    *state = State::Done;
                }
            }
            State::UntilClose => {
                if conn_read.is_empty() {
                    return Ok(None);
                }
                let n = conn_read.len();
                return Ok(Some(Frame::data(take(conn_read, n))));
            }
        }
    }
}

impl http_body::Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match decode(&mut this.state, &mut conn.read) {
                Err(e) => {
                    this.conn = None;
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Some(frame)) => {
                    if this.state == State::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if this.state == State::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let want = match this.state {
                State::Length(n) | State::ChunkData(n) => (n as usize).clamp(64, READ_CHUNK),
                _ => READ_CHUNK,
            };
            conn.read.reserve(want);
            match ready!(poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read)) {
                Ok(0) if this.state == State::UntilClose => {
                    this.conn = None;
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(body_error("upstream closed the connection mid-body"))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_heads_and_small_bodies_leave_the_connection_buffer_unshared() {
        let mut buf = BytesMut::with_capacity(1024);
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-served-by: web-1\r\n\r\nhello");
        let start = buf.as_ptr();
        let Ok(Some(head)) = parse_head(&mut buf, false) else { panic!("a complete head") };
        assert_eq!(head.framing, Framing::Length(5));
        let mut state = State::Length(5);
        let data = decode(&mut state, &mut buf).unwrap().unwrap().into_data().unwrap();
        assert_eq!((&data[..], state), (&b"hello"[..], State::Done));
        // With the head and the body still alive, the buffer is reused in place: nothing
        // holds a reference into it (a shared slice would force a new allocation here).
        buf.reserve(1000);
        assert_eq!(buf.as_ptr(), start);
        buf.extend_from_slice(b"next");
        assert_eq!((head.headers["x-served-by"].as_bytes(), &data[..]), (&b"web-1"[..], &b"hello"[..]));
    }
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A raw upstream: for each request it reads the head (and a content-length body), keeps
    /// the bytes, and writes the next scripted answer in pieces (so the client sees split
    /// reads). An answer ending in `CLOSE` closes the connection after it.
    struct Raw {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    async fn raw(answers: Vec<&'static [u8]>) -> Raw {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (acc, reqs) = (accepted.clone(), requests.clone());
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let (reqs, answers) = (reqs.clone(), answers.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(req) = read_request(&mut s, &mut buf).await else { return };
                        reqs.lock().unwrap().push(req);
                        let Some(answer) = answers.lock().unwrap().next() else { return };
                        let (answer, close) = match answer.strip_suffix(b"CLOSE") {
                            Some(a) => (a, true),
                            None => (answer, false),
                        };
                        for piece in answer.chunks((answer.len() / 8).max(7)) {
                            if s.write_all(piece).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        Raw { addr, accepted, requests }
    }

    async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                if buf.len() >= end + 4 + len {
                    let all = String::from_utf8_lossy(&buf[..end + 4 + len]).to_string();
                    buf.drain(..end + 4 + len);
                    return Some(all);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::io::AsyncReadExt::read(s, &mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn request(method: Method, path: &str, body: Body) -> (Parts, Body) {
        let (mut parts, ()) = http::Request::builder().method(method).uri(path).body(()).unwrap().into_parts();
        parts.headers.insert(header::HOST, HeaderValue::from_static("upstream"));
        (parts, body)
    }

    fn body_bytes(b: &Body) -> &[u8] {
        match b {
            Body::Full(Some(b)) => b,
            _ => &[],
        }
    }

    async fn dial(addr: SocketAddr) -> Result<Stream, ProxyError> {
        Ok(Stream::Plain(crate::dataplane::tcp::Tcp::connect(addr).await.unwrap()))
    }

    async fn call(
        idle: Idle,
        addr: SocketAddr,
        method: Method,
        body: Body,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ProxyError> {
        let (parts, body) = request(method, "/x?y=1", body);
        let resp = send(idle, Duration::from_secs(60), &parts, body_bytes(&body), || dial(addr)).await?;
        let (p, b) = resp.into_parts();
        let bytes = b.collect().await.map_err(|e| ProxyError::UpstreamReset(e.to_string()))?.to_bytes();
        Ok((p.status, p.headers, bytes))
    }

    #[tokio::test]
    async fn content_length_bodies_arrive_whole_and_the_connection_is_reused() {
        let up = raw(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nx-a: 1\r\n\r\nhello world",
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let idle = Idle::unique();
        let (status, headers, body) = call(idle, up.addr, Method::GET, Body::Empty).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello world"[..]));
        assert_eq!(headers["x-a"], "1");
        let (status, _, body) = call(idle, up.addr, Method::POST, Body::full("payload")).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"ok"[..]));
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "keep-alive: one connection for both");
        let reqs = up.requests.lock().unwrap().clone();
        // GET without a body carries no content-length; POST carries its length; Host kept.
        assert_eq!(reqs[0], "GET /x?y=1 HTTP/1.1\r\nhost: upstream\r\n\r\n");
        assert_eq!(reqs[1], "POST /x?y=1 HTTP/1.1\r\nhost: upstream\r\ncontent-length: 7\r\n\r\npayload");
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_limit_is_closed_not_reused() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let up = raw(vec![ok, ok, ok]).await;
        let idle = Idle::unique();
        let limit = Duration::from_millis(100);
        let get = || {
            let (parts, _) = request(Method::GET, "/", Body::Empty);
            async move {
                let resp = send(idle, limit, &parts, &[], || dial(up.addr)).await.unwrap();
                resp.into_body().collect().await.unwrap().to_bytes()
            }
        };
        assert_eq!(&get().await[..], b"ok");
        assert_eq!(&get().await[..], b"ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "reused while fresh");
        // Idle for well over the limit (the idle clock is coarse: a few ms).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(&get().await[..], b"ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2, "a connection idle past the limit is not reused");
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_with_extensions_and_trailers() {
        let up = raw(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\ncontent-length: 99\r\n\r\n0\r\n\r\n",
        ])
        .await;
        let idle = Idle::unique();
        let (_, headers, body) = call(idle, up.addr, Method::GET, Body::Empty).await.unwrap();
        assert_eq!(&body[..], b"hello world");
        assert_eq!(headers["transfer-encoding"], "chunked", "the forwarder strips hop-by-hop headers, not the codec");
        let (_, headers, body) = call(idle, up.addr, Method::GET, Body::Empty).await.unwrap();
        assert!(body.is_empty());
        assert!(!headers.contains_key("content-length"), "chunked wins over a content-length, which goes");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "a cleanly ended chunked body keeps the connection");
    }

    #[tokio::test]
    async fn bodiless_answers_interim_responses_and_head() {
        let up = raw(vec![
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nyes",
        ])
        .await;
        let idle = Idle::unique();
        let (status, _, body) = call(idle, up.addr, Method::DELETE, Body::Empty).await.unwrap();
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
        // HEAD: the content-length describes a body that is not sent.
        let (status, headers, body) = call(idle, up.addr, Method::HEAD, Body::Empty).await.unwrap();
        assert_eq!((status, body.len()), (StatusCode::OK, 0));
        assert_eq!(headers["content-length"], "1000");
        let mut parts_expect = request(Method::PUT, "/", Body::full("abc"));
        parts_expect.0.headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        let addr = up.addr;
        let resp = send(idle, Duration::from_secs(60), &parts_expect.0, body_bytes(&parts_expect.1), || dial(addr))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "the 100 Continue was skipped");
        assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes()[..], b"yes");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
        let put = up.requests.lock().unwrap()[2].clone();
        assert!(!put.contains("expect"), "expect is not forwarded: {put}");
    }

    #[tokio::test]
    async fn a_body_delimited_by_close_ends_at_eof_and_is_not_reused() {
        let up =
            raw(vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the endCLOSE", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"])
                .await;
        let idle = Idle::unique();
        let (_, _, body) = call(idle, up.addr, Method::GET, Body::Empty).await.unwrap();
        assert_eq!(&body[..], b"until the end");
        let (_, _, body) = call(idle, up.addr, Method::GET, Body::Empty).await.unwrap();
        assert_eq!(&body[..], b"ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_close_and_a_peer_that_closed_while_idle_get_a_new_connection() {
        let up = raw(vec![
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\naCLOSE",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nbCLOSE",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nc",
        ])
        .await;
        let idle = Idle::unique();
        for expect in [b"a", b"b", b"c"] {
            let (_, _, body) = call(idle, up.addr, Method::POST, Body::full("x")).await.unwrap();
            assert_eq!(&body[..], expect);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 3, "a pooled connection the peer closed is not used");
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_unanswered_replays_idempotent_requests_only() {
        // The peer reads the second request on the kept-alive connection and closes without
        // answering (the keep-alive race): a GET goes again on a new connection, a POST fails.
        let up = raw(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na",
            b"CLOSE",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
            b"CLOSE",
        ])
        .await;
        let idle = Idle::unique();
        assert_eq!(&call(idle, up.addr, Method::GET, Body::Empty).await.unwrap().2[..], b"a");
        assert_eq!(&call(idle, up.addr, Method::GET, Body::Empty).await.unwrap().2[..], b"b");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
        match call(idle, up.addr, Method::POST, Body::full("once")).await {
            Err(e) => assert_eq!(e.flag().to_string(), "UC"),
            Ok(r) => panic!("a POST was replayed: {:?}", r.0),
        }
        assert_eq!(up.requests.lock().unwrap().iter().filter(|r| r.starts_with("POST")).count(), 1);
    }

    #[tokio::test]
    async fn broken_answers_are_upstream_resets() {
        let up = raw(vec![
            b"HTTP/1.1 2xx nope\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshortCLOSE",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nCLOSE",
        ])
        .await;
        let idle = Idle::unique();
        for _ in 0..3 {
            match call(idle, up.addr, Method::GET, Body::Empty).await {
                Err(e) => {
                    assert_eq!(e.flag().to_string(), "UC");
                    assert!(e.to_string().contains("protocol error"), "{e}");
                }
                Ok(r) => panic!("accepted a broken head: {:?}", r.0),
            }
        }
        for _ in 0..2 {
            let (parts, body) = request(Method::GET, "/", Body::Empty);
            let addr = up.addr;
            let resp = send(idle, Duration::from_secs(60), &parts, body_bytes(&body), || dial(addr)).await.unwrap();
            assert!(resp.into_body().collect().await.is_err(), "a truncated or malformed body is an error");
        }
    }

    #[tokio::test]
    async fn response_heads_over_60_kib_are_refused() {
        let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n", "a".repeat(61 * 1024));
        let fits = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok", "a".repeat(59 * 1024));
        let up =
            raw(vec![Box::leak(big.into_bytes().into_boxed_slice()), Box::leak(fits.into_bytes().into_boxed_slice())])
                .await;
        let idle = Idle::unique();
        match call(idle, up.addr, Method::GET, Body::Empty).await {
            Err(e) => assert!(e.to_string().contains("response headers too large"), "{e}"),
            Ok(r) => panic!("accepted a 61 KiB head: {:?}", r.0),
        }
        let (status, headers, body) = call(idle, up.addr, Method::GET, Body::Empty).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        assert_eq!(headers["x-big"].len(), 59 * 1024);
    }

    #[tokio::test]
    async fn mangled_answers_give_errors_not_panics_or_hangs() {
        // The data plane never panics on what a peer sends: 150 valid answers with random
        // flipped, inserted or cut bytes, each followed by a close.
        let seeds: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n5;e=1\r\nhello\r\n0\r\nt: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 204 No Content\r\ncontent-length: 0\r\n\r\n",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut answers: Vec<&'static [u8]> = Vec::new();
        for i in 0..150 {
            let mut a = seeds[i % seeds.len()].to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..a.len());
                match rng.u8(0..3) {
                    0 => a[at] = rng.u8(..),
                    1 => a.insert(at, rng.u8(..)),
                    _ => a.truncate(at.max(1)),
                }
            }
            a.extend_from_slice(b"CLOSE");
            answers.push(Box::leak(a.into_boxed_slice()));
        }
        let up = raw(answers).await;
        let idle = Idle::unique();
        let mut outcomes = (0, 0);
        for _ in 0..150 {
            match tokio::time::timeout(Duration::from_secs(5), call(idle, up.addr, Method::GET, Body::Empty)).await {
                Ok(Ok(_)) => outcomes.0 += 1,
                Ok(Err(_)) => outcomes.1 += 1,
                Err(_) => panic!("an exchange hung on a mangled answer"),
            }
        }
        assert_eq!(outcomes.0 + outcomes.1, 150);
        assert!(outcomes.1 > 0, "mangling produced some errors: {outcomes:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_failure_from_the_connector() {
        let idle = Idle::unique();
        let (parts, body) = request(Method::GET, "/", Body::Empty);
        let r = send(idle, Duration::from_secs(60), &parts, body_bytes(&body), || async {
            Err(ProxyError::ConnectFailed("delayed connect error: 111".into()))
        })
        .await;
        assert!(matches!(r, Err(ProxyError::ConnectFailed(_))));
    }
}
