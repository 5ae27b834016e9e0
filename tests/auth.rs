//! Access control and abuse resistance: JWT grants per topic and key,
//! expiry, CORS, limits, slow headers.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";

fn key(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn claims(subscribe: &[&str], publish: &[&str]) -> serde_json::Value {
    json!({"iss": "herald-tests", "aud": "herald", "exp": now() + 600, "herald": {"subscribe": subscribe, "publish": publish}})
}

fn sign(alg: Algorithm, claims: &serde_json::Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&std::fs::read(key("rsa-private.pem")).expect("key"))
                .expect("rsa")
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&std::fs::read(key("ec-private.pem")).expect("key"))
                .expect("ec")
        }
        other => panic!("{other:?}"),
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("token")
}

fn auth_config() -> Config {
    let mut c = config();
    c.auth_hs256_secret = Some(SECRET.into());
    c.auth_public_keys = vec![key("rsa-public.pem"), key("ec-public.pem")];
    c.auth_issuer = Some("herald-tests".into());
    c.auth_audience = Some("herald".into());
    c.ops_listen = Some("127.0.0.1:0".parse().expect("address"));
    c
}

async fn status_with(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use http_body_util::BodyExt;
    let resp = http(addr, "GET", path, headers, bytes::Bytes::new()).await;
    let status = resp.status().as_u16();
    if status == 200 {
        return (status, String::new()); // an open stream: do not wait for its end
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Opens a stream on `path` with `token` in the query (`access_token=`).
async fn open_with_token(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    last_event_id: Option<&str>,
) -> Stream {
    open(addr, &format!("{path}&access_token={token}"), last_event_id).await
}

fn code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("JSON error body, got {body:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_misdirected_tokens_are_refused() {
    let node = node_with(auth_config()).await;
    node.create_topic("scores", 4).await.expect("topic");
    let addr = node.local_addr();
    let path = events_path(&["scores/m1"], "");
    let bearer = |t: &str| format!("Bearer {t}");
    let good = claims(&["scores/*"], &[]);

    // Accepted: each algorithm, each carrier.
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
        let t = sign(alg, &good);
        assert_eq!(
            status_with(addr, &path, &[("authorization", &bearer(&t))])
                .await
                .0,
            200,
            "{alg:?}"
        );
    }
    let t = sign(Algorithm::HS256, &good);
    assert_eq!(
        status_with(
            addr,
            &path,
            &[("cookie", &format!("other=1; herald_token={t}"))]
        )
        .await
        .0,
        200,
        "cookie"
    );
    assert_eq!(
        status_with(addr, &format!("{path}&access_token={t}"), &[])
            .await
            .0,
        200,
        "query parameter"
    );

    // Refused with 401.
    let mut refused: Vec<(&str, String)> = Vec::new();
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(good.to_string());
    refused.push(("alg none", format!("{none_header}.{payload}.")));
    // Algorithm confusion: HS256 "signed" with the RSA public key as the secret.
    let public_pem = std::fs::read(key("rsa-public.pem")).expect("pem");
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(&public_pem),
    )
    .expect("token");
    refused.push(("HS256 with the RSA public key", confused));
    let mut c = good.clone();
    c["iss"] = json!("someone-else");
    refused.push(("wrong iss", sign(Algorithm::RS256, &c)));
    let mut c = good.clone();
    c["aud"] = json!("another-service");
    refused.push(("wrong aud", sign(Algorithm::ES256, &c)));
    let mut c = good.clone();
    c["exp"] = json!(now() - 10);
    refused.push(("expired", sign(Algorithm::HS256, &c)));
    let mut c = good.clone();
    c["nbf"] = json!(now() + 600);
    refused.push(("not yet valid", sign(Algorithm::HS256, &c)));
    let mut c = good.clone();
    c.as_object_mut().map(|o| o.remove("exp"));
    refused.push(("no exp", sign(Algorithm::HS256, &c)));
    let other = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(b"another-secret-that-is-32-bytes-long!"),
    )
    .expect("token");
    refused.push(("bad signature", other));
    let mut tampered = sign(Algorithm::RS256, &claims(&["scores"], &[]));
    let mid = tampered.find('.').expect("dot") + 1;
    tampered.replace_range(mid..mid + 4, "AAAA");
    refused.push(("tampered payload", tampered));
    refused.push(("garbage", "not.a.token".into()));
    for (what, token) in &refused {
        let (status, body) = status_with(addr, &path, &[("authorization", &bearer(token))]).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(code(&body), "unauthorized", "{what}");
    }
    let (status, body) = status_with(addr, &path, &[]).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (401, "unauthorized"),
        "no token"
    );
    // Valid token, selector outside its grant: 403.
    let t = sign(Algorithm::HS256, &claims(&["scores/m1"], &[]));
    let (status, body) = status_with(
        addr,
        &events_path(&["scores/m2"], ""),
        &[("authorization", &bearer(&t))],
    )
    .await;
    assert_eq!((status, code(&body).as_str()), (403, "forbidden"));
    let (status, _) = status_with(
        addr,
        &events_path(&["scores"], ""),
        &[("authorization", &bearer(&t))],
    )
    .await;
    assert_eq!(status, 403, "a key grant is not the whole topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_nothing_of_each_other_live_replayed_or_forged() {
    let node = node_with(auth_config()).await;
    node.create_topic("tenant-a.orders", 4)
        .await
        .expect("topic");
    node.create_topic("tenant-b.orders", 4)
        .await
        .expect("topic");
    let addr = node.local_addr();
    let a = format!(
        "Bearer {}",
        sign(Algorithm::HS256, &claims(&["tenant-a.*"], &[]))
    );
    let b = format!(
        "Bearer {}",
        sign(Algorithm::RS256, &claims(&["tenant-b.*"], &[]))
    );
    let p = producer(node.bootstrap_servers());
    for i in 0..20 {
        produce(
            &p,
            "tenant-a.orders",
            Some(&format!("k{i}")),
            format!("a{i}").as_bytes(),
        )
        .await;
        produce(
            &p,
            "tenant-b.orders",
            Some(&format!("k{i}")),
            format!("b{i}").as_bytes(),
        )
        .await;
    }
    // Replayed: each tenant from the earliest record of its own topic.
    let open_as = |token: String, path: String, last: Option<String>| async move {
        let mut headers = vec![("authorization".to_string(), token)];
        if let Some(id) = last {
            headers.push(("last-event-id".to_string(), id));
        }
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        http(addr, "GET", &path, &h, bytes::Bytes::new()).await
    };
    let mut sa = open_with_token(
        addr,
        &events_path(&["tenant-a.orders"], "from=earliest"),
        &a[7..],
        None,
    )
    .await;
    assert_eq!(sa.status, 200, "{}", sa.body);
    let got = sa.take(20, SECS_10).await;
    assert!(got
        .iter()
        .all(|e| e.data.as_deref().is_some_and(|d| d.starts_with('a'))));
    let a_cursor = sa.last_id.clone().expect("id");
    let mut sb = open_with_token(
        addr,
        &events_path(&["tenant-b.orders"], "from=earliest"),
        &b[7..],
        None,
    )
    .await;
    let got = sb.take(20, SECS_10).await;
    assert!(got
        .iter()
        .all(|e| e.data.as_deref().is_some_and(|d| d.starts_with('b'))));
    let b_cursor = sb.last_id.clone().expect("id");
    // Live.
    produce(&p, "tenant-a.orders", Some("x"), b"a-live").await;
    produce(&p, "tenant-b.orders", Some("x"), b"b-live").await;
    assert_eq!(
        sa.next_data(SECS_10).await.and_then(|e| e.data).as_deref(),
        Some("a-live")
    );
    assert_eq!(
        sb.next_data(SECS_10).await.and_then(|e| e.data).as_deref(),
        Some("b-live")
    );
    let sentinels = produce_sentinels(&p, "tenant-a.orders", 4, "live").await;
    expect_only(
        &mut sa,
        &sentinels,
        "tenant b's record on tenant a's stream",
    )
    .await;
    // Tenant a asks for b's topic: refused, whatever the cursor.
    let r = open_as(
        a.clone(),
        events_path(&["tenant-b.orders"], ""),
        Some(b_cursor.clone()),
    )
    .await;
    assert_eq!(r.status(), 403);
    // Tenant a presents b's cursor on its own topic: refused, nothing delivered.
    let r = open_as(
        a.clone(),
        events_path(&["tenant-a.orders"], ""),
        Some(b_cursor),
    )
    .await;
    assert_eq!(r.status(), 400);
    // A forged cursor: tenant a's own fingerprint with every offset at 0.
    // It can only rewind a's own partitions, never reach b's.
    let raw = URL_SAFE_NO_PAD.decode(&a_cursor).expect("base64url");
    let fingerprint = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]);
    let mut forged = String::new();
    herald::cursor::Cursor::encode_into(fingerprint, [0i64; 4], &mut forged);
    let mut s = open_with_token(
        addr,
        &events_path(&["tenant-a.orders"], ""),
        &a[7..],
        Some(&forged),
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.body);
    // Tenant a's 20 records, its live one and the 4 sentinels, replayed.
    let got = s.take(25, SECS_10).await;
    assert!(
        got.iter().all(|e| e
            .data
            .as_deref()
            .is_some_and(|d| d.starts_with('a') || d.starts_with("sentinel:live"))),
        "0 deliveries across tenants"
    );
    let sentinels = produce_sentinels(&p, "tenant-a.orders", 4, "forged").await;
    expect_only(&mut s, &sentinels, "a record beyond tenant a's own").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_token_expires() {
    let node = node_with(auth_config()).await;
    node.create_topic("ticks", 1).await.expect("topic");
    let addr = node.local_addr();
    let exp = now() + 2;
    let mut c = claims(&["ticks"], &[]);
    c["exp"] = json!(exp);
    let token = sign(Algorithm::HS256, &c);
    let exp_at = Instant::now()
        + Duration::from_secs(exp).saturating_sub(Duration::from_secs_f64(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        ));
    let mut s = open_with_token(addr, &events_path(&["ticks"], ""), &token, None).await;
    assert_eq!(s.status, 200);
    let producing = {
        let p = producer(node.bootstrap_servers());
        tokio::spawn(async move {
            for i in 0..80 {
                produce(&p, "ticks", None, format!("{i}").as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(50)).await; // a steady stream across the expiry
            }
        })
    };
    let mut data_after_exp = 0;
    let mut expired = None;
    let mut delivered = 0;
    while !s.ended {
        match s.next_event(Duration::from_secs(5)).await {
            Some(e) if e.event.as_deref() == Some("herald.expired") => {
                expired = Some(Instant::now())
            }
            Some(e) if e.data.is_some() => {
                delivered += 1;
                if Instant::now() > exp_at + Duration::from_millis(20) {
                    data_after_exp += 1;
                }
            }
            Some(_) => {}
            None => assert!(s.ended, "the stream must end, not stall"),
        }
    }
    let ended = Instant::now();
    producing.abort();
    assert!(delivered > 5, "records flowed before the expiry");
    assert_eq!(data_after_exp, 0, "no event after exp");
    assert!(expired.is_some(), "a herald.expired event");
    assert!(
        ended <= exp_at + Duration::from_secs(1),
        "closed within 1 s of exp (late by {:?})",
        ended.saturating_duration_since(exp_at)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_a_publish_grant_and_anonymous_topics_need_none() {
    let mut c = auth_config();
    c.anonymous_topics = vec!["news".into()];
    c.max_stream_lifetime = Some(Duration::from_millis(500));
    let node = node_with(c).await;
    node.create_topic("news", 1).await.expect("topic");
    node.create_topic("orders", 1).await.expect("topic");
    let addr = node.local_addr();
    let publish = |token: Option<String>| async move {
        let h: Vec<(&str, String)> = token
            .map(|t| ("authorization", format!("Bearer {t}")))
            .into_iter()
            .collect();
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(
            addr,
            "POST",
            "/v1/topics/orders?key=o1",
            &h,
            bytes::Bytes::from_static(b"x"),
        )
        .await
        .status()
        .as_u16()
    };
    assert_eq!(publish(None).await, 401);
    assert_eq!(
        publish(Some(sign(Algorithm::HS256, &claims(&["orders"], &[])))).await,
        403
    );
    assert_eq!(
        publish(Some(sign(Algorithm::HS256, &claims(&[], &["orders/o2"])))).await,
        403
    );
    assert_eq!(
        publish(Some(sign(Algorithm::HS256, &claims(&[], &["orders/o1"])))).await,
        200
    );
    // Anonymous topics need no token; others do.
    let mut s = open(addr, &events_path(&["news"], ""), None).await;
    assert_eq!(s.status, 200);
    assert_eq!(
        status_with(addr, &events_path(&["orders"], ""), &[])
            .await
            .0,
        401
    );
    // The maximum stream lifetime ends even an anonymous stream, with a reason.
    let mut reason = None;
    while !s.ended {
        if let Some(e) = s.next_event(SECS_10).await {
            if e.event.as_deref() == Some("herald.expired") {
                reason = e.data;
            }
        }
    }
    assert!(reason.is_some_and(|r| r.contains("max_lifetime")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_token_publishes_only_from_an_allowed_origin_and_a_bearer_from_anywhere() {
    let mut c = auth_config();
    c.cors_origins = vec!["https://app.example".into(), "*".into()];
    let node = node_with(c).await;
    node.create_topic("orders", 1).await.expect("topic");
    let addr = node.local_addr();
    let token = sign(Algorithm::HS256, &claims(&["orders"], &["orders"]));
    let cookie = format!("herald_token={token}");
    let bearer = format!("Bearer {token}");
    let own_page = format!("http://{addr}");
    let post = |headers: Vec<(&'static str, String)>, value: &'static str| async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(
            addr,
            "POST",
            "/v1/topics/orders",
            &h,
            bytes::Bytes::from_static(value.as_bytes()),
        )
        .await
        .status()
        .as_u16()
    };
    let evil = || ("origin", "https://evil.example".to_string());
    // What a page on any site can make a browser send: the cookie rides along.
    assert_eq!(
        post(vec![("cookie", cookie.clone()), evil()], "from-evil").await,
        403
    );
    assert_eq!(
        post(vec![("cookie", cookie.clone())], "no-origin").await,
        403
    );
    assert_eq!(
        post(
            vec![("cookie", cookie.clone()), ("origin", "null".into())],
            "null-origin"
        )
        .await,
        403
    );
    // The allowed origin and the node's own page may.
    assert_eq!(
        post(
            vec![
                ("cookie", cookie.clone()),
                ("origin", "https://app.example".into())
            ],
            "app"
        )
        .await,
        200
    );
    assert_eq!(
        post(
            vec![("cookie", cookie.clone()), ("origin", own_page)],
            "own-page"
        )
        .await,
        200
    );
    // A bearer token is never attached by a browser on its own: any origin.
    assert_eq!(
        post(vec![("authorization", bearer.clone()), evil()], "bearer").await,
        200
    );
    assert_eq!(
        post(vec![("authorization", bearer.clone())], "sentinel").await,
        200
    );
    // Exactly the allowed writes reached Kafka.
    let mut s = open_with_token(
        addr,
        &events_path(&["orders"], "from=earliest"),
        &token,
        None,
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.body);
    let got: Vec<String> = s
        .take(4, SECS_10)
        .await
        .into_iter()
        .filter_map(|e| e.data)
        .collect();
    assert_eq!(got, ["app", "own-page", "bearer", "sentinel"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_at_the_end_of_time_is_served_without_a_panic() {
    let node = node_with(auth_config()).await;
    node.create_topic("forever", 1).await.expect("topic");
    let addr = node.local_addr();
    let p = producer(node.bootstrap_servers());
    for exp in [u64::MAX, u64::MAX / 2, i64::MAX as u64] {
        let mut c = claims(&["forever"], &[]);
        c["exp"] = json!(exp);
        let token = sign(Algorithm::HS256, &c);
        let mut s = open_with_token(addr, &events_path(&["forever"], ""), &token, None).await;
        assert_eq!(s.status, 200, "exp {exp}: {}", s.body);
        let value = format!("exp-{exp}");
        produce(&p, "forever", None, value.as_bytes()).await;
        assert_eq!(
            s.next_data(SECS_10).await.and_then(|e| e.data),
            Some(value),
            "exp {exp}: the stream is served"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_views_need_an_ops_grant_on_the_public_port_and_nothing_on_their_own() {
    let node = node_with(auth_config()).await;
    node.create_topic("secret-keys", 1).await.expect("topic");
    let addr = node.local_addr();
    let ops = node.ops_addr().expect("an operations listener");
    let reader = sign(Algorithm::HS256, &claims(&["secret-keys"], &[]));
    let mut operator = claims(&[], &[]);
    operator["herald"]["ops"] = json!(true);
    let operator = sign(Algorithm::HS256, &operator);
    // Someone reads a key, which /v1/stats would name.
    let s = open_with_token(
        addr,
        &events_path(&["secret-keys/alice"], ""),
        &reader,
        None,
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.body);
    for path in ["/metrics", "/v1/stats"] {
        let (status, body) = status_with(addr, path, &[]).await;
        assert_eq!(
            (status, code(&body).as_str()),
            (401, "unauthorized"),
            "{path}"
        );
        let bearer = format!("Bearer {reader}");
        let (status, body) = status_with(addr, path, &[("authorization", &bearer)]).await;
        assert_eq!((status, code(&body).as_str()), (403, "forbidden"), "{path}");
        let bearer = format!("Bearer {operator}");
        let (status, _) = status_with(addr, path, &[("authorization", &bearer)]).await;
        assert_eq!(status, 200, "{path} with the ops grant");
        let (status, body) = request(ops, "GET", path, b"").await;
        assert_eq!(status, 200, "{path} on the operations listener: {body}");
    }
    let (_, body) = request(ops, "GET", "/v1/stats", b"").await;
    assert!(body.contains("secret-keys/alice"), "{body}");
    // Probes stay public; the operations listener serves nothing else.
    assert_eq!(request(addr, "GET", "/healthz", b"").await.0, 200);
    assert_eq!(request(addr, "GET", "/readyz", b"").await.0, 200);
    assert_eq!(request(ops, "GET", "/readyz", b"").await.0, 200);
    assert_eq!(
        request(ops, "GET", "/v1/events?topic=secret-keys", b"")
            .await
            .0,
        404
    );
    assert_eq!(
        request(ops, "POST", "/v1/topics/secret-keys", b"x").await.0,
        404
    );
    assert_eq!(request(ops, "POST", "/metrics", b"x").await.0, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_listed_origins_with_credentials_and_refuses_others() {
    let mut c = config();
    c.cors_origins = vec!["https://app.example".into()];
    let node = node_with(c).await;
    node.create_topic("t", 1).await.expect("topic");
    let addr = node.local_addr();
    let preflight = |origin: &'static str| async move {
        http(
            addr,
            "OPTIONS",
            "/v1/events?topic=t",
            &[
                ("origin", origin),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "last-event-id"),
            ],
            bytes::Bytes::new(),
        )
        .await
    };
    let ok = preflight("https://app.example").await;
    assert_eq!(ok.status(), 204);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    assert!(ok.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap_or_default()
        .contains("last-event-id"));
    let refused = preflight("https://evil.example").await;
    assert_eq!(refused.status(), 403);
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let s = http(
        addr,
        "GET",
        "/v1/events?topic=t",
        &[("origin", "https://app.example")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(
        s.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let s = http(
        addr,
        "GET",
        "/v1/events?topic=t",
        &[("origin", "https://evil.example")],
        bytes::Bytes::new(),
    )
    .await;
    assert!(
        s.headers().get("access-control-allow-origin").is_none(),
        "no CORS headers for a refused origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_answers_as_documented_one_past_it() {
    let mut c = config();
    c.max_connections = 2;
    c.max_selectors = 2;
    c.max_key_bytes = 8;
    c.max_url_bytes = 300;
    c.max_header_bytes = 8192;
    let node = node_with(c).await;
    node.create_topic("t", 2).await.expect("topic");
    let addr = node.local_addr();
    // Selectors, key length, URL length: 4xx with JSON.
    let (s, b) = request(addr, "GET", &events_path(&["t/a", "t/b", "t/c"], ""), b"").await;
    assert_eq!((s, code(&b).as_str()), (400, "bad_request"));
    let (s, b) = request(addr, "GET", &events_path(&["t/123456789"], ""), b"").await;
    assert_eq!((s, code(&b).as_str()), (400, "bad_request"));
    assert_eq!(
        status_with(addr, &events_path(&["t/12345678"], ""), &[])
            .await
            .0,
        200,
        "at the limit"
    );
    let long = format!("/v1/events?topic=t&pad={}", "x".repeat(300));
    let (s, b) = request(addr, "GET", &long, b"").await;
    assert_eq!((s, code(&b).as_str()), (414, "uri_too_long"));
    // Headers larger than the limit: 431 from the HTTP layer.
    let big = "y".repeat(9000);
    let r = http(
        addr,
        "GET",
        "/healthz",
        &[("x-big", &big)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status(), 431);
    // Connections per node: the third stream gets 200, retry:, and an end.
    let _one = open(addr, &events_path(&["t"], ""), None).await;
    let _two = open(addr, &events_path(&["t"], ""), None).await;
    let mut three = open(addr, &events_path(&["t"], ""), None).await;
    assert_eq!(three.status, 200);
    let e = three.next_event(SECS_10).await.expect("retry");
    assert!(e.retry.is_some());
    assert!(three.until_end(SECS_10).await);
    assert_eq!(
        request(addr, "GET", "/readyz", b"").await.0,
        503,
        "a full node is not ready"
    );
    drop(_one);
    wait_for("ready again", SECS_10, || async {
        request(addr, "GET", "/readyz", b"").await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_and_arrival_rate_limits() {
    let mut c = config();
    c.max_connections_per_ip = 1;
    c.trusted_proxy_header = Some("x-forwarded-for".into());
    let node = node_with(c).await;
    node.create_topic("t", 1).await.expect("topic");
    let addr = node.local_addr();
    let path = events_path(&["t"], "");
    let _first = http(
        addr,
        "GET",
        &path,
        &[("x-forwarded-for", "203.0.113.7")],
        bytes::Bytes::new(),
    )
    .await;
    let second = http(
        addr,
        "GET",
        &path,
        &[("x-forwarded-for", "203.0.113.7")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(second.status(), 429);
    let other = http(
        addr,
        "GET",
        &path,
        &[("x-forwarded-for", "198.51.100.1")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(
        other.status(),
        200,
        "another client address is not affected"
    );

    let mut c = config();
    c.max_new_streams_per_second = 2;
    let node = node_with(c).await;
    node.create_topic("t", 1).await.expect("topic");
    let addr = node.local_addr();
    let _a = open(addr, &path, None).await;
    let _b = open(addr, &path, None).await;
    let mut third = open(addr, &path, None).await;
    assert_eq!(
        third.status, 200,
        "a flood gets 200, retry: and an end, never a status that stops EventSource"
    );
    let hint = third.next_event(SECS_10).await.expect("a retry: hint");
    assert!(
        hint.retry.is_some(),
        "the flood answer carries retry: ({hint:?})"
    );
    assert!(third.until_end(SECS_10).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_while_normal_clients_get_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = config();
    c.header_read_timeout = Duration::from_secs(2);
    let node = node_with(c).await;
    let addr = node.local_addr();
    let mut tasks = tokio::task::JoinSet::new();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..1000u32 {
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % 4) as u8);
        let counted = started.clone();
        tasks.spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind((source, 0).into()).expect("bind");
            let mut s = socket.connect(addr).await.expect("connect");
            let started = Instant::now();
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
            counted.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let mut buf = [0u8; 64];
            loop {
                // One header byte every 500 ms, until the server hangs up.
                tokio::select! {
                    r = s.read(&mut buf) => { if matches!(r, Ok(0) | Err(_)) { return started.elapsed(); } }
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if s.write_all(b"X").await.is_err() { return started.elapsed(); }
                    }
                }
                assert!(started.elapsed() < Duration::from_secs(20), "a slowloris connection was never closed");
            }
        });
    }
    // Meanwhile a normal client is served promptly.
    wait_for(
        "the slow connections are open and have sent their first bytes",
        SECS_10,
        || async { started.load(std::sync::atomic::Ordering::Acquire) == 1000 },
    )
    .await;
    let t = Instant::now();
    let (status, _) = request(addr, "GET", "/healthz", b"").await;
    let normal = t.elapsed();
    assert_eq!(status, 200);
    assert!(
        normal < Duration::from_secs(1),
        "normal client took {normal:?}"
    );
    let mut longest = Duration::ZERO;
    while let Some(r) = tasks.join_next().await {
        longest = longest.max(r.expect("slow client"));
    }
    assert!(
        longest < Duration::from_secs(5),
        "all closed by the 2 s header timeout (longest {longest:?})"
    );
    println!("slowloris: 1000 connections closed after at most {longest:?}; a normal request took {normal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_in_headless_chromium_allowed_origin_with_credentials_and_refused_origin() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "playwright-core and chromium are missing: run `make test` (scripts/install-deps.sh test)"
    );
    // Node a only serves a page, on two origins (127.0.0.1 and localhost).
    let a = node().await;
    let mut c = auth_config();
    c.cors_origins = vec![format!("http://127.0.0.1:{}", a.local_addr().port())];
    let b = node_with(c).await;
    b.create_topic("shared-feed", 2).await.expect("topic");
    let read = sign(Algorithm::HS256, &claims(&["shared-feed"], &[]));
    let write = sign(Algorithm::HS256, &claims(&[], &["shared-feed"]));
    let port = a.local_addr().port();
    let out = tokio::process::Command::new("node")
        .current_dir(&dir)
        .args([
            "cors.mjs",
            &format!("http://127.0.0.1:{port}/"),
            &format!("http://localhost:{port}/"),
            &format!("http://127.0.0.1:{}", b.local_addr().port()),
            "shared-feed",
            &read,
            &write,
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("bounded")
        .expect("node runs");
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}
