//! axum extractors whose refusals are the API's `{code, message}` JSON rather than axum's
//! plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use axum::Json;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body (`Content-Type: application/json`), or a 400/413/415 that says what is
/// wrong.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// A JSON body that may be left out entirely (no body, no content type): then the
/// default. A body without `Content-Type: application/json` is still refused with 415.
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if req.headers().contains_key(header::CONTENT_TYPE) {
            let Json(value) = Json::<T>::from_request(req, state).await?;
            return Ok(Self(value));
        }
        // No content type: only an empty body means "no options".
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::new(e.status(), "InvalidRequest", e.body_text()).with_payload_code()
        })?;
        if bytes.is_empty() {
            Ok(Self(T::default()))
        } else {
            Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "request body must be JSON with `Content-Type: application/json`",
            ))
        }
    }
}

impl ApiError {
    /// 413s from reading a raw body get the same code as those of JSON bodies.
    fn with_payload_code(mut self) -> Self {
        if self.status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            self.code = "PayloadTooLarge";
            self.message = "request body is larger than the server's limit".into();
        }
        self
    }
}

/// A query string, refused with a 400 naming the bad parameter.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// Path parameters, refused with a 400 (for instance when not valid UTF-8).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}
