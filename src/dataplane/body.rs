//! Bodies flowing through the proxy: one enum (no boxing per request) for streamed, buffered
//! and empty bodies, and a response wrapper that runs end-of-stream hooks (returning the
//! connection to its pool, recording the request) exactly once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum Body {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    /// A response read by the in-task HTTP/1.1 client.
    H1(super::h1::H1Body),
    /// A downstream body of unknown length (chunked, gRPC), its bytes counted for the record.
    Counted(Incoming, Arc<AtomicU64>),
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Body {
        let b = b.into();
        if b.is_empty() { Body::Empty } else { Body::Full(Some(b)) }
    }

    /// A streamed body whose length no header gives is counted as it passes (the request's
    /// record says how many bytes it carried, as Envoy's `%BYTES_RECEIVED%`); the counter, if so.
    pub fn counted(self) -> (Body, Option<Arc<AtomicU64>>) {
        match self {
            Body::Incoming(i) if !i.is_end_stream() && i.size_hint().exact().is_none() => {
                let n = Arc::new(AtomicU64::new(0));
                (Body::Counted(i, n.clone()), Some(n))
            }
            other => (other, None),
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(i) => Pin::new(i).poll_frame(cx).map_err(Into::into),
            Body::H1(b) => Pin::new(b).poll_frame(cx),
            Body::Counted(i, n) => {
                let r = Pin::new(i).poll_frame(cx).map_err(Into::into);
                if let Poll::Ready(Some(Ok(f))) = &r
                    && let Some(d) = f.data_ref()
                {
                    n.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(i) | Body::Counted(i, _) => i.is_end_stream(),
            Body::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(i) | Body::Counted(i, _) => i.size_hint(),
            Body::H1(b) => b.size_hint(),
        }
    }
}

/// How a response body ended.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// Body bytes passed through.
    pub bytes: u64,
    /// The end of the stream was reached (false: error or the client went away).
    pub complete: bool,
    /// It ended early because the upstream's body failed (not the client going away).
    pub upstream_failed: bool,
}

type Hook = Box<dyn FnOnce(Outcome) + Send + Sync>;

/// A response body with up to two end-of-stream hooks.
pub struct ProxyBody {
    inner: Body,
    bytes: u64,
    hooks: [Option<Hook>; 2],
}

impl ProxyBody {
    pub fn new(inner: Body) -> Self {
        ProxyBody { inner, bytes: 0, hooks: [None, None] }
    }

    pub fn empty() -> Self {
        Self::new(Body::Empty)
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::new(Body::full(b))
    }

    /// Runs `hook` when the body ends (or is dropped). Returns false when both slots are taken.
    pub fn on_end(&mut self, hook: impl FnOnce(Outcome) + Send + Sync + 'static) -> bool {
        for slot in &mut self.hooks {
            if slot.is_none() {
                *slot = Some(Box::new(hook));
                return true;
            }
        }
        false
    }

    fn finish(&mut self, complete: bool) {
        self.finish_with(complete, false);
    }

    fn finish_with(&mut self, complete: bool, upstream_failed: bool) {
        let outcome = Outcome { bytes: self.bytes, complete, upstream_failed };
        for slot in &mut self.hooks {
            if let Some(h) = slot.take() {
                h(outcome);
            }
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

impl HttpBody for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish_with(false, true);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    #[tokio::test]
    async fn hooks_run_once_at_end_of_stream_with_byte_count() {
        let calls = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let mut b = ProxyBody::full("hello");
        let (c, by) = (calls.clone(), bytes.clone());
        assert!(b.on_end(move |o| {
            assert!(o.complete);
            c.fetch_add(1, Ordering::SeqCst);
            by.store(o.bytes, Ordering::SeqCst);
        }));
        let collected = b.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(bytes.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn dropping_an_unfinished_body_reports_incomplete() {
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let mut b = ProxyBody::full("x");
        b.on_end(move |o| {
            s.store(if o.complete { 1 } else { 2 }, Ordering::SeqCst);
        });
        drop(b);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }
}
