//! The node: start-up, the accept loop, routing, and shutdown with drain.
//!
//! hyper 1.x with hyper-util serves HTTP/1.1 and HTTP/2 on one port; the
//! header-read timeout is always on (it needs a timer, or it never fires).
//! The listen backlog is 4096 so that a reconnect storm is queued, not
//! refused. On SIGTERM the node turns unready at once, keeps answering new
//! streams with `retry:` and an immediate end (never a non-200 status: a
//! browser's EventSource would give up for good), and closes its open streams
//! spread over the drain window, each with a jittered `retry:`, so clients
//! come back through the load balancer without a thundering herd.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rand::Rng;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::FutureProducer;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, Refusal, Ticket};
use crate::auth::{Auth, AuthConfig, Grant};
use crate::catchup::Catchup;
use crate::config::Config;
use crate::cors::Cors;
use crate::embedded::EmbeddedKafka;
use crate::error::ApiError;
use crate::ingest::Ingest;
use crate::kafka::{self, Kafka};
use crate::metrics::Metrics;
use crate::queue::{End, Wakers};
use crate::registry::{Connection, Registry, ReplayBufferLimits};
use crate::subscribe::{self, SelectorLimits};
use crate::{h1, publish, sse};

const PAGE: &str = include_str!("page/index.html");
const LISTEN_BACKLOG: u32 = 4096;
const READINESS_EVERY: Duration = Duration::from_secs(2);

type HttpBody = BoxBody<Bytes, Infallible>;

/// Everything a request handler may touch.
pub struct NodeContext {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub kafka: Kafka,
    pub ingest: Ingest,
    pub catchup: Catchup,
    pub producer: FutureProducer,
    pub embedded: Option<Arc<EmbeddedKafka>>,
    pub bootstrap: String,
    pub auth: Auth,
    pub cors: Cors,
    pub admission: Arc<Admission>,
    kafka_reachable: AtomicBool,
    draining: AtomicBool,
    stop_accepting: CancellationToken,
}

impl NodeContext {
    pub fn is_ready(&self) -> bool {
        self.kafka_reachable.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && !self.admission.is_full()
    }

    pub fn selector_limits(&self) -> SelectorLimits {
        SelectorLimits {
            max_selectors: self.config.max_selectors,
            max_key_bytes: self.config.max_key_bytes,
        }
    }

    /// The caller's grant for publishing to `topic` (`key` if any).
    pub fn authorize_publish(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
        topic: &str,
        key: Option<&str>,
    ) -> Result<(), ApiError> {
        match self.auth.grant(headers, query)? {
            None => Err(ApiError::Unauthorized(
                "publishing needs a token with a publish grant (Authorization: Bearer ...)".into(),
            )),
            Some(g) if g.from_cookie && !self.cors.vouches_for(headers) => Err(ApiError::Forbidden(
                "a token from the cookie may publish only from an allowed origin (--cors-origins) or this node's own page; other callers send it as Authorization: Bearer".into(),
            )),
            Some(g) if g.may_publish(topic, key) => Ok(()),
            Some(_) => Err(ApiError::Forbidden(format!(
                "the token does not grant publishing to `{topic}`"
            ))),
        }
    }
}

/// A running node.
pub struct Node {
    context: Arc<NodeContext>,
    addr: SocketAddr,
    ops_addr: Option<SocketAddr>,
    server: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Starts a node: Kafka clients (an embedded Kafka without `--brokers`),
    /// the ingest thread, the catch-up readers, and the HTTP listener.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        config.validate()?;
        let auth = Auth::new(&AuthConfig {
            hs256_secret: config.auth_hs256_secret.clone(),
            public_keys: config.auth_public_keys.clone(),
            issuer: config.auth_issuer.clone(),
            audience: config.auth_audience.clone(),
            cookie: config.auth_cookie.clone(),
            anonymous: config.anonymous_topics.clone(),
            leeway_seconds: config.auth_leeway_seconds,
        })?;
        if auth.is_open() {
            tracing::warn!("no auth key configured: every topic is open to anyone (set --auth-hs256-secret or --auth-public-key)");
        }
        let cors = Cors::new(&config.cors_origins, config.cors_credentials);
        let admission = Arc::new(Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.trusted_proxy_header.as_deref(),
            config.max_new_streams_per_second,
        )?);
        let embedded = match &config.brokers {
            Some(_) => None,
            None => Some(Arc::new(
                tokio::task::spawn_blocking(EmbeddedKafka::start).await??,
            )),
        };
        let bootstrap = match (&config.brokers, &embedded) {
            (Some(b), _) => b.clone(),
            (None, Some(e)) => e.bootstrap_servers().to_owned(),
            (None, None) => unreachable!("an embedded Kafka starts when no brokers are given"),
        };
        if let (Some(e), Some(topic)) = (&embedded, &config.demo_topic) {
            let (e, topic, n) = (e.clone(), topic.clone(), config.embedded_partitions);
            tokio::task::spawn_blocking(move || e.create_topic(&topic, n)).await??;
        }
        let consumer: Arc<BaseConsumer> =
            Arc::new(kafka::consumer_config(&config, &bootstrap, "ingest").create()?);
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::new(
            ReplayBufferLimits {
                bytes: config.replay_buffer_bytes,
                records: config.replay_buffer_records,
            },
            config.queue_bytes,
            metrics,
        ));
        let ingest = Ingest::start(
            consumer.clone(),
            registry.clone(),
            config.partition_linger,
            config.event_header.clone(),
        )?;
        let catchup = Catchup::start(
            config.catchup_readers,
            kafka::consumer_config(&config, &bootstrap, "catchup"),
            registry.clone(),
            config.event_header.clone(),
        )?;
        let producer = kafka::producer(&config, &bootstrap)?;
        let listener = bind(config.listen)?;
        let addr = listener.local_addr()?;
        let ops_listener = config.ops_listen.map(bind).transpose()?;
        let ops_addr = ops_listener
            .as_ref()
            .map(tokio::net::TcpListener::local_addr)
            .transpose()?;
        let context = Arc::new(NodeContext {
            kafka: Kafka::new(consumer),
            registry,
            ingest,
            catchup,
            producer,
            embedded,
            bootstrap,
            auth,
            cors,
            admission,
            kafka_reachable: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stop_accepting: CancellationToken::new(),
            config,
        });
        context
            .kafka_reachable
            .store(context.kafka.refresh().await, Ordering::Release);
        let background = vec![
            tokio::spawn(watch_kafka(context.clone())),
            tokio::spawn(stalled_writers(context.clone())),
            tokio::spawn(heartbeats(context.clone())),
            tokio::spawn(idle_cursors(context.clone())),
        ];
        let server = tokio::spawn(serve(context.clone(), listener));
        let mut background = background;
        if let Some(l) = ops_listener {
            background.push(tokio::spawn(serve_operations(context.clone(), l)));
        }
        tracing::info!(
            listen = %addr,
            kafka = %context.bootstrap,
            embedded = context.embedded.is_some(),
            "herald is serving on http://{addr}/ with Kafka at {}",
            context.bootstrap
        );
        Ok(Node {
            context,
            addr,
            ops_addr,
            server,
            background,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The operations listener's address, when `--ops-listen` is set.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.context.bootstrap
    }

    pub fn context(&self) -> &Arc<NodeContext> {
        &self.context
    }

    /// Creates a topic on the embedded Kafka.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let Some(e) = self.context.embedded.clone() else {
            anyhow::bail!("this node has no embedded Kafka; create topics on your cluster");
        };
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || e.create_topic(&name, partitions)).await??;
        Ok(())
    }

    /// Drains (closing streams spread over `window`) and stops everything.
    pub async fn shutdown(self, window: Duration) {
        let ctx = self.context.clone();
        ctx.draining.store(true, Ordering::Release);
        tracing::info!(connections = ctx.registry.connection_count(), window = ?window, "draining");
        drain(&ctx, window).await;
        ctx.stop_accepting.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        for task in self.background {
            task.abort();
        }
        let stopper = ctx.clone();
        let _ = tokio::task::spawn_blocking(move || {
            stopper.catchup.stop();
            stopper.ingest.stop();
            if let Some(e) = &stopper.embedded {
                e.stop();
            }
        })
        .await;
        tracing::info!("stopped");
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Closes every open stream, spread evenly over `window`, each told to come
/// back after a random part of the window.
async fn drain(ctx: &NodeContext, window: Duration) {
    let connections = ctx.registry.connections();
    let n = connections.len().max(1) as u32;
    let started = tokio::time::Instant::now();
    for (i, connection) in connections.iter().enumerate() {
        let at = started + window * i as u32 / n;
        tokio::time::sleep_until(at).await;
        let jitter = rand::thread_rng().gen_range(0..=window.as_millis().max(1) as u64);
        connection
            .queue
            .end(End::Drain, Some(sse::retry(ctx.config.retry_ms + jitter)));
    }
}

async fn serve(ctx: Arc<NodeContext>, listener: tokio::net::TcpListener) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.config.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(ctx.config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let streams = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of files, most likely: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                streams.spawn(connection(ctx.clone(), stream, peer, builder.clone(), graceful.watcher()));
            }
            _ = ctx.stop_accepting.cancelled() => break,
        }
    }
    drop(listener);
    streams.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        graceful.shutdown().await;
        streams.wait().await;
    })
    .await;
}

/// The operations listener: `/metrics`, `/v1/stats`, `/healthz` and
/// `/readyz` for whoever can reach it (a private address), nothing else.
async fn serve_operations(ctx: Arc<NodeContext>, listener: tokio::net::TcpListener) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.config.header_read_timeout);
    let builder = Arc::new(builder);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the operations listener");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = ctx.stop_accepting.cancelled() => break,
        };
        let (ctx, builder) = (ctx.clone(), builder.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let ctx = ctx.clone();
                async move {
                    let response = match (req.method(), req.uri().path()) {
                        (&Method::GET, path) => operations(&ctx, path).unwrap_or_else(|| {
                            error_response(&ctx, &ApiError::NotFound(path.to_owned()))
                        }),
                        (method, _) => {
                            error_response(&ctx, &ApiError::MethodNotAllowed(method.to_string()))
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The operations views, by path.
fn operations(ctx: &NodeContext, path: &str) -> Option<Response<HttpBody>> {
    Some(match path {
        "/healthz" => json_response(StatusCode::OK, json!({"status": "ok"}).to_string()),
        "/readyz" => readiness(ctx),
        "/metrics" => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(ctx.registry.metrics.render())).boxed())
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())),
        "/v1/stats" => json_response(StatusCode::OK, stats(ctx).to_string()),
        _ => return None,
    })
}

/// Whether a request on the public port may see the operations views that
/// reveal who reads what (`/metrics`, `/v1/stats`): anyone on an open node,
/// a token with the `ops` grant otherwise.
fn authorize_operations(ctx: &NodeContext, req: &Request<Incoming>) -> Result<(), ApiError> {
    match ctx.auth.grant(req.headers(), req.uri().query())? {
        Some(g) if g.may_operate() => Ok(()),
        Some(_) => Err(ApiError::Forbidden(
            "the token does not grant the operations views (\"ops\": true)".into(),
        )),
        None => Err(ApiError::Unauthorized(
            "the operations views need a token with \"ops\": true, or the operations listener (--ops-listen)".into(),
        )),
    }
}

/// One accepted connection: event streams over HTTP/1.x are served by
/// [`h1`], everything else by hyper (HTTP/1.1 and HTTP/2).
async fn connection(
    ctx: Arc<NodeContext>,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let max_head = ctx.config.max_header_bytes.max(8192);
    let write_timeout = ctx.config.write_timeout;
    // Boxed, as are the other phases before a stream starts: a task is
    // sized by its largest phase, and a stream's task lives for hours.
    let head = Box::pin(h1::read_head(
        &mut stream,
        max_head,
        ctx.config.max_url_bytes,
        ctx.config.header_read_timeout,
    ))
    .await;
    match head {
        h1::Head::Gone => {}
        h1::Head::Events(parts) => {
            drop(watcher);
            // Boxed: opening (auth, Kafka look-ups) needs a large future,
            // but only until the stream starts.
            let opened = Box::pin(h1_open(&ctx, &mut stream, peer, parts)).await;
            drop(ctx);
            if let Some((version, cors, body)) = opened {
                h1::serve_stream(stream, version, cors, body, write_timeout).await;
            }
        }
        h1::Head::Other(read) => {
            // Event streams served on this connection close it if their
            // client stalls: hyper stops polling a body it cannot write.
            let transport = CancellationToken::new();
            let stalled = transport.clone();
            let service = service_fn(move |req| handle(ctx.clone(), peer, transport.clone(), req));
            let io = TokioIo::new(h1::Rewind::new(stream, read));
            // Boxed: hyper's connection future is about 2 KiB, and unboxed
            // it would size every connection's task, streams' included.
            let serving =
                Box::pin(watcher.watch(builder.serve_connection(io, service).into_owned()));
            tokio::select! {
                _ = serving => {}
                () = stalled.cancelled() => {}
            }
        }
    }
}

async fn watch_kafka(ctx: Arc<NodeContext>) {
    let mut tick = tokio::time::interval(READINESS_EVERY);
    loop {
        tick.tick().await;
        let ok = ctx.kafka.refresh().await;
        if ok != ctx.kafka_reachable.swap(ok, Ordering::AcqRel) {
            tracing::info!(reachable = ok, "kafka reachability changed");
        }
    }
}

/// Closes streams whose client stopped reading: a write that has not
/// finished within the write timeout. Checked for every stream a few times
/// per timeout, so a stalled client holds its slot, its registry entry and
/// its queue for at most about 1.25 times the timeout.
async fn stalled_writers(ctx: Arc<NodeContext>) {
    let timeout = ctx.config.write_timeout;
    let every = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let registry = ctx.registry.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let now = std::time::Instant::now();
            for connection in registry.connections() {
                if connection.queue.is_stalled(now, timeout) && connection.kill() {
                    registry.metrics.stalled_disconnects.inc();
                }
            }
        })
        .await;
    }
}

async fn heartbeats(ctx: Arc<NodeContext>) {
    let period = ctx.config.heartbeat;
    sweep(ctx, period, |_, connections, wakers| {
        let beat = Bytes::from_static(sse::HEARTBEAT);
        for connection in connections {
            if connection.queue.queued_bytes() == 0 {
                connection.queue.push(&[&beat], None, wakers);
            }
        }
    })
    .await
}

async fn idle_cursors(ctx: Arc<NodeContext>) {
    let period = ctx.config.idle_id_interval;
    sweep(ctx, period, |registry, connections, wakers| {
        registry.advance_idle_cursors(connections, wakers);
    })
    .await
}

/// How often a sweep visits its next slice of connections.
const SWEEP_STEP: Duration = Duration::from_millis(50);

/// Visits every connection once per `period`, one slice (by connection id)
/// every [`SWEEP_STEP`], so that no instant carries all of them: 15,000
/// streams visited at once means 15,000 writes in one burst, and live
/// records waiting behind them. Connections opened during a round are
/// visited from the next one.
async fn sweep<F>(ctx: Arc<NodeContext>, period: Duration, visit: F)
where
    F: Fn(&Registry, &[Arc<Connection>], &mut Wakers) + Send + Sync + 'static,
{
    let slices = (period.as_millis() / SWEEP_STEP.as_millis()).clamp(1, 10_000) as usize;
    let step = period / slices as u32;
    let visit = Arc::new(visit);
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: Vec<Vec<Arc<Connection>>> = Vec::new();
    loop {
        if round.is_empty() {
            round = vec![Vec::new(); slices];
            for connection in ctx.registry.connections() {
                round[(connection.id % slices as u64) as usize].push(connection);
            }
            round.reverse(); // popped from the back: slice 0 first
        }
        tick.tick().await;
        let Some(batch) = round.pop() else { continue };
        if batch.is_empty() {
            continue;
        }
        let (registry, visit) = (ctx.registry.clone(), visit.clone());
        // Takes queue (and partition) locks: keep it off the workers' hot path.
        let _ = tokio::task::spawn_blocking(move || {
            let mut wakers = Wakers::default();
            visit(&registry, &batch, &mut wakers);
        })
        .await;
    }
}

fn json_response(status: StatusCode, body: String) -> Response<HttpBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn error_response(ctx: &NodeContext, e: &ApiError) -> Response<HttpBody> {
    ctx.registry.metrics.http_rejections.inc();
    json_response(e.status(), e.body())
}

fn sse_headers(status: StatusCode) -> http::response::Builder {
    sse::STREAM_HEADERS
        .iter()
        .fold(Response::builder().status(status), |b, (name, value)| {
            b.header(*name, *value)
        })
}

/// 200, `retry:` and the end: how an SSE endpoint says "not now, come back
/// through the load balancer" without making EventSource give up.
fn come_back_later(ctx: &NodeContext, why: &str) -> Response<HttpBody> {
    let jitter = rand::thread_rng().gen_range(0..=ctx.config.retry_ms.max(1));
    let mut body = format!(": {why}\n").into_bytes();
    body.extend_from_slice(&sse::retry(ctx.config.retry_ms + jitter));
    sse_headers(StatusCode::OK)
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

async fn handle(
    ctx: Arc<NodeContext>,
    peer: SocketAddr,
    transport: CancellationToken,
    req: Request<Incoming>,
) -> Result<Response<HttpBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let cors = ctx.cors.headers(req.headers());
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > ctx.config.max_url_bytes {
        return Ok(error_response(
            &ctx,
            &ApiError::UriTooLong(ctx.config.max_url_bytes),
        ));
    }
    let mut response = match (method.clone(), path.as_str()) {
        (Method::OPTIONS, _) if req.headers().contains_key(header::ORIGIN) => {
            return Ok(preflight(&ctx, req.headers()));
        }
        (Method::GET, "/v1/events") => match events(&ctx, peer, req.uri(), req.headers()).await {
            Ok(body) => {
                body.connection.close_transport_with(transport);
                let mut head = sse_headers(StatusCode::OK);
                if req.version() < Version::HTTP_2 {
                    // A stream that ends ends its connection, as on the h1
                    // path: no pipelined request is answered after it, and
                    // the reconnect goes through the load balancer again.
                    head = head.header(header::CONNECTION, "close");
                }
                head.body(body.boxed())
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
            }
            Err(response) => response,
        },
        (Method::POST, p) if p.starts_with("/v1/topics/") => {
            let topic = percent_decode(&p["/v1/topics/".len()..]);
            let query = req.uri().query().map(str::to_owned);
            let (parts, body) = req.into_parts();
            match publish::publish(&ctx, &topic, query.as_deref(), &parts.headers, body).await {
                Ok(v) => json_response(StatusCode::OK, v.to_string()),
                Err(e) => error_response(&ctx, &e),
            }
        }
        (Method::GET | Method::HEAD, "/") => Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Full::new(Bytes::from_static(PAGE.as_bytes())).boxed())
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())),
        (Method::GET, "/metrics" | "/v1/stats") => match authorize_operations(&ctx, &req) {
            Ok(()) => operations(&ctx, &path)
                .unwrap_or_else(|| error_response(&ctx, &ApiError::NotFound(path.clone()))),
            Err(e) => error_response(&ctx, &e),
        },
        (Method::GET, p @ ("/healthz" | "/readyz")) => operations(&ctx, p)
            .unwrap_or_else(|| error_response(&ctx, &ApiError::NotFound(path.clone()))),
        (_, "/v1/events" | "/healthz" | "/readyz" | "/metrics" | "/v1/stats" | "/") => {
            error_response(&ctx, &ApiError::MethodNotAllowed(method.to_string()))
        }
        (_, p) if p.starts_with("/v1/topics/") => {
            error_response(&ctx, &ApiError::MethodNotAllowed(method.to_string()))
        }
        (_, p) => error_response(&ctx, &ApiError::NotFound(p.to_owned())),
    };
    for (name, value) in cors.into_iter().flatten() {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

fn preflight(ctx: &NodeContext, headers: &http::HeaderMap) -> Response<HttpBody> {
    match ctx.cors.preflight(headers) {
        Some(allowed) => {
            let mut r = Response::builder().status(StatusCode::NO_CONTENT);
            for (name, value) in allowed {
                r = r.header(name, value);
            }
            r.body(Full::new(Bytes::new()).boxed())
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
        }
        None => {
            let origin = headers
                .get(header::ORIGIN)
                .and_then(|o| o.to_str().ok())
                .unwrap_or_default();
            error_response(ctx, &ApiError::OriginRefused(origin.to_owned()))
        }
    }
}

/// Checks every selector against the caller's grant (or the anonymous list).
fn authorize_subscribe(
    ctx: &NodeContext,
    grant: Option<&Grant>,
    request: &subscribe::SubscribeRequest,
) -> Result<(), ApiError> {
    for s in &request.selectors {
        let key = s.key.as_deref();
        if ctx.auth.anonymous_may_subscribe(&s.topic, key) {
            continue;
        }
        let shown = match key {
            Some(k) => format!("{}/{k}", s.topic),
            None => s.topic.clone(),
        };
        match grant {
            None => {
                return Err(ApiError::Unauthorized(format!(
                "`{shown}` needs a token (Authorization: Bearer, the {} cookie, or access_token=)",
                ctx.config.auth_cookie
            )))
            }
            Some(g) if !g.may_subscribe(&s.topic, key) => {
                return Err(ApiError::Forbidden(format!(
                    "the token does not grant `{shown}`"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn percent_decode(text: &str) -> String {
    form_urlencoded::parse(format!("t={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Opens an event stream, or says why not: the response to send instead.
async fn events(
    ctx: &Arc<NodeContext>,
    peer: SocketAddr,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Result<SseBody, Response<HttpBody>> {
    let header_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let request = subscribe::parse_request(uri.query(), header_id, ctx.selector_limits())
        .map_err(|e| error_response(ctx, &e))?;
    let grant = ctx
        .auth
        .grant(headers, uri.query())
        .map_err(|e| error_response(ctx, &e))?;
    authorize_subscribe(ctx, grant.as_ref(), &request).map_err(|e| error_response(ctx, &e))?;
    if ctx.draining.load(Ordering::Acquire) {
        return Err(come_back_later(ctx, "draining"));
    }
    let address = ctx.admission.client_address(peer.ip(), headers);
    let ticket = match ctx.admission.admit(address) {
        Ok(t) => t,
        Err(Refusal::Full) => return Err(come_back_later(ctx, "node full")),
        Err(Refusal::Flooded) => return Err(come_back_later(ctx, "too many new streams")),
        Err(Refusal::TooManyFromAddress) => {
            return Err(error_response(
                ctx,
                &ApiError::TooManyRequests(format!(
                    "{address} holds {} streams already",
                    ctx.config.max_connections_per_ip
                )),
            ))
        }
    };
    let deadline = stream_deadline(ctx, grant.as_ref());
    match subscribe::open(ctx, request, peer).await {
        Ok(opened) => Ok(SseBody {
            connection: opened.sub.connection.clone(),
            registry: ctx.registry.clone(),
            starting: opened.rest,
            deadline: deadline.map(|(at, _)| Box::pin(tokio::time::sleep_until(at))),
            deadline_reason: deadline.map_or("", |(_, why)| why),
            _ticket: ticket,
        }),
        Err(ApiError::Kafka(e)) => {
            tracing::warn!(error = %e, "subscribe failed on Kafka; asking the client to retry");
            Err(come_back_later(ctx, "kafka unavailable"))
        }
        Err(e) => Err(error_response(ctx, &e)),
    }
}

/// Opens the stream of an event-stream request read by [`h1::read_head`],
/// or writes the reply that refuses it (and returns `None`).
async fn h1_open(
    ctx: &Arc<NodeContext>,
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
    parts: http::request::Parts,
) -> Option<(Version, Vec<(&'static str, http::HeaderValue)>, SseBody)> {
    let version = parts.version;
    let cors = ctx.cors.headers(&parts.headers).unwrap_or_default();
    match events(ctx, peer, &parts.uri, &parts.headers).await {
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

/// When a stream must end: its token's `exp`, or the maximum lifetime.
/// Claims are the signer's to choose: an `exp` too far ahead to be an
/// instant of this clock is no deadline, never an overflow.
fn stream_deadline(
    ctx: &NodeContext,
    grant: Option<&Grant>,
) -> Option<(tokio::time::Instant, &'static str)> {
    let now = tokio::time::Instant::now();
    let exp = grant.and_then(|g| g.expires_at).and_then(|exp| {
        let at = UNIX_EPOCH.checked_add(Duration::from_secs(exp))?;
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        Some((now.checked_add(left)?, "token_expired"))
    });
    let lifetime = ctx
        .config
        .max_stream_lifetime
        .and_then(|l| Some((now.checked_add(l)?, "max_lifetime")));
    match (exp, lifetime) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn readiness(ctx: &NodeContext) -> Response<HttpBody> {
    let kafka = ctx.kafka_reachable.load(Ordering::Acquire);
    let draining = ctx.draining.load(Ordering::Acquire);
    let status = if ctx.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        json!({"ready": ctx.is_ready(), "kafka_reachable": kafka, "draining": draining})
            .to_string(),
    )
}

fn stats(ctx: &NodeContext) -> serde_json::Value {
    let snap = ctx.registry.snapshot();
    let assigned: Vec<_> = snap.partitions.iter().filter(|p| p.assigned).collect();
    json!({
        "node_id": ctx.config.node_id,
        "connections": ctx.registry.connection_count(),
        "subscriptions": {"topics": snap.topics, "keys": snap.keys},
        "assigned_partitions": assigned,
        "partitions": snap.partitions,
        "kafka": {
            "bootstrap_servers": ctx.bootstrap,
            "embedded": ctx.embedded.is_some(),
            "reachable": ctx.kafka_reachable.load(Ordering::Acquire),
        },
        "ready": ctx.is_ready(),
    })
}

/// The streaming response: drains the connection's queue, one write per
/// wake-up; unregisters the connection when hyper drops it.
pub struct SseBody {
    connection: Arc<Connection>,
    registry: Arc<Registry>,
    /// What opening the stream still has to do once the head is out (Kafka
    /// look-ups); polled with the body, dropped when done.
    starting: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
    /// Token expiry or maximum lifetime.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    deadline_reason: &'static str,
    _ticket: Ticket,
}

impl Body for SseBody {
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
                let metrics = &this.registry.metrics;
                metrics.bytes_delivered.inc_by(drained.bytes.len() as u64);
                if let Some(ts) = drained.oldest_record_ms {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(ts);
                    metrics
                        .delivery_latency
                        .observe((now - ts).max(0) as f64 / 1000.0);
                }
                Poll::Ready(Some(Ok(Frame::data(drained.bytes))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl SseBody {
    /// Ready once the watchdog killed this stream for stalling.
    pub fn poll_killed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.connection.queue.poll_killed(cx)
    }

    pub fn is_killed(&self) -> bool {
        self.connection.queue.ended() == Some(End::Stalled)
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        self.registry.unsubscribe(&self.connection);
    }
}
