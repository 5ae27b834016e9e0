//! The operations views: `/healthz` (alive; never depends on Kafka),
//! `/readyz` (Kafka reachable, not draining, not full), `/metrics`
//! (Prometheus) and `/v1/stats` (JSON: connections, subscriptions per
//! topic and key, partitions).
//!
//! `/metrics` and `/v1/stats` say who reads what: on the public port of a
//! node with auth they need a token with the `ops` grant; the operations
//! listener (`--ops-listen`, a private address) serves them to anyone who
//! can reach it.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;

use super::{json, respond, Health, HttpBody};
use crate::auth::Auth;
use crate::error::ApiError;
use crate::filters::Filters;
use crate::formats::Decoder;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// A view, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Health,
    Ready,
    Metrics,
    Stats,
}

impl View {
    /// Whether the view reveals who reads what (and so needs the ops grant
    /// on the public port).
    pub fn is_private(self) -> bool {
        matches!(self, View::Metrics | View::Stats)
    }
}

/// What the views need.
pub struct Operations {
    pub registry: Arc<Registry>,
    pub health: Arc<Health>,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
    pub node_id: String,
    pub bootstrap: String,
    pub embedded: bool,
    pub decoder: Arc<Decoder>,
    pub filters: Arc<Filters>,
    pub presence: Option<Arc<crate::presence::Presence>>,
}

impl Operations {
    pub fn view(&self, view: View) -> Response<HttpBody> {
        match view {
            View::Health => json(StatusCode::OK, json!({"status": "ok"}).to_string()),
            View::Ready => self.readiness(),
            View::Metrics => respond(
                Response::builder().header(header::CONTENT_TYPE, "text/plain; version=0.0.4"),
                Full::new(Bytes::from({
                    self.registry.report_tables();
                    self.metrics.render()
                }))
                .boxed(),
            ),
            View::Stats => json(StatusCode::OK, self.stats().to_string()),
        }
    }

    /// Whether a request on the public port may see a private view: anyone
    /// on an open node, a token with the `ops` grant otherwise.
    pub fn authorize(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Result<(), ApiError> {
        match self.auth.grant(headers, query)? {
            Some(g) if g.may_operate() => Ok(()),
            Some(_) => Err(ApiError::Forbidden(
                "the token does not grant the operations views (\"ops\": true)".into(),
            )),
            None => Err(ApiError::Unauthorized(
                "the operations views need a token with \"ops\": true, or the operations listener (--ops-listen)".into(),
            )),
        }
    }

    /// `GET /v1/presence?topic=S` (authorised like a subscription to `S`),
    /// or without `topic` the whole view (the operations grant).
    ///
    /// `trusted`: asked on the operations listener, which needs no token.
    pub fn presence(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
        trusted: bool,
    ) -> Result<Response<HttpBody>, ApiError> {
        let Some(presence) = &self.presence else {
            return Err(ApiError::NotFound(
                "presence: it is off on this node (--presence-topic)".into(),
            ));
        };
        let asked = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "topic")
            .map(|(_, v)| v.into_owned());
        let grant = if trusted {
            Some(crate::auth::Grant::open())
        } else {
            self.auth.grant(headers, query)?
        };
        let body = match asked {
            Some(text) => {
                let s = crate::subscribe::request::selector(
                    &text,
                    crate::subscribe::SelectorLimits::default(),
                )
                .map_err(|e| ApiError::BadRequest(e.0))?;
                super::events::may_read(&self.auth, grant.as_ref(), &s.topic, s.key.as_deref())?;
                let name = match &s.key {
                    Some(k) => format!("{}/{k}", s.topic),
                    None => s.topic.clone(),
                };
                presence.of(&name)
            }
            None => {
                super::events::may_operate(&self.auth, grant.as_ref())?;
                presence.all()
            }
        };
        Ok(json(StatusCode::OK, body.to_string()))
    }

    fn readiness(&self) -> Response<HttpBody> {
        let ready = self.health.is_ready();
        json(
            if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            json!({
                "ready": ready,
                "kafka_reachable": self.health.kafka_reachable(),
                "draining": self.health.is_draining(),
                // Detail only: a partition waiting for its schema does not
                // stop the node serving the others.
                "held_partitions": self.decoder.holds.to_json(),
            })
            .to_string(),
        )
    }

    fn stats(&self) -> serde_json::Value {
        let snap = self.registry.snapshot();
        let assigned: Vec<_> = snap.partitions.iter().filter(|p| p.assigned).collect();
        json!({
            "node_id": self.node_id,
            "connections": self.registry.connection_count(),
            "queued_bytes": self.registry.queued_bytes(),
            "subscriptions": {"topics": snap.topics, "keys": snap.keys},
            "assigned_partitions": assigned,
            "partitions": snap.partitions,
            "kafka": {
                "bootstrap_servers": self.bootstrap,
                "embedded": self.embedded,
                "reachable": self.health.kafka_reachable(),
            },
            "schema_registry": self.decoder.registry_stats(),
            "held_partitions": self.decoder.holds.to_json(),
            "filters": {"in_use": self.filters.in_use(), "limit": self.filters.max_distinct()},
            "tables": {
                "partitions": self.registry.table_stats(),
                "bytes": self.registry.tables().used_bytes(),
                "limit_bytes": self.registry.tables().max_bytes(),
            },
            "ready": self.health.is_ready(),
        })
    }
}
