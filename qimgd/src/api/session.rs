//! `POST /v1/session/login`: a token for a user and password, slowed down per
//! user name and per source address prefix after failures ([`crate::throttle`]).

use qapi::types::ErrorClass;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{Extensions, StatusCode};

use super::body::JsonBody;
use super::error::ApiError;
use super::{Shared, blocking};
use crate::peer::Peer;
use crate::users::Users;
use qapi::types::{LoginRequest, LoginResponse};

pub(super) async fn login(
    State(app): State<Shared>,
    ext: Extensions,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    // Unix-socket peers have no address: they share one bucket.
    let ip = ext
        .get::<Peer>()
        .and_then(|p| p.ip)
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if let Err(w) = app.throttle.admit(ip, &req.username, Instant::now()) {
        let secs = w.wait.as_secs_f64().ceil() as u64;
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorClass::AuthLoginThrottled,
            format!("too many failed logins {}: try again in {secs} s", w.who),
        );
        e.retry_after = Some(secs);
        return Err(e);
    }
    // One check at a time per address and per user, its failure recorded
    // before the next may start; and few on the node at once.
    let _check = app.checks.begin(ip, &req.username).map_err(|busy| {
        let who = match busy {
            crate::throttle::Busy::Address(ip) => format!("from {ip}"),
            crate::throttle::Busy::User(u) => format!("as {u}"),
        };
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorClass::AuthLoginThrottled,
            format!("a login {who} is being checked: try again when it is answered"),
        )
        .retry_after(1)
    })?;
    let _slot = app.hashing.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::AuthLoginThrottled,
            "the node is checking other logins: try again in a second",
        )
        .retry_after(1)
    })?;
    let req_user = req.username.clone();
    let users: Users = super::users_knowing(&app, &req.username).await?;
    let ok = blocking(move || {
        Ok(users
            .verify(&req.username, &req.password)
            .map(|u| (u.name.clone(), u.changed)))
    })
    .await?;
    match ok {
        Some((user, changed)) => {
            app.throttle.succeeded(ip, &req_user);
            // Not before the password's change (which is a second ahead of it).
            let iat = upgrade::now().max(changed);
            let token = super::token_keys(&app, false).await?.issue(
                &user,
                iat,
                app.config.token_lifetime_secs,
            );
            Ok(Json(LoginResponse {
                bearer_token: token,
            }))
        }
        None => {
            app.throttle.failed(ip, &req_user, Instant::now());
            super::audit(
                &format!("a failed login as {:?}", truncated(&req_user)),
                ext.get::<Peer>(),
                "POST /v1/session/login -> 401",
            );
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorClass::AuthInvalidCredentials,
                "the user name or password is wrong",
            ))
        }
    }
}

/// A name as the log shows it: at most 64 characters (a caller chooses it).
fn truncated(name: &str) -> String {
    name.chars().take(64).collect()
}
