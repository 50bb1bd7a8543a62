//! Who may write. Reads and streams are public; writes (REST, WebSocket, Socket.IO) need a
//! bearer token when tokens are configured. Without tokens the server only starts on loopback
//! (unless `--allow-open-writes`), and then a write is accepted only from a caller a browser
//! cannot be tricked into being: no `Origin`, this server's own origin or a listed one
//! (`CORS_ORIGINS`), and, on loopback, a loopback `Host` (a DNS name rebound to 127.0.0.1 is
//! not one). Browsers apply no CORS to WebSocket and none to a form's POST, so the origin is
//! checked here, on every write, not left to CORS.

use poem::http::{HeaderMap, header};
use poem_openapi::{SecurityScheme, auth::Bearer};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// `Authorization: Bearer <token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "opaque token")]
pub(crate) struct BearerToken(pub Bearer);

/// What a write presented: a bearer token, or nothing (allowed when no tokens are set).
#[derive(SecurityScheme)]
pub(crate) enum WriteAuth {
    Bearer(BearerToken),
    #[oai(fallback)]
    Anonymous,
}

impl WriteAuth {
    pub(crate) fn token(&self) -> Option<&str> {
        match self {
            Self::Bearer(BearerToken(bearer)) => Some(&bearer.token),
            Self::Anonymous => None,
        }
    }
}

/// Where a request says it comes from: its `Origin` (sent by browsers on every cross-origin
/// request, every WebSocket and every write) and its `Host`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Caller {
    pub origin: Option<String>,
    pub host: Option<String>,
}

impl Caller {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let text = |name| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        Self {
            origin: text(header::ORIGIN),
            host: text(header::HOST),
        }
    }

    /// Whether `Origin` names the server the request was sent to (its scheme's default port
    /// stands for a `Host` without one).
    pub(crate) fn is_same_origin(&self) -> bool {
        let (Some(origin), Some(host)) = (&self.origin, &self.host) else {
            return false;
        };
        let Ok(origin) = url::Url::parse(origin) else {
            return false;
        };
        let Ok(host) = url::Url::parse(&format!("{}://{host}", origin.scheme())) else {
            return false;
        };
        origin.host() == host.host()
            && origin.port_or_known_default() == host.port_or_known_default()
    }
}

/// Whether a `Host` value names this machine: `localhost` (and its subdomains, which
/// resolve to loopback by RFC 6761 and cannot be rebound) or a loopback address.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    match url::Url::parse(&format!("http://{host}"))
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Domain(name)) => name == "localhost" || name.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// How writes without a token are guarded, when no tokens are configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenWrites {
    /// The server listens on loopback only: the `Host` must be loopback too.
    Loopback,
    /// `--allow-open-writes` on a reachable address: clients use its public name.
    Anywhere,
}

/// The configured tokens, or how open writes are guarded.
#[derive(Clone, Debug)]
pub(crate) struct WritePolicy {
    tokens: Vec<Vec<u8>>,
    open: OpenWrites,
    /// The origins of `CORS_ORIGINS`, whose pages may write like this server's own.
    origins: Vec<String>,
}

impl WritePolicy {
    pub(crate) fn new(tokens: &[String], open: OpenWrites, origins: &[String]) -> Self {
        Self {
            tokens: tokens
                .iter()
                .map(|t| t.trim())
                .filter(|t| !t.is_empty())
                .map(|t| t.as_bytes().to_vec())
                .collect(),
            open,
            origins: origins.iter().map(|o| o.trim().to_owned()).collect(),
        }
    }

    pub(crate) fn requires_token(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// With tokens: 401 without one, 403 for an unknown one. Every configured token is
    /// compared, in constant time for equal lengths, so timing does not tell which bytes
    /// matched. Without tokens: 403 for a caller outside the origin and host rules.
    pub(crate) fn check(&self, token: Option<&str>, caller: &Caller) -> Result<(), ApiError> {
        if !self.requires_token() {
            return self.check_open(caller);
        }
        let Some(token) = token else {
            return Err(ApiError::Unauthorized);
        };
        let known = self
            .tokens
            .iter()
            .fold(subtle::Choice::from(0), |found, t| {
                found | t.as_slice().ct_eq(token.as_bytes())
            });
        if bool::from(known) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this token may not write".to_owned()))
        }
    }

    fn check_open(&self, caller: &Caller) -> Result<(), ApiError> {
        if let Some(origin) = &caller.origin
            && !caller.is_same_origin()
            && !self.origins.iter().any(|o| o == origin)
        {
            return Err(ApiError::Forbidden(format!(
                "without API tokens, writes are accepted only from this server's own pages or \
                 an origin listed in CORS_ORIGINS; Origin {origin} is neither"
            )));
        }
        if self.open == OpenWrites::Loopback
            && let Some(host) = &caller.host
            && !is_loopback_host(host)
        {
            return Err(ApiError::Forbidden(format!(
                "without API tokens this server takes writes only through a loopback address \
                 or localhost; Host {host} is not one"
            )));
        }
        Ok(())
    }

    /// The token of a WebSocket upgrade: `Authorization: Bearer <t>`, or for browsers (which
    /// cannot set headers on a WebSocket) a `Sec-WebSocket-Protocol` entry `bearer.<t>`.
    pub(crate) fn token_from_upgrade(headers: &HeaderMap) -> Option<String> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_owned());
        bearer.or_else(|| {
            headers
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .find_map(|p| p.trim().strip_prefix("bearer.").map(str::to_owned))
        })
    }
}

/// Who is asking, as a socket's opening request said: the token it presented and where it
/// comes from. The socket transports authorise each write with it, by REST's rule.
#[derive(Clone, Debug, Default)]
pub(crate) struct Credentials {
    /// From `Authorization: Bearer <token>`, else from a `bearer.<token>` subprotocol entry.
    pub(crate) bearer: Option<String>,
    /// The request's `Origin` and `Host`, for the rule of open writes.
    pub(crate) caller: Caller,
}

impl Credentials {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        Self {
            bearer: WritePolicy::token_from_upgrade(headers),
            caller: Caller::of(headers),
        }
    }

    /// The one place a write over a socket is authorised: REST's rule, so both answer the
    /// same 401/403.
    pub(crate) fn authorize(&self, policy: &WritePolicy) -> Result<(), ApiError> {
        policy.check(self.bearer.as_deref(), &self.caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(origin: Option<&str>, host: Option<&str>) -> Caller {
        Caller {
            origin: origin.map(str::to_owned),
            host: host.map(str::to_owned),
        }
    }

    #[test]
    fn tokens() {
        let anyone = Caller::default();
        let open = WritePolicy::new(&[], OpenWrites::Loopback, &[]);
        assert!(open.check(None, &anyone).is_ok());
        let policy = WritePolicy::new(
            &["alpha".into(), " beta ".into()],
            OpenWrites::Loopback,
            &[],
        );
        assert!(matches!(
            policy.check(None, &anyone),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            policy.check(Some("gamma"), &anyone),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            policy.check(Some("alph"), &anyone),
            Err(ApiError::Forbidden(_))
        ));
        assert!(policy.check(Some("alpha"), &anyone).is_ok());
        let elsewhere = caller(Some("http://evil.example"), Some("evil.example"));
        assert!(
            policy.check(Some("beta"), &elsewhere).is_ok(),
            "the token is the rule"
        );
    }

    #[test]
    fn open_writes_follow_the_origin_and_host_rules() {
        let loopback =
            WritePolicy::new(&[], OpenWrites::Loopback, &["https://shop.example".into()]);
        for ok in [
            caller(None, None),
            caller(None, Some("127.0.0.1:8080")),
            caller(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")),
            caller(Some("http://localhost"), Some("localhost:80")),
            caller(Some("http://[::1]:8080"), Some("[::1]:8080")),
            caller(Some("https://shop.example"), Some("127.0.0.1:8080")),
            caller(None, Some("app.localhost:3000")),
        ] {
            assert!(loopback.check(None, &ok).is_ok(), "{ok:?}");
        }
        for refused in [
            caller(Some("http://evil.example"), Some("127.0.0.1:8080")),
            caller(Some("null"), Some("127.0.0.1:8080")),
            caller(Some("http://127.0.0.1:9999"), Some("127.0.0.1:8080")),
            caller(Some("http://rebound.example"), Some("rebound.example")),
            caller(None, Some("rebound.example")),
            caller(None, Some("127.0.0.1.evil.example")),
        ] {
            assert!(
                matches!(loopback.check(None, &refused), Err(ApiError::Forbidden(_))),
                "{refused:?}"
            );
        }
        // Reachable on purpose: clients use its name, so only the origin rule holds.
        let anywhere = WritePolicy::new(&[], OpenWrites::Anywhere, &[]);
        assert!(
            anywhere
                .check(
                    None,
                    &caller(Some("http://store.example"), Some("store.example"))
                )
                .is_ok()
        );
        assert!(
            anywhere
                .check(
                    None,
                    &caller(Some("http://evil.example"), Some("store.example"))
                )
                .is_err()
        );
    }

    #[test]
    fn websocket_tokens() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "sec-websocket-protocol",
            "funko-live, bearer.s3cret".parse().unwrap(),
        );
        assert_eq!(
            WritePolicy::token_from_upgrade(&headers).as_deref(),
            Some("s3cret")
        );
        headers.insert("authorization", "Bearer other".parse().unwrap());
        assert_eq!(
            WritePolicy::token_from_upgrade(&headers).as_deref(),
            Some("other")
        );
    }
}
