//! `GET /v1/events`: who may open the stream (auth, admission, drain), the
//! subscription itself (`crate::subscribe`), and the streaming body both
//! HTTP paths write from.
//!
//! A browser's EventSource gives up for good on any status but 200, so a
//! node that is full, flooded or draining, or cannot reach Kafka, answers
//! `200` with `retry:` and an immediate end: the client comes back through
//! the load balancer. Only the request's own faults get a 4xx.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use serde_json::json;

use super::{error, respond, Health, HttpBody};
use crate::admission::{Admission, Refusal, Ticket};
use crate::auth::{Auth, Grant};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::queue::End;
use crate::registry::{Connection, Registry};
use crate::sse;
use crate::subscribe::{
    parse_request, OpenError, Selector, SelectorLimits, SubscribeRequest, Subscriptions,
};

/// What opening a stream needs.
pub struct Events {
    pub subscriptions: Arc<Subscriptions>,
    pub auth: Arc<Auth>,
    pub admission: Arc<Admission>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub limits: SelectorLimits,
    pub retry_ms: u64,
    pub max_stream_lifetime: Option<Duration>,
    /// The presence topic (`None`: presence is off).
    pub presence_topic: Option<Arc<str>>,
}

/// An event-stream response's head, whichever path writes it.
pub fn stream_head(status: StatusCode) -> http::response::Builder {
    sse::STREAM_HEADERS
        .iter()
        .fold(Response::builder().status(status), |b, (name, value)| {
            b.header(*name, *value)
        })
}

impl Events {
    /// Opens an event stream, or says why not: the response to send instead.
    pub async fn open(
        &self,
        peer: SocketAddr,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Result<StreamBody, Response<HttpBody>> {
        let header_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
        let mut request = parse_request(uri.query(), header_id, self.limits)
            .map_err(|e| self.refuse(&e.into()))?;
        let grant = self
            .auth
            .grant(headers, uri.query())
            .map_err(|e| self.refuse(&e))?;
        let is_presence = request.presence.is_some() || request.cluster;
        if is_presence {
            self.presence_stream(grant.as_ref(), &mut request)
                .map_err(|e| self.refuse(&e))?;
        } else {
            self.authorize(grant.as_ref(), &request)
                .map_err(|e| self.refuse(&e))?;
            if let Some(g) = &grant {
                request.claims = claims(g, &request);
            }
        }
        request.user = grant.as_ref().and_then(|g| g.user.clone());
        if self.health.is_draining() {
            return Err(self.come_back_later("draining"));
        }
        let address = self.admission.client_address(peer.ip(), headers);
        let ticket = match self.admission.admit(address) {
            Ok(t) => t,
            Err(Refusal::Full) => return Err(self.come_back_later("node full")),
            Err(Refusal::Flooded) => return Err(self.come_back_later("too many new streams")),
            Err(Refusal::TooManyFromAddress { held }) => {
                return Err(self.refuse(&ApiError::TooManyRequests(format!(
                    "{address} holds {held} streams already"
                ))))
            }
        };
        let deadline = self.deadline(grant.as_ref());
        match self.subscriptions.open(request, peer).await {
            Ok(opened) => Ok(StreamBody {
                connection: opened.sub.connection.clone(),
                registry: self.subscriptions.registry.clone(),
                metrics: self.metrics.clone(),
                starting: opened.rest,
                deadline: deadline.map(|(at, _)| Box::pin(tokio::time::sleep_until(at))),
                deadline_reason: deadline.map_or("", |(_, why)| why),
                throttle: None,
                _ticket: ticket,
            }),
            // The node creates its presence topic as it starts: not yet.
            Err(OpenError::UnknownTopic(_)) if is_presence => {
                Err(self.come_back_later("presence is starting"))
            }
            Err(OpenError::Kafka(e)) => {
                tracing::warn!(error = %e, "subscribe failed on Kafka; asking the client to retry");
                Err(self.come_back_later("kafka unavailable"))
            }
            Err(e) => Err(self.refuse(&e.into())),
        }
    }

    fn refuse(&self, e: &ApiError) -> Response<HttpBody> {
        error(&self.metrics, e)
    }

    /// 200, `retry:` and the end: how an SSE endpoint says "not now, come
    /// back through the load balancer" without making EventSource give up.
    fn come_back_later(&self, why: &str) -> Response<HttpBody> {
        let mut body = format!(": {why}\n").into_bytes();
        body.extend_from_slice(&sse::retry_jittered(self.retry_ms));
        respond(
            stream_head(StatusCode::OK),
            Full::new(Bytes::from(body)).boxed(),
        )
    }

    /// `presence=S` and `cluster=true`: authorised like a subscription to
    /// `S` (the whole view: the operations grant), then turned into a
    /// stream of the presence topic filtered to what was asked for.
    fn presence_stream(
        &self,
        grant: Option<&Grant>,
        request: &mut SubscribeRequest,
    ) -> Result<(), ApiError> {
        let Some(topic) = &self.presence_topic else {
            return Err(ApiError::NotFound(
                "presence: it is off on this node (--presence-topic)".into(),
            ));
        };
        let claim = match request.presence.take() {
            Some(s) => {
                may_read(&self.auth, grant, &s.topic, s.key.as_deref())?;
                let text = match &s.key {
                    Some(k) => format!("{}/{k}", s.topic),
                    None => s.topic.clone(),
                };
                let literal = serde_json::Value::from(text).to_string();
                format!("value.selector == {literal}")
            }
            None => {
                may_operate(&self.auth, grant)?;
                "has(value.node) && !has(value.selector)".to_owned()
            }
        };
        request.selectors = vec![Selector {
            topic: topic.to_string(),
            key: None,
        }];
        request.claims = vec![(topic.to_string(), claim)];
        Ok(())
    }

    /// Checks every selector against the caller's grant (or the anonymous list).
    fn authorize(&self, grant: Option<&Grant>, request: &SubscribeRequest) -> Result<(), ApiError> {
        for s in &request.selectors {
            may_read(&self.auth, grant, &s.topic, s.key.as_deref())?;
        }
        Ok(())
    }

    /// When a stream must end: its token's `exp`, or the maximum lifetime.
    /// Claims are the signer's to choose: an `exp` too far ahead to be an
    /// instant of this clock is no deadline, never an overflow.
    fn deadline(&self, grant: Option<&Grant>) -> Option<(tokio::time::Instant, &'static str)> {
        let now = tokio::time::Instant::now();
        let exp = grant.and_then(|g| g.expires_at).and_then(|exp| {
            let at = UNIX_EPOCH.checked_add(Duration::from_secs(exp))?;
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Some((now.checked_add(left)?, "token_expired"))
        });
        let lifetime = self
            .max_stream_lifetime
            .and_then(|l| Some((now.checked_add(l)?, "max_lifetime")));
        match (exp, lifetime) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

/// The streaming response: drains the connection's queue, one write per
/// wake-up; unregisters the connection when it is dropped.
pub struct StreamBody {
    connection: Arc<Connection>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// What opening the stream still has to do once the head is out (Kafka
    /// look-ups); polled with the body, dropped when done.
    starting: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
    /// Token expiry or maximum lifetime.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    deadline_reason: &'static str,
    /// A `max-rate=` stream waiting for its next event's turn.
    throttle: Option<Pin<Box<tokio::time::Sleep>>>,
    _ticket: Ticket,
}

impl StreamBody {
    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    /// Ready once the watchdog killed this stream for stalling.
    pub fn poll_killed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.connection.queue.poll_killed(cx)
    }

    pub fn is_killed(&self) -> bool {
        self.connection.queue.ended() == Some(End::Stalled)
    }
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(starting) = this.starting.as_mut() {
            if starting.as_mut().poll(cx).is_ready() {
                this.starting = None;
            }
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                this.deadline = None;
                let body = sse::signal_body("expired", &json!({"reason": this.deadline_reason}));
                this.connection.queue.end(End::Expired, Some(body));
            }
        }
        match this.connection.queue.poll_drain(cx) {
            Poll::Ready(Some(drained)) => {
                this.metrics
                    .bytes_delivered
                    .inc_by(drained.bytes.len() as u64);
                if let Some(at) = drained.oldest_consumed {
                    this.metrics.own_latency.observe(at.elapsed().as_secs_f64());
                }
                if let Some(ts) = drained.oldest_record_ms {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                        .unwrap_or(ts);
                    this.metrics
                        .delivery_latency
                        .observe(now.saturating_sub(ts).max(0) as f64 / 1000.0);
                }
                Poll::Ready(Some(Ok(Frame::data(drained.bytes))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // A rate-limited stream with records pending comes back
                // when its next one may go.
                if let Some(at) = this.connection.queue.throttled_until() {
                    let at = tokio::time::Instant::from_std(at);
                    let sleep = this
                        .throttle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    sleep.as_mut().reset(at);
                    if sleep.as_mut().poll(cx).is_ready() {
                        cx.waker().wake_by_ref();
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        self.registry.unsubscribe(&self.connection);
    }
}

/// Whether the caller (its grant, or the anonymous list) may read `topic`
/// (whole, or `key`).
pub fn may_read(
    auth: &Auth,
    grant: Option<&Grant>,
    topic: &str,
    key: Option<&str>,
) -> Result<(), ApiError> {
    if auth.anonymous_may_subscribe(topic, key) {
        return Ok(());
    }
    let shown = match key {
        Some(k) => format!("{topic}/{k}"),
        None => topic.to_owned(),
    };
    match grant {
        None => Err(ApiError::Unauthorized(format!(
            "`{shown}` needs a token (Authorization: Bearer, the {} cookie, or access_token=)",
            auth.cookie_name()
        ))),
        Some(g) if !g.may_subscribe(topic, key) => Err(ApiError::Forbidden(format!(
            "the token does not grant `{shown}`"
        ))),
        Some(_) => Ok(()),
    }
}

/// Whether the caller may see the operations views (the whole presence).
pub fn may_operate(auth: &Auth, grant: Option<&Grant>) -> Result<(), ApiError> {
    match grant {
        Some(g) if g.may_operate() => Ok(()),
        Some(_) => Err(ApiError::Forbidden(
            "the whole cluster view needs a token with \"ops\": true".into(),
        )),
        None => Err(ApiError::Unauthorized(format!(
            "the whole cluster view needs a token with \"ops\": true (Authorization: Bearer, the {} cookie, or access_token=)",
            auth.cookie_name()
        ))),
    }
}

/// The token's mandatory filters for each topic the request reads.
fn claims(grant: &Grant, request: &SubscribeRequest) -> Vec<(String, String)> {
    let mut topics: Vec<&str> = request.selectors.iter().map(|s| s.topic.as_str()).collect();
    topics.dedup();
    let mut out: Vec<(String, String)> = topics
        .into_iter()
        .flat_map(|t| {
            grant
                .filters_for(t)
                .into_iter()
                .map(move |f| (t.to_owned(), f))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
