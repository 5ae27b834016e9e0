//! The schema registry client: Confluent's REST API (also served by
//! Karapace, Apicurio's Confluent-compatible API and Redpanda), the two
//! calls a decoder needs: a schema by id, and the referenced schemas by
//! subject and version. Every failure says whether waiting can help.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Kind;

/// Largest registry answer read (a schema with its references is far smaller).
const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// References followed for one schema, all levels together.
const MAX_REFERENCES: usize = 256;
const MAX_REFERENCE_DEPTH: usize = 16;

/// Where the registry is and how to authenticate to it.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    pub url: String,
    /// `user:password` for HTTP basic auth.
    pub basic_auth: Option<String>,
    pub bearer_token: Option<String>,
    /// PEM certificates to trust beside the system's.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

/// Why a schema could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// No answer, or an answer that may change (5xx, 401/403, 429): try again later.
    Unreachable(String),
    /// The registry has no schema with this id.
    NotFound,
    /// The registry answered, and the answer cannot be used.
    Invalid(String),
}

/// A schema as the registry gave it, with its references' schemas.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub kind: Kind,
    pub text: String,
    /// Every schema it references, directly or not, dependencies first:
    /// (the name it is imported by, its text).
    pub references: Vec<(String, String)>,
    /// One subject the schema is registered under, if the registry says.
    pub subject: Option<String>,
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<ReferenceAnswer>,
}

#[derive(Deserialize)]
struct ReferenceAnswer {
    name: String,
    subject: String,
    version: i64,
}

#[derive(Deserialize)]
struct SubjectVersion {
    subject: String,
}

pub struct SchemaRegistry {
    client: reqwest::Client,
    base: String,
    basic_auth: Option<(String, String)>,
    bearer_token: Option<String>,
}

impl SchemaRegistry {
    pub fn new(config: &RegistryConfig) -> anyhow::Result<SchemaRegistry> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("--schema-registry-ca {}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("--schema-registry-ca {}: {e}", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let basic_auth = match &config.basic_auth {
            Some(pair) => match pair.split_once(':') {
                Some((u, p)) => Some((u.to_owned(), p.to_owned())),
                None => anyhow::bail!("--schema-registry-basic-auth must be USER:PASSWORD"),
            },
            None => None,
        };
        let base = config.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--schema-registry must be an http:// or https:// URL, not {base:?}");
        }
        Ok(SchemaRegistry {
            client: builder.build()?,
            base,
            basic_auth,
            bearer_token: config.bearer_token.clone(),
        })
    }

    /// The registry's base URL (for messages).
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn get(&self, path: &str) -> Result<Vec<u8>, FetchError> {
        let mut request = self.client.get(format!("{}{path}", self.base)).header(
            "accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        if let Some((user, password)) = &self.basic_auth {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(token) = &self.bearer_token {
            request = request.bearer_auth(token);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| FetchError::Unreachable(error_chain(&e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(FetchError::NotFound);
        }
        if status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 408 | 429) {
            return Err(FetchError::Unreachable(format!(
                "GET {path}: status {status}"
            )));
        }
        if !status.is_success() {
            return Err(FetchError::Invalid(format!("GET {path}: status {status}")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Unreachable(error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(FetchError::Invalid(format!(
                    "GET {path}: answer larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn get_schema(&self, path: &str) -> Result<SchemaAnswer, FetchError> {
        let body = self.get(path).await?;
        serde_json::from_slice(&body).map_err(|e| {
            FetchError::Invalid(format!("GET {path}: the registry answered garbage: {e}"))
        })
    }

    /// The schema with global id `id`, its references resolved.
    pub async fn fetch(&self, id: u32) -> Result<Fetched, FetchError> {
        let answer = self.get_schema(&format!("/schemas/ids/{id}")).await?;
        let kind = kind_of(answer.schema_type.as_deref())?;
        let mut references = Vec::new();
        let mut seen = Vec::new();
        for r in &answer.references {
            self.resolve(r, 1, &mut seen, &mut references).await?;
        }
        // The subject only labels events: not having it is no failure.
        let subject = match self.get(&format!("/schemas/ids/{id}/versions")).await {
            Ok(body) => serde_json::from_slice::<Vec<SubjectVersion>>(&body)
                .ok()
                .and_then(|v| v.into_iter().next())
                .map(|v| v.subject),
            Err(_) => None,
        };
        Ok(Fetched {
            kind,
            text: answer.schema,
            references,
            subject,
        })
    }

    /// Appends `reference`'s own references, then itself, to `out`.
    fn resolve<'a>(
        &'a self,
        reference: &'a ReferenceAnswer,
        depth: usize,
        seen: &'a mut Vec<(String, i64)>,
        out: &'a mut Vec<(String, String)>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), FetchError>> + Send + 'a>>
    {
        Box::pin(async move {
            let key = (reference.subject.clone(), reference.version);
            if seen.contains(&key) {
                return Ok(());
            }
            if depth > MAX_REFERENCE_DEPTH || seen.len() >= MAX_REFERENCES {
                return Err(FetchError::Invalid(format!(
                    "more than {MAX_REFERENCES} references or deeper than {MAX_REFERENCE_DEPTH}"
                )));
            }
            seen.push(key);
            let version = if reference.version < 0 {
                "latest".to_owned()
            } else {
                reference.version.to_string()
            };
            let path = format!(
                "/subjects/{}/versions/{version}",
                path_segment(&reference.subject)
            );
            let answer = match self.get_schema(&path).await {
                Err(FetchError::NotFound) => {
                    return Err(FetchError::Invalid(format!(
                        "reference {} ({} version {version}) is not in the registry",
                        reference.name, reference.subject
                    )))
                }
                other => other?,
            };
            for r in &answer.references {
                self.resolve(r, depth + 1, seen, out).await?;
            }
            out.push((reference.name.clone(), answer.schema));
            Ok(())
        })
    }
}

fn kind_of(schema_type: Option<&str>) -> Result<Kind, FetchError> {
    match schema_type.unwrap_or("AVRO") {
        "AVRO" => Ok(Kind::Avro),
        "PROTOBUF" => Ok(Kind::Protobuf),
        "JSON" => Ok(Kind::Json),
        other => Err(FetchError::Invalid(format!("unknown schemaType {other:?}"))),
    }
}

/// A subject name as one URL path segment.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The error and its causes, on one line (reqwest's own message is terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_escaped() {
        assert_eq!(path_segment("orders-value"), "orders-value");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of(None), Ok(Kind::Avro));
        assert_eq!(kind_of(Some("PROTOBUF")), Ok(Kind::Protobuf));
        assert!(kind_of(Some("XML")).is_err());
    }
}
