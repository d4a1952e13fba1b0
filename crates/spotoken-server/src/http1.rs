//! HTTP/1.1 as the proxy speaks it to the upstream API (RFC 9112): the
//! request it writes, the response head it reads and how that response's body
//! is framed, and the chunked decoder. Pure: bytes in, values out; the
//! connections are in [`crate::upstream`].
//!
//! Why by hand: hyper's client drives each connection from a task of its own
//! and hands requests, responses and body chunks across channels between
//! that task and the request's; on the proxy's hot path that machinery cost
//! more than the proxying (docs/BENCHMARKS.md). Parsing is `httparse`'s, as in hyper; what is written
//! here is the framing decision and the chunked decoder, both property-tested
//! and fuzzed (`fuzz/fuzz_targets/upstream_response.rs`).

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod differential;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use bytes::{Buf as _, Bytes, BytesMut};

/// Most header fields accepted in a response head.
const MAX_HEADERS: usize = 100;

/// Largest response head accepted, and largest chunk-size or trailer line.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// A response the proxy cannot take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed upstream response: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// Writes a request: request line, `headers` (already valid field names and
/// values, so nothing can inject a line), `Content-Length` when there is a
/// body or the method carries one, and the body.
pub(crate) fn encode_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Spotify answers a PUT or POST without a length with 411.
    if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    /// Status.
    pub status: StatusCode,
    /// Header fields, as received (hop-by-hop ones included).
    pub headers: HeaderMap,
    /// How the body ends.
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub reusable: bool,
    /// Bytes the head took.
    pub size: usize,
}

/// Parses a response head from the start of `buf`: `None` until it is
/// complete. `method` is the request's (a response to HEAD has no body).
pub(crate) fn parse_head(buf: &[u8], method: &Method) -> Result<Option<Head>, Malformed> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let size = match resp.parse(buf) {
        // The limit holds however the head arrived, in pieces or in one read.
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Err(Malformed("response head too large"));
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Malformed("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed("too many header fields")),
        Err(_) => return Err(Malformed("not an HTTP/1 response head")),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Malformed("no valid status"))?;
    let fields = read_fields(resp.headers, resp.version != Some(1))?;
    // RFC 9112 §6.1: Transfer-Encoding is HTTP/1.1's; in an HTTP/1.0
    // message the framing is faulty (found by the differential test).
    if fields.transfer_encoding && resp.version == Some(0) {
        return Err(Malformed("Transfer-Encoding in an HTTP/1.0 response"));
    }
    if fields.transfer_encoding && fields.length.is_some() {
        return Err(Malformed("both Transfer-Encoding and Content-Length"));
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Malformed("101 Switching Protocols was not asked for"));
    }
    let (framing, close) = framing(method, status, &fields);
    Ok(Some(Head {
        status,
        headers: fields.headers,
        framing,
        reusable: !close && framing != Framing::UntilClose,
        size,
    }))
}

/// What a head's fields say about its message.
struct Fields {
    headers: HeaderMap,
    length: Option<u64>,
    /// `Transfer-Encoding` is present.
    transfer_encoding: bool,
    /// Its last coding is `chunked`.
    chunked: bool,
    /// The connection ends after this message.
    close: bool,
}

/// The fields of a head as a map, with what they say about framing; `close`
/// is whether the connection ends after this message whatever they say.
fn read_fields(fields: &[httparse::Header<'_>], close: bool) -> Result<Fields, Malformed> {
    let mut out = Fields {
        headers: HeaderMap::with_capacity(fields.len()),
        length: None,
        transfer_encoding: false,
        chunked: false,
        close,
    };
    for field in fields {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| Malformed("field name"))?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| Malformed("field value"))?;
        if name == header::CONTENT_LENGTH {
            // One field, one decimal number: a list (`7, 7`, `7,`) or a
            // repeated field is refused rather than reconciled, since a
            // recipient that reconciles differently reads another message.
            if out.length.is_some() {
                return Err(Malformed("repeated Content-Length"));
            }
            out.length =
                Some(parse_length(field.value.trim_ascii()).ok_or(Malformed("Content-Length"))?);
        } else if name == header::TRANSFER_ENCODING {
            // Framing read from bytes another parser may not read as text
            // would be read two ways (found by the differential test).
            if !field.value.is_ascii() {
                return Err(Malformed("Transfer-Encoding is not ASCII"));
            }
            out.transfer_encoding = true;
            // Only the last coding says how the message ends.
            out.chunked = split_list(field.value)
                .last()
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION
            && split_list(field.value).any(|t| t.eq_ignore_ascii_case(b"close"))
        {
            out.close = true;
        }
        out.headers.append(name, value);
    }
    Ok(out)
}

/// How the body of a response to `method` ends, and whether the connection
/// ends with it.
fn framing(method: &Method, status: StatusCode, fields: &Fields) -> (Framing, bool) {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        (Framing::Empty, fields.close)
    } else if fields.transfer_encoding {
        // RFC 9112 §6.3 lets a recipient drop Content-Length beside
        // Transfer-Encoding; a response with both is how responses are
        // smuggled, so it is refused (above) instead. A coding other than
        // chunked last ends with the connection.
        if fields.chunked {
            (Framing::Chunked, fields.close)
        } else {
            (Framing::UntilClose, true)
        }
    } else if let Some(n) = fields.length {
        (Framing::Length(n), fields.close)
    } else {
        (Framing::UntilClose, true)
    }
}

/// The elements of a comma-separated field value, trimmed, empty ones skipped.
fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

/// Whether a trailer line is a well-formed field (`token ":" value`, the
/// value printable ASCII or tab): one that is not is refused, as hyper's
/// client refuses it (found by the differential test).
fn field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !name.is_empty()
        && name.iter().all(tchar)
        && value
            .iter()
            .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
}

/// A Content-Length: decimal digits only.
fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// What one step of a body decoder produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Body bytes.
    Data(Bytes),
    /// The buffer holds no more of the body yet.
    NeedMore,
    /// The body has ended.
    Done,
}

/// Decodes `Transfer-Encoding: chunked` from a buffer that fills as bytes
/// arrive; consumes what it decodes, leaves the rest (the next response).
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    left: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data,
    DataEnd,
    Trailers,
    Done,
}

impl Chunked {
    /// The next piece of the body from `buf`.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Malformed> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Step::Done),
                // httparse reads an empty size line as 0, the last chunk.
                ChunkState::Size if buf.starts_with(b"\r\n") || buf.starts_with(b"\n") => {
                    return Err(Malformed("empty chunk size line"));
                }
                ChunkState::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.left = size;
                        self.state = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        return Err(Malformed("chunk size line too long"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::NeedMore),
                    Err(_) => return Err(Malformed("chunk size")),
                },
                ChunkState::Data => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = usize::try_from(self.left)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    self.left -= n as u64;
                    if self.left == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Malformed("chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    // Trailer fields are not passed on; skip to the empty line.
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() > MAX_HEAD {
                            return Err(Malformed("trailer line too long"));
                        }
                        return Ok(Step::NeedMore);
                    };
                    if end > 0 && !field_line(&buf[..end]) {
                        return Err(Malformed("trailer field"));
                    }
                    buf.advance(end + 2);
                    if end == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes(), &Method::GET)
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn requests_carry_a_length_when_the_method_has_a_body() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("api.example"));
        let mut out = Vec::new();
        encode_request(&Method::GET, "/v1/me?x=1", &headers, b"", &mut out);
        assert_eq!(out, b"GET /v1/me?x=1 HTTP/1.1\r\nhost: api.example\r\n\r\n");
        encode_request(&Method::PUT, "/v1/me/player/play", &headers, b"", &mut out);
        assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
        encode_request(&Method::POST, "/p", &headers, b"{}", &mut out);
        assert!(out.ends_with(b"content-length: 2\r\n\r\n{}"));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
        assert_eq!(
            (h.framing, h.reusable, h.size),
            (Framing::Length(2), true, 38)
        );
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, true));
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let h =
            head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive, close\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Length(2), false));
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n");
        assert!(!h.reusable, "HTTP/1.0 closes");
        for s in [204, 304, 100, 103] {
            let h = head(&format!("HTTP/1.1 {s} X\r\ncontent-length: 9\r\n\r\n"));
            assert_eq!(h.framing, Framing::Empty, "{s}");
        }
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            &Method::HEAD,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn bad_heads_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            // Issue 11, finding 1: framing a forwarder could read two ways.
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 7,\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 7\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse_head(bad.as_bytes(), &Method::GET).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le", &Method::GET).map(|h| h.is_some()),
            Ok(false),
            "incomplete"
        );
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert!(parse_head(huge.as_bytes(), &Method::GET).is_err());
        // The same limit when the whole head is already in the buffer.
        let whole = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(
            parse_head(whole.as_bytes(), &Method::GET).map(|h| h.is_some()),
            Err(Malformed("response head too large"))
        );
    }

    fn decode_all(wire: &[u8], feed: usize) -> Result<(Vec<u8>, Vec<u8>), Malformed> {
        let mut d = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.step(&mut buf)? {
                Step::Data(b) => body.extend_from_slice(&b),
                Step::Done => return Ok((body, buf.to_vec())),
                Step::NeedMore if fed < wire.len() => {
                    let n = feed.max(1).min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
                Step::NeedMore => return Err(Malformed("ended early")),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_and_leave_the_next_response() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nx-trailer: 1\r\n\r\nHTTP/1.1";
        for feed in [1, 2, 7, 100] {
            let (body, rest) = decode_all(wire, feed).expect("valid");
            assert_eq!(body, b"hello!");
            assert_eq!(rest, b"HTTP/1.1"[..rest.len()].to_vec());
        }
        assert!(decode_all(b"5\r\nhelloXX0\r\n\r\n", 100).is_err());
        assert!(decode_all(b"zz\r\n", 100).is_err());
        assert!(decode_all(b"\r\n\r\n", 100).is_err(), "empty size line");
        assert!(decode_all(b"5\r\nhello\r\n\r\n0\r\n\r\n", 100).is_err());
    }

    proptest! {
        #[test]
        fn chunked_round_trips(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            feed in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for c in &chunks {
                wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let (body, _) = decode_all(&wire, feed).expect("valid");
            prop_assert_eq!(body, chunks.concat());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_head(&bytes, &Method::GET);
            let _ = decode_all(&bytes, 7);
        }

        #[test]
        fn heads_parse_whatever_the_split(split in 0usize..60) {
            let wire = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
            let split = split.min(wire.len());
            let early = parse_head(&wire[..split], &Method::GET).expect("valid so far");
            prop_assert!(early.is_none() || split >= wire.len() - 2);
            let h = parse_head(wire, &Method::GET).expect("valid").expect("complete");
            prop_assert_eq!(h.framing, Framing::Length(2));
            prop_assert_eq!(h.size, wire.len() - 2);
        }
    }
}
