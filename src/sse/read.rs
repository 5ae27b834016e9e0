//! Reading the event-stream format, as a client does: the one reader of the
//! wire that the test harness, the load generator and this module's own
//! round-trip tests share. The node never reads SSE; it only writes it.
//!
//! [`LineReader`] follows the WHATWG parsing rules at the line level (a line
//! ends at LF, CR LF or a lone CR, even across reads; the first space after
//! a field's colon is not part of its value) and hands out borrowed lines,
//! so that a load generator holding thousands of streams allocates nothing
//! per line. [`EventReader`] builds whole events from them.

/// One line of an event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A blank line: the end of an event.
    Dispatch,
    /// `:` and what follows it.
    Comment(&'a [u8]),
    /// A field name and its value.
    Field(&'a [u8], &'a [u8]),
}

/// Splits a byte stream into [`Line`]s, carrying partial lines across reads.
#[derive(Debug, Default)]
pub struct LineReader {
    partial: Vec<u8>,
    /// The last read ended with a CR: an LF at the start of the next one
    /// belongs to that line end.
    after_cr: bool,
}

impl LineReader {
    /// Feeds the bytes of one read; calls `each` for every line they end.
    pub fn feed(&mut self, mut bytes: &[u8], mut each: impl FnMut(Line<'_>)) {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line = &bytes[..end];
            if self.partial.is_empty() {
                each(parse_line(line));
            } else {
                self.partial.extend_from_slice(line);
                let whole = std::mem::take(&mut self.partial);
                each(parse_line(&whole));
                self.partial = whole;
                self.partial.clear();
            }
            let cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.partial.extend_from_slice(bytes);
    }
}

fn parse_line(line: &[u8]) -> Line<'_> {
    if line.is_empty() {
        return Line::Dispatch;
    }
    if let Some(comment) = line.strip_prefix(b":") {
        return Line::Comment(comment);
    }
    match line.iter().position(|&b| b == b':') {
        Some(colon) => {
            let value = &line[colon + 1..];
            Line::Field(&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => Line::Field(line, b""),
    }
}

/// An event as it was sent: the fields it carried. Unlike a browser, which
/// dispatches only events with data, a reader reports every event that had
/// any field, id-only events included (herald's cursor moves with them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    /// The data lines joined with LF, as EventSource joins them.
    pub data: Option<String>,
    pub retry: Option<u64>,
}

impl Event {
    fn is_empty(&self) -> bool {
        self.id.is_none() && self.event.is_none() && self.data.is_none() && self.retry.is_none()
    }
}

/// What an [`EventReader`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Event(Event),
    Comment,
}

/// Builds events from a byte stream.
#[derive(Debug, Default)]
pub struct EventReader {
    lines: LineReader,
    current: Event,
}

impl EventReader {
    /// Feeds the bytes of one read; returns the events and comments they end.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Read> {
        let mut out = Vec::new();
        let current = &mut self.current;
        self.lines.feed(bytes, |line| match line {
            Line::Dispatch => {
                if !current.is_empty() {
                    out.push(Read::Event(std::mem::take(current)));
                }
            }
            Line::Comment(_) => out.push(Read::Comment),
            Line::Field(name, value) => {
                let text = String::from_utf8_lossy(value);
                match name {
                    b"id" => current.id = Some(text.into_owned()),
                    b"event" => current.event = Some(text.into_owned()),
                    b"data" => match &mut current.data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(&text);
                        }
                        None => current.data = Some(text.into_owned()),
                    },
                    b"retry" => current.retry = text.parse().ok(),
                    _ => {}
                }
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<Read> {
        let mut r = EventReader::default();
        chunks.iter().flat_map(|c| r.feed(c)).collect()
    }

    #[test]
    fn every_line_ending_and_every_split_reads_the_same() {
        let text = b"id: 1\r\ndata: a\rdata:b\n\n: hi\nretry: 5\n\n";
        let whole = events(&[text]);
        assert_eq!(
            whole,
            vec![
                Read::Event(Event {
                    id: Some("1".into()),
                    data: Some("a\nb".into()),
                    ..Event::default()
                }),
                Read::Comment,
                Read::Event(Event {
                    retry: Some(5),
                    ..Event::default()
                }),
            ]
        );
        for cut in 0..text.len() {
            assert_eq!(events(&[&text[..cut], &text[cut..]]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(events(&bytes), whole);
    }
}
