//! Every refusal of the API as `{code, message}` JSON with the HTTP status it deserves.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleetops_core::{ErrorCode, Rejection, StoreError};
use fleetops_service::FleetError;
use serde::Serialize;

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code: the device protocol's error codes where a rule
    /// refused, or an HTTP-level code (`Unauthorized`, `PayloadTooLarge`, …).
    pub code: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

/// The body of every error response.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `InvalidRequest` naming the field.
    pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest.as_str(),
            format!("invalid {field}: {reason}"),
        )
    }

    /// 401 `Unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    /// 403 `Forbidden`: a valid credential without the scope the route needs.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// 404 `ResourceNotFound`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ResourceNotFound.as_str(),
            message,
        )
    }

    /// 409 `ResourceAlreadyExists`.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "ResourceAlreadyExists", message)
    }

    /// 503 `ServiceUnavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }
}

/// The status of each core refusal.
pub fn rejection_status(r: &Rejection) -> StatusCode {
    match r.code() {
        ErrorCode::InvalidTopic | ErrorCode::InvalidJson | ErrorCode::InvalidRequest => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::ResourceNotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidStateTransition
        | ErrorCode::VersionMismatch
        | ErrorCode::TerminalStateReached => StatusCode::CONFLICT,
        ErrorCode::RequestThrottled => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        let message = e.to_string();
        match &e {
            FleetError::Rejected(r) => Self {
                status: rejection_status(r),
                code: r.code().as_str(),
                // The rejection's own text, without the "refused: " of FleetError.
                message: r.to_string(),
            },
            FleetError::Store(StoreError::Conflict { .. }) | FleetError::Contention { .. } => {
                Self::new(StatusCode::CONFLICT, "Conflict", message)
            }
            FleetError::Store(StoreError::Corrupt { .. }) | FleetError::Corrupt { .. } => {
                tracing::error!(error = %e, "the store holds corrupt data");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
            }
            FleetError::Store(_) | FleetError::Link(_) | FleetError::Stopped => {
                tracing::warn!(error = %e, "a request failed: the store or link is down");
                Self::unavailable(message)
            }
            // The runtime refused to wait on a failing store or follower: a retry later
            // may succeed.
            FleetError::Unavailable { .. } => Self::unavailable(message),
            FleetError::Offline { .. } => Self::new(StatusCode::CONFLICT, "ThingOffline", message),
            FleetError::Projection(_) => {
                tracing::error!(error = %e, "projection failure");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                "request body is larger than the server's limit",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "request body must be JSON with `Content-Type: application/json`",
            ),
            // Syntax errors (400) and shape errors (axum's 422) are both a bad request here;
            // axum's text names the path of the offending field and the line and column.
            _ => Self::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidJson.as_str(),
                r.body_text(),
            ),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest.as_str(),
            r.body_text(),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest.as_str(),
            r.body_text(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            message: &self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
