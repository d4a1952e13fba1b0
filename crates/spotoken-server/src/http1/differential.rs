//! Our framing of upstream responses, checked against hyper's HTTP/1 client
//! on the same bytes: wherever we accept a response, hyper must accept it
//! too with the same status and body; wherever hyper refuses one, so must
//! we. (We may refuse more: a response two parsers could read differently
//! is refused.) Used by the property test below and by the fuzz target
//! `fuzz/fuzz_targets/upstream_differential.rs`.

use axum::http::{Method, StatusCode};
use bytes::BytesMut;

use super::{Chunked, Framing, Step, parse_head};

/// What a client made of a response: status and body, or a refusal.
pub(crate) type Reading = Result<(StatusCode, Vec<u8>), String>;

/// Our reading of `wire` as the answer to a GET, the connection closing
/// after the last byte: heads of 1xx answers skipped, the body framed as
/// [`parse_head`] says.
pub(crate) fn ours(wire: &[u8]) -> Reading {
    let mut buf = BytesMut::from(wire);
    let head = loop {
        match parse_head(&buf, &Method::GET) {
            Ok(Some(h)) => {
                let _ = buf.split_to(h.size);
                if h.status.is_informational() {
                    continue;
                }
                break h;
            }
            Ok(None) => return Err("incomplete head".into()),
            Err(e) => return Err(e.to_string()),
        }
    };
    let body = match head.framing {
        Framing::Empty => Vec::new(),
        Framing::Length(n) => {
            let n = usize::try_from(n).map_err(|_| "length".to_owned())?;
            if buf.len() < n {
                return Err("closed mid-body".into());
            }
            buf[..n].to_vec()
        }
        Framing::UntilClose => buf.to_vec(),
        Framing::Chunked => {
            let mut d = Chunked::default();
            let mut body = Vec::new();
            loop {
                match d.step(&mut buf).map_err(|e| e.to_string())? {
                    Step::Data(b) => body.extend_from_slice(&b),
                    Step::Done => break body,
                    Step::NeedMore => return Err("closed mid-body".into()),
                }
            }
        }
    };
    Ok((head.status, body))
}

/// hyper's reading of the same bytes, through its client connection over
/// an in-memory pipe.
pub(crate) async fn hypers(wire: &[u8]) -> Reading {
    use http_body_util::BodyExt as _;
    use tokio::io::AsyncWriteExt as _;
    let (client, mut server) = tokio::io::duplex(wire.len() + 4096);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let req = axum::http::Request::get("/")
        .header("host", "upstream.test")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let answer = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, body.to_bytes().to_vec()))
    };
    let feed = async {
        // Answer once the request is in, as a server would: a client
        // closes a connection that speaks (or ends) before it asked.
        let mut asked = Vec::new();
        let mut buf = [0u8; 1024];
        while !asked.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::io::AsyncReadExt::read(&mut server, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => asked.extend_from_slice(&buf[..n]),
            }
        }
        let _ = server.write_all(wire).await;
        let _ = server.shutdown().await;
        // Keep our end open until hyper has read all it wants.
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut server, &mut sink).await;
    };
    let (answer, ()) = tokio::join!(answer, feed);
    driver.abort();
    answer
}

/// `Ok` when the two readings agree as described in the module docs, else
/// what differs.
pub(crate) fn agree(ours: &Reading, hypers: &Reading) -> Result<(), String> {
    match (ours, hypers) {
        (Err(_), _) => Ok(()),
        (Ok(o), Ok(h)) if o == h => Ok(()),
        (Ok(o), h) => Err(format!(
            "we read {} with {} body bytes, hyper read {:?}",
            o.0,
            o.1.len(),
            h.as_ref().map(|(s, b)| (s, b.len()))
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn check(wire: &[u8]) -> Result<(), String> {
        let o = ours(wire);
        let h = runtime().block_on(hypers(wire));
        agree(&o, &h).map_err(|e| format!("{e}\n{:?}", String::from_utf8_lossy(wire)))
    }

    #[test]
    fn known_cases_agree() {
        for wire in [
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\nuntil close",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n1234567",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;a=b\r\nx\r\n0\r\nt: 1\r\n\r\n",
            "HTTP/1.0 200 OK\r\n\r\nold",
        ] {
            check(wire.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Pieces responses are made of, valid and not.
    fn status_line() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("HTTP/1.1 200 OK\r\n".to_owned()),
            Just("HTTP/1.1 404 Not Found\r\n".to_owned()),
            Just("HTTP/1.0 200 OK\r\n".to_owned()),
            Just("HTTP/1.1 204 No Content\r\n".to_owned()),
            Just("HTTP/1.1 304 Not Modified\r\n".to_owned()),
            Just("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n".to_owned()),
            Just("HTTP/1.1 101 Switching Protocols\r\n".to_owned()),
            Just("HTTP/1.1 2000 OK\r\n".to_owned()),
            Just("HTTP/1.1 200\r\n".to_owned()),
        ]
    }

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u32..40).prop_map(|n| format!("content-length: {n}\r\n")),
            Just("content-length: 3, 3\r\n".to_owned()),
            Just("content-length: 3,\r\n".to_owned()),
            Just("content-length: +3\r\n".to_owned()),
            Just("content-length: 0x3\r\n".to_owned()),
            Just("content-length:\r\n".to_owned()),
            Just("transfer-encoding: chunked\r\n".to_owned()),
            Just("transfer-encoding: gzip\r\n".to_owned()),
            Just("transfer-encoding: chunked, gzip\r\n".to_owned()),
            Just("transfer-encoding: gzip, chunked\r\n".to_owned()),
            Just("Transfer-Encoding: CHUNKED\r\n".to_owned()),
            Just("connection: close\r\n".to_owned()),
            Just("connection: keep-alive\r\n".to_owned()),
            Just("content-type: application/json\r\n".to_owned()),
            Just("x-folded: a\r\n b\r\n".to_owned()),
            Just("bad header\r\n".to_owned()),
            Just("content-length : 3\r\n".to_owned()),
        ]
    }

    fn body() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z{}]{0,40}",
            Just("3\r\nabc\r\n0\r\n\r\n".to_owned()),
            Just("3\r\nabc\r\n0\r\n".to_owned()),
            Just("3;x=y\r\nabc\r\n0\r\n\r\n".to_owned()),
            Just("3\r\nabcd\r\n0\r\n\r\n".to_owned()),
            Just("\r\n\r\n".to_owned()),
            Just("ffffffffffffffffff\r\nx\r\n".to_owned()),
            Just("3\r\nabc\r\n0\r\ntrailer: 1\r\n\r\n".to_owned()),
            Just("3 \r\nabc\r\n0\r\n\r\n".to_owned()),
            Just("-1\r\nabc\r\n0\r\n\r\n".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Whatever the response, our reading never differs from hyper's
        /// where we accept it.
        #[test]
        fn our_framing_matches_hypers_wherever_we_accept(
            status in status_line(),
            fields in proptest::collection::vec(field(), 0..4),
            body in body(),
            cut in proptest::option::of(0usize..200),
            flip in proptest::option::of((0usize..200, any::<u8>())),
        ) {
            let mut wire = format!("{status}{}\r\n{body}", fields.concat()).into_bytes();
            if let Some((at, byte)) = flip {
                let at = at % wire.len().max(1);
                if let Some(b) = wire.get_mut(at) {
                    *b = byte;
                }
            }
            if let Some(cut) = cut {
                wire.truncate(cut);
            }
            prop_assert!(check(&wire).is_ok(), "{}", check(&wire).unwrap_err());
        }
    }
}
