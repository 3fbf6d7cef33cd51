//! A small HTTP/1.1 client: one connection per request, a deadline on the
//! whole exchange, JSON helpers. One connection per request keeps the
//! simulator's traces simple (every request is its own TCP exchange) and
//! costs nothing that matters at the control plane's request rates.

use super::Connector;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

pub use hyper::Method;

/// Why a request produced no response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad url {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("{method} {url} timed out after {after:?}")]
    Timeout { method: Method, url: String, after: Duration },
    #[error("{method} {url}: {detail}")]
    Protocol { method: Method, url: String, detail: String },
    #[error("{method} {url}: response is not the expected JSON: {detail}")]
    Decode { method: Method, url: String, detail: String },
}

impl HttpError {
    /// No answer at all (as opposed to an answer we did not like).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, HttpError::Connect { .. } | HttpError::Timeout { .. } | HttpError::Protocol { .. })
    }
}

#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("{e} (status {})", self.status))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `http://host:port/path?query` split into its parts.
#[derive(Debug)]
struct Target<'a> {
    host: &'a str,
    port: u16,
    path_and_query: &'a str,
}

fn parse_url(url: &str) -> Result<Target<'_>, HttpError> {
    let bad = |why| HttpError::BadUrl { url: url.to_owned(), why };
    let rest = url.strip_prefix("http://").ok_or_else(|| bad("only http:// urls are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad("port is not a number"))?),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(Target { host, port, path_and_query: path })
}

/// An HTTP client over a [`Connector`]. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    connector: Arc<dyn Connector>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("timeout", &self.timeout).finish()
    }
}

/// A request under construction.
pub struct Request<'c> {
    client: &'c HttpClient,
    method: Method,
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(connector: Arc<dyn Connector>, timeout: Duration) -> Self {
        HttpClient { connector, timeout }
    }

    pub fn request(&self, method: Method, url: impl Into<String>) -> Request<'_> {
        Request {
            client: self,
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Bytes::new(),
            timeout: self.timeout,
        }
    }
    pub fn get(&self, url: impl Into<String>) -> Request<'_> {
        self.request(Method::GET, url)
    }
    pub fn post(&self, url: impl Into<String>) -> Request<'_> {
        self.request(Method::POST, url)
    }
    pub fn delete(&self, url: impl Into<String>) -> Request<'_> {
        self.request(Method::DELETE, url)
    }
}

impl Request<'_> {
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((HeaderName::from_static(name), v));
        }
        self
    }
    pub fn bearer(self, token: &str) -> Self {
        let value = format!("Bearer {token}");
        let mut me = self;
        if let Ok(v) = HeaderValue::from_str(&value) {
            me.headers.push((AUTHORIZATION, v));
        }
        me
    }
    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Self {
        // Serializing our own types cannot fail; an empty body would be refused loudly.
        self.body = serde_json::to_vec(body).map(Bytes::from).unwrap_or_default();
        self.headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        self
    }
    pub fn bytes(mut self, body: Vec<u8>) -> Self {
        self.body = Bytes::from(body);
        self.headers.push((CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")));
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Send and wait for the whole response, within the deadline.
    pub async fn send(self) -> Result<HttpResponse, HttpError> {
        let (method, url, after) = (self.method.clone(), self.url.clone(), self.timeout);
        match tokio::time::timeout(after, self.exchange()).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout { method, url, after }),
        }
    }

    /// Send, then decode a 2xx JSON body; a non-2xx status is an `Err` with the body text.
    pub async fn send_json<T: DeserializeOwned>(self) -> Result<Result<T, (u16, String)>, HttpError> {
        let (method, url) = (self.method.clone(), self.url.clone());
        let resp = self.send().await?;
        if !resp.ok() {
            return Ok(Err((resp.status, resp.text())));
        }
        resp.json().map(Ok).map_err(|detail| HttpError::Decode { method, url, detail })
    }

    async fn exchange(self) -> Result<HttpResponse, HttpError> {
        let target = parse_url(&self.url)?;
        let protocol =
            |detail: String| HttpError::Protocol { method: self.method.clone(), url: self.url.clone(), detail };
        let io = self
            .client
            .connector
            .connect(target.host, target.port)
            .await
            .map_err(|source| HttpError::Connect { addr: format!("{}:{}", target.host, target.port), source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| protocol(format!("handshake: {e}")))?;
        // The connection task ends when the exchange is over and `sender` is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder().method(self.method.clone()).uri(target.path_and_query);
        let host = HeaderValue::from_str(&format!("{}:{}", target.host, target.port))
            .map_err(|_| protocol("host is not a valid header".into()))?;
        if let Some(h) = req.headers_mut() {
            h.insert(HOST, host);
            for (k, v) in self.headers.iter() {
                h.insert(k.clone(), v.clone());
            }
        }
        let req = req.body(Full::new(self.body.clone())).map_err(|e| protocol(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| protocol(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| protocol(format!("body: {e}")))?.to_bytes();
        Ok(HttpResponse { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        let t = parse_url("http://town:8787/api/towns/t1?x=1").unwrap();
        assert_eq!((t.host, t.port, t.path_and_query), ("town", 8787, "/api/towns/t1?x=1"));
        let t = parse_url("http://forge").unwrap();
        assert_eq!((t.host, t.port, t.path_and_query), ("forge", 80, "/"));
        assert!(parse_url("https://api.github.com/x").unwrap_err().to_string().contains("only http://"));
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:xx/").unwrap_err().to_string().contains("port"));
    }
}
