//! The lines of a streamed NDJSON response (`application/x-ndjson`), read
//! one JSON value at a time as they arrive.

use futures::StreamExt as _;
use futures::stream::BoxStream;
use serde_json::Value;

/// The lines of an NDJSON response.
pub struct NdJson {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
}

impl NdJson {
    /// Reads `response`'s body as NDJSON.
    pub fn new(response: reqwest::Response) -> NdJson {
        NdJson {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
        }
    }

    /// The next line's value (blank lines are skipped); `None` when the
    /// response ended cleanly.
    ///
    /// # Panics
    ///
    /// If the connection is cut (a body error), a line is not JSON, or the
    /// response ends inside a line.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(&line).unwrap_or_else(|error| {
                    panic!(
                        "an NDJSON line: {error}: {}",
                        String::from_utf8_lossy(&line)
                    )
                }));
            }
            match self.body.next().await {
                Some(chunk) => self
                    .buffer
                    .extend_from_slice(&chunk.expect("the stream is ended, not cut")),
                None => {
                    assert!(self.buffer.is_empty(), "a partial line was left");
                    return None;
                }
            }
        }
    }
}
