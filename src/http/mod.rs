//! The HTTP edge: listeners, the split between herald's own HTTP/1 stream
//! path and hyper, one route table, CORS headers.
//!
//! hyper 1.x with hyper-util serves HTTP/1.1 and HTTP/2 on one port; the
//! header-read timeout is always on (it needs a timer, or it never fires).
//! The listen backlog is 4096 so that a reconnect storm is queued, not
//! refused. Event streams over HTTP/1.x skip hyper ([`h1`]): a stream lives
//! for hours and hyper's buffers would cost it 16 KiB.

pub mod h1;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::events::{stream_head, Events, StreamBody};
use crate::api::operations::{Operations, View};
use crate::api::publish::Publisher;
use crate::api::{error, json, respond, HttpBody};
use crate::cors::Cors;
use crate::error::ApiError;
use crate::metrics::Metrics;

const PAGE: &str = include_str!("../page/index.html");
/// The built-in page; with `demo_topic`, it opens on that topic.
pub fn page(demo_topic: Option<&str>) -> Bytes {
    match demo_topic {
        None => Bytes::from_static(PAGE.as_bytes()),
        Some(topic) => {
            // A topic name is [a-zA-Z0-9._-]: nothing to escape in an attribute.
            let safe: String = topic
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .collect();
            Bytes::from(PAGE.replace(
                r#"<meta name="herald-demo-topic" content="">"#,
                &format!(r#"<meta name="herald-demo-topic" content="{safe}">"#),
            ))
        }
    }
}

/// The table-topics example: a price board kept by snapshot-then-live.
const PRICE_BOARD: &str = include_str!("../page/price-board.html");
const LISTEN_BACKLOG: u32 = 4096;
/// Pause after a failed accept (out of files, most likely) rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
const HTTP2_MAX_STREAMS: u32 = 256;
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(30);

/// Limits the edge enforces before any handler runs.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// Longest request head (at least 8 KiB).
    pub max_head_bytes: usize,
    pub max_url_bytes: usize,
    pub header_read_timeout: Duration,
}

/// Everything the edge hands requests to.
pub struct Edge {
    /// The built-in page, with the node's demo topic filled in.
    pub page: Bytes,
    pub events: Events,
    pub publisher: Publisher,
    pub operations: Operations,
    pub cors: Arc<Cors>,
    pub metrics: Arc<Metrics>,
    pub limits: EdgeLimits,
}

/// A listening socket with the backlog a reconnect storm needs.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts on the public listener until `stop`; every connection's task
/// goes on `tasks`.
pub async fn serve(
    edge: Arc<Edge>,
    listener: TcpListener,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let builder = Arc::new(hyper_builder(edge.limits));
    while let Some((stream, peer)) = accept(&listener, &stop).await {
        let _ = stream.set_nodelay(true);
        tasks.spawn(connection(
            edge.clone(),
            stream,
            peer,
            builder.clone(),
            stop.clone(),
        ));
    }
}

/// Accepts on the operations listener until `stop`: the views, nothing else.
pub async fn serve_operations(
    edge: Arc<Edge>,
    listener: TcpListener,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let builder = Arc::new(hyper_builder(edge.limits));
    while let Some((stream, _)) = accept(&listener, &stop).await {
        let edge = edge.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let edge = edge.clone();
            async move { Ok::<_, Infallible>(operations_only(&edge, &req)) }
        });
        let (builder, stop) = (builder.clone(), stop.clone());
        tasks.spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let stopped = tokio::select! {
                _ = conn.as_mut() => false,
                () = stop.cancelled() => true,
            };
            if stopped {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        });
    }
}

async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = stop.cancelled() => return None,
        }
    }
}

fn hyper_builder(limits: EdgeLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(limits.max_head_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_MAX_STREAMS)
        .keep_alive_interval(Some(HTTP2_KEEPALIVE));
    builder
}

/// One accepted connection: event streams over HTTP/1.x are served by
/// [`h1`], everything else by hyper (HTTP/1.1 and HTTP/2).
async fn connection(
    edge: Arc<Edge>,
    mut stream: TcpStream,
    peer: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: CancellationToken,
) {
    let limits = edge.limits;
    // Boxed, as are the other phases before a stream starts: a task is
    // sized by its largest phase, and a stream's task lives for hours.
    let head = Box::pin(h1::read_head(
        &mut stream,
        limits.max_head_bytes,
        limits.max_url_bytes,
        limits.header_read_timeout,
    ))
    .await;
    match head {
        h1::Head::Gone => {}
        h1::Head::Events(parts) => {
            // Boxed: opening (auth, Kafka look-ups) needs a large future,
            // but only until the stream starts.
            let opened = Box::pin(open_h1_stream(&edge, &mut stream, peer, parts)).await;
            drop(edge);
            if let Some((version, cors, body)) = opened {
                h1::serve_stream(stream, version, cors, body).await;
            }
        }
        h1::Head::Other(read) => {
            // Event streams served on this connection close it if their
            // client stalls: hyper stops polling a body it cannot write.
            let transport = CancellationToken::new();
            let stalled = transport.clone();
            let service = service_fn(move |req| handle(edge.clone(), peer, transport.clone(), req));
            let io = TokioIo::new(h1::Rewind::new(stream, read));
            // Boxed: hyper's connection future is about 2 KiB, and unboxed
            // it would size every connection's task, streams' included.
            let mut conn = Box::pin(builder.serve_connection(io, service).into_owned());
            let stopped = tokio::select! {
                _ = conn.as_mut() => false,
                () = stalled.cancelled() => return,
                () = stop.cancelled() => true,
            };
            if stopped {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = stalled.cancelled() => {}
                }
            }
        }
    }
}

/// Opens the stream of an event-stream request read by [`h1::read_head`],
/// or writes the reply that refuses it (and returns `None`).
async fn open_h1_stream(
    edge: &Edge,
    stream: &mut TcpStream,
    peer: SocketAddr,
    parts: http::request::Parts,
) -> Option<(Version, Vec<(&'static str, HeaderValue)>, StreamBody)> {
    let version = parts.version;
    let cors = edge.cors.headers(&parts.headers).unwrap_or_default();
    match edge.events.open(peer, &parts.uri, &parts.headers).await {
        Ok(body) => Some((version, cors, body)),
        Err(mut response) => {
            for (name, value) in cors {
                response.headers_mut().insert(name, value);
            }
            h1::serve_reply(stream, version, response).await;
            None
        }
    }
}

/// What a request path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Page,
    PriceBoard,
    Events,
    /// `/v1/topics/{topic}`
    Publish,
    Presence,
    View(View),
}

/// The one route table: path (or prefix), the methods it answers, what it is.
const ROUTES: &[(&str, bool, &[Method], Route)] = &[
    ("/", false, &[Method::GET, Method::HEAD], Route::Page),
    (
        "/examples/price-board",
        false,
        &[Method::GET, Method::HEAD],
        Route::PriceBoard,
    ),
    ("/v1/events", false, &[Method::GET], Route::Events),
    ("/v1/topics/", true, &[Method::POST], Route::Publish),
    ("/v1/presence", false, &[Method::GET], Route::Presence),
    ("/healthz", false, &[Method::GET], Route::View(View::Health)),
    ("/readyz", false, &[Method::GET], Route::View(View::Ready)),
    (
        "/metrics",
        false,
        &[Method::GET],
        Route::View(View::Metrics),
    ),
    ("/v1/stats", false, &[Method::GET], Route::View(View::Stats)),
];

fn route(path: &str) -> Option<(Route, &'static [Method])> {
    ROUTES
        .iter()
        .find(|(p, prefix, _, _)| {
            if *prefix {
                path.starts_with(p)
            } else {
                path == *p
            }
        })
        .map(|(_, _, methods, r)| (*r, *methods))
}

/// Why a request has no route.
enum Misroute {
    NotFound,
    /// The path exists, for these methods.
    Method(&'static [Method]),
}

/// The route for a request.
fn routed(req: &Request<Incoming>) -> Result<Route, Misroute> {
    let (route, methods) = route(req.uri().path()).ok_or(Misroute::NotFound)?;
    if !methods.contains(req.method()) {
        return Err(Misroute::Method(methods));
    }
    Ok(route)
}

/// 404, or 405 with the methods the path answers.
fn misrouted(metrics: &Metrics, req: &Request<Incoming>, why: Misroute) -> Response<HttpBody> {
    match why {
        Misroute::NotFound => error(metrics, &ApiError::NotFound(req.uri().path().to_owned())),
        Misroute::Method(methods) => {
            let wrong = ApiError::MethodNotAllowed(req.method().to_string());
            let mut response = error(metrics, &wrong);
            let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
            if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                response.headers_mut().insert(header::ALLOW, v);
            }
            response
        }
    }
}

async fn handle(
    edge: Arc<Edge>,
    peer: SocketAddr,
    transport: CancellationToken,
    req: Request<Incoming>,
) -> Result<Response<HttpBody>, Infallible> {
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > edge.limits.max_url_bytes {
        return Ok(error(
            &edge.metrics,
            &ApiError::UriTooLong(edge.limits.max_url_bytes),
        ));
    }
    if req.method() == Method::OPTIONS && req.headers().contains_key(header::ORIGIN) {
        return Ok(preflight(&edge, req.headers()));
    }
    let cors = edge.cors.headers(req.headers());
    let mut response = match routed(&req) {
        Err(why) => misrouted(&edge.metrics, &req, why),
        Ok(Route::Page) => respond(
            Response::builder().header(header::CONTENT_TYPE, "text/html; charset=utf-8"),
            Full::new(edge.page.clone()).boxed(),
        ),
        Ok(Route::PriceBoard) => respond(
            Response::builder().header(header::CONTENT_TYPE, "text/html; charset=utf-8"),
            Full::new(Bytes::from_static(PRICE_BOARD.as_bytes())).boxed(),
        ),
        Ok(Route::Events) => match edge.events.open(peer, req.uri(), req.headers()).await {
            Ok(body) => {
                body.connection().close_transport_with(transport);
                let mut head = stream_head(StatusCode::OK);
                if req.version() < Version::HTTP_2 {
                    // A stream that ends ends its connection, as on the h1
                    // path: no pipelined request is answered after it, and
                    // the reconnect goes through the load balancer again.
                    head = head.header(header::CONNECTION, "close");
                }
                respond(head, body.boxed())
            }
            Err(response) => response,
        },
        Ok(Route::Publish) => {
            let topic = percent_decode(&req.uri().path()["/v1/topics/".len()..]);
            let query = req.uri().query().map(str::to_owned);
            let (parts, body) = req.into_parts();
            match edge
                .publisher
                .publish(&topic, query.as_deref(), &parts.headers, body)
                .await
            {
                Ok(v) => json(StatusCode::OK, v.to_string()),
                Err(e) => error(&edge.metrics, &e),
            }
        }
        Ok(Route::Presence) => {
            match edge
                .operations
                .presence(req.headers(), req.uri().query(), false)
            {
                Ok(r) => r,
                Err(e) => error(&edge.metrics, &e),
            }
        }
        Ok(Route::View(view)) if view.is_private() => {
            match edge.operations.authorize(req.headers(), req.uri().query()) {
                Ok(()) => edge.operations.view(view),
                Err(e) => error(&edge.metrics, &e),
            }
        }
        Ok(Route::View(view)) => edge.operations.view(view),
    };
    for (name, value) in cors.into_iter().flatten() {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

/// The operations listener's routing: the views, nothing else, no auth.
fn operations_only(edge: &Edge, req: &Request<Incoming>) -> Response<HttpBody> {
    match routed(req) {
        Ok(Route::View(view)) => edge.operations.view(view),
        Ok(Route::Presence) => edge
            .operations
            .presence(req.headers(), req.uri().query(), true)
            .unwrap_or_else(|e| error(&edge.metrics, &e)),
        Ok(_) => misrouted(&edge.metrics, req, Misroute::NotFound),
        Err(why) => misrouted(&edge.metrics, req, why),
    }
}

fn preflight(edge: &Edge, headers: &http::HeaderMap) -> Response<HttpBody> {
    match edge.cors.preflight(headers) {
        Some(allowed) => {
            let builder = allowed.into_iter().fold(
                Response::builder().status(StatusCode::NO_CONTENT),
                |r, (name, value)| r.header(name, value),
            );
            respond(builder, Full::new(Bytes::new()).boxed())
        }
        None => {
            let origin = headers
                .get(header::ORIGIN)
                .and_then(|o| o.to_str().ok())
                .unwrap_or_default();
            error(&edge.metrics, &ApiError::OriginRefused(origin.to_owned()))
        }
    }
}

fn percent_decode(text: &str) -> String {
    form_urlencoded::parse(format!("t={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
