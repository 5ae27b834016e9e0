//! What a stream asks for, parsed from `GET /v1/events`'s query string:
//! selectors, a starting point and an output format. Pure, bounded and
//! fuzzed (`fuzz/fuzz_targets/subscribe_request.rs`, `request_head.rs`).
//!
//! Selectors name whole topics (`topic=T`) or single keys (`topic=T/KEY`,
//! the first `/` splits: Kafka topic names cannot hold one). The start is
//! live (the default), `from=earliest`, `since=` a time, or a cursor from
//! `Last-Event-ID` / `lastEventId` (the header wins).

use crate::sse::Format;

/// Where a new stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Live,
    Earliest,
    /// Milliseconds since the epoch.
    Since(i64),
    /// A cursor's text, not decoded yet (that needs the plan's fingerprint).
    Cursor(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Selector {
    pub topic: String,
    /// A Kafka record key (as text), or the whole topic.
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// Sorted, without duplicates.
    pub selectors: Vec<Selector>,
    pub start: Start,
    pub format: Format,
    /// `where=`: a CEL expression records must pass (compiled later).
    pub filter: Option<String>,
    /// `fields=`: the value paths to keep (parsed later).
    pub fields: Option<String>,
    /// Filters the caller's token makes mandatory: (topic, expression),
    /// sorted; set after the token is checked, never from the query.
    pub claims: Vec<(String, String)>,
    /// `snapshot=true`: start with the latest record of every selected key
    /// (table topics).
    pub snapshot: bool,
    /// `conflate=true`: merge queued records to the newest per key.
    pub conflate: bool,
    /// `max-rate=N`: at most N events a second, merged per key.
    pub max_rate: Option<u32>,
    /// `presence=T` or `presence=T/KEY`: a stream of that selector's
    /// presence instead of records (rewritten onto the presence topic).
    pub presence: Option<Selector>,
    /// `cluster=true`: a stream of every node's heartbeats.
    pub cluster: bool,
    /// The token's `sub`, set after the token is checked.
    pub user: Option<String>,
}

/// The largest `max-rate=` a stream may ask for.
pub const MAX_RATE: u32 = 100_000;

/// Limits on what a request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct SelectorLimits {
    pub max_selectors: usize,
    pub max_key_bytes: usize,
}

impl Default for SelectorLimits {
    fn default() -> Self {
        SelectorLimits {
            max_selectors: 64,
            max_key_bytes: 1024,
        }
    }
}

/// Why a request cannot be served: its own fault, said so the caller can fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Kafka's rule for topic names.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Parses the query string. `last_event_id` (the header) wins over the
/// `lastEventId` parameter.
pub fn parse_request(
    query: Option<&str>,
    last_event_id: Option<&str>,
    limits: SelectorLimits,
) -> Result<SubscribeRequest, BadRequest> {
    let mut selectors = Vec::new();
    let mut from = None;
    let mut since = None;
    let mut cursor_param = None;
    let mut format = Format::Plain;
    let (mut filter, mut fields) = (None, None);
    let (mut snapshot, mut conflate, mut max_rate) = (false, false, None);
    let (mut presence, mut cluster) = (None, false);
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "topic" => selectors.push(selector(&value, limits)?),
            "from" => from = Some(parse_from(&value)?),
            "since" => since = Some(Start::Since(parse_time(&value)?)),
            "lastEventId" => cursor_param = Some(value.into_owned()),
            "format" => format = parse_format(&value)?,
            "where" => filter = Some(value.into_owned()).filter(|w| !w.trim().is_empty()),
            "fields" => fields = Some(value.into_owned()).filter(|f| !f.trim().is_empty()),
            "snapshot" => snapshot = parse_flag("snapshot", &value)?,
            "conflate" => conflate = parse_flag("conflate", &value)?,
            "max-rate" => max_rate = Some(parse_rate(&value)?),
            "presence" => presence = Some(selector(&value, limits)?),
            "cluster" => cluster = parse_flag("cluster", &value)?,
            _ => {} // cache busters and polyfill parameters
        }
    }
    if presence.is_some() || cluster {
        if !selectors.is_empty() || (presence.is_some() && cluster) {
            return Err(BadRequest(
                "presence= and cluster= are streams of their own: no topic= beside them, and one of the two".into(),
            ));
        }
    } else if selectors.is_empty() {
        return Err(BadRequest(
            "no selector: add topic=<topic> or topic=<topic>/<key>".into(),
        ));
    }
    selectors.sort();
    selectors.dedup();
    if selectors.len() > limits.max_selectors {
        return Err(BadRequest(format!(
            "{} selectors; the limit is {}",
            selectors.len(),
            limits.max_selectors
        )));
    }
    let cursor = last_event_id
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .or(cursor_param.filter(|c| !c.trim().is_empty()));
    if snapshot && (since.is_some() || from.as_ref().is_some_and(|f| *f != Start::Live)) {
        return Err(BadRequest(
            "snapshot=true starts from the current state: leave out from= and since=".into(),
        ));
    }
    let start = match cursor {
        Some(c) => Start::Cursor(c),
        None => since.or(from).unwrap_or(Start::Live),
    };
    Ok(SubscribeRequest {
        selectors,
        start,
        format,
        filter,
        fields,
        claims: Vec::new(),
        snapshot,
        conflate,
        max_rate,
        presence,
        cluster,
        user: None,
    })
}

fn parse_flag(name: &str, value: &str) -> Result<bool, BadRequest> {
    match value {
        "true" | "1" | "yes" | "" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => Err(BadRequest(format!(
            "{name}=`{other}` is not understood; use {name}=true or {name}=false"
        ))),
    }
}

fn parse_rate(value: &str) -> Result<u32, BadRequest> {
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_RATE).contains(&n) => Ok(n),
        _ => Err(BadRequest(format!(
            "max-rate=`{value}` must be a whole number of events a second, 1 to {MAX_RATE}"
        ))),
    }
}

/// `T` or `T/KEY`.
pub fn selector(value: &str, limits: SelectorLimits) -> Result<Selector, BadRequest> {
    let (topic, key) = match value.split_once('/') {
        Some((t, k)) => (t, Some(k)),
        None => (value, None),
    };
    if !valid_topic_name(topic) {
        return Err(BadRequest(format!(
            "selector `{value}`: `{topic}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
        )));
    }
    if let Some(k) = key {
        if k.is_empty() {
            return Err(BadRequest(format!(
                "selector `{value}` has an empty key; use `topic={topic}` for the whole topic"
            )));
        }
        if k.len() > limits.max_key_bytes {
            return Err(BadRequest(format!(
                "selector key is {} bytes; the limit is {}",
                k.len(),
                limits.max_key_bytes
            )));
        }
    }
    Ok(Selector {
        topic: topic.to_owned(),
        key: key.map(str::to_owned),
    })
}

fn parse_from(value: &str) -> Result<Start, BadRequest> {
    match value {
        "earliest" => Ok(Start::Earliest),
        "latest" | "live" => Ok(Start::Live),
        other => Err(BadRequest(format!(
            "from=`{other}` is not understood; use from=earliest (or leave it out for live)"
        ))),
    }
}

fn parse_format(value: &str) -> Result<Format, BadRequest> {
    match value {
        "envelope" => Ok(Format::Envelope),
        "plain" | "value" => Ok(Format::Plain),
        other => Err(BadRequest(format!(
            "format=`{other}` is not understood; use format=envelope or leave it out"
        ))),
    }
}

fn parse_time(text: &str) -> Result<i64, BadRequest> {
    if let Ok(ms) = text.parse::<i64>() {
        if ms >= 0 {
            return Ok(ms);
        }
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            BadRequest(format!(
                "since=`{text}` is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor epoch milliseconds"
            ))
        })?;
    // Kafka reads -1 and -2 as "latest" and "earliest": a time before 1970 is 0.
    Ok(i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(0)
        .max(0))
}
