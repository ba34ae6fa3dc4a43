//! The one error type of Updraft. Every layer returns it; `http::error` alone turns it
//! into a status code and the JSON error body, and protocol adapters into their own forms.

/// What went wrong, in terms a client can act on. `Internal` carries the cause for the
/// log only; its message is never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (400).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The request is well-formed but its content is refused (422).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// Credentials are missing or wrong (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Credentials are valid but do not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Refused for a reason a client can act on, named by `code` (403): a session-cookie
    /// request without its CSRF token, or from a foreign origin.
    #[error("{message}")]
    Denied { code: &'static str, message: String },
    /// No such resource (404).
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    /// The request conflicts with the current state (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The client sent its request body too slowly, or stopped sending it (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// The resource is not at the version the request expects (`If-Match`) (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The body is larger than allowed (413).
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// The body's content type is not one the endpoint accepts (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The requested byte range lies outside the resource (416).
    #[error("the requested range is not satisfiable for a resource of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// Too many attempts; try again later (429).
    #[error("too many requests; retry after {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    /// The storage is full (507); nothing was stored.
    #[error("the server has no space left to store this; nothing was stored")]
    InsufficientStorage,
    /// A server this one fetched from on the client's behalf failed or answered badly (502).
    #[error("{0}")]
    Upstream(String),
    /// A dependency (database, blob store) does not answer (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure of a dependency (500).
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid { code, message: message.into() }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Error::Unprocessable { code, message: message.into() }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict { code, message: message.into() }
    }

    pub fn denied(code: &'static str, message: impl Into<String>) -> Self {
        Error::Denied { code, message: message.into() }
    }

    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound { what, id: id.into() }
    }

    /// A stable machine-readable code for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid { code, .. } | Error::Unprocessable { code, .. } | Error::Conflict { code, .. } | Error::Denied { code, .. } => {
                code
            }
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound { .. } => "not_found",
            Error::PreconditionFailed(_) => "precondition_failed",
            Error::RequestTimeout(_) => "request_timeout",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            Error::TooManyRequests { .. } => "too_many_requests",
            Error::InsufficientStorage => "insufficient_storage",
            Error::Upstream(_) => "upstream_failed",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// Maps an IO error from a storage write: a full disk is the client's to know about,
    /// anything else is internal.
    pub fn from_io(error: std::io::Error, context: &str) -> Self {
        if is_storage_full(&error) {
            Error::InsufficientStorage
        } else {
            Error::Internal(anyhow::Error::new(error).context(context.to_string()))
        }
    }
}

/// True for "no space left on device" and "quota exceeded".
pub fn is_storage_full(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}
