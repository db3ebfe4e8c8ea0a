//! The table harness of the strictness test: a case (method, path, token kind, body, expected status,
//! code, pointer, detail), the check of a response against it, and a raw HTTP/1.1 sender for the
//! methods ureq refuses (terraform's `LOCK`/`UNLOCK`).

use scalr_agent::http::{Request, Response};

pub const JSONAPI: &str = "application/vnd.api+json";

#[derive(Clone, Copy, Debug)]
pub enum Tok {
    None,
    Bogus,
    Pool,
    SessionA,
    SessionB,
    Task,
    Run,
    BasicRun(&'static str),
}

pub struct Case {
    pub name: &'static str,
    pub method: &'static str,
    pub path: String,
    pub token: Tok,
    pub content_type: Option<&'static str>,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: String,
    pub status: u16,
    /// JSON:API error code, or the leading word of a plain-text state backend error.
    pub code: &'static str,
    pub pointer: Option<&'static str>,
    pub detail: &'static str,
}

pub fn case(
    name: &'static str,
    method: &'static str,
    path: String,
    token: Tok,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path,
        token,
        content_type: None,
        headers: Vec::new(),
        body: String::new(),
        status,
        code,
        pointer: None,
        detail: "",
    }
}

impl Case {
    pub fn body(mut self, content_type: &'static str, body: &str) -> Self {
        self.content_type = Some(content_type);
        self.body = body.to_string();
        self
    }
    pub fn pointer(mut self, pointer: &'static str) -> Self {
        self.pointer = Some(pointer);
        self
    }
    pub fn detail(mut self, detail: &'static str) -> Self {
        self.detail = detail;
        self
    }
    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// Sends `request` over a plain socket with `Connection: close` and parses the answer.
pub fn raw(base: &str, request: &Request) -> Response {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let path = request.url.trim_start_matches(base);
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let body = request.body.clone().unwrap_or_default();
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
        request.method
    );
    for (k, v) in &request.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(&body).expect("write body");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read answer");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: answer[split + 4..].to_vec(),
    }
}

pub fn check(c: &Case, response: &Response) -> Result<(), String> {
    if response.status != c.status {
        return Err(format!(
            "status {} instead of {}",
            response.status, c.status
        ));
    }
    if c.path.contains("/state") {
        let text = String::from_utf8_lossy(&response.body);
        if !text.starts_with(c.code) || !text.contains(c.detail) {
            return Err(format!(
                "text {text:?} does not start with {} and name {:?}",
                c.code, c.detail
            ));
        }
        return Ok(());
    }
    if response.header("content-type") != Some(JSONAPI) {
        return Err(format!(
            "content type {:?}",
            response.header("content-type")
        ));
    }
    let body: serde_json::Value =
        serde_json::from_slice(&response.body).map_err(|e| e.to_string())?;
    let error = &body["errors"][0];
    if error["status"].as_str() != Some(c.status.to_string().as_str()) || error["code"] != c.code {
        return Err(format!("error {error} instead of {} {}", c.status, c.code));
    }
    let detail = error["detail"].as_str().unwrap_or_default();
    if detail.is_empty() || !detail.contains(c.detail) {
        return Err(format!("detail {detail:?} does not say {:?}", c.detail));
    }
    if let Some(pointer) = c.pointer
        && error["source"]["pointer"] != pointer
    {
        return Err(format!(
            "pointer {} instead of {pointer}",
            error["source"]["pointer"]
        ));
    }
    if c.status == 405 && response.header("allow").is_none() {
        return Err("405 without Allow".into());
    }
    Ok(())
}
