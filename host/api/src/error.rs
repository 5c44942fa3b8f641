//! One error type for every route: `{"error": {"kind", "message"}}` with the
//! right status. Client errors say what was wrong; internal errors are
//! logged in full and answered with a plain message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use camina_coordinator::EngineError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422, as the IETF Idempotency-Key draft answers a key reused with
    /// another request.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A 500; the log gets the error with its causes.
    pub fn internal(detail: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let detail = detail.into();
        let text = chain(&*detail);
        tracing::error!("internal error: {text}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (see the server log)",
        )
    }
}

/// An error and its causes, `: `-separated: what a client is told.
pub use camina_sandbox::error_chain as chain;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"kind": self.kind, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<camina_journal::Error> for ApiError {
    fn from(e: camina_journal::Error) -> Self {
        use camina_journal::Error as E;
        match e {
            E::UnknownTask(_) | E::Ambiguous { .. } => ApiError::not_found(e.to_string()),
            other => ApiError::internal(other),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Journal(j) => j.into(),
            EngineError::Registry(r) => r.into(),
            EngineError::Finished { .. }
            | EngineError::AlreadyRunning(_)
            | EngineError::PluginChanged { .. } => ApiError::conflict(e.to_string()),
            EngineError::Workspace(_) => ApiError::bad_request(chain(&e)),
            EngineError::ShuttingDown => ApiError::unavailable(e.to_string()),
            EngineError::Running(_) => ApiError::conflict(e.to_string()),
            EngineError::Undo {
                source: camina_coordinator::undo::UndoError::ChangedSince(_),
                ..
            } => ApiError::new(StatusCode::CONFLICT, "changed_since", e.to_string()),
            EngineError::Undo {
                source: camina_coordinator::undo::UndoError::Pruned(_),
                ..
            } => ApiError::new(StatusCode::GONE, "pruned", e.to_string()),
            other => ApiError::internal(other),
        }
    }
}

impl From<camina_registry::Error> for ApiError {
    fn from(e: camina_registry::Error) -> Self {
        use camina_registry::Error as E;
        use camina_registry::sign::SignError;
        match e {
            E::UnknownPlugin(_) => ApiError::not_found(chain(&e)),
            E::BadDigest(_) => ApiError::bad_request(chain(&e)),
            E::DigestMismatch { .. }
            | E::Policy(_)
            | E::Component { .. }
            | E::Describe { .. }
            | E::Manifest { .. }
            | E::NameMismatch { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_plugin",
                chain(&e),
            ),
            // No signature where one is required, or one by a key this
            // host does not trust: refused. A signature that does not
            // verify or match: the upload is at fault.
            E::Signature {
                error: SignError::Missing | SignError::Untrusted { .. },
                ..
            } => ApiError::new(StatusCode::FORBIDDEN, "untrusted_signature", chain(&e)),
            E::Signature { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_signature",
                chain(&e),
            ),
            // The host's own store or a sandbox call failing: ours.
            E::Io { .. } | E::CorruptRecord { .. } | E::Call(_) => ApiError::internal(e),
        }
    }
}

/// Body extractors' rejections as API errors (413 for size, 400 naming the
/// problem otherwise).
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                r.body_text(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                r.body_text(),
            ),
            _ => ApiError::bad_request(r.body_text()),
        }
    }
}
