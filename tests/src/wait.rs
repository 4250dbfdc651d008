//! Waiting for things to happen instead of sleeping: poll a condition until it holds, or await
//! a future, with one generous deadline. Tests never assert on how long something took.

use std::{fmt::Debug, future::Future, time::Duration};

use tokio::time::Instant;

/// How long any awaited condition may take before the test fails. Generous on purpose: slow CI
/// machines must not fail tests; a correct system is usually far faster.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The result of one poll of a condition: done (with a value) or not yet (with a reason shown if
/// the deadline passes).
pub trait Check {
    type Output;
    fn check(self) -> Result<Self::Output, String>;
}

impl Check for bool {
    type Output = ();
    fn check(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("condition is false".into())
        }
    }
}

impl<T> Check for Option<T> {
    type Output = T;
    fn check(self) -> Result<T, String> {
        self.ok_or_else(|| "still None".into())
    }
}

impl<T, E: Debug> Check for Result<T, E> {
    type Output = T;
    fn check(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// Polls `condition` until it holds (`true`, `Some`, `Ok`) and returns its value; panics with
/// `what` and the last reason after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, condition: F) -> <Fut::Output as Check>::Output
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Check,
{
    eventually_within(DEADLINE, what, condition).await
}

/// [`eventually`] with another deadline.
pub async fn eventually_within<F, Fut>(
    deadline: Duration,
    what: &str,
    mut condition: F,
) -> <Fut::Output as Check>::Output
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Check,
{
    let until = Instant::now() + deadline;
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match condition().await.check() {
            Ok(value) => return value,
            Err(reason) => reason,
        };
        if Instant::now() >= until {
            panic!("{what}: still not the case after {deadline:?}; last: {last}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Awaits `future`, panicking with `what` if it takes longer than [`DEADLINE`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: did not happen within {DEADLINE:?}"),
    }
}
