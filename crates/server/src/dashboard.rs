//! The dashboard: a page and its script, embedded in the binary and
//! served at `/dashboard/`. It holds no secret and renders nothing of a
//! tenant's: the browser signs in with an organization's key and calls
//! the same API as the SDKs (`dashboard/app.js`), so every rule of the
//! API (scopes, validation, error codes) is the dashboard's too.
//!
//! The files are plain HTML, CSS and an ES module with JSDoc types, type
//! checked by TypeScript (`scripts/test`) and built by nothing: there is
//! no bundle to go stale and nothing to install to build the binary.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Where the dashboard is served.
pub const PATH: &str = "/dashboard/";

const INDEX: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/app.js");
const STYLE: &str = include_str!("../dashboard/style.css");

/// Its own files only: no inline script or style, no other origin, no
/// framing (a page that holds a key is not put in another's frame).
/// Trusted Types are required: the browser itself refuses any string put
/// where markup or script would be parsed (the page sets text only).
pub const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'none'; base-uri 'none'; \
     frame-ancestors 'none'; require-trusted-types-for 'script'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The dashboard's routes (outside the OpenAPI document: they serve
/// files, not the API).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { (StatusCode::PERMANENT_REDIRECT, [(LOCATION, PATH)]) }),
        )
        .route(
            PATH,
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        )
}
