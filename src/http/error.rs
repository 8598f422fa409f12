//! The one place where failures become HTTP: OCI distribution error bodies
//! `{"errors":[{"code","message","detail"}]}` with the spec's codes, and statuses chosen so that
//! containerd falls back to its next host (404/5xx) whenever peerd cannot serve.

use crate::error::ApiError;
use crate::peer::PROGRESS_HEADER;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::NameInvalid(_) | ApiError::DigestInvalid(_) => StatusCode::BAD_REQUEST,
            ApiError::NameUnknown(_) | ApiError::ManifestUnknown(_) | ApiError::BlobUnknown(_) => StatusCode::NOT_FOUND,
            ApiError::RangeInvalid(_) | ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Unsupported { status, .. } | ApiError::Unavailable { status, .. } => *status,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Denied | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Pending { .. } => StatusCode::from_u16(425).expect("valid status"),
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        match self {
            // Peer protocol answers: no body, the headers say it all.
            ApiError::Pending { progress } => {
                if let Some(p) = progress {
                    resp.insert_header((PROGRESS_HEADER, p.to_string()));
                }
                return resp.finish();
            }
            ApiError::Busy => return resp.insert_header((header::RETRY_AFTER, "1")).finish(),
            _ => {}
        }
        let detail = match self {
            ApiError::RangeNotSatisfiable { size } => {
                resp.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
                json!({ "size": size })
            }
            ApiError::Unauthorized { www_authenticate: Some(c) } => {
                resp.insert_header((header::WWW_AUTHENTICATE, c.as_str()));
                serde_json::Value::Null
            }
            ApiError::Unsupported { status, .. } if *status == StatusCode::METHOD_NOT_ALLOWED => {
                resp.insert_header((header::ALLOW, "GET, HEAD"));
                serde_json::Value::Null
            }
            _ => serde_json::Value::Null,
        };
        resp.insert_header((header::CONTENT_TYPE, "application/json"));
        resp.body(
            json!({ "errors": [{ "code": self.code(), "message": self.to_string(), "detail": detail }] }).to_string(),
        )
    }
}
