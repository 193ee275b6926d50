//! How an instance's answer is framed (RFC 9112 §6), and its body taken out of the bytes read.
//!
//! The decoder works on the connection's read buffer only, so it can be tested without a
//! socket: [`Decoder::decode`] hands out body bytes as they are (a chunked body's framing taken
//! off), says when more must be read, and when the body ended.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{StatusCode, Version};

use crate::headers::connection_has;

/// Longest chunk-size line or trailer line accepted.
const MAX_LINE: usize = 4096;

/// Why an answer's framing cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("the instance's answer has an invalid Content-Length")]
    ContentLength,
    #[error("the instance's chunked answer is malformed")]
    Chunked,
    #[error("the instance closed the connection before the end of its answer")]
    Truncated,
}

/// Where the body of an answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the instance closes the connection (which cannot be reused then).
    Eof,
    Done,
}

/// The position inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// Nothing more in the buffer: read from the connection.
    More,
    Done,
}

impl Decoder {
    /// The framing of an answer with `status` and `headers` to a request (`head`: a HEAD).
    pub fn of(head: bool, status: StatusCode, headers: &HeaderMap) -> Result<Self, FramingError> {
        if head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Ok(Self::Done);
        }
        if let Some(last) = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
        {
            let chunked = last
                .to_str()
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
            return Ok(if chunked {
                Self::Chunked(Chunk::Size)
            } else {
                Self::Eof
            });
        }
        let mut length = None;
        for value in headers.get_all(header::CONTENT_LENGTH) {
            let text = value.to_str().map_err(|_| FramingError::ContentLength)?;
            for part in text.split(',') {
                let n: u64 = part
                    .trim()
                    .parse()
                    .map_err(|_| FramingError::ContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(FramingError::ContentLength);
                }
                length = Some(n);
            }
        }
        Ok(match length {
            Some(0) => Self::Done,
            Some(n) => Self::Length(n),
            None => Self::Eof,
        })
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }

    /// Whether the connection can carry another exchange once this body ended.
    pub fn reusable(&self) -> bool {
        !matches!(self, Self::Eof)
    }

    /// Bytes still to come when known (for the client's `Content-Length`).
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Self::Length(n) => Some(*n),
            Self::Done => Some(0),
            _ => None,
        }
    }

    /// The connection reached its end: fine only for a body framed by it.
    pub fn at_eof(&mut self) -> Result<(), FramingError> {
        match self {
            Self::Eof | Self::Done => {
                *self = Self::Done;
                Ok(())
            }
            _ => Err(FramingError::Truncated),
        }
    }

    /// Takes what it can of the body out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, FramingError> {
        loop {
            match *self {
                Self::Done => return Ok(Step::Done),
                Self::Length(rem) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let (data, rem) = take(buf, rem);
                    *self = if rem == 0 {
                        Self::Done
                    } else {
                        Self::Length(rem)
                    };
                    return Ok(Step::Data(data));
                }
                Self::Eof => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Self::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *self = Self::Chunked(match size {
                            0 => Chunk::Trailers,
                            n => Chunk::Data(n),
                        });
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_LINE => {
                        return Ok(Step::More);
                    }
                    _ => return Err(FramingError::Chunked),
                },
                Self::Chunked(Chunk::Data(rem)) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let (data, rem) = take(buf, rem);
                    *self = Self::Chunked(match rem {
                        0 => Chunk::DataEnd,
                        n => Chunk::Data(n),
                    });
                    return Ok(Step::Data(data));
                }
                Self::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(FramingError::Chunked);
                    }
                    buf.advance(2);
                    *self = Self::Chunked(Chunk::Size);
                }
                Self::Chunked(Chunk::Trailers) => {
                    // Trailer fields are dropped; an empty line ends the body.
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() < MAX_LINE {
                            return Ok(Step::More);
                        }
                        return Err(FramingError::Chunked);
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        *self = Self::Done;
                    }
                }
            }
        }
    }
}

/// Up to `rem` bytes from the front of `buf`, and how many are left to come after them.
fn take(buf: &mut BytesMut, rem: u64) -> (Bytes, u64) {
    let n = usize::try_from(rem).map_or(buf.len(), |r| r.min(buf.len()));
    (buf.split_to(n).freeze(), rem - n as u64)
}

/// Whether the instance keeps the connection open after this answer (RFC 9112 §9.3).
pub fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    match version {
        Version::HTTP_10 => connection_has(headers, "keep-alive"),
        _ => !connection_has(headers, "close"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    /// Feeds `wire` one byte at a time (the worst split) and collects the body.
    fn decode_bytewise(mut decoder: Decoder, wire: &[u8]) -> (Vec<u8>, BytesMut) {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut input = wire.iter();
        loop {
            match decoder.decode(&mut buf).unwrap() {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::Done => return (body, buf),
                Step::More => buf.extend_from_slice(&[*input.next().expect("body ended early")]),
            }
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = StatusCode::OK;
        let of = |head, status, h: &[(&'static str, &'static str)]| {
            Decoder::of(head, status, &headers(h))
        };
        assert_eq!(
            of(false, ok, &[("content-length", "5")]).unwrap(),
            Decoder::Length(5)
        );
        assert_eq!(
            of(false, ok, &[("content-length", "5, 5")]).unwrap(),
            Decoder::Length(5)
        );
        assert_eq!(
            of(false, ok, &[("content-length", "0")]).unwrap(),
            Decoder::Done
        );
        assert!(of(false, ok, &[("content-length", "5, 6")]).is_err());
        assert!(of(false, ok, &[("content-length", "-1")]).is_err());
        assert_eq!(
            of(true, ok, &[("content-length", "5")]).unwrap(),
            Decoder::Done
        );
        assert_eq!(
            of(false, StatusCode::NO_CONTENT, &[]).unwrap(),
            Decoder::Done
        );
        assert_eq!(
            of(false, StatusCode::NOT_MODIFIED, &[]).unwrap(),
            Decoder::Done
        );
        // Transfer-Encoding wins over Content-Length; chunked must be the last coding.
        let chunked = &[
            ("transfer-encoding", "gzip, chunked"),
            ("content-length", "3"),
        ];
        assert_eq!(
            of(false, ok, chunked).unwrap(),
            Decoder::Chunked(Chunk::Size)
        );
        assert_eq!(
            of(false, ok, &[("transfer-encoding", "gzip")]).unwrap(),
            Decoder::Eof
        );
        assert_eq!(of(false, ok, &[]).unwrap(), Decoder::Eof);
        assert!(!Decoder::Eof.reusable());
        assert!(Decoder::Length(3).reusable());
    }

    #[test]
    fn a_fixed_length_body_stops_at_its_length() {
        let (body, rest) = decode_bytewise(Decoder::Length(5), b"hello");
        assert_eq!(body, b"hello");
        assert!(rest.is_empty());
        let mut buf = BytesMut::from(&b"helloNEXT"[..]);
        let mut decoder = Decoder::Length(5);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Step::Data(Bytes::from("hello"))
        );
        assert!(decoder.is_done());
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn a_chunked_body_loses_its_framing_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\n\r\n";
        let (body, rest) = decode_bytewise(Decoder::Chunked(Chunk::Size), wire);
        assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz");
        assert!(rest.is_empty());
        let mut whole = BytesMut::from(&wire[..]);
        let mut decoder = Decoder::Chunked(Chunk::Size);
        let mut body = Vec::new();
        while let Step::Data(d) = decoder.decode(&mut whole).unwrap() {
            body.extend_from_slice(&d);
        }
        assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz");
        assert!(decoder.is_done());
    }

    #[test]
    fn malformed_or_truncated_bodies_are_errors() {
        let mut decoder = Decoder::Chunked(Chunk::Size);
        assert!(decoder.decode(&mut BytesMut::from(&b"zz\r\n"[..])).is_err());
        let mut decoder = Decoder::Chunked(Chunk::Size);
        assert!(
            decoder
                .decode(&mut BytesMut::from(&b"2\r\nabXY"[..]))
                .is_ok()
        );
        assert!(decoder.decode(&mut BytesMut::from(&b"XY"[..])).is_err());
        let mut decoder = Decoder::Length(4);
        assert!(decoder.at_eof().is_err());
        let mut decoder = Decoder::Eof;
        assert_eq!(
            decoder.decode(&mut BytesMut::from(&b"abc"[..])).unwrap(),
            Step::Data(Bytes::from("abc"))
        );
        assert!(decoder.at_eof().is_ok());
        assert!(decoder.is_done());
    }

    #[test]
    fn keep_alive_depends_on_the_version() {
        assert!(keeps_alive(Version::HTTP_11, &headers(&[])));
        assert!(!keeps_alive(
            Version::HTTP_11,
            &headers(&[("connection", "Close")])
        ));
        assert!(!keeps_alive(Version::HTTP_10, &headers(&[])));
        assert!(keeps_alive(
            Version::HTTP_10,
            &headers(&[("connection", "keep-alive")])
        ));
    }
}
