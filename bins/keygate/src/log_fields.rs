//! How a log line's fields are written: exactly as tracing-subscriber's
//! `DefaultFields` writes them, with a shorter path for the common field when
//! the output has no colours. The request log line has 12 fields, and
//! `DefaultFields` paints each name and `=` with an ANSI style even when the
//! style is empty: about a third of the line's cost (docs/benchmarks.md).
//! Everything else (the message, raw identifiers, log-crate metadata, errors,
//! and every field when colours are on) is left to `DefaultVisitor` itself.

use std::cell::RefCell;
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// The time at the start of a log line, exactly as tracing-subscriber's
/// `SystemTime` writes it (RFC 3339 in UTC with microseconds:
/// `2026-12-02T01:14:46.123456Z`), with the part up to the second kept per
/// thread and made again only when the second changes: working out the date
/// was a fifth of the request line's cost (docs/benchmarks.md).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LogTime;

thread_local! {
    /// The second last written, and its `YYYY-MM-DDTHH:MM:SS.`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for LogTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let Ok(since) = std::time::SystemTime::now().duration_since(UNIX_EPOCH) else {
            // A clock before 1970: tracing-subscriber's own, for its sign.
            return SystemTime.format_time(w);
        };
        let written = SECOND.try_with(|second| {
            let mut second = second.try_borrow_mut().ok()?;
            let (cached, prefix) = &mut *second;
            if *cached != since.as_secs() {
                *prefix = second_prefix(since.as_secs())?;
                *cached = since.as_secs();
            }
            Some(write_time(w, prefix, since))
        });
        match written {
            Ok(Some(result)) => result,
            // Past year 9999, or on a thread being torn down.
            _ => SystemTime.format_time(w),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` of `secs` after the epoch; `None` past year 9999,
/// which tracing-subscriber writes with a sign.
fn second_prefix(secs: u64) -> Option<String> {
    let at = chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)?;
    (chrono::Datelike::year(&at) <= 9999).then(|| at.format("%Y-%m-%dT%H:%M:%S.").to_string())
}

/// `prefix`, then the microseconds of `since` in six digits, then `Z`.
fn write_time(w: &mut impl fmt::Write, prefix: &str, since: Duration) -> fmt::Result {
    let mut micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    w.write_str(prefix)?;
    w.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)?;
    w.write_char('Z')
}

/// The fields of a text log line, as `name=value` (the value's `Debug`, so a
/// string is quoted and escaped), separated by spaces.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PlainFields;

impl<'a> MakeVisitor<Writer<'a>> for PlainFields {
    type Visitor = PlainVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> PlainVisitor<'a> {
        PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }
}

pub(crate) struct PlainVisitor<'a> {
    writer: Writer<'a>,
    /// No field written yet, so the next needs no space before it.
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Whether `DefaultVisitor` would write this field as `name=value` with
    /// empty styles: no colours, and none of the names it treats apart.
    fn plain(&self, name: &str) -> bool {
        !self.writer.has_ansi_escapes()
            && name != "message"
            && !name.starts_with("r#")
            && !name.starts_with("log.")
    }

    /// Writes `name=value` the way `DefaultVisitor` does without colours.
    fn write(&mut self, name: &str, value: &dyn fmt::Debug) {
        self.result = write_field(&mut self.writer, self.is_empty, name, value);
        self.is_empty = false;
    }

    /// Writes `name=` and then `parts` as they are: what the value's `Debug`
    /// would write, already worked out.
    fn write_as_is(&mut self, name: &str, parts: &[&str]) {
        self.result = write_name(&mut self.writer, self.is_empty, name).and_then(|()| {
            parts
                .iter()
                .try_for_each(|part| self.writer.write_str(part))
        });
        self.is_empty = false;
    }

    /// Leaves the field to `DefaultVisitor`.
    fn delegate(&mut self, name: &str, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        // It skips the log crate's metadata (tracing-subscriber's default
        // `tracing-log` feature) and writes every other field.
        if !name.starts_with("log.") {
            self.is_empty = false;
        }
    }
}

fn write_field(
    writer: &mut Writer<'_>,
    first: bool,
    name: &str,
    value: &dyn fmt::Debug,
) -> fmt::Result {
    write_name(writer, first, name)?;
    write!(writer, "{value:?}")
}

fn write_name(writer: &mut Writer<'_>, first: bool, name: &str) -> fmt::Result {
    if !first {
        writer.write_char(' ')?;
    }
    writer.write_str(name)?;
    writer.write_char('=')
}

/// Whether `value`'s `Debug` is `value` itself in quotes: printable ASCII
/// with no `"` or `\`, the only characters a `str`'s `Debug` leaves alone
/// and never escapes (each other character goes through `escape_debug`).
fn quotes_as_is(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if !self.plain(name) {
            self.delegate(name, |v| v.record_str(field, value));
        } else if quotes_as_is(value) {
            // What `Debug` writes, without its walk of every character.
            self.write_as_is(name, &["\"", value, "\""]);
        } else {
            self.write(name, &value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_integer(field, value, itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_integer(field, value, itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record_debug(field, &value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        self.delegate(field.name(), |v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if self.plain(name) {
            self.write(name, value);
        } else {
            self.delegate(name, |v| v.record_debug(field, value));
        }
    }
}

impl PlainVisitor<'_> {
    /// An integer field: `digits` (its `Debug`, which is its `Display`) written
    /// as they are, or `value` left to `DefaultVisitor`.
    fn record_integer(&mut self, field: &Field, value: impl fmt::Debug, digits: &str) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if self.plain(name) {
            self.write_as_is(name, &[digits]);
        } else {
            self.delegate(name, |v| v.record_debug(field, &value));
        }
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::format::DefaultFields;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// An error with a source, its message with an escape in it.
    #[derive(Debug)]
    struct Outer(io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer \u{1b}[31m failure")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn inner() -> io::Error {
        io::Error::other("inner cause")
    }

    /// Every kind of field and name, in events and in spans.
    fn events() {
        let span = tracing::info_span!("request", route = "chat.completions", n = 3_u64);
        let _entered = span.enter();
        tracing::info!(
            target: "keygate::request",
            method = "POST",
            route = "chat.completions",
            status = 200_u16,
            model = "gpt-\"4o\"\nmini \u{1b}[2J",
            attempts = 2_usize,
            latency_us = 1234_u64,
            delta = -5_i64,
            ratio = 0.5_f64,
            whole = 2.0_f64,
            ok = true,
            big = u128::MAX,
            bytes = &b"\x00ab"[..],
            id = ?Some("x"),
            shown = %"display \u{1b}",
            outcome = "complete",
            quote_edges = " ~'!/09:@AZ[`az{}",
            unicode = "caf\u{e9} e\u{301} \u{1f600} \u{200b} \u{7f} \u{a0}",
            every_ascii = (0_u8..0x80).map(char::from).collect::<String>().as_str(),
            lowest = i64::MIN,
            highest = u64::MAX,
            zero = 0_u64,
        );
        tracing::warn!(error = %Outer(inner()), "message with \u{1b}[31m colour and {}", 42);
        let error = Outer(inner());
        tracing::error!(
            error = &error as &(dyn std::error::Error + 'static),
            r#type = "raw",
            "failed"
        );
        tracing::info!(
            log.target = "somewhere",
            log.line = 7_u64,
            after = 1_u64,
            "from the log crate"
        );
        tracing::info!(log.target = "only metadata", first = "after it");
        tracing::info!("only a message");
        tracing::info!(empty = "", message_like = "message");
        tracing::debug!(skipped = 1_u64);
    }

    fn render(plain: bool, ansi: bool) -> String {
        let buffer = Buffer::default();
        let builder = tracing_subscriber::fmt()
            .without_time()
            .with_ansi(ansi)
            .with_writer(buffer.clone());
        if plain {
            let subscriber = builder.fmt_fields(PlainFields).finish();
            tracing::subscriber::with_default(subscriber, events);
        } else {
            let subscriber = builder.fmt_fields(DefaultFields::new()).finish();
            tracing::subscriber::with_default(subscriber, events);
        }
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn times_are_those_of_system_time() {
        // tracing-subscriber's `SystemTime` writes chrono's RFC 3339 with
        // microseconds and `Z`:
        let mut theirs = String::new();
        SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        let parsed = chrono::DateTime::parse_from_rfc3339(&theirs).unwrap();
        let rfc3339 = |at: chrono::DateTime<chrono::FixedOffset>| {
            at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        assert_eq!(rfc3339(parsed), theirs);
        assert_eq!(theirs.len(), 27, "{theirs}");
        // ... and so does `LogTime`, at every kind of instant.
        let instants = [
            Duration::ZERO,
            Duration::new(59, 999_999_999),
            Duration::new(951_782_400, 1_000), // 2000-02-29
            Duration::new(2_147_483_647, 500_000),
            Duration::new(1_796_083_200, 123_456_789),
            Duration::new(253_402_300_799, 999_999_000), // 9999-12-31T23:59:59
        ];
        for since in instants {
            let prefix = second_prefix(since.as_secs()).unwrap();
            let mut ours = String::new();
            write_time(&mut ours, &prefix, since).unwrap();
            let at = chrono::DateTime::from_timestamp(
                i64::try_from(since.as_secs()).unwrap(),
                since.subsec_nanos(),
            )
            .unwrap();
            assert_eq!(ours, rfc3339(at.fixed_offset()), "{since:?}");
        }
        assert_eq!(second_prefix(253_402_300_800), None, "year 10000");
        let mut now = String::new();
        LogTime.format_time(&mut Writer::new(&mut now)).unwrap();
        let parsed = chrono::DateTime::parse_from_rfc3339(&now).unwrap();
        assert_eq!(rfc3339(parsed), now);
        assert!(
            (parsed - chrono::DateTime::parse_from_rfc3339(&theirs).unwrap()).num_seconds() < 60
        );
    }

    #[test]
    fn lines_are_those_of_default_fields() {
        for ansi in [false, true] {
            let default = render(false, ansi);
            let plain = render(true, ansi);
            assert_eq!(plain, default, "ansi {ansi}");
            assert_eq!(default.lines().count(), 7, "{default}");
        }
        let line = render(true, false);
        assert!(
            line.contains(
                r#"keygate::request: method="POST" route="chat.completions" status=200 model="gpt-\"4o\"\nmini \u{1b}[2J""#
            ),
            "{line}"
        );
    }
}
