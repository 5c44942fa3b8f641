//! The guest's stdout and stderr: captured into one bounded buffer, never the
//! host's terminal. Writing past `max_output_kib` fails the write and marks
//! the call as having hit the output limit.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

/// A shared, capped capture of stdout + stderr.
#[derive(Debug, Clone)]
pub(crate) struct Capture(Arc<Mutex<Buffer>>);

impl Capture {
    pub(crate) fn new(cap: usize) -> Self {
        Self(Arc::new(Mutex::new(Buffer {
            bytes: Vec::new(),
            cap,
            overflowed: false,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends; false (and marks overflow) when the cap would be passed.
    fn push(&self, data: &[u8]) -> bool {
        let mut b = self.lock();
        if b.bytes.len() + data.len() > b.cap {
            b.overflowed = true;
            return false;
        }
        b.bytes.extend_from_slice(data);
        true
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// The captured text (lossy UTF-8).
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

fn overflow_error() -> std::io::Error {
    std::io::Error::other("output limit reached")
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(if self.push(buf) {
            Ok(buf.len())
        } else {
            Err(overflow_error())
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.push(&bytes) {
            Ok(())
        } else {
            Err(StreamError::LastOperationFailed(overflow_error().into()))
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.overflowed() {
            return Err(StreamError::Closed);
        }
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_refuses_writes_past_the_cap() {
        let mut c = Capture::new(8);
        assert!(c.write(Bytes::from_static(b"12345")).is_ok());
        assert!(c.write(Bytes::from_static(b"6789")).is_err());
        assert!(c.overflowed());
        assert_eq!(c.text(), "12345");
        assert!(matches!(c.check_write(), Err(StreamError::Closed)));
    }
}
