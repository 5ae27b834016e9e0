//! Who may read and write what: JWT bearer tokens with per-topic grants.
//!
//! A token (HS256 with a shared secret, RS256 or ES256 with a public key)
//! comes from `Authorization: Bearer`, a cookie, or the `access_token` query
//! parameter, in that order. Its `herald` claim lists patterns:
//! `{"herald": {"subscribe": ["scores/*"], "publish": ["scores"]}}`, and
//! `"ops": true` for the operations views (`/metrics`, `/v1/stats`).
//!
//! Patterns are [`crate::pattern`]'s: `scores` (the topic and its keys),
//! `scores/m1` (one key), `scores/*` (any key), `tenant-a.*`, `*`.
//!
//! The key for a token is chosen by the token's own `alg`, but only among the
//! keys configured for that algorithm family, so an HS256 token "signed" with
//! a public key, or `alg: none`, is refused. Without any key configured the
//! node is open (every topic readable and writable), and says so at start-up.

use std::path::PathBuf;

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::ApiError;
use crate::pattern::Pattern;

const QUERY_PARAMETER: &str = "access_token";

/// Where a request carried its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenSource {
    Bearer,
    Cookie,
    Query,
}

/// What a caller may do.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    subscribe: Vec<Pattern>,
    publish: Vec<Pattern>,
    /// May read the node's operations views (`/metrics`, `/v1/stats`).
    ops: bool,
    /// The token's `exp`, seconds since the epoch.
    pub expires_at: Option<u64>,
    /// The token came from the cookie, which a browser attaches to requests
    /// any site makes: it proves the user, not the page that asks. Writes
    /// with it need an allowed `Origin` (see `Cors::vouches_for`).
    pub from_cookie: bool,
    /// Everything is allowed (no auth configured).
    open: bool,
    /// Mandatory filters by topic pattern (`herald.where`).
    filters: Vec<(Pattern, String)>,
    /// The token's `sub`: who holds it (presence may list it).
    pub user: Option<String>,
}

impl Grant {
    pub fn open() -> Grant {
        Grant {
            open: true,
            ..Grant::default()
        }
    }

    pub fn may_subscribe(&self, topic: &str, key: Option<&str>) -> bool {
        self.open || self.subscribe.iter().any(|p| p.allows(topic, key))
    }

    pub fn may_publish(&self, topic: &str, key: Option<&str>) -> bool {
        self.open || self.publish.iter().any(|p| p.allows(topic, key))
    }

    pub fn may_operate(&self) -> bool {
        self.open || self.ops
    }

    /// The filters the token makes mandatory on records of `topic`. A
    /// pattern's key part is ignored: a claim on `orders/*` filters all of
    /// `orders` (never less than it says).
    pub fn filters_for(&self, topic: &str) -> Vec<String> {
        self.filters
            .iter()
            .filter(|(p, _)| {
                let whole = p.as_str().split_once('/').map_or(p.as_str(), |(t, _)| t);
                Pattern::new(whole).allows(topic, None)
            })
            .map(|(_, f)| f.clone())
            .collect()
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    exp: Option<u64>,
    sub: Option<String>,
    #[serde(default)]
    herald: HeraldClaim,
}

#[derive(Debug, Default, Deserialize)]
struct HeraldClaim {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    ops: bool,
    /// Mandatory filters: one CEL expression for every topic, or one per
    /// topic pattern.
    #[serde(default, rename = "where")]
    filter: Option<WhereClaim>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WhereClaim {
    All(String),
    ByTopic(std::collections::BTreeMap<String, String>),
}

/// Auth settings, from configuration.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub hs256_secret: Option<String>,
    pub public_keys: Vec<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub cookie: String,
    pub anonymous: Vec<String>,
    pub leeway_seconds: u64,
}

pub struct Auth {
    hmac: Option<DecodingKey>,
    rsa: Vec<DecodingKey>,
    ec: Vec<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    cookie: String,
    anonymous: Vec<Pattern>,
    leeway: u64,
}

impl Auth {
    pub fn new(config: &AuthConfig) -> anyhow::Result<Auth> {
        let mut rsa = Vec::new();
        let mut ec = Vec::new();
        for path in &config.public_keys {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read public key {}: {e}", path.display()))?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                rsa.push(k);
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                ec.push(k);
            } else {
                anyhow::bail!(
                    "{} is neither an RSA nor an EC (P-256) public key in PEM form",
                    path.display()
                );
            }
        }
        let hmac = match config.hs256_secret.as_deref() {
            Some(s) if s.len() < 32 => anyhow::bail!("the HS256 secret must be at least 32 bytes"),
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes())),
            None => None,
        };
        Ok(Auth {
            hmac,
            rsa,
            ec,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            cookie: config.cookie.clone(),
            anonymous: config.anonymous.iter().map(|p| Pattern::new(p)).collect(),
            leeway: config.leeway_seconds,
        })
    }

    /// The cookie a token may come in.
    pub fn cookie_name(&self) -> &str {
        &self.cookie
    }

    /// No key configured: anyone may do anything.
    pub fn is_open(&self) -> bool {
        self.hmac.is_none() && self.rsa.is_empty() && self.ec.is_empty()
    }

    /// Whether anonymous callers may read this selector.
    pub fn anonymous_may_subscribe(&self, topic: &str, key: Option<&str>) -> bool {
        self.anonymous.iter().any(|p| p.allows(topic, key))
    }

    /// The token a request carries, if any, and where it was.
    fn token(&self, headers: &HeaderMap, query: Option<&str>) -> Option<(String, TokenSource)> {
        if let Some(v) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            if let Some(t) = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
            {
                return Some((t.trim().to_owned(), TokenSource::Bearer));
            }
        }
        for cookies in headers.get_all(http::header::COOKIE) {
            let Ok(cookies) = cookies.to_str() else {
                continue;
            };
            for c in cookies.split(';') {
                if let Some((name, value)) = c.trim().split_once('=') {
                    if name == self.cookie {
                        return Some((value.to_owned(), TokenSource::Cookie));
                    }
                }
            }
        }
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(k, _)| k == QUERY_PARAMETER)
            .map(|(_, v)| (v.into_owned(), TokenSource::Query))
    }

    /// The caller's grant: open, anonymous (no token), or from a valid token.
    /// A token that is present but invalid is an error, never anonymous.
    pub fn grant(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Grant>, ApiError> {
        if self.is_open() {
            return Ok(Some(Grant::open()));
        }
        match self.token(headers, query) {
            None => Ok(None),
            Some((t, source)) => self.verify(&t).map(|mut g| {
                g.from_cookie = source == TokenSource::Cookie;
                Some(g)
            }),
        }
    }

    fn verify(&self, token: &str) -> Result<Grant, ApiError> {
        let invalid = |why: &str| ApiError::Unauthorized(format!("invalid token: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e.to_string()))?;
        let keys: Vec<&DecodingKey> = match header.alg {
            Algorithm::HS256 => self.hmac.iter().collect(),
            Algorithm::RS256 => self.rsa.iter().collect(),
            Algorithm::ES256 => self.ec.iter().collect(),
            other => return Err(invalid(&format!("algorithm {other:?} is not accepted"))),
        };
        if keys.is_empty() {
            return Err(invalid(&format!(
                "no {:?} key is configured on this node",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let mut last = None;
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let c = data.claims;
                    let filters = match c.herald.filter {
                        None => Vec::new(),
                        Some(WhereClaim::All(f)) => vec![(Pattern::new("*"), f)],
                        Some(WhereClaim::ByTopic(m)) => {
                            m.into_iter().map(|(p, f)| (Pattern::new(&p), f)).collect()
                        }
                    };
                    return Ok(Grant {
                        subscribe: c.herald.subscribe.iter().map(|p| Pattern::new(p)).collect(),
                        publish: c.herald.publish.iter().map(|p| Pattern::new(p)).collect(),
                        ops: c.herald.ops,
                        expires_at: c.exp,
                        from_cookie: false,
                        open: false,
                        filters,
                        user: c.sub.filter(|s| !s.is_empty() && s.len() <= MAX_SUB_BYTES),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(invalid(&last.map(|e| e.to_string()).unwrap_or_default()))
    }
}

/// The longest `sub` claim presence carries; a longer one is ignored.
pub const MAX_SUB_BYTES: usize = 256;

/// Mints an HS256 token (the `herald token` command).
pub fn mint(args: &crate::config::TokenArgs) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        .saturating_add(args.ttl.as_secs());
    let mut claims = serde_json::json!({
        "exp": exp,
        "herald": {"subscribe": args.subscribe, "publish": args.publish, "ops": args.ops},
    });
    if let Some(iss) = &args.issuer {
        claims["iss"] = iss.clone().into();
    }
    if let Some(aud) = &args.audience {
        claims["aud"] = aud.clone().into();
    }
    if let Some(f) = &args.filter {
        claims["herald"]["where"] = f.clone().into();
    }
    if let Some(sub) = &args.sub {
        claims["sub"] = sub.clone().into();
    }
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(args.secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify() {
        let args = crate::config::TokenArgs {
            secret: "s".repeat(32),
            subscribe: vec!["scores/*".into()],
            publish: vec![],
            ops: false,
            ttl: std::time::Duration::from_secs(60),
            issuer: None,
            audience: None,
            filter: Some("value.tenant == 'a'".into()),
            sub: Some("ada".into()),
        };
        let auth = Auth::new(&AuthConfig {
            hs256_secret: Some("s".repeat(32)),
            cookie: "c".into(),
            ..AuthConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let token = mint(&args).unwrap_or_else(|e| panic!("{e}"));
        let grant = auth.verify(&token).unwrap_or_else(|e| panic!("{e}"));
        assert!(grant.may_subscribe("scores", Some("m1")));
        assert!(!grant.may_publish("scores", Some("m1")));
        assert_eq!(
            grant.filters_for("scores"),
            vec!["value.tenant == 'a'".to_owned()]
        );
    }
}
