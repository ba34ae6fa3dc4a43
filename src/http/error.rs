//! The one place where errors become HTTP responses: status code, JSON body
//! `{"error":{"code","message"}}`, and logging. Also the extractors that make malformed
//! JSON and query strings answer in that same shape.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::Error;

/// The JSON body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_version`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// Adapter-side wrapper so that handlers can return `Result<_, ApiError>` with `?` on
/// domain results.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError(error)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::Invalid { .. } => StatusCode::BAD_REQUEST,
        Error::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::Conflict { .. } => StatusCode::CONFLICT,
        Error::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
        Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Error::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        Error::Upstream(_) => StatusCode::BAD_GATEWAY,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = self.0;
        let status = status_of(&error);
        let code = error.code();
        if status.is_server_error() {
            // The cause chain goes to the log only; clients get a generic message.
            tracing::error!(status = status.as_u16(), code, error = format!("{error:#}"), cause = ?cause_chain(&error), "request failed");
        } else {
            tracing::info!(status = status.as_u16(), code, message = %error, "request refused");
        }
        let message = match &error {
            Error::Internal(_) => "an internal error occurred; it has been logged".to_string(),
            other => other.to_string(),
        };
        let mut response = (status, Json(ErrorBody { error: ErrorDetail { code: code.to_string(), message } })).into_response();
        match &error {
            Error::Unauthenticated(_) => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Error::TooManyRequests { retry_after_secs } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Error::RequestTimeout(_) => {
                // The rest of the body will not come (in time): this connection is done.
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Error::RangeNotSatisfiable { size } => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
            }
            _ => {}
        }
        response
    }
}

fn cause_chain(error: &Error) -> Option<String> {
    match error {
        Error::Internal(cause) => Some(format!("{cause:?}")),
        _ => None,
    }
}

/// `Json<T>` whose rejections use the error format above.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError(json_rejection(rejection))),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> Error {
    if let JsonRejection::BytesRejection(e) = &rejection
        && let Some(slow) = super::body_guard::SlowBody::find(e)
    {
        return slow.into();
    }
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            Error::UnsupportedMediaType("expected a JSON body with `Content-Type: application/json`".into())
        }
        JsonRejection::JsonSyntaxError(e) => Error::invalid("invalid_json", format!("malformed JSON: {}", e.body_text())),
        JsonRejection::JsonDataError(e) => Error::invalid("invalid_json", format!("unexpected JSON content: {}", e.body_text())),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Error::PayloadTooLarge { limit: crate::http::MAX_JSON_BYTES as u64 }
        }
        other => Error::invalid("invalid_body", other.body_text()),
    }
}

/// `Query<T>` whose rejections use the error format above.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError(query_rejection(rejection))),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> Error {
    Error::invalid("invalid_query", format!("malformed query string: {}", rejection.body_text()))
}
