//! Which web origins may talk to the server (CORS for long-polling, an Origin check for
//! WebSocket, which browsers do not protect with CORS).

use axum::http::{HeaderMap, HeaderValue, header};

/// Origins allowed to connect from a browser. Requests without an `Origin` header (native
/// clients, servers) are not affected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Any origin (local development, or a deliberately public endpoint).
    Any,
    /// Same-origin pages and these origins (`https://app.example.com`), compared exactly.
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Whether a request with these headers may proceed; the allowed origin, to echo back.
    pub(super) fn check(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, ()> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(None);
        };
        let allowed = match self {
            Self::Any => true,
            Self::List(list) => {
                let origin_str = origin.to_str().unwrap_or("");
                list.iter().any(|o| o == origin_str) || same_origin(origin_str, headers)
            }
        };
        if allowed {
            Ok(Some(origin.clone()))
        } else {
            Err(())
        }
    }
}

/// A page served by the same host it connects to (its Origin's host is the request's Host).
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, origin_host)| origin_host.eq_ignore_ascii_case(host))
}

/// Adds the CORS response headers for an allowed origin.
pub(super) fn allow(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}

/// The extra headers of a preflight (`OPTIONS`) answer.
pub(super) fn preflight(headers: &mut HeaderMap, request: &HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    let requested = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("content-type, authorization"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    #[test]
    fn any_allows_every_origin() {
        let h = headers(Some("https://evil.example"), "rt.example.com");
        assert!(AllowedOrigins::Any.check(&h).is_ok_and(|o| o.is_some()));
    }

    #[test]
    fn a_list_allows_its_origins_and_same_origin_pages_only() {
        let list = AllowedOrigins::List(vec!["https://app.example.com".into()]);
        assert!(
            list.check(&headers(Some("https://app.example.com"), "rt.example.com"))
                .is_ok()
        );
        assert!(
            list.check(&headers(Some("https://rt.example.com"), "rt.example.com"))
                .is_ok()
        );
        assert!(
            list.check(&headers(Some("https://evil.example"), "rt.example.com"))
                .is_err()
        );
        assert_eq!(
            list.check(&headers(None, "rt.example.com")),
            Ok(None),
            "no Origin: not a browser, nothing to check"
        );
    }
}
