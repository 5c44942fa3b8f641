//! Loopback HTTP servers for network tests: each counts the connections it
//! accepts, so a test can assert that a denied request never arrived.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub struct Server {
    pub port: u16,
    hits: Arc<AtomicUsize>,
}

impl Server {
    /// Answers every request with `status`, extra `headers` and `body`.
    pub fn start(status: u16, headers: &[(&str, String)], body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let mut head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let response = format!("{head}\r\n{body}");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = read_head(&mut stream);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        Self { port, hits }
    }

    /// A listener that only counts connections and never answers.
    pub fn silent() -> Self {
        Self::start(200, &[], "should never be read")
    }

    pub fn hits(&self) -> usize {
        // Give a (wrongly) allowed connection time to show up.
        std::thread::sleep(Duration::from_millis(50));
        self.hits.load(Ordering::SeqCst)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn read_head(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    Ok(())
}
