//! `Allow` on 405 answers (RFC 9110 §15.5.6: a 405 must list the methods the resource
//! supports). poem's router answers 405 without it; this middleware adds it from the spec,
//! so the list is always the documented one.

use std::sync::Arc;

use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result, http::StatusCode};

/// The keys of an OpenAPI path item that are operations (the others are `parameters`,
/// `summary` and such).
const OPERATIONS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The documented methods of every path template of the API.
#[derive(Clone, Debug, Default)]
pub(crate) struct AllowMethods {
    /// Path templates split into segments (`{id}` matches any one segment), with the value
    /// of their `Allow` header.
    paths: Arc<Vec<(Vec<String>, String)>>,
}

impl AllowMethods {
    /// Reads the paths and methods of an OpenAPI document. `HEAD` is allowed wherever `GET`
    /// is (poem answers it).
    pub(crate) fn from_spec(spec: &str) -> Self {
        let spec: serde_json::Value = serde_json::from_str(spec).expect("the spec is JSON");
        let mut paths = Vec::new();
        for (path, item) in spec["paths"].as_object().into_iter().flatten() {
            let mut methods: Vec<String> = item
                .as_object()
                .into_iter()
                .flatten()
                .map(|(key, _)| key.as_str())
                .filter(|key| OPERATIONS.contains(key))
                .map(str::to_ascii_uppercase)
                .collect();
            if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
                methods.push("HEAD".to_owned());
            }
            paths.push((segments(path), methods.join(", ")));
        }
        Self {
            paths: Arc::new(paths),
        }
    }

    /// The `Allow` value for a request path, when it is one of the API's.
    fn allow(&self, path: &str) -> Option<&str> {
        let request = segments(path);
        self.paths
            .iter()
            .find(|(template, _)| {
                template.len() == request.len()
                    && template.iter().zip(&request).all(|(t, r)| {
                        (t.starts_with('{') && t.ends_with('}') && !r.is_empty()) || t == r
                    })
            })
            .map(|(_, allow)| allow.as_str())
    }
}

fn segments(path: &str) -> Vec<String> {
    path.trim_start_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect()
}

impl<E: Endpoint> Middleware<E> for AllowMethods {
    type Output = AllowMethodsEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        AllowMethodsEndpoint {
            inner,
            methods: self.clone(),
        }
    }
}

pub(crate) struct AllowMethodsEndpoint<E> {
    inner: E,
    methods: AllowMethods,
}

impl<E: Endpoint> Endpoint for AllowMethodsEndpoint<E> {
    type Output = Response;

    async fn call(&self, request: Request) -> Result<Response> {
        let path = request.uri().path().to_owned();
        let mut response = match self.inner.call(request).await {
            Ok(output) => output.into_response(),
            Err(err) if err.status() == StatusCode::METHOD_NOT_ALLOWED => {
                crate::error::render_any_error(err)
            }
            Err(err) => return Err(err),
        };
        if response.status() == StatusCode::METHOD_NOT_ALLOWED
            && let Some(allow) = self.methods.allow(&path)
            && let Ok(value) = allow.parse()
        {
            response
                .headers_mut()
                .insert(poem::http::header::ALLOW, value);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_the_documented_methods_of_the_matching_path() {
        let methods = AllowMethods::from_spec(
            r#"{"paths":{"/funkos":{"get":{},"post":{}},
                         "/funkos/{id}":{"get":{},"put":{},"parameters":[]},
                         "/funkos/{id}/image":{"put":{}}}}"#,
        );
        assert_eq!(methods.allow("/funkos"), Some("GET, POST, HEAD"));
        assert_eq!(methods.allow("/funkos/7"), Some("GET, PUT, HEAD"));
        assert_eq!(methods.allow("/funkos/7/image"), Some("PUT"));
        assert_eq!(methods.allow("/funkos//image"), None);
        assert_eq!(methods.allow("/nowhere"), None);
    }
}
