//! [`Upstream`] over HTTP(S) with reqwest: pull-through with the anonymous Bearer-token flow,
//! client `Authorization` forwarded, per-host plain HTTP, bounded connect/idle timeouts.

use super::auth::{parse_challenge, TokenResponse};
use super::policy::{is_loopback_host, refused_redirect, AddressPolicy};
use super::{Kind, Upstream, UpstreamError, UpstreamRequest, UpstreamResponse};
use crate::config::UpstreamConfig;
use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// What containerd sends when resolving; used when a client sends no `Accept`.
const DEFAULT_MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, */*";
/// The `Accept` to send upstream for a manifest. A client that names no manifest media type
/// (no header, or only `*/*`) would get a 404 from distribution for OCI content, so it gets the
/// full list; a client that names types gets exactly what it asked for.
pub fn manifest_accept(client: Option<&str>) -> &str {
    match client {
        Some(a) if a.contains("manifest") || a.contains("image.index") => a,
        _ => DEFAULT_MANIFEST_ACCEPT,
    }
}

/// Upper bound of cached tokens: one per (host, repository) actually pulled.
const MAX_CACHED_TOKENS: usize = 4096;
/// Most redirects followed for one request (distribution redirects blobs to storage once).
const MAX_REDIRECTS: usize = 5;
/// Largest token response accepted.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

pub struct HttpUpstream {
    client: reqwest::Client,
    /// Where requests, redirect hops and token realms may connect.
    policy: AddressPolicy,
    plain_http: HashSet<String>,
    request_timeout: Duration,
    /// (api host, repository) → (token, valid until). Pull tokens are per repository.
    tokens: DashMap<(String, String), (String, Instant)>,
}

impl HttpUpstream {
    /// `mirrored`: the configured registries (`registry.hosts`); a loopback one allows loopback.
    pub fn new(cfg: &UpstreamConfig, mirrored: &[String]) -> Result<Self, String> {
        let policy = AddressPolicy {
            allow_loopback: cfg.allow_loopback
                || mirrored.iter().chain(&cfg.plain_http_hosts).any(|h| is_loopback_host(h)),
        };
        let client = policy.client(MAX_REDIRECTS, cfg.connect_timeout, cfg.idle_timeout)?;
        Ok(Self {
            client,
            policy,
            plain_http: cfg.plain_http_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            request_timeout: cfg.request_timeout,
            tokens: DashMap::new(),
        })
    }

    fn url(&self, req: &UpstreamRequest) -> String {
        let host = req.registry.api_host();
        let scheme = if self.plain_http.contains(host) || self.plain_http.contains(req.registry.name()) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}/v2/{}/{}/{}", req.repository, req.kind.path(), req.reference)
    }

    async fn send(&self, req: &UpstreamRequest, auth: Option<&str>) -> Result<reqwest::Response, UpstreamError> {
        let method = if req.head { Method::HEAD } else { Method::GET };
        let mut headers = HeaderMap::new();
        if req.kind == Kind::Manifest {
            let accept = manifest_accept(req.accept.as_deref());
            headers.insert(ACCEPT, accept.parse().map_err(|_| UpstreamError::Protocol("bad Accept".into()))?);
        }
        if let Some(r) = &req.range {
            headers.insert(RANGE, r.header().parse().expect("range header is ASCII"));
        }
        if let Some(a) = auth {
            headers.insert(AUTHORIZATION, a.parse().map_err(|_| UpstreamError::Protocol("bad Authorization".into()))?);
        }
        let url = url::Url::parse(&self.url(req)).map_err(|e| UpstreamError::Protocol(format!("upstream URL: {e}")))?;
        self.police(&url)?;
        let mut builder = self.client.request(method, url).headers(headers);
        if req.kind == Kind::Manifest || req.head {
            // Small bodies: bound the whole exchange. Blob bodies are bounded by the idle timeout.
            builder = builder.timeout(self.request_timeout);
        }
        builder.send().await.map_err(|e| classify(req.registry.api_host(), e))
    }

    /// Anonymous token for the challenge, from cache or the realm.
    async fn token(&self, req: &UpstreamRequest, challenge: &str) -> Result<Option<String>, UpstreamError> {
        let Some(c) = parse_challenge(challenge) else {
            return Ok(None);
        };
        if !c.scheme.eq_ignore_ascii_case("bearer") {
            return Ok(None);
        }
        let host = req.registry.api_host().to_owned();
        let scope = c.params.get("scope").cloned().unwrap_or_else(|| format!("repository:{}:pull", req.repository));
        let key = (host.clone(), req.repository.clone());
        let realm =
            c.params.get("realm").ok_or_else(|| UpstreamError::Protocol("Bearer challenge without realm".into()))?;
        let mut url =
            url::Url::parse(realm).map_err(|e| UpstreamError::Protocol(format!("token realm {realm:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamError::Protocol(format!("token realm {realm:?} is not HTTP(S)")));
        }
        self.police(&url)?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = c.params.get("service") {
                q.append_pair("service", service);
            }
            q.append_pair("scope", &scope);
        }
        let resp = self.client.get(url).timeout(self.request_timeout).send().await.map_err(|e| classify(&host, e))?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Status { status: 401, www_authenticate: Some(challenge.to_owned()) });
        }
        let body = read_limited(resp, MAX_TOKEN_RESPONSE).await?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| UpstreamError::Protocol(format!("token response: {e}")))?;
        let (token, ttl) =
            parsed.into_token().ok_or_else(|| UpstreamError::Protocol("token response without a token".into()))?;
        if self.tokens.len() >= MAX_CACHED_TOKENS {
            let now = Instant::now();
            self.tokens.retain(|_, v| v.1 > now);
            if self.tokens.len() >= MAX_CACHED_TOKENS {
                self.tokens.clear();
            }
        }
        // Refresh 10 s before the registry would expire it.
        let valid = Instant::now() + Duration::from_secs(ttl.saturating_sub(10));
        self.tokens.insert(key, (token.clone(), valid));
        Ok(Some(token))
    }
}

impl HttpUpstream {
    /// Refuse a URL whose literal address the policy forbids, before any connection.
    fn police(&self, url: &url::Url) -> Result<(), UpstreamError> {
        self.policy.check_url(url).map_err(|r| UpstreamError::Forbidden {
            host: url.host_str().unwrap_or("").to_owned(),
            reason: r.to_string(),
        })
    }
}

fn classify(host: &str, e: reqwest::Error) -> UpstreamError {
    if let Some(reason) = refused_redirect(&e) {
        return UpstreamError::Forbidden { host: host.to_owned(), reason };
    }
    if e.is_timeout() {
        UpstreamError::Timeout { host: host.to_owned() }
    } else if e.is_connect() {
        UpstreamError::Unreachable { host: host.to_owned(), reason: root_cause(&e) }
    } else {
        UpstreamError::Protocol(root_cause(&e))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

async fn read_limited(resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, UpstreamError> {
    let mut body = resp.bytes_stream();
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| UpstreamError::Protocol(root_cause(&e)))?;
        if out.len() + chunk.len() > limit {
            return Err(UpstreamError::Protocol(format!("response over {limit} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn header(resp: &reqwest::Response, name: impl reqwest::header::AsHeaderName) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

impl HttpUpstream {
    fn cached_token(&self, req: &UpstreamRequest) -> Option<String> {
        let key = (req.registry.api_host().to_owned(), req.repository.clone());
        self.tokens.get(&key).filter(|t| t.1 > Instant::now()).map(|t| format!("Bearer {}", t.0))
    }
}

#[async_trait]
impl Upstream for HttpUpstream {
    async fn fetch(&self, req: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        // The client's credentials win; else a token cached from an earlier challenge.
        let auth = req.authorization.clone().or_else(|| self.cached_token(&req));
        let mut resp = self.send(&req, auth.as_deref()).await?;
        if resp.status() == StatusCode::UNAUTHORIZED && req.authorization.is_none() {
            if let Some(challenge) = header(&resp, WWW_AUTHENTICATE) {
                if let Some(token) = self.token(&req, &challenge).await? {
                    resp = self.send(&req, Some(&format!("Bearer {token}"))).await?;
                }
            }
        }
        let status = resp.status();
        if !(status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT) {
            return Err(UpstreamError::Status {
                status: status.as_u16(),
                www_authenticate: header(&resp, WWW_AUTHENTICATE),
            });
        }
        let content_length = header(&resp, CONTENT_LENGTH).and_then(|v| v.parse().ok());
        let content_type = header(&resp, CONTENT_TYPE);
        let digest = header(&resp, "docker-content-digest");
        let body: crate::stream::ByteStream = if req.head {
            Box::pin(futures_util::stream::empty())
        } else {
            Box::pin(resp.bytes_stream().map(|r| r.map_err(|e| std::io::Error::other(root_cause(&e)))))
        };
        Ok(UpstreamResponse { status: status.as_u16(), content_type, content_length, digest, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_accept_fills_in_for_wildcards() {
        assert_eq!(manifest_accept(None), DEFAULT_MANIFEST_ACCEPT);
        assert_eq!(manifest_accept(Some("*/*")), DEFAULT_MANIFEST_ACCEPT);
        let oci = "application/vnd.oci.image.index.v1+json";
        assert_eq!(manifest_accept(Some(oci)), oci);
        let docker = "application/vnd.docker.distribution.manifest.v2+json, */*";
        assert_eq!(manifest_accept(Some(docker)), docker);
    }
}
