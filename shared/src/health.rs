//! `/healthz` (process alive) and `/readyz` (dependencies in place), served by both binaries.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};

/// A readiness latch made of named conditions; ready while all hold. Each component owns the
/// condition it sets, so `/readyz` can say which one is missing.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    conditions: Arc<Vec<(&'static str, AtomicBool)>>,
}

impl Readiness {
    pub fn new(names: &[&'static str]) -> Self {
        Self {
            conditions: Arc::new(names.iter().map(|n| (*n, AtomicBool::new(false))).collect()),
        }
    }

    /// Sets a condition; unknown names are a programming error and are ignored in release.
    pub fn set(&self, name: &str, ok: bool) {
        let found = self.conditions.iter().find(|(n, _)| *n == name);
        debug_assert!(found.is_some(), "unknown readiness condition {name}");
        if let Some((_, flag)) = found {
            flag.store(ok, Ordering::Release);
        }
    }

    /// Names of the conditions that do not hold; empty when ready.
    pub fn missing(&self) -> Vec<&'static str> {
        self.conditions
            .iter()
            .filter(|(_, f)| !f.load(Ordering::Acquire))
            .map(|(n, _)| *n)
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        self.conditions
            .iter()
            .all(|(_, f)| f.load(Ordering::Acquire))
    }
}

/// Routes for `/healthz` and `/readyz`.
pub fn routes<S: Clone + Send + Sync + 'static>(readiness: Readiness) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz).with_state(readiness))
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, String) {
    let missing = readiness.missing();
    if missing.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join(", ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_all_conditions_hold() {
        let r = Readiness::new(&["redis", "subscriptions"]);
        assert!(!r.is_ready());
        r.set("redis", true);
        assert_eq!(r.missing(), vec!["subscriptions"]);
        r.set("subscriptions", true);
        assert!(r.is_ready());
        r.set("redis", false);
        assert!(!r.is_ready());
    }
}
