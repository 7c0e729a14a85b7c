//! The operators' web console: a few static files (HTML, CSS, vanilla JavaScript) embedded in
//! the binary and served at `/` beside the JSON API, which they are a client of.
//!
//! There is no build step and nothing is fetched from elsewhere: the files in
//! `server/assets/console/` are the console, included at compile time, so the binary alone
//! serves it and a reader can review every line. `console.js` is a small client-side router
//! over `/api/v1`: jobs with live counters, executions and their event history, commands,
//! things and thing groups.
//!
//! The console's routes are public because they carry no data: the operator pastes the API
//! token into the login page, the script keeps it in `sessionStorage` (gone with the tab) and
//! sends it as `Authorization: Bearer` on every API call; the API keeps refusing calls without
//! it. Every response carries [`CONTENT_SECURITY_POLICY`], which allows scripts, styles and
//! requests from this origin only and no inline script or style, so even a value that slipped
//! into the page as markup could not run; the script also builds the page with `textContent`
//! and attributes only, never `innerHTML`, so thing names, documents and device details are
//! shown as text.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The `Content-Security-Policy` of every console response: same-origin scripts, styles,
/// images and API calls; no inline script or style, no plugins, no framing, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file and where it is served.
#[derive(Debug, Clone, Copy)]
struct Asset {
    /// The URL path.
    path: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes.
    body: &'static [u8],
}

/// Every file of the console, by URL path.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../assets/console/index.html"),
    },
    Asset {
        path: "/console/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/console/console.js"),
    },
    Asset {
        path: "/console/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/console/console.css"),
    },
    Asset {
        path: "/console/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../assets/console/favicon.svg"),
    },
];

impl Asset {
    /// The response serving this file, with the console's security headers.
    fn response(&self) -> Response {
        let headers = [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            // Browsers must not guess another type than the one stated.
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // Revalidate every time, so an upgraded server's console is the one that runs.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ];
        (StatusCode::OK, headers, self.body).into_response()
    }
}

/// The console's routes: `GET` (and so `HEAD`) of `/` and of each file under `/console/`,
/// public, for merging into the API's router.
pub fn routes<St: Clone + Send + Sync + 'static>() -> Router<St> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(asset.path, get(move || async move { asset.response() }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(path: &str) -> &'static str {
        let asset = ASSETS.iter().find(|a| a.path == path).expect(path);
        std::str::from_utf8(asset.body).expect("UTF-8")
    }

    #[test]
    fn every_asset_carries_its_type_and_the_security_headers() {
        for asset in ASSETS {
            let r = asset.response();
            let h = r.headers();
            assert_eq!(
                h[header::CONTENT_TYPE],
                asset.content_type,
                "{}",
                asset.path
            );
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[test]
    fn the_page_loads_only_served_files_and_has_no_inline_script_or_style() {
        let html = text("/");
        for attr in ["src=\"", "href=\"/"] {
            for part in html.split(attr).skip(1) {
                let url = part.split('"').next().unwrap_or_default();
                let url = format!("/{}", url.trim_start_matches('/'));
                assert!(
                    ASSETS.iter().any(|a| a.path == url),
                    "the page loads {url}, which is not served"
                );
            }
        }
        // The CSP would block them anyway; keep the page honest about it.
        assert!(!html.contains("<script>"), "an inline script");
        assert!(!html.contains("<style"), "an inline style sheet");
        assert!(!html.contains("style=\""), "an inline style attribute");
        let handler = html.split(" on").skip(1).any(|rest| {
            let name = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .len();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!handler, "an inline event handler");
    }

    #[test]
    fn the_script_never_parses_markup() {
        let js = text("/console/console.js");
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(sink), "console.js uses {sink}");
        }
    }
}
