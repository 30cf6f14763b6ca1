//! `GET /v1/qimg/upgrade/history[?limit=N]` (a qimg extension, `qq
//! upgrade_history`): the cluster's upgrades, newest first, as the coordinator
//! recorded them (`qcluster::history`), from the watch's mirror while it is live.

use axum::Json;
use axum::extract::{RawQuery, State};
use qapi::history::{HISTORY_SCHEMA, UpgradeHistory};

use super::Shared;
use super::cluster_upgrade::store;
use super::error::ApiError;

/// The most records one answer holds, and the default.
pub const LIMIT: usize = qcluster::history::KEEP;

/// How many records the query asks for: `limit=N`, 1 to [`LIMIT`].
fn limit(q: Option<&str>) -> Result<usize, String> {
    let mut limit = LIMIT;
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", v)) => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=LIMIT).contains(n))
                    .ok_or_else(|| format!("limit must be between 1 and {LIMIT}; got {v:?}"))?;
            }
            _ => return Err(format!("unknown query parameter {pair:?}")),
        }
    }
    Ok(limit)
}

pub(super) async fn history(
    State(app): State<Shared>,
    RawQuery(q): RawQuery,
) -> Result<Json<UpgradeHistory>, ApiError> {
    let limit = limit(q.as_deref()).map_err(ApiError::bad_request)?;
    Ok(Json(UpgradeHistory {
        schema: HISTORY_SCHEMA.into(),
        upgrades: store(&app)?.history(limit).await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_checked() {
        assert_eq!(limit(None), Ok(LIMIT));
        assert_eq!(limit(Some("limit=3")), Ok(3));
        assert!(
            limit(Some("limit=0"))
                .unwrap_err()
                .contains("between 1 and")
        );
        assert!(limit(Some("limit=x")).is_err());
        assert!(limit(Some(&format!("limit={}", LIMIT + 1))).is_err());
        assert!(
            limit(Some("max=3"))
                .unwrap_err()
                .contains("unknown query parameter")
        );
    }
}
