//! Just enough of a Server-Sent Events reader to follow a reply stream:
//! bytes in as they arrive, complete events out.
//!
//! Lines end with `\n` or `\r\n` (what the server writes; a lone `\r` is
//! not treated as a line end). Comment lines (`:`, the keep-alives) and the
//! `id` and `retry` fields are skipped: the bench never reconnects.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field; `None` for the default type, `message`.
    pub(crate) event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub(crate) data: String,
}

/// Splits a byte stream into events; keeps the unfinished line and event
/// between chunks.
#[derive(Debug, Default)]
pub(crate) struct SseReader {
    pending: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseReader {
    /// Takes the next chunk of the body and returns the events it
    /// completes, in order.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            let line = self.pending[start..end]
                .strip_suffix(b"\r")
                .unwrap_or(&self.pending[start..end]);
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.pending.drain(..start);
        events
    }

    /// Applies one line; a blank line dispatches the event gathered so far.
    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            // An event without data is not dispatched (as in browsers).
            return self.data.take().map(|data| SseEvent { event, data });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: text.to_owned(),
        }
    }

    #[test]
    fn events_split_across_chunks_come_out_whole() {
        let mut reader = SseReader::default();
        assert_eq!(reader.push(b"id: 1\ndata: {\"seq\":1,"), []);
        assert_eq!(
            reader.push(b"\"delta\":\"Hi\"}\n\nid: 2\r\ndata: {\"seq\":2}\r\n\r\n"),
            [data(r#"{"seq":1,"delta":"Hi"}"#), data(r#"{"seq":2}"#)]
        );
    }

    #[test]
    fn keep_alives_are_skipped_and_named_events_keep_their_type() {
        let mut reader = SseReader::default();
        let events = reader.push(b":\n\nevent: error\ndata: {\"code\":14}\n\ndata:a\ndata:b\n\n");
        assert_eq!(
            events,
            [
                SseEvent {
                    event: Some("error".to_owned()),
                    data: r#"{"code":14}"#.to_owned()
                },
                data("a\nb"),
            ]
        );
    }
}
