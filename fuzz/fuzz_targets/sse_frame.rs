//! What producers control on the SSE wire: a record's value (`put_data`) and
//! its event-type header (`sanitize_event_type`). The value's lines are all
//! `data: ` lines, never hold a CR, hold a NUL only inside a UTF-8 value, and
//! a WHATWG event-stream parser gets the value back byte for byte (after the
//! `base64:` convention); the event type never holds a control character nor
//! takes herald's `herald.` namespace. A whole frame (`id:`, `event:`, data,
//! blank line) parses to exactly one event with that id, type and value.
//!
//! Input: `n: u8`, then `n` bytes of event-type header, then the value.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{BufMut, BytesMut};
use herald::cursor::Cursor;
use herald::sse::{
    id_line, needs_base64, put_data, sanitize_event_type, BASE64_MARKER, RESERVED_EVENT_PREFIX,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
struct Event {
    event_type: String,
    data: String,
    last_event_id: String,
}

/// The event-stream interpretation of the HTML standard (§9.2.6), complete
/// for what herald writes: CR, LF and CRLF end lines, comments, one optional
/// space after the colon, `id` with a NUL ignored, unterminated events dropped.
fn parse_event_stream(stream: &str) -> Vec<Event> {
    let stream = stream.strip_prefix('\u{feff}').unwrap_or(stream);
    let mut events = Vec::new();
    let (mut data, mut event_type, mut last_event_id) =
        (String::new(), String::new(), String::new());
    let mut rest = stream;
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                events.push(Event {
                    event_type: if event_type.is_empty() {
                        "message".into()
                    } else {
                        event_type.clone()
                    },
                    data: std::mem::take(&mut data),
                    last_event_id: last_event_id.clone(),
                });
            }
            data.clear();
            event_type.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event_type = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => last_event_id = value.to_owned(),
            _ => {}
        }
    }
    events
}

/// The value a client gets from an event's data.
fn client_value(data: &str) -> Vec<u8> {
    match data.strip_prefix(std::str::from_utf8(BASE64_MARKER).unwrap()) {
        Some(b64) => STANDARD
            .decode(b64)
            .expect("base64: data is not standard base64"),
        None => data.as_bytes().to_vec(),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let (raw_type, value) = rest.split_at(usize::from(n).min(rest.len()));

    let event_type = sanitize_event_type(raw_type);
    if let Some(t) = &event_type {
        assert!(!t.is_empty());
        assert!(!t.chars().any(char::is_control), "control char in {t:?}");
        assert!(!t.starts_with(RESERVED_EVENT_PREFIX), "reserved type {t:?}");
        assert_eq!(t.trim(), t);
    }

    let mut out = BytesMut::new();
    put_data(&mut out, value);
    let text = std::str::from_utf8(&out).expect("data lines are not UTF-8");
    assert!(!text.contains('\r'), "CR in {text:?}");
    if value.is_empty() {
        assert!(text.is_empty());
    } else {
        let lines = text.strip_suffix('\n').expect("data does not end a line");
        for line in lines.split('\n') {
            assert!(line.starts_with("data: "), "not a data line: {line:?}");
        }
    }
    if text.contains('\0') {
        assert!(!needs_base64(value) && std::str::from_utf8(value).is_ok());
    }

    // The whole frame as a connection sends it.
    let mut cursor = String::new();
    Cursor::encode_into(u32::from(n), [value.len() as i64, 7], &mut cursor);
    let mut frame = BytesMut::new();
    frame.put_slice(&id_line(&cursor));
    if let Some(t) = &event_type {
        frame.put_slice(b"event: ");
        frame.put_slice(t.as_bytes());
        frame.put_u8(b'\n');
    }
    frame.put_slice(&out);
    frame.put_u8(b'\n');
    let frame = std::str::from_utf8(&frame).expect("frame is not UTF-8");
    let events = parse_event_stream(frame);
    if value.is_empty() {
        assert!(events.is_empty(), "an empty value fired {events:?}");
        return;
    }
    assert_eq!(events.len(), 1, "{frame:?} parsed to {events:?}");
    let event = &events[0];
    assert_eq!(event.last_event_id, cursor);
    assert_eq!(event.event_type, event_type.as_deref().unwrap_or("message"));
    assert_eq!(client_value(&event.data), value, "{frame:?}");
});
