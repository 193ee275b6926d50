//! The router's own HTTP/1 exchange with an instance, on the client connection's task.
//!
//! hyper's client drives each connection as a task of its own and passes the request, the
//! answer and each body chunk to it over channels. For the common request (no body, or one
//! already read whole, and no upgrade) the router does without: it writes the request head
//! and body with one vectored write, parses the answer head with httparse, and reads the
//! answer's body straight from the socket as the client's connection sends it on, all on the
//! task serving the client. The framing of the answer ([`crate::framing`]) decides whether the
//! connection goes back to this thread's pool of bare streams once the body ended.
//! Streamed request bodies and upgrades keep hyper's client ([`crate::pool`]).

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::body::{BoxError, ReqBody, RespBody};
use crate::forward::Failure;
use crate::framing::{Decoder, Step, keeps_alive};
use crate::headers;
use crate::pool::{self, Reusable, Slot, Slots};

/// Largest answer head accepted (hyper's client allows about as much).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in an answer head.
const MAX_HEADERS: usize = 100;
/// Bytes read from an instance at a time.
const READ_BYTES: usize = 16 * 1024;

/// A connection to an instance with its read buffer, kept with it so that an exchange on a
/// pooled connection allocates none.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Reusable for Conn {
    /// Nothing arrived while it was idle: an instance that closed it would have sent a FIN,
    /// which sets its read readiness. Checked without a system call in the common case.
    fn usable(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness left from the last read, or an end of stream (or stray bytes) since.
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }
}

thread_local! {
    static STREAMS: Slots<Conn> = Slots::default();
}

pub fn sweep() {
    STREAMS.with(Slots::sweep);
}

/// Whether `request` can take this path: its body is in memory and it asks no upgrade.
pub fn fits(request: &Request<ReqBody>, upgrade: bool) -> bool {
    !upgrade && request.body().in_memory().is_some()
}

/// Sends `request` (see [`fits`]) to `address` and waits for the answer head, for at most
/// `deadline`; a pooled connection that fails on the write is replaced by a new one. The
/// request is only read, so that the caller still has it to send elsewhere after a failure.
pub async fn exchange(
    address: &str,
    request: &Request<ReqBody>,
    connect: Duration,
    deadline: Duration,
) -> Result<Response<RespBody>, Failure> {
    let started = tokio::time::Instant::now();
    let head_only = request.method() == Method::HEAD;
    let (head, body) = encode(request);
    let slot = STREAMS.with(|s| s.slot(address));
    loop {
        let (mut conn, reused) = match slot.take() {
            Some(conn) => (conn, true),
            None => match pool::connect(address, connect).await {
                Ok(stream) => {
                    let buf = BytesMut::with_capacity(READ_BYTES);
                    (Conn { stream, buf }, false)
                }
                Err(e) => return Err(Failure::Unsent(None, e.to_string())),
            },
        };
        let trip = round_trip(&mut conn, head.clone(), body.clone(), head_only);
        match tokio::time::timeout_at(started + deadline, trip).await {
            Err(_) => return Err(Failure::Timeout),
            // The instance closed it while it sat idle: the request never reached it.
            Ok(Err(Trip::Write(_))) if reused => {}
            Ok(Err(Trip::Write(e))) => {
                return Err(Failure::Broken(format!("cannot send the request: {e}")));
            }
            Ok(Err(Trip::Broken(why))) => return Err(Failure::Broken(why)),
            Ok(Ok((mut parts, decoder))) => {
                // A length next to a transfer coding is void (RFC 9112 §6.3); the client gets
                // the decoded body chunked again, or with the length the framing gave.
                if parts.headers.contains_key(header::TRANSFER_ENCODING) {
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                // Read before the hop-by-hop headers (`Connection` among them) are dropped.
                let reusable = decoder.reusable() && keeps_alive(parts.version, &parts.headers);
                headers::strip_hop_by_hop(&mut parts.headers, false);
                let body = Upstream {
                    conn: Some(conn),
                    slot: reusable.then_some(slot),
                    decoder,
                };
                return Ok(Response::from_parts(parts, RespBody::Raw(body)));
            }
        }
    }
}

/// How one round trip failed.
enum Trip {
    /// Writing the request failed.
    Write(io::Error),
    /// The answer never came whole, or made no sense.
    Broken(String),
}

/// The request's head as it goes on the wire, and its body.
fn encode(request: &Request<ReqBody>) -> (Bytes, Bytes) {
    let body = request.body().in_memory().cloned().unwrap_or_default();
    let headers = request.headers();
    let mut head = Vec::with_capacity(64 + headers.len() * 48);
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    // A body in memory always goes with its length (its framing was taken off with the
    // hop-by-hop headers).
    if !body.is_empty() && !headers.contains_key(header::CONTENT_LENGTH) {
        head.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    (Bytes::from(head), body)
}

async fn round_trip(
    conn: &mut Conn,
    head: Bytes,
    body: Bytes,
    head_only: bool,
) -> Result<(http::response::Parts, Decoder), Trip> {
    let Conn { stream, buf } = conn;
    let mut wire = head.chain(body);
    while wire.has_remaining() {
        let written = std::future::poll_fn(|cx| {
            tokio_util::io::poll_write_buf(Pin::new(&mut *stream), cx, &mut wire)
        })
        .await
        .map_err(Trip::Write)?;
        if written == 0 {
            return Err(Trip::Write(io::ErrorKind::WriteZero.into()));
        }
    }
    loop {
        // Reclaims the buffer's own bytes once the last answer's frames were sent and freed.
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_BYTES);
        }
        let read = stream
            .read_buf(buf)
            .await
            .map_err(|e| Trip::Broken(format!("connection error: {e}")))?;
        if read == 0 {
            return Err(Trip::Broken(
                "the instance closed the connection before its answer".into(),
            ));
        }
        // Informational answers (100 Continue, 103 Early Hints) are passed over.
        while let Some(parts) = parse_head(buf)? {
            if parts.status.is_informational() {
                continue;
            }
            let decoder = Decoder::of(head_only, parts.status, &parts.headers)
                .map_err(|e| Trip::Broken(e.to_string()))?;
            return Ok((parts, decoder));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Trip::Broken(format!(
                "the instance's answer head exceeds {MAX_HEAD_BYTES} bytes"
            )));
        }
    }
}

/// The answer head at the front of `buf`, taken out of it; `None` while it is incomplete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<http::response::Parts>, Trip> {
    let bad = |why: String| Trip::Broken(format!("invalid answer from the instance: {why}"));
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let used = match response.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let status =
        StatusCode::from_u16(response.code.unwrap_or(0)).map_err(|e| bad(e.to_string()))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(bad("101 to a request that asked no upgrade".into()));
    }
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Where each field lies in the head, so that values share its bytes rather than copy them.
    let base = buf.as_ptr() as usize;
    let mut spans = Vec::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        spans.push((
            name..name + field.name.len(),
            value..value + field.value.len(),
        ));
    }
    let head = buf.split_to(used).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name, value) in spans {
        let name = HeaderName::from_bytes(&head[name]).map_err(|e| bad(e.to_string()))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(value)).map_err(|e| bad(e.to_string()))?;
        headers.append(name, value);
    }
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(parts))
}

/// An instance's answer body read from its connection by the task sending it to the client;
/// the connection goes back to the pool once the body ended, and is closed otherwise.
pub struct Upstream {
    /// `None` once it failed.
    conn: Option<Conn>,
    /// Where the connection goes back; `None` when it cannot carry another exchange.
    slot: Option<Rc<Slot<Conn>>>,
    decoder: Decoder,
}

impl Upstream {
    /// Back to the pool, when the body ended exactly where the answer did.
    fn finish(&mut self) {
        if self.decoder.is_done()
            && let (Some(slot), Some(conn)) = (self.slot.take(), self.conn.take())
            && conn.buf.is_empty()
        {
            slot.put(conn);
        }
        self.conn = None;
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.decoder.decode(&mut conn.buf) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::Done) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            if conn.buf.capacity() - conn.buf.len() < 1024 {
                conn.buf.reserve(READ_BYTES);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    self.slot = None;
                    if let Err(e) = self.decoder.at_eof() {
                        self.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.decoder
            .remaining()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // hyper drops a body it knows ended (`is_end_stream`) without polling it again.
        self.finish();
    }
}
