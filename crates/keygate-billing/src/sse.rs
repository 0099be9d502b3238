//! An incremental Server-Sent Events parser: bytes in, in any chunking; events out.
//! Lines end in `\n`, `\r\n` or `\r`; comment lines (`:`) are skipped; several
//! `data:` lines join with `\n`; a blank line dispatches the event.

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; empty when absent (the default type, "message").
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Parses a stream fed in arbitrary pieces.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous byte was `\r`, so a following `\n` belongs to the same ending.
    after_cr: bool,
    event: SseEvent,
    has_data: bool,
    /// The current line or event outgrew `max_event_bytes`; skipped to its end.
    overflowed: bool,
    overflows: u64,
}

/// Largest event kept; longer ones are skipped (and counted), not buffered.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events skipped because they outgrew [`MAX_EVENT_BYTES`].
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Feeds `bytes`; calls `on_event` for each event they complete.
    pub fn push(&mut self, bytes: &[u8], mut on_event: impl FnMut(SseEvent)) {
        for &byte in bytes {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    self.end_line(&mut on_event);
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() + self.event.data.len() < MAX_EVENT_BYTES {
                        self.line.push(byte);
                    } else {
                        self.overflowed = true;
                    }
                }
            }
        }
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(SseEvent)) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let has_data = std::mem::replace(&mut self.has_data, false);
            if std::mem::replace(&mut self.overflowed, false) {
                self.overflows += 1;
            } else if has_data {
                on_event(event);
            }
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.event.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.event.data.push('\n');
                }
                self.event.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        self.line = line;
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk, |e| out.push(e));
        }
        out
    }

    #[test]
    fn fields_comments_and_line_endings() {
        let text = b": keep-alive\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\ndata: one\ndata: two\n\nevent: x\rdata:three\r\r";
        let events = parse_all(&[text]);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "message_start".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: String::new(),
                    data: "one\ntwo".into()
                },
                SseEvent {
                    event: "x".into(),
                    data: "three".into()
                },
            ]
        );
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        assert!(parse_all(&[b"event: ping\n\n: c\n\n"]).is_empty());
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let events = parse_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(
            events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn oversized_events_are_skipped_and_counted() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 10];
        parser.push(b"data: ", |e| out.push(e));
        parser.push(&big, |e| out.push(e));
        parser.push(b"\n\ndata: ok\n\n", |e| out.push(e));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, "ok");
        assert_eq!(parser.overflows(), 1);
    }
}
