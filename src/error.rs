//! Errors a request can meet, and their HTTP form: the one place where
//! an error becomes a status and a body.
//!
//! Every error reaches the client as a status and a JSON body
//! `{"error":{"code","message"}}` whose message says what to do. A browser's
//! EventSource gives up for good on any status but 200, so only errors in the
//! request itself get a 4xx; an overloaded or draining node answers 200 with
//! `retry:` instead (see `api::events`).

use http::StatusCode;
use rdkafka::error::KafkaError;
use serde_json::json;

use crate::subscribe::{BadRequest, OpenError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    BadCursor(String),
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("request body is larger than the {0}-byte limit")]
    BodyTooLarge(usize),
    #[error("Kafka did not accept the request: {0}")]
    Kafka(#[source] KafkaError),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    TooManyFilters(String),
    #[error("request target is longer than the {0}-byte limit")]
    UriTooLong(usize),
    #[error("origin `{0}` is not allowed")]
    OriginRefused(String),
}

impl From<KafkaError> for ApiError {
    fn from(e: KafkaError) -> ApiError {
        ApiError::Kafka(e)
    }
}

impl From<BadRequest> for ApiError {
    fn from(e: BadRequest) -> ApiError {
        ApiError::BadRequest(e.0)
    }
}

impl From<OpenError> for ApiError {
    fn from(e: OpenError) -> ApiError {
        match e {
            OpenError::BadRequest(b) => b.into(),
            OpenError::UnknownTopic(t) => ApiError::UnknownTopic(t),
            e @ OpenError::FiltersFull(_) => ApiError::TooManyFilters(e.to_string()),
            e @ OpenError::BadCursor(_) => ApiError::BadCursor(e.to_string()),
            e @ OpenError::SinceUnsupported => ApiError::Unsupported(e.to_string()),
            OpenError::Kafka(k) => ApiError::Kafka(k),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BadCursor(_) | ApiError::Unsupported(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::UnknownTopic(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Kafka(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::OriginRefused(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests(_) | ApiError::TooManyFilters(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::BadCursor(_) => "bad_cursor",
            ApiError::UnknownTopic(_) => "unknown_topic",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::Kafka(_) => "kafka_unavailable",
            ApiError::Unsupported(_) => "unsupported",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooManyRequests(_) => "too_many_streams",
            ApiError::TooManyFilters(_) => "too_many_filters",
            ApiError::UriTooLong(_) => "uri_too_long",
            ApiError::OriginRefused(_) => "origin_refused",
        }
    }

    pub fn body(&self) -> String {
        json!({"error": {"code": self.code(), "message": self.to_string()}}).to_string()
    }
}
