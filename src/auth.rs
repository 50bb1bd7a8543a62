//! Who may write. Reads and streams are public; writes (REST and WebSocket) need a bearer
//! token when tokens are configured. Without tokens the server only starts on loopback
//! (unless `--allow-open-writes`), so an open write API is never exposed by accident.

use poem_openapi::{SecurityScheme, auth::Bearer};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// `Authorization: Bearer <token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "opaque token")]
pub struct BearerToken(pub Bearer);

/// What a write presented: a bearer token, or nothing (allowed when no tokens are set).
#[derive(SecurityScheme)]
pub enum WriteAuth {
    Bearer(BearerToken),
    #[oai(fallback)]
    Anonymous,
}

impl WriteAuth {
    pub fn token(&self) -> Option<&str> {
        match self {
            Self::Bearer(BearerToken(bearer)) => Some(&bearer.token),
            Self::Anonymous => None,
        }
    }
}

/// The configured tokens.
#[derive(Clone, Debug, Default)]
pub struct WritePolicy {
    tokens: Vec<Vec<u8>>,
}

impl WritePolicy {
    pub fn new(tokens: &[String]) -> Self {
        Self {
            tokens: tokens
                .iter()
                .map(|t| t.trim())
                .filter(|t| !t.is_empty())
                .map(|t| t.as_bytes().to_vec())
                .collect(),
        }
    }

    pub fn requires_token(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// 401 without a token, 403 for an unknown one. Every configured token is compared, in
    /// constant time for equal lengths, so timing does not tell which bytes matched.
    pub fn check(&self, token: Option<&str>) -> Result<(), ApiError> {
        if !self.requires_token() {
            return Ok(());
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

    /// The token of a WebSocket upgrade: `Authorization: Bearer <t>`, or for browsers (which
    /// cannot set headers on a WebSocket) a `Sec-WebSocket-Protocol` entry `bearer.<t>`.
    pub fn token_from_upgrade(headers: &poem::http::HeaderMap) -> Option<String> {
        let bearer = headers
            .get(poem::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_owned());
        bearer.or_else(|| {
            headers
                .get_all(poem::http::header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .find_map(|p| p.trim().strip_prefix("bearer.").map(str::to_owned))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let open = WritePolicy::new(&[]);
        assert!(open.check(None).is_ok());
        let policy = WritePolicy::new(&["alpha".into(), " beta ".into()]);
        assert!(matches!(policy.check(None), Err(ApiError::Unauthorized)));
        assert!(matches!(
            policy.check(Some("gamma")),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            policy.check(Some("alph")),
            Err(ApiError::Forbidden(_))
        ));
        assert!(policy.check(Some("alpha")).is_ok());
        assert!(policy.check(Some("beta")).is_ok());
    }

    #[test]
    fn websocket_tokens() {
        let mut headers = poem::http::HeaderMap::new();
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
