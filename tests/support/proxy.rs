//! An HTTP CONNECT proxy on 127.0.0.1 for tests of `HTTPS_PROXY`/`HTTP_PROXY`: it records each
//! CONNECT target and splices bytes both ways.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// A running CONNECT proxy.
pub struct ConnectProxy {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    /// Starts the proxy.
    pub fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = targets.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = tunnel(client, &seen);
                });
            }
        });
        ConnectProxy { addr, targets }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every CONNECT target seen, in order.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().expect("targets").clone()
    }
}

fn tunnel(client: TcpStream, seen: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        let mut c = client;
        c.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(());
    };
    seen.lock().expect("targets").push(target.to_string());
    let upstream = TcpStream::connect(target)?;
    let mut c = client.try_clone()?;
    c.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")?;
    let mut up_read = upstream.try_clone()?;
    let mut client_write = client.try_clone()?;
    let down = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_read, &mut client_write);
        let _ = client_write.shutdown(std::net::Shutdown::Write);
    });
    // Anything the reader buffered belongs upstream first.
    let mut up_write = upstream;
    let buffered = reader.buffer().to_vec();
    up_write.write_all(&buffered)?;
    let mut rest = reader.into_inner();
    let _ = std::io::copy(&mut rest, &mut up_write);
    let _ = up_write.shutdown(std::net::Shutdown::Write);
    let _ = down.join();
    Ok(())
}
