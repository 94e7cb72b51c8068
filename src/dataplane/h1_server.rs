//! The HTTP/1.1 server side of the proxy's listeners, run inside the connection's task as the
//! in-task client (`h1.rs`) is: the request head is parsed in place (httparse), the handler's
//! future runs in this task, and the response head and body go out in one write whenever the
//! body is ready. No dispatcher, no per-request channel, no shared slices of the read buffer.
//!
//! It takes what nearly every proxied request is: HTTP/1.1, no body or a content-length body
//! of at most [`MAX_BODY`], no `Expect`, no upgrade, not CONNECT. The first request that is
//! anything else (chunked or large uploads, WebSocket, CONNECT, HTTP/1.0, a malformed or
//! oversized head, the HTTP/2 preface) hands the connection, with every byte already read,
//! to hyper's server for the rest of its life; hyper then answers exactly as it always has
//! (its 400s and 431s included). Framing follows RFC 9112, as hyper's does: the handler's
//! `content-length` is kept, an exact body size becomes one, anything else is chunked; no body
//! for HEAD, 204 and 304; `connection: close` from either side ends the connection after the
//! response. As with hyper, a client that closes its connection while its request is in
//! flight cancels the request (the handler's future is dropped).

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::body::{Body, ProxyBody};
use super::headers;

/// Envoy's default request header limit (`max_request_headers_kb`, 60 KiB): the read-ahead
/// bound. The limit in force (`proxy.maxRequestHeadersKb`) is `admission::limits().max_head`;
/// a larger head is answered 431 here, as Envoy does.
const MAX_HEAD: usize = 60 * 1024;
/// Headers parsed per request head (hyper's default limit) before handing over.
const MAX_HEADERS: usize = 100;
/// The largest request body read whole here before the handler runs (Envoy buffers up to
/// its per-connection limit for retries anyway); larger bodies are streamed by hyper.
pub const MAX_BODY: usize = 64 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Response bytes gathered before they are written.
const WRITE_AT: usize = 64 * 1024;
/// Buffers larger than this are released between requests.
const KEEP_BUFFER: usize = 32 * 1024;
/// Pipelined bytes read ahead while a request is in flight.
const READ_AHEAD: usize = 2 * MAX_HEAD;

/// What the connection should do after a head was looked at.
#[allow(clippy::large_enum_variant)] // returned once per request and taken apart at once; a box would allocate
pub enum Next {
    /// Serve it here: the request, the head's length, the body's length, keep-alive.
    Serve(Request<Body>, usize, usize, bool),
    /// More bytes are needed.
    Partial,
    /// Not for this codec: hyper takes the connection.
    HandOver,
    /// The head is larger than the limit: 431, and the connection closes.
    TooLarge,
}

/// Serves `io` until it closes. `hyper_fallback` receives the stream (already-read bytes put
/// back in front) and the handler when a request needs hyper.
pub async fn serve<I, F, Fut, H, HFut>(mut io: I, handle: F, hyper_fallback: H)
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request<Body>) -> Fut,
    Fut: Future<Output = Response<ProxyBody>>,
    H: FnOnce(Bytes, I, F) -> HFut,
    HFut: Future<Output = ()>,
{
    let limits = super::admission::limits();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    // One timer per connection, never moved on the common path: a connection's first request
    // head (and small body) must arrive within the headers timeout of the connection's start;
    // a kept-alive connection may then idle for the idle timeout, and each later head must
    // arrive within the headers timeout of its first byte (Envoy's `request_headers_timeout`
    // and `idle_timeout`). Each phase only notes when it began; the timer, when it fires,
    // checks the phase it finds and either disconnects or re-arms for what is left. It is
    // brought forward only when a head stays incomplete after a read (a slow client), so a
    // kept-alive request costs one clock read, no timer-wheel update.
    let mut timer = pin!(tokio::time::sleep(limits.request_headers_timeout));
    let mut phase_start = tokio::time::Instant::now();
    let mut first = true;
    loop {
        let mut idle = !first && buf.is_empty();
        if !first {
            phase_start = tokio::time::Instant::now();
        }
        first = false;
        // A whole request head (and a small body) in `buf`.
        let (req, head_len, body_len, keep_alive) = loop {
            match parse(&buf, limits.max_head) {
                Next::Serve(req, head, body, keep) if buf.len() >= head + body => break (req, head, body, keep),
                // The head is here; the rest of a (small) body is not yet.
                Next::Serve(..) => {}
                Next::Partial if buf.len() <= limits.max_head => {}
                Next::Partial | Next::TooLarge => {
                    let _ = io.write_all(HEADERS_TOO_LARGE).await;
                    let _ = io.shutdown().await;
                    linger(&mut io, &mut buf).await;
                    return;
                }
                Next::HandOver => return hyper_fallback(buf.freeze(), io, handle).await,
            }
            if !buf.is_empty() {
                // An incomplete head: the timer must fire by the headers deadline.
                let due = phase_start + limits.request_headers_timeout;
                if timer.deadline() > due {
                    timer.as_mut().reset(due);
                }
            }
            buf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = &mut timer => {
                    let limit = if idle { limits.idle_timeout } else { limits.request_headers_timeout };
                    let due = phase_start + limit;
                    if tokio::time::Instant::now() >= due {
                        return;
                    }
                    timer.as_mut().reset(due);
                }
            }
            if idle && !buf.is_empty() {
                // The next request's first bytes: its head has the headers timeout from now.
                idle = false;
                phase_start = tokio::time::Instant::now();
            }
        };
        let head_request = req.method() == Method::HEAD;
        let req = if body_len > 0 {
            let (parts, _) = req.into_parts();
            Request::from_parts(parts, Body::Full(Some(Bytes::copy_from_slice(&buf[head_len..head_len + body_len]))))
        } else {
            req
        };
        buf.advance(head_len + body_len);

        // The handler runs while the socket is watched: an error means the client is gone,
        // and dropping the handler's future cancels the request, as hyper does. EOF is a
        // client that sent its whole request and shut down its write side (`nc -N`, HTTP/1.1
        // allows it): it still gets its response, then the connection closes. Pipelined
        // bytes are kept for the next turn.
        let mut half_closed: Option<tokio::time::Instant> = None;
        let resp = {
            let mut fut = pin!(handle(req));
            loop {
                tokio::select! {
                    biased;
                    resp = &mut fut => break resp,
                    read = io.read_buf(&mut buf), if buf.len() < READ_AHEAD && half_closed.is_none() => match read {
                        Ok(0) => half_closed = Some(tokio::time::Instant::now() + HALF_CLOSE_GRACE),
                        Err(_) => return,
                        Ok(_) => {
                            buf.reserve(READ_CHUNK);
                        }
                    },
                    // A FIN cannot tell a client that shut down its write side from one that
                    // closed and left: past the grace the request is cancelled (`DC`), as
                    // Envoy cancels at once.
                    () = sleep_until_some(half_closed) => return,
                }
            }
        };
        let half_closed = half_closed.is_some();
        let keep_alive = keep_alive && !half_closed;
        match write_response(&mut io, &mut out, resp, head_request, keep_alive).await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let _ = io.shutdown().await;
                return;
            }
        }
        // A large response or request does not leave its buffer behind on an idle connection.
        if out.capacity() > KEEP_BUFFER {
            out = Vec::with_capacity(1024);
        }
        if buf.is_empty() && buf.capacity() > KEEP_BUFFER {
            buf = BytesMut::with_capacity(READ_CHUNK);
        }
    }
}

/// How long a request whose client half-closed its connection (EOF while the request is in
/// flight) may still take to be answered: long enough for `printf ... | nc -N` and any quick
/// upstream, short enough that a client that closed and left cancels its request soon.
const HALF_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Sleeps until `at`, or forever when it is `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// After an error response, reads and discards what the client is still sending for a while
/// (nginx's lingering close): closing with unread bytes would reset the connection, and the
/// client could lose the response before reading it.
async fn linger<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut discarded = 0usize;
    while discarded < 1 << 20 {
        buf.clear();
        buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => return,
        }
    }
}

/// Envoy's answer to a request head over the limit.
const HEADERS_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 31\r\n\
    content-type: text/plain\r\nconnection: close\r\nserver: istio-envoy\r\n\r\nRequest Header Fields Too Large";

/// Looks at the front of `buf` for a request head this codec takes; `max_head` is the limit.
/// (Public for the fuzz target `h1_request`.)
pub fn parse(buf: &[u8], max_head: usize) -> Next {
    if buf.is_empty() {
        return Next::Partial;
    }
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        // An HTTP/2 preface parses as a partial `PRI` request: hyper's auto server takes it.
        Ok(httparse::Status::Partial) if req.method == Some("PRI") => return Next::HandOver,
        Ok(httparse::Status::Partial) => return Next::Partial,
        // More headers than this codec parses (hyper answers by its own count limit).
        Err(httparse::Error::TooManyHeaders) if buf.len() > max_head => return Next::TooLarge,
        Err(_) => return Next::HandOver,
    };
    if head_len > max_head {
        return Next::TooLarge;
    }
    if req.version != Some(1) {
        return Next::HandOver;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Next::HandOver;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Next::HandOver;
    };
    if method == Method::CONNECT {
        return Next::HandOver;
    }
    let Ok(uri) = Uri::try_from(path) else {
        return Next::HandOver;
    };
    // Room for what the proxy adds on the way: a gateway's `x-forwarded-for`,
    // `x-envoy-external-address` and `x-forwarded-proto`, then the forwarding path's request
    // id, attempt count and Host (`Forwarder::forward` reserves 4). A map that has to grow
    // rehashes every header (~650 instructions per gateway request before this was 8).
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 8);
    let mut length: Option<usize> = None;
    let mut keep_alive = true;
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Next::HandOver;
        };
        // Copied, not sliced: see h1.rs (profile step 13).
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Next::HandOver;
        };
        if name == header::CONTENT_LENGTH {
            let n = headers::parse_content_length(h.value).and_then(|n| usize::try_from(n).ok());
            match (n, length) {
                (Some(n), None) if n <= MAX_BODY => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Next::HandOver,
            }
        } else if name == header::TRANSFER_ENCODING || name == header::EXPECT {
            return Next::HandOver;
        } else if name == header::CONNECTION {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Next::HandOver;
                }
            }
        }
        headers.append(name, value);
    }
    let mut request = Request::new(Body::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    // Two Host headers or an authority-form target: hyper's path answers the 400.
    if headers::check_target(&mut request).is_err() {
        return Next::HandOver;
    }
    Next::Serve(request, head_len, length.unwrap_or(0), keep_alive)
}

/// How the response body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes a response; `Ok(true)` when the connection can take another request.
async fn write_response<I, B>(
    io: &mut I,
    out: &mut Vec<u8>,
    resp: Response<B>,
    head_request: bool,
    mut keep_alive: bool,
) -> std::io::Result<bool>
where
    I: AsyncWrite + Unpin,
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length: Option<u64> = None;
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            // The framing below is this hop's own.
            continue;
        }
        if name == header::CONTENT_LENGTH {
            match (headers::parse_content_length(value.as_bytes()), length) {
                (Some(n), None) => length = Some(n),
                // A repeated or unreadable length is not passed on.
                _ => continue,
            }
        } else if name == header::DATE {
            has_date = true;
        } else if name == header::CONNECTION
            && value.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED || status.is_informational();
    if length.is_none() && !bodiless {
        // An exact size becomes the length, for HEAD too (the length the body would have had).
        if let Some(n) = body.size_hint().exact().filter(|&n| !head_request || n > 0) {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
            length = Some(n);
        }
    }
    let framing = if bodiless || head_request {
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if !has_date {
        out.extend_from_slice(b"date: ");
        date::append(out);
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        // A HEAD response's body (or a 204's) is not sent; dropping it ends it.
        drop(body);
        io.write_all(out).await?;
        return Ok(keep_alive);
    }

    let mut sent: u64 = 0;
    let mut intact = true;
    loop {
        // Everything the body has ready goes into one write with what is already gathered.
        let ended = poll_fn(|cx| {
            loop {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else { continue };
                        if data.is_empty() {
                            continue;
                        }
                        sent += data.len() as u64;
                        match framing {
                            Framing::Chunked => {
                                let mut hex = [0u8; 16];
                                out.extend_from_slice(hex_len(data.len(), &mut hex));
                                out.extend_from_slice(b"\r\n");
                                out.extend_from_slice(&data);
                                out.extend_from_slice(b"\r\n");
                            }
                            Framing::Length(n) => {
                                // Never more than announced: the rest would be read as the
                                // next response.
                                let room = n.saturating_sub(sent - data.len() as u64) as usize;
                                out.extend_from_slice(&data[..data.len().min(room)]);
                            }
                            Framing::None => {}
                        }
                        if out.len() >= WRITE_AT {
                            return Poll::Ready(Ok(false));
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => return Poll::Ready(Ok(true)),
                    Poll::Pending if !out.is_empty() => return Poll::Ready(Ok(false)),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        match ended {
            Ok(true) => {
                match framing {
                    Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
                    // Fewer bytes than announced: the client can only see that as a close.
                    Framing::Length(n) if sent != n => intact = false,
                    _ => {}
                }
                io.write_all(out).await?;
                return Ok(keep_alive && intact);
            }
            Ok(false) => {
                io.write_all(out).await?;
                out.clear();
            }
            // The upstream body failed mid-stream: what was sent stands, and closing the
            // connection (without the last chunk) is how the client learns of it.
            Err(_) => {
                io.write_all(out).await?;
                return Ok(false);
            }
        }
    }
}

/// `n` in lowercase hex.
fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The `date` header, formatted once per second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{Duration, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub fn append(out: &mut Vec<u8>) {
        // The coarse clock: a few ms of resolution is plenty for a date header.
        let secs = crate::dataplane::clock::realtime_secs();
        let _ = CACHED.try_with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                c.1 = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
                c.0 = secs;
            }
            out.extend_from_slice(c.1.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A server whose handler echoes the method, path and body, and counts hand-overs.
    async fn server(handed: Arc<AtomicUsize>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let handed = handed.clone();
                tokio::spawn(serve(
                    s,
                    |req: Request<Body>| async move {
                        let (parts, body) = req.into_parts();
                        let data = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
                        let text = format!("{} {} {}", parts.method, parts.uri, String::from_utf8_lossy(&data));
                        let mut resp = Response::new(ProxyBody::full(text));
                        resp.headers_mut().insert("x-seen", HeaderValue::from_static("1"));
                        if parts.uri.path() == "/close" {
                            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        resp
                    },
                    move |prefix, io, handle| {
                        handed.fetch_add(1, Ordering::SeqCst);
                        crate::dataplane::listen::serve_hyper(
                            crate::dataplane::rewind::Rewind::new(prefix, io),
                            crate::dataplane::listen::HttpMode::Auto,
                            handle,
                        )
                    },
                ));
            }
        });
        addr
    }

    /// Reads until `n` responses (by their final blank line + body) or EOF.
    async fn exchange(addr: std::net::SocketAddr, send: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(send).await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut got)).await.unwrap().unwrap();
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let handed = Arc::new(AtomicUsize::new(0));
        let addr = server(handed.clone()).await;
        let got = exchange(
            addr,
            b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhelloHEAD /c HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await;
        let a = got.find("GET /a").unwrap();
        let b = got.find("POST /b hello").unwrap();
        assert!(a < b, "{got}");
        assert_eq!(got.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{got}");
        // HEAD: the length of the body it would have had, and no body.
        assert!(got.contains("content-length: 8\r\n") && got.ends_with("\r\n\r\n"), "{got}");
        assert!(!got.contains("HEAD /c"), "{got}");
        assert!(got.contains("\r\ndate: "), "{got}");
        assert_eq!(handed.load(Ordering::SeqCst), 0);
    }

    /// A body of unknown size, in pieces.
    struct Pieces(std::collections::VecDeque<&'static str>);

    impl http_body::Body for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|p| Ok(http_body::Frame::data(Bytes::from_static(p.as_bytes())))))
        }
    }

    async fn written(resp: Response<Pieces>, head: bool) -> (String, bool) {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let mut out = Vec::new();
        let keep = write_response(&mut a, &mut out, resp, head, true).await.unwrap();
        drop(a);
        let mut got = String::new();
        b.read_to_string(&mut got).await.unwrap();
        (got, keep)
    }

    #[tokio::test]
    async fn unknown_sizes_are_chunked_and_lengths_are_kept() {
        let resp = Response::new(Pieces(["stream", "", "ed"].into()));
        let (got, keep) = written(resp, false).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\n6\r\nstream\r\n2\r\ned\r\n0\r\n\r\n"), "{got}");
        assert!(keep);
        // An announced length is kept, never exceeded, and a short body ends the connection.
        let mut resp = Response::new(Pieces(["abc", "def"].into()));
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        let (got, keep) = written(resp, false).await;
        assert!(got.contains("content-length: 4\r\n") && got.ends_with("\r\n\r\nabcd"), "{got}");
        assert!(!got.contains("chunked"), "{got}");
        assert!(!keep, "a body longer than announced ends the connection, as hyper's does");
        let mut resp = Response::new(Pieces(["ab"].into()));
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        assert!(!written(resp, false).await.1, "a short body cannot keep the connection");
        // HEAD and 204: no body on the wire.
        let mut resp = Response::new(Pieces(["abc"].into()));
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let (got, _) = written(resp, true).await;
        assert!(got.contains("content-length: 3\r\n") && got.ends_with("\r\n\r\n"), "{got}");
        assert!(!got.contains("abc"), "{got}");
        let mut resp = Response::new(Pieces(["abc"].into()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let (got, _) = written(resp, false).await;
        assert!(got.starts_with("HTTP/1.1 204 No Content\r\n") && got.ends_with("\r\n\r\n"), "{got}");
        assert!(!got.contains("abc") && !got.contains("chunked"), "{got}");
    }

    #[tokio::test]
    async fn close_from_either_side_ends_the_connection() {
        let handed = Arc::new(AtomicUsize::new(0));
        let addr = server(handed.clone()).await;
        let got =
            exchange(addr, b"GET /first HTTP/1.1\r\n\r\nGET /close HTTP/1.1\r\n\r\nGET /never HTTP/1.1\r\n\r\n").await;
        assert!(got.contains("GET /first"), "{got}");
        assert!(got.contains("GET /close"), "{got}");
        assert!(!got.contains("/never"), "the connection closes after a close response: {got}");
        let got = exchange(addr, b"GET /x HTTP/1.1\r\nconnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n").await;
        assert!(got.contains("connection: close\r\n"), "{got}");
        assert!(!got.contains("/never"), "{got}");
    }

    #[tokio::test]
    async fn what_this_codec_does_not_take_goes_to_hyper_with_the_bytes_read() {
        let handed = Arc::new(AtomicUsize::new(0));
        let addr = server(handed.clone()).await;
        // A chunked upload after a served request: hyper answers it, and the next one too.
        let got = exchange(
            addr,
            b"GET /first HTTP/1.1\r\n\r\nPOST /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /after HTTP/1.1\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(got.contains("GET /first"), "{got}");
        assert!(got.contains("POST /up abc"), "{got}");
        assert!(got.contains("GET /after"), "{got}");
        assert_eq!(handed.load(Ordering::SeqCst), 1);
        // A malformed head: hyper's 400.
        let got = exchange(addr, b"GET /x HTTP/1.1\r\nbad header\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 400"), "{got}");
        // HTTP/1.0 and bodies over the limit go to hyper too.
        let got = exchange(addr, b"GET /ten HTTP/1.0\r\n\r\n").await;
        assert!(got.contains("GET /ten"), "{got}");
        let big = format!(
            "POST /big HTTP/1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
            MAX_BODY + 1,
            "z".repeat(MAX_BODY + 1)
        );
        let got = exchange(addr, big.as_bytes()).await;
        assert!(got.contains("POST /big zzz"), "{}", &got[..got.len().min(200)]);
        assert_eq!(handed.load(Ordering::SeqCst), 4);
        // Upgrades and Expect too.
        let got = exchange(addr, b"GET /ws HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n").await;
        assert!(got.contains("GET /ws"), "{got}");
        let got = exchange(
            addr,
            b"POST /e HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
        )
        .await;
        assert!(got.contains("POST /e hi"), "{got}");
        assert_eq!(handed.load(Ordering::SeqCst), 6);
        // A length with a sign is not a length: hyper refuses it.
        let got = exchange(addr, b"POST /plus HTTP/1.1\r\ncontent-length: +2\r\n\r\nhi").await;
        assert!(got.starts_with("HTTP/1.1 400"), "{got}");
        assert_eq!(handed.load(Ordering::SeqCst), 7);
    }

    /// A server whose one connection's requests never end; the count of requests cancelled
    /// (their futures dropped).
    async fn never_answering() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            serve(
                s,
                move |_req: Request<Body>| {
                    struct Guard(Arc<AtomicUsize>);
                    impl Drop for Guard {
                        fn drop(&mut self) {
                            self.0.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    let guard = Guard(d.clone());
                    async move {
                        let _guard = guard;
                        std::future::pending::<Response<ProxyBody>>().await
                    }
                },
                |_, _, _| async {},
            )
            .await;
        });
        (addr, dropped)
    }

    /// Waits (at most 5 s) for the request to be cancelled; how long it took.
    async fn cancelled(dropped: &AtomicUsize) -> std::time::Duration {
        let t = std::time::Instant::now();
        while dropped.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < std::time::Duration::from_secs(5), "the request was not cancelled");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        t.elapsed()
    }

    /// A client whose connection is reset (gone, not half-closed) cancels its request at once.
    #[tokio::test]
    async fn a_client_that_leaves_cancels_its_request() {
        let (addr, dropped) = never_answering().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        // Closed with a reset (SO_LINGER 0), as a client that is gone.
        let std = s.into_std().unwrap();
        rustix::net::sockopt::set_socket_linger(&std, Some(std::time::Duration::ZERO)).unwrap();
        drop(std);
        assert!(cancelled(&dropped).await < HALF_CLOSE_GRACE, "a reset needs no grace");
    }

    #[tokio::test]
    async fn a_half_closed_client_is_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            serve(
                s,
                |_req: Request<Body>| async {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    Response::new(ProxyBody::full("late"))
                },
                |_, _, _| async {},
            )
            .await;
        });
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\n\r\n").await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("late"), "{out}");
    }

    /// Half-closed, with a request that does not end: cancelled after the grace period.
    #[tokio::test]
    async fn a_half_closed_clients_request_is_cancelled_after_the_grace() {
        let (addr, dropped) = never_answering().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /forever HTTP/1.1\r\n\r\n").await.unwrap();
        s.shutdown().await.unwrap();
        let took = cancelled(&dropped).await;
        assert!(took >= HALF_CLOSE_GRACE - std::time::Duration::from_millis(50), "{took:?}");
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        let mut b = [0u8; 16];
        assert_eq!(hex_len(0, &mut b), b"0");
        assert_eq!(hex_len(255, &mut b), b"ff");
        assert_eq!(hex_len(65536, &mut b), b"10000");
    }
}
