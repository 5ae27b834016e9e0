//! The HTTP API's handlers, each holding only what it uses:
//!
//! - [`events`]: `GET /v1/events`, from request to streaming body
//! - [`publish`]: `POST /v1/topics/{topic}`
//! - [`operations`]: `/healthz`, `/readyz`, `/metrics`, `/v1/stats`
//!
//! They build responses; routing, CORS headers and the wire are the HTTP
//! edge's (`crate::http`).

pub mod events;
pub mod operations;
pub mod publish;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::error::ApiError;
use crate::metrics::Metrics;

pub type HttpBody = BoxBody<Bytes, Infallible>;

/// Whether this node should take new streams: Kafka answers, it is not
/// draining, and it is not full.
pub struct Health {
    kafka_reachable: AtomicBool,
    /// Cancelled when the node starts draining (the shutdown tree's first stage).
    pub draining: CancellationToken,
    admission: Arc<Admission>,
}

impl Health {
    pub fn new(draining: CancellationToken, admission: Arc<Admission>) -> Health {
        Health {
            kafka_reachable: AtomicBool::new(false),
            draining,
            admission,
        }
    }

    /// Records whether Kafka answered; returns whether that changed.
    pub fn set_kafka_reachable(&self, reachable: bool) -> bool {
        self.kafka_reachable.swap(reachable, Ordering::AcqRel) != reachable
    }

    pub fn kafka_reachable(&self) -> bool {
        self.kafka_reachable.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    pub fn is_ready(&self) -> bool {
        self.kafka_reachable() && !self.is_draining() && !self.admission.is_full()
    }
}

/// A response from its parts. The builder only fails on invalid header
/// values, and every header here is a constant or was valid on the request.
pub fn respond(builder: http::response::Builder, body: HttpBody) -> Response<HttpBody> {
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

pub fn json(status: StatusCode, body: String) -> Response<HttpBody> {
    respond(
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store"),
        Full::new(Bytes::from(body)).boxed(),
    )
}

/// The JSON error response for `e`, counted as a rejection.
pub fn error(metrics: &Metrics, e: &ApiError) -> Response<HttpBody> {
    metrics.http_rejections.inc();
    json(e.status(), e.body())
}
