//! Cross-origin access for browsers: an allow-list of origins.
//!
//! An allowed origin is echoed back (with `Vary: Origin`) and may send
//! credentials (cookies, for cookie-carried tokens). `*` in the list allows
//! any origin but then never with credentials, as the Fetch standard
//! requires. Preflights (`OPTIONS` with `Access-Control-Request-Method`) are
//! answered here; a disallowed origin gets no CORS headers, so the browser
//! refuses the response.

use http::{HeaderMap, HeaderValue};

#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Vec<String>,
    any: bool,
    credentials: bool,
}

const ALLOWED_METHODS: &str = "GET, POST, OPTIONS";
const ALLOWED_HEADERS: &str = "authorization, content-type, last-event-id, herald-key";
const MAX_AGE_SECONDS: &str = "600";

impl Cors {
    pub fn new(origins: &[String], credentials: bool) -> Cors {
        let any = origins.iter().any(|o| o == "*");
        Cors {
            origins: origins
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            any,
            credentials,
        }
    }

    fn allowed(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// Headers to add to a response for a request from `origin`; `None` when
    /// the origin is not allowed (or there is no `Origin` header).
    pub fn headers(&self, request: &HeaderMap) -> Option<Vec<(&'static str, HeaderValue)>> {
        let origin = request.get(http::header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        let mut out = Vec::with_capacity(4);
        if self.allowed(text) {
            out.push(("access-control-allow-origin", origin.clone()));
            out.push(("vary", HeaderValue::from_static("Origin")));
            if self.credentials {
                out.push((
                    "access-control-allow-credentials",
                    HeaderValue::from_static("true"),
                ));
            }
        } else if self.any {
            out.push(("access-control-allow-origin", HeaderValue::from_static("*")));
        } else {
            return None;
        }
        Some(out)
    }

    /// Whether the page that sent this request is one whose writes the
    /// user's cookie may carry: its `Origin` is on the allow-list (by name:
    /// `*` does not count), or is this node itself (the built-in page). No
    /// `Origin` at all is refused too: every browser sends one with a POST.
    pub fn vouches_for(&self, request: &HeaderMap) -> bool {
        let Some(origin) = request
            .get(http::header::ORIGIN)
            .and_then(|o| o.to_str().ok())
        else {
            return false;
        };
        if self.allowed(origin) {
            return true;
        }
        let own_host = request
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        match (origin.split_once("://"), own_host) {
            (Some((_, host)), Some(own)) => host.eq_ignore_ascii_case(own),
            _ => false,
        }
    }

    /// Headers for a preflight answer, or `None` when the origin is refused.
    pub fn preflight(&self, request: &HeaderMap) -> Option<Vec<(&'static str, HeaderValue)>> {
        let mut out = self.headers(request)?;
        out.push((
            "access-control-allow-methods",
            HeaderValue::from_static(ALLOWED_METHODS),
        ));
        let headers = request
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(ALLOWED_HEADERS));
        out.push(("access-control-allow-headers", headers));
        out.push((
            "access-control-max-age",
            HeaderValue::from_static(MAX_AGE_SECONDS),
        ));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::ORIGIN,
            HeaderValue::from_str(origin).unwrap_or(HeaderValue::from_static("x")),
        );
        h
    }

    #[test]
    fn allow_list_with_credentials_and_never_star_with_credentials() {
        let c = Cors::new(&["https://app.example".into()], true);
        let h = c.headers(&req("https://app.example")).unwrap_or_default();
        assert!(h
            .iter()
            .any(|(k, v)| *k == "access-control-allow-origin" && v == "https://app.example"));
        assert!(h
            .iter()
            .any(|(k, _)| *k == "access-control-allow-credentials"));
        assert!(c.headers(&req("https://evil.example")).is_none());
        let star = Cors::new(&["*".into()], true);
        let h = star
            .headers(&req("https://any.example"))
            .unwrap_or_default();
        assert!(h
            .iter()
            .any(|(k, v)| *k == "access-control-allow-origin" && v == "*"));
        assert!(!h
            .iter()
            .any(|(k, _)| *k == "access-control-allow-credentials"));
    }

    #[test]
    fn only_listed_origins_and_the_node_itself_vouch_for_cookie_writes() {
        let c = Cors::new(&["https://app.example".into(), "*".into()], true);
        assert!(c.vouches_for(&req("https://app.example")));
        assert!(
            !c.vouches_for(&req("https://evil.example")),
            "`*` vouches for nobody"
        );
        assert!(!c.vouches_for(&req("null")));
        assert!(
            !c.vouches_for(&HeaderMap::new()),
            "no Origin: not a page we know"
        );
        let mut own = req("http://herald.local:8080");
        own.insert(
            http::header::HOST,
            HeaderValue::from_static("herald.local:8080"),
        );
        assert!(c.vouches_for(&own), "the built-in page");
        own.insert(http::header::HOST, HeaderValue::from_static("other:8080"));
        assert!(!c.vouches_for(&own));
    }
}
