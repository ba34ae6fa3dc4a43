//! HTTP/1.x spoken by hand over a TCP stream, to send requests exactly as device clients
//! write them (header casing, HTTP/1.0) and to see exactly what goes over the wire.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::TestApp;

/// Bounds every read so that a server that stops answering fails the test instead of hanging it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.x connection spoken by hand, to see exactly what goes over the wire.
pub struct RawConnection {
    stream: TcpStream,
    buffered: Vec<u8>,
}

pub struct RawResponse {
    /// The status line and headers, for failure messages.
    pub head: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let first = values.next();
        assert!(values.next().is_none(), "header {name} appears more than once:\n{}", self.head);
        first
    }
}

impl RawConnection {
    pub async fn open(app: &TestApp) -> RawConnection {
        RawConnection::from_stream(TcpStream::connect(app.addr).await.expect("connect"))
    }

    /// A connection opened by the caller (from an address of its choosing).
    pub fn from_stream(stream: TcpStream) -> RawConnection {
        RawConnection { stream, buffered: Vec::new() }
    }

    pub async fn send(&mut self, request: &str) {
        self.send_bytes(request.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, request: &[u8]) {
        self.stream.write_all(request).await.expect("send the request");
    }

    /// Reads more bytes; returns how many (0 at the end of the stream).
    pub async fn fill(&mut self) -> usize {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("the server answers")
            .expect("read from the connection");
        self.buffered.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one response. Bodies are delimited by Content-Length or, without one, by the
    /// end of the connection; a chunked body fails the test (the contract is never to chunk).
    pub async fn response(&mut self, to_head_request: bool) -> RawResponse {
        let head_end = loop {
            if let Some(position) = self.buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break position;
            }
            assert!(self.fill().await > 0, "the connection closed before a complete response head");
        };
        let head = String::from_utf8(self.buffered[..head_end].to_vec()).expect("the response head is text");
        self.buffered.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 =
            status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("bad header line {line:?}"));
                (name.trim().to_string(), value.trim().to_string())
            })
            .collect();
        let mut response = RawResponse { head, status, headers, body: Vec::new() };
        if to_head_request || status == 304 || status == 204 || (100..200).contains(&status) {
            return response;
        }
        assert_eq!(response.header("transfer-encoding"), None, "a chunked response:\n{}", response.head);
        match response.header("content-length") {
            Some(length) => {
                let length: usize = length.parse().expect("a numeric Content-Length");
                while self.buffered.len() < length {
                    assert!(self.fill().await > 0, "the connection closed after {} of {length} body bytes", self.buffered.len());
                }
                response.body = self.buffered.drain(..length).collect();
            }
            None => {
                while self.fill().await > 0 {}
                response.body = std::mem::take(&mut self.buffered);
            }
        }
        response
    }

    /// True when the server closes the connection (rather than sending more or keeping it
    /// open for a few seconds).
    pub async fn closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => self.buffered.is_empty(),
            Ok(Ok(_)) | Err(_) => false,
        }
    }
}

/// Sends one request on a new connection and reads the answer.
pub async fn exchange(app: &TestApp, request: &str) -> RawResponse {
    let mut connection = RawConnection::open(app).await;
    connection.send(request).await;
    connection.response(request.starts_with("HEAD ")).await
}
