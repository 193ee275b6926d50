//! Bodies on the data path: what goes to an instance, and what goes back to the client.
//!
//! Request bodies are streamed; only a small one (a declared length up to [`REPLAY_BYTES`]) is
//! read whole first, so that an idempotent request can be sent again when the connection
//! broke after it was sent. Larger bodies are retried only when they were never sent (the
//! connection failed, or hyper handed the request back unsent). The size limit is enforced as
//! bytes pass, whichever way.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::pool::Lease;

/// Largest body read whole before it is sent (kept for a retry).
pub const REPLAY_BYTES: u64 = 64 * 1024;

/// What a body going to the client fails with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request body could not be passed on.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("cannot read the request body: {0}")]
    Read(#[from] hyper::Error),
}

/// A request body on its way to an instance.
pub enum ReqBody {
    /// In memory (empty, or read whole): can be sent again.
    Full(Option<Bytes>),
    /// Streamed from the client as it arrives.
    Stream(Limited),
}

/// The client's body with a byte limit; `over` tells the forwarder why a send failed, `sent`
/// that it went out whole (only then may its connection serve another request).
pub struct Limited {
    incoming: Incoming,
    limit: Option<u64>,
    seen: u64,
    over: Rc<Cell<bool>>,
    sent: Rc<Cell<bool>>,
}

impl ReqBody {
    pub fn empty() -> Self {
        Self::Full(None)
    }

    /// `incoming` streamed, failing past `limit` bytes (`None`: no limit); the flag is set then.
    pub fn stream(incoming: Incoming, limit: Option<u64>) -> (Self, Rc<Cell<bool>>) {
        let over = Rc::new(Cell::new(false));
        let body = Self::Stream(Limited {
            incoming,
            limit,
            seen: 0,
            over: over.clone(),
            sent: Rc::new(Cell::new(false)),
        });
        (body, over)
    }

    /// Set once a streamed body went out whole; `None` for one in memory, written at once.
    pub fn sent(&self) -> Option<Rc<Cell<bool>>> {
        match self {
            Self::Full(_) => None,
            Self::Stream(body) => Some(body.sent.clone()),
        }
    }

    /// The body, when it is in memory (empty included).
    pub fn in_memory(&self) -> Option<&Bytes> {
        static EMPTY: Bytes = Bytes::new();
        match self {
            Self::Full(bytes) => Some(bytes.as_ref().unwrap_or(&EMPTY)),
            Self::Stream(_) => None,
        }
    }

    /// The same body again, when it was in memory.
    pub fn replay(&self) -> Option<Self> {
        match self {
            Self::Full(bytes) => Some(Self::Full(bytes.clone())),
            Self::Stream(_) => None,
        }
    }
}

/// Reads `incoming` whole, up to `limit` bytes (one chunk is kept as is, without a copy).
pub async fn read_whole(mut incoming: Incoming, limit: u64) -> Result<Bytes, BodyError> {
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    let mut len: u64 = 0;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut incoming).poll_frame(cx)).await
    {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers: nothing to forward in a buffered body
        };
        len += data.len() as u64;
        if len > limit {
            return Err(BodyError::TooLarge(limit));
        }
        match (&mut first, &mut more) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut buf = BytesMut::with_capacity(head.len() + data.len());
                buf.extend_from_slice(head);
                buf.extend_from_slice(&data);
                more = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match more {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    })
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Self::Stream(body) => {
                let frame = match Pin::new(&mut body.incoming).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        body.sent.set(true);
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(Some(Ok(frame))) => frame,
                };
                if let Some(data) = frame.data_ref() {
                    body.seen += data.len() as u64;
                    if let Some(limit) = body.limit
                        && body.seen > limit
                    {
                        body.over.set(true);
                        return Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
                    }
                }
                // hyper stops polling after the frame that ends the body.
                if body.incoming.is_end_stream() {
                    body.sent.set(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Self::Stream(body) => body.incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Stream(body) => body.incoming.size_hint(),
        }
    }
}

/// A body going back to the client: a problem the router wrote, or an instance's answer
/// (through hyper's client, or read by the router itself).
pub enum RespBody {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
    Raw(crate::client::Upstream),
}

/// An instance's answer, streamed as it arrives (no total timeout: server-sent events and
/// long downloads last as long as they last). Its connection goes back to this thread's pool
/// once the answer was read to its end, and is closed otherwise.
pub struct UpstreamBody {
    incoming: Incoming,
    lease: Option<Lease>,
}

impl UpstreamBody {
    pub fn new(incoming: Incoming, lease: Option<Lease>) -> Self {
        Self { incoming, lease }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take()
            && self.incoming.is_end_stream()
        {
            lease.give_back();
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream(body) => {
                let polled = Pin::new(&mut body.incoming).poll_frame(cx);
                if let Poll::Ready(None) = polled
                    && let Some(lease) = body.lease.take()
                {
                    // Back in the pool as soon as the answer ended, before the client's
                    // connection moves on to its next request.
                    lease.give_back();
                }
                polled.map(|frame| frame.map(|r| r.map_err(Into::into)))
            }
            Self::Raw(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Upstream(body) => body.incoming.is_end_stream(),
            Self::Raw(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Upstream(body) => body.incoming.size_hint(),
            Self::Raw(body) => body.size_hint(),
        }
    }
}
