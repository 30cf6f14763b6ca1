//! Request bodies: JSON, strict (unknown fields, wrong types and trailing bytes are
//! refused with the field named), at most [`BODY_LIMIT`] bytes (413 beyond), all
//! of it within [`BODY_TIME_LIMIT`] (408 after: a client that promises a body
//! and sends nothing does not hold its connection).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use qapi::types::ErrorClass;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;
/// How long a client may take to send a JSON body.
pub const BODY_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

fn too_slow() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        ErrorClass::HttpRequestTimeout,
        format!(
            "the request body did not arrive within {} s",
            BODY_TIME_LIMIT.as_secs()
        ),
    )
}

/// The whole body, within [`BODY_TIME_LIMIT`].
async fn bytes_of<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    tokio::time::timeout(BODY_TIME_LIMIT, Bytes::from_request(req, state))
        .await
        .map_err(|_| too_slow())?
        .map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::bad_request(format!("the request body cannot be read: {r}"))
            }
        })
}

/// A JSON body of type `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// Parses `bytes` as `T` (what [`JsonBody`] does after reading; also the fuzz
/// target's entry).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.len() > BODY_LIMIT {
        return Err(too_large());
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("the request body is not valid: {inner}"))
        } else {
            ApiError::bad_request(format!("the request body is not valid: {path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))?;
    Ok(v)
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorClass::HttpPayloadTooLarge,
        format!("the request body is larger than {BODY_LIMIT} bytes"),
    )
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = bytes_of(req, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// A body that must be empty (or `{}` / `null`): requests without parameters.
#[derive(Debug)]
pub struct NoBody;

impl<S: Send + Sync> FromRequest<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = bytes_of(req, state).await?;
        let text = std::str::from_utf8(&bytes).unwrap_or("?").trim();
        if text.is_empty() || text == "{}" || text == "null" {
            Ok(NoBody)
        } else {
            Err(ApiError::bad_request(
                "this request takes no parameters: send no body",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct B {
        #[allow(dead_code)]
        a: bool,
    }

    #[test]
    fn strict_parse_names_the_field() {
        assert!(parse::<B>(br#"{"a":true}"#).is_ok());
        let e = parse::<B>(br#"{"a":"yes"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.description.contains("a: invalid type"),
            "{}",
            e.description
        );
        let e = parse::<B>(br#"{"a":true,"b":1}"#).unwrap_err();
        assert!(
            e.description.contains("unknown field `b`"),
            "{}",
            e.description
        );
        let e = parse::<B>(br#"{"a":true} x"#).unwrap_err();
        assert_eq!(e.class, ErrorClass::InvalidRequest);
        assert_eq!(
            parse::<B>(b"{").unwrap_err().class,
            ErrorClass::InvalidRequest
        );
        let big = vec![b' '; BODY_LIMIT + 1];
        assert_eq!(
            parse::<B>(&big).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
