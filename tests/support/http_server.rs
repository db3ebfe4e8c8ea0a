//! A small HTTP/1.1 server for the simulators: plain or TLS on 127.0.0.1, port 0.
//!
//! One thread per connection, keep-alive, `Content-Length` and chunked request bodies. A handler sees
//! each [`HttpRequest`] and answers through [`Responder`]: a whole response, a chunked stream written
//! as it goes (watches, long-polls), or a dropped connection (fault injection). Stopped on drop.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest request body accepted (64 MiB); larger ones get 413.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// A parsed request.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    pub method: String,
    /// The path without the query string, percent-decoding not applied.
    pub path: String,
    /// The raw query string (without `?`), empty when absent.
    pub query: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
    /// DER of the client certificate, when one was presented over TLS.
    pub client_cert: Option<Vec<u8>>,
}

impl HttpRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The bearer token from `Authorization`, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
    }

    /// Query parameters, percent-decoded (`+` as space).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Decodes `%XX` escapes and `+`.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A whole response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with a body and content type.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(status, "application/json", value.to_string())
    }

    /// An empty response.
    pub fn empty(status: u16) -> Self {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The connection, as a handler may use it.
pub struct Responder<'a> {
    stream: &'a mut dyn Write,
    done: bool,
    close: bool,
}

/// A chunked response being written.
pub struct ChunkedWriter<'a, 'b> {
    responder: &'b mut Responder<'a>,
}

impl ChunkedWriter<'_, '_> {
    /// Sends one chunk and flushes it. An error means the client went away.
    pub fn write_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        write!(self.responder.stream, "{:x}\r\n", data.len())?;
        self.responder.stream.write_all(data)?;
        self.responder.stream.write_all(b"\r\n")?;
        self.responder.stream.flush()
    }

    /// Ends the body properly.
    pub fn finish(self) -> io::Result<()> {
        self.responder.stream.write_all(b"0\r\n\r\n")?;
        self.responder.stream.flush()
    }

    /// Cuts the connection mid-body (a dropped watch).
    pub fn abort(self) {
        self.responder.close = true;
    }
}

impl<'a> Responder<'a> {
    /// Sends a whole response.
    pub fn respond(&mut self, response: HttpResponse) -> io::Result<()> {
        self.done = true;
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            response.status,
            reason(response.status)
        );
        for (k, v) in &response.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", response.body.len()));
        self.stream.write_all(head.as_bytes())?;
        self.stream.write_all(&response.body)?;
        self.stream.flush()
    }

    /// Starts a chunked response; write chunks, then `finish` or `abort`.
    pub fn stream<'b>(
        &'b mut self,
        status: u16,
        headers: &[(&str, &str)],
    ) -> io::Result<ChunkedWriter<'a, 'b>> {
        self.done = true;
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        self.stream.write_all(head.as_bytes())?;
        self.stream.flush()?;
        Ok(ChunkedWriter { responder: self })
    }

    /// Closes the connection without answering (fault injection).
    pub fn drop_connection(&mut self) {
        self.done = true;
        self.close = true;
    }
}

/// What a handler is.
pub type Handler = Arc<dyn Fn(&HttpRequest, &mut Responder<'_>) + Send + Sync>;

/// A running server.
pub struct TestServer {
    addr: SocketAddr,
    tls: bool,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl TestServer {
    /// Starts serving plain HTTP on 127.0.0.1, port 0.
    pub fn start(handler: Handler) -> TestServer {
        Self::start_inner(handler, None)
    }

    /// Starts serving HTTPS with `config`.
    pub fn start_tls(handler: Handler, config: Arc<rustls::ServerConfig>) -> TestServer {
        Self::start_inner(handler, Some(config))
    }

    fn start_inner(handler: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let is_tls = tls.is_some();
        {
            let stop = stop.clone();
            let connections = connections.clone();
            std::thread::Builder::new()
                .name(format!("test-server-{}", addr.port()))
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        if let Ok(clone) = stream.try_clone() {
                            connections.lock().expect("connections").push(clone);
                        }
                        let handler = handler.clone();
                        let tls = tls.clone();
                        let _ = std::thread::Builder::new()
                            .name("test-conn".into())
                            .spawn(move || serve_connection(stream, tls, handler));
                    }
                })
                .expect("spawn accept thread");
        }
        TestServer {
            addr,
            tls: is_tls,
            stop,
            connections,
        }
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if self.tls { "https" } else { "http" },
            self.addr.port()
        )
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every open connection (simulates a server restart or network drop).
    pub fn drop_all_connections(&self) {
        for c in self.connections.lock().expect("connections").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        self.drop_all_connections();
    }
}

fn serve_connection(stream: TcpStream, tls: Option<Arc<rustls::ServerConfig>>, handler: Handler) {
    let _ = stream.set_nodelay(true);
    let peer = match stream.peer_addr() {
        Ok(p) => p,
        Err(_) => return,
    };
    // The accept loop keeps a clone of every stream (for `drop_all_connections`), so dropping ours
    // would not close the socket: shut it down when serving ends (a dropped call, a cut watch).
    let closer = stream.try_clone();
    serve_stream(stream, peer, tls, &handler);
    if let Ok(c) = closer {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
}

fn serve_stream(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: &Handler,
) {
    match tls {
        None => {
            let Ok(read_half) = stream.try_clone() else {
                return;
            };
            let mut reader = BufReader::new(read_half);
            let mut writer = stream;
            serve_requests(&mut reader, &mut writer, peer, None, handler);
        }
        Some(config) => {
            let Ok(conn) = rustls::ServerConnection::new(config) else {
                return;
            };
            let mut tls_stream = rustls::StreamOwned::new(conn, stream);
            // Complete the handshake to learn the client certificate.
            while tls_stream.conn.is_handshaking() {
                if tls_stream.conn.complete_io(&mut tls_stream.sock).is_err() {
                    return;
                }
            }
            let client_cert = tls_stream
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            let shared = SharedTls(Arc::new(Mutex::new(tls_stream)));
            let mut reader = BufReader::new(shared.clone());
            let mut writer = shared;
            serve_requests(&mut reader, &mut writer, peer, client_cert, handler);
        }
    }
}

/// A TLS stream used for both reading and writing from one thread.
#[derive(Clone)]
struct SharedTls(Arc<Mutex<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>>);

impl Read for SharedTls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.lock().expect("tls lock").read(buf)
    }
}

impl Write for SharedTls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("tls lock").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().expect("tls lock").flush()
    }
}

fn serve_requests(
    reader: &mut dyn BufRead,
    writer: &mut dyn Write,
    peer: SocketAddr,
    client_cert: Option<Vec<u8>>,
    handler: &Handler,
) {
    loop {
        let request = match read_request(reader, peer, client_cert.clone()) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(status) => {
                let mut responder = Responder {
                    stream: writer,
                    done: false,
                    close: true,
                };
                let _ = responder.respond(HttpResponse::new(status, "text/plain", reason(status)));
                return;
            }
        };
        let wants_close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut responder = Responder {
            stream: writer,
            done: false,
            close: false,
        };
        handler(&request, &mut responder);
        if !responder.done {
            let _ = responder.respond(HttpResponse::new(
                500,
                "text/plain",
                "handler did not answer",
            ));
        }
        if responder.close || wants_close {
            return;
        }
    }
}

/// Reads one request; `Ok(None)` at a clean end of the connection, `Err(status)` for bad input.
fn read_request(
    reader: &mut dyn BufRead,
    peer: SocketAddr,
    client_cert: Option<Vec<u8>>,
) -> Result<Option<HttpRequest>, u16> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => return Ok(None),
        Ok(_) => {}
    }
    let line = line.trim_end();
    if line.is_empty() {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let Some((k, v)) = h.split_once(':') else {
            return Err(400);
        };
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        if headers.len() > 200 {
            return Err(431);
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(reader)?
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(|_| 400u16)?;
        if len > MAX_BODY {
            return Err(413);
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).map_err(|_| 400u16)?;
        body
    } else {
        Vec::new()
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    Ok(Some(HttpRequest {
        method: method.to_string(),
        path,
        query,
        headers,
        body,
        peer,
        client_cert,
    }))
}

fn read_chunked(reader: &mut dyn BufRead) -> Result<Vec<u8>, u16> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line).map_err(|_| 400u16)?;
        let size_hex = size_line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| 400u16)?;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let mut t = String::new();
                reader.read_line(&mut t).map_err(|_| 400u16)?;
                if t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(413);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).map_err(|_| 400u16)?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).map_err(|_| 400u16)?;
    }
}

/// The standard reason phrase.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        423 => "Locked",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
