//! An incremental Server-Sent Events parser: bytes in, in any chunking; events out.
//! Lines end in `\n`, `\r\n` or `\r`; comment lines (`:`) are skipped; several
//! `data:` lines join with `\n`; a blank line dispatches the event.

use std::borrow::Cow;

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

/// Largest buffer kept from one event to the next, so an idle stream holds little.
const MAX_RETAINED_BYTES: usize = 4096;

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
        self.push_borrowed(bytes, |event| on_event(std::mem::take(event)));
    }

    /// Feeds `bytes` like [`SseParser::push`], but lends each event instead of
    /// giving it away, so the event's buffers are reused for the next one.
    pub(crate) fn push_borrowed(
        &mut self,
        mut bytes: &[u8],
        mut on_event: impl FnMut(&mut SseEvent),
    ) {
        while let Some(&first) = bytes.first() {
            if self.after_cr && first == b'\n' {
                // The `\n` of a `\r\n` split across pushes or lines.
                self.after_cr = false;
                bytes = &bytes[1..];
                continue;
            }
            self.after_cr = false;
            let Some(at) = find_line_end(bytes) else {
                let run = self.within_limit(bytes);
                self.line.extend_from_slice(run);
                return;
            };
            self.after_cr = bytes[at] == b'\r';
            if self.line.is_empty() {
                // The whole line is in this piece: read it where it is.
                let line = self.within_limit(&bytes[..at]);
                self.end_line(line, &mut on_event);
            } else {
                let run = self.within_limit(&bytes[..at]);
                self.line.extend_from_slice(run);
                let line = std::mem::take(&mut self.line);
                self.end_line(&line, &mut on_event);
                self.line = line;
                self.line.clear();
            }
            bytes = &bytes[at + 1..];
        }
    }

    /// The part of `run` (bytes without line endings, to add to the current line)
    /// that fits in the event size limit; the rest marks the event overflowed.
    fn within_limit<'a>(&mut self, run: &'a [u8]) -> &'a [u8] {
        let room = MAX_EVENT_BYTES.saturating_sub(self.line.len() + self.event.data.len());
        if run.len() > room {
            self.overflowed = true;
        }
        &run[..run.len().min(room)]
    }

    /// Handles one complete line (without its ending).
    fn end_line(&mut self, line: &[u8], on_event: &mut impl FnMut(&mut SseEvent)) {
        if line.is_empty() {
            let has_data = std::mem::replace(&mut self.has_data, false);
            if std::mem::replace(&mut self.overflowed, false) {
                self.overflows += 1;
            } else if has_data {
                on_event(&mut self.event);
            }
            // Buffers are kept for the next event, unless an unusually large one
            // grew them.
            for buffer in [&mut self.event.event, &mut self.event.data] {
                if buffer.capacity() > MAX_RETAINED_BYTES {
                    *buffer = String::new();
                } else {
                    buffer.clear();
                }
            }
            if self.line.capacity() > MAX_RETAINED_BYTES {
                self.line = Vec::new();
            }
            return;
        }
        if line.first() != Some(&b':') {
            // `from_utf8` first: it is much faster on valid text than the lossy
            // conversion, which gives the same answer for it.
            let text = match std::str::from_utf8(line) {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(line),
            };
            let (field, value) = match text.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (text.as_ref(), ""),
            };
            match field {
                "event" => {
                    self.event.event.clear();
                    self.event.event.push_str(value);
                }
                "data" => {
                    if self.has_data {
                        self.event.data.push('\n');
                    }
                    self.event.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
    }
}

/// The index of the first `\n` or `\r` in `bytes`.
pub(crate) fn find_line_end(bytes: &[u8]) -> Option<usize> {
    memchr::memchr2(b'\n', b'\r', bytes)
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
    fn line_ends_are_found_at_every_offset() {
        for len in 0..24 {
            for at in 0..=len {
                for (end, other) in [(b'\n', b'\r'), (b'\r', b'\n')] {
                    let mut bytes: Vec<u8> =
                        (0..len).map(|i| [b'a', 0x8a, 0x8d, 0x0b][i % 4]).collect();
                    let expected = (at < len).then(|| {
                        bytes[at] = end;
                        bytes[at + 1..].iter_mut().for_each(|b| *b = other);
                        at
                    });
                    assert_eq!(find_line_end(&bytes), expected, "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn buffers_of_a_large_event_are_not_kept() {
        let mut parser = SseParser::new();
        let mut sizes = Vec::new();
        let big = format!("data: {}\n\n", "x".repeat(3 * MAX_RETAINED_BYTES));
        for piece in big.as_bytes().chunks(1000) {
            parser.push_borrowed(piece, |e| sizes.push(e.data.len()));
        }
        parser.push_borrowed(b"data: small\n\n", |e| sizes.push(e.data.len()));
        assert_eq!(sizes, [3 * MAX_RETAINED_BYTES, 5]);
        assert!(parser.line.capacity() <= MAX_RETAINED_BYTES);
        assert!(parser.event.data.capacity() <= MAX_RETAINED_BYTES);
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
