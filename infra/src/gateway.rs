//! A local HTTP API: the routes template.yaml declares, each forwarded as an
//! API Gateway v2 (payload 2.0) event to the real function binary through its local
//! Runtime API, with the JWT authorizer played by [`crate::local_jwt`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_yaml::Value;

use crate::console::Cors;
use crate::local_jwt::LocalIssuer;
use crate::runtime_api::LocalFunction;

/// One route of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: String,
    /// `/connections/{provider}`
    pub path: String,
    pub function: String,
    pub public: bool,
}

impl Route {
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// Path parameters if `path` matches this route's template.
    fn matches(&self, method: &str, path: &str) -> Option<HashMap<String, String>> {
        if !self.method.eq_ignore_ascii_case(method) && self.method != "ANY" {
            return None;
        }
        let pattern: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        let actual: Vec<&str> = path.trim_matches('/').split('/').collect();
        if pattern.len() != actual.len() {
            return None;
        }
        let mut params = HashMap::new();
        for (p, a) in pattern.iter().zip(&actual) {
            if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if a.is_empty() {
                    return None;
                }
                params.insert(name.to_owned(), percent_decode(a));
            } else if p != a {
                return None;
            }
        }
        Some(params)
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| text.to_owned())
}

/// The HttpApi routes of every function in the template.
pub fn routes(template: &Value) -> Vec<Route> {
    let mut routes = Vec::new();
    let Some(resources) = template.get("Resources").and_then(Value::as_mapping) else {
        return routes;
    };
    for (logical, resource) in resources {
        if resource.get("Type").and_then(Value::as_str) != Some("AWS::Serverless::Function") {
            continue;
        }
        let function = resource
            .get("Metadata")
            .and_then(|m| m.get("BuildProperties"))
            .and_then(|b| b.get("Binary"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| logical.as_str().unwrap_or_default().to_owned());
        let Some(events) = resource
            .get("Properties")
            .and_then(|p| p.get("Events"))
            .and_then(Value::as_mapping)
        else {
            continue;
        };
        for event in events.values() {
            if event.get("Type").and_then(Value::as_str) != Some("HttpApi") {
                continue;
            }
            let props = &event["Properties"];
            let (Some(path), Some(method)) = (
                props.get("Path").and_then(Value::as_str),
                props.get("Method").and_then(Value::as_str),
            ) else {
                continue;
            };
            let public = props
                .get("Auth")
                .and_then(|a| a.get("Authorizer"))
                .and_then(Value::as_str)
                == Some("NONE");
            routes.push(Route {
                method: method.to_ascii_uppercase(),
                path: path.to_owned(),
                function: function.clone(),
                public,
            });
        }
    }
    routes
}

pub struct Gateway {
    routes: Vec<Route>,
    functions: HashMap<String, Arc<LocalFunction>>,
    issuer: LocalIssuer,
    /// The HttpApi's `CorsConfiguration`, when it has one.
    cors: Option<Cors>,
}

impl Gateway {
    pub fn new(
        routes: Vec<Route>,
        functions: HashMap<String, Arc<LocalFunction>>,
        issuer: LocalIssuer,
    ) -> Self {
        Self {
            routes,
            functions,
            issuer,
            cors: None,
        }
    }

    /// Answers CORS as API Gateway does with a `CorsConfiguration` (see [`Cors`]).
    pub fn with_cors(mut self, cors: Cors) -> Self {
        self.cors = Some(cors);
        self
    }

    /// Serves on `listener` (bound first, so functions can be told the base URL
    /// before the gateway knows them); returns the address.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let address = listener.local_addr()?;
        let gateway = Arc::new(self);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let gateway = gateway.clone();
                async move { gateway.respond(method, uri, headers, body).await }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((address, task))
    }

    /// A request with CORS applied: API Gateway answers preflights itself (on any
    /// path, before routing and authorization) and sets the headers on every answer.
    async fn respond(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let Some(cors) = &self.cors else {
            return self.handle(method, uri, headers, body).await;
        };
        if Cors::is_preflight(&method, &headers) {
            return cors.preflight(&headers);
        }
        let mut response = self.handle(method, uri, headers.clone(), body).await;
        cors.apply(&headers, &mut response);
        response
    }

    async fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let path = uri.path().to_owned();
        let Some((route, params)) = self
            .routes
            .iter()
            .find_map(|r| r.matches(method.as_str(), &path).map(|p| (r, p)))
        else {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({"message": "Not Found"})),
            )
                .into_response();
        };
        let claims = if route.public {
            None
        } else {
            let token = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                });
            match token.and_then(|t| self.issuer.verify(t)) {
                Some(claims) => Some(claims),
                None => {
                    return (
                        StatusCode::UNAUTHORIZED,
                        axum::Json(serde_json::json!({"message": "Unauthorized"})),
                    )
                        .into_response();
                }
            }
        };
        let Some(function) = self.functions.get(&route.function) else {
            return (
                StatusCode::BAD_GATEWAY,
                axum::Json(serde_json::json!({"message": format!("function {} is not running", route.function)})),
            )
                .into_response();
        };
        let event = api_gateway_event(route, &method, &uri, &headers, &body, &params, claims);
        match function.invoke(&event).await {
            Ok(response) => lambda_response(&response),
            Err(err) => {
                tracing::error!(error = %err, route = %route.key(), "invocation failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(serde_json::json!({"message": "Internal Server Error"})),
                )
                    .into_response()
            }
        }
    }
}

/// The API Gateway v2 (payload 2.0) event for a request.
pub fn api_gateway_event(
    route: &Route,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    params: &HashMap<String, String>,
    claims: Option<serde_json::Map<String, serde_json::Value>>,
) -> serde_json::Value {
    let mut header_map = serde_json::Map::new();
    let mut cookies = Vec::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == "cookie" {
            cookies.extend(
                value
                    .split(';')
                    .map(|c| serde_json::Value::String(c.trim().to_owned())),
            );
            continue;
        }
        header_map
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                if let serde_json::Value::String(existing) = v {
                    existing.push(',');
                    existing.push_str(&value);
                }
            })
            .or_insert(serde_json::Value::String(value));
    }
    let query = uri.query().unwrap_or("");
    let mut query_params = serde_json::Map::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        query_params
            .entry(k.into_owned())
            .and_modify(|e| {
                if let serde_json::Value::String(existing) = e {
                    existing.push(',');
                    existing.push_str(&v);
                }
            })
            .or_insert(serde_json::Value::String(v.into_owned()));
    }
    let (body_text, is_base64) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (STANDARD.encode(body), true),
    };
    let now = chrono::Utc::now();
    let request_id = ulid::Ulid::new().to_string();
    let mut context = serde_json::json!({
        "accountId": crate::ACCOUNT_ID,
        "apiId": "local",
        "domainName": headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1"),
        "domainPrefix": "local",
        "http": {
            "method": method.as_str(),
            "path": uri.path(),
            "protocol": "HTTP/1.1",
            "sourceIp": "127.0.0.1",
            "userAgent": headers.get("user-agent").and_then(|h| h.to_str().ok()).unwrap_or(""),
        },
        "requestId": request_id,
        "routeKey": route.key(),
        "stage": "$default",
        "time": now.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
        "timeEpoch": now.timestamp_millis(),
    });
    if let Some(claims) = claims {
        context["authorizer"] = serde_json::json!({"jwt": {"claims": claims, "scopes": null}});
    }
    let mut event = serde_json::json!({
        "version": "2.0",
        "routeKey": route.key(),
        "rawPath": uri.path(),
        "rawQueryString": query,
        "headers": header_map,
        "requestContext": context,
        "isBase64Encoded": is_base64,
    });
    if !cookies.is_empty() {
        event["cookies"] = serde_json::Value::Array(cookies);
    }
    if !query_params.is_empty() {
        event["queryStringParameters"] = serde_json::Value::Object(query_params);
    }
    if !params.is_empty() {
        event["pathParameters"] = serde_json::to_value(params).unwrap_or_default();
    }
    if !body.is_empty() {
        event["body"] = serde_json::Value::String(body_text);
    }
    event
}

/// An HTTP response from an API Gateway v2 function response.
pub fn lambda_response(response: &serde_json::Value) -> Response {
    let status = response["statusCode"]
        .as_u64()
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);
    let body = match response["body"].as_str() {
        Some(text) if response["isBase64Encoded"].as_bool() == Some(true) => {
            STANDARD.decode(text).unwrap_or_default()
        }
        Some(text) => text.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let mut builder = Response::builder().status(status);
    if let Some(headers) = response["headers"].as_object() {
        for (name, value) in headers {
            if let Some(value) = value.as_str() {
                builder = builder.header(name.as_str(), value);
            }
        }
    }
    if let Some(headers) = response["multiValueHeaders"].as_object() {
        for (name, values) in headers {
            for value in values
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
            {
                builder = builder.header(name.as_str(), value);
            }
        }
    }
    for cookie in response["cookies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str())
    {
        builder = builder.header("set-cookie", cookie);
    }
    builder
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Route {
        Route {
            method: "GET".into(),
            path: path.into(),
            function: "f".into(),
            public: false,
        }
    }

    #[test]
    fn matches_templates() {
        let r = route("/connections/{provider}");
        assert_eq!(
            r.matches("GET", "/connections/highlevel").unwrap()["provider"],
            "highlevel"
        );
        assert!(r.matches("POST", "/connections/highlevel").is_none());
        assert!(r.matches("GET", "/connections").is_none());
        assert!(r.matches("GET", "/connections/a/b").is_none());
        assert!(
            route("/connections")
                .matches("GET", "/connections")
                .is_some()
        );
    }
}
