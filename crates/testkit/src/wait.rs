//! Waits for tests, each with a deadline: a condition that must come true, a future that must
//! finish, a future that must be waiting. Each fails the test naming what it waited for,
//! instead of hanging, or of sleeping a guessed time and assuming that by then it happened.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

/// How long after a check the first check again comes; each later one waits twice as long as
/// the one before, up to [`RECHECK_MAX`]: a condition that comes at once is seen at once, one
/// that takes seconds is not checked thousands of times.
const RECHECK_FIRST: Duration = Duration::from_millis(1);
const RECHECK_MAX: Duration = Duration::from_millis(50);

/// How many times [`spawn_waiting`] lets a future and the tasks it woke run before it must
/// be waiting.
const SETTLE_ROUNDS: usize = 16;

/// Waits until `check` is true, checking every few milliseconds; panics naming `what` once
/// `within` has passed without it.
pub async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until_ok(what, within, || {
        let checked = check();
        async move { if checked.await { Ok(()) } else { Err("not yet") } }
    })
    .await;
}

/// Waits until `check` gives `Ok` and returns its value, checking every few milliseconds;
/// `Err` says what it saw instead. Panics naming `what`, with the last `Err`, once `within`
/// has passed without an `Ok`.
pub async fn until_ok<T, E, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    let mut pause = RECHECK_FIRST;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "waited {within:?} for {what}, and it never came (last seen: {seen})"
            ),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECHECK_MAX);
    }
}

/// [`until`] for code without a runtime: checks on this thread, sleeping between checks.
pub fn until_blocking(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    let mut pause = RECHECK_FIRST;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {what}, and it never came"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(RECHECK_MAX);
    }
}

/// The output of `future`; panics naming `what` if it has not finished within `within`.
pub async fn within<F: Future>(what: &str, within: Duration, future: F) -> F::Output {
    match tokio::time::timeout(within, future).await {
        Ok(output) => output,
        Err(_) => panic!("waited {within:?} for {what}, and it never came"),
    }
}

/// Runs `future` on this task until it waits (it is still pending after it, and the tasks it
/// woke, have run as far as they could), then spawns it and returns its handle. Panics naming
/// `what` if it finished instead: a test of what wakes a waiter must have a waiter first.
///
/// "As far as they could" is judged by letting the runtime run its other tasks a few times;
/// a future that waits on a timer, a lock held elsewhere or another process is waiting.
pub async fn spawn_waiting<F>(what: &str, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut future: Pin<Box<F>> = Box::pin(future);
    for _ in 0..SETTLE_ROUNDS {
        let polled = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_ready())).await;
        assert!(!polled, "{what} finished at once; it should have been waiting");
        tokio::task::yield_now().await;
    }
    tokio::spawn(future)
}

/// The outputs of every task of `tasks`, in the order they finished; panics naming `what` if
/// they have not all finished within `within`, and with a task's panic if one panicked.
pub async fn join_all<T: 'static>(
    what: &str,
    within: Duration,
    tasks: &mut tokio::task::JoinSet<T>,
) -> Vec<T> {
    self::within(what, within, async {
        let mut outputs = Vec::with_capacity(tasks.len());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(output) => outputs.push(output),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(error) => panic!("a task of {what} was cancelled: {error}"),
            }
        }
        outputs
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn until_returns_once_the_condition_holds() {
        let checks = AtomicUsize::new(0);
        until("the third check", Duration::from_secs(5), || async {
            checks.fetch_add(1, Ordering::SeqCst) + 1 >= 3
        })
        .await;
        assert_eq!(checks.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waited 50ms for the door to open, and it never came (last seen: shut)")]
    async fn until_ok_fails_naming_what_and_the_last_seen() {
        until_ok("the door to open", SHORT, || async { Err::<(), _>("shut") }).await;
    }

    #[test]
    #[should_panic(expected = "waited 50ms for a flag")]
    fn until_blocking_fails_naming_what() {
        until_blocking("a flag", SHORT, || false);
    }

    #[tokio::test]
    #[should_panic(expected = "waited 50ms for an answer")]
    async fn within_fails_on_a_future_that_does_not_finish() {
        within("an answer", SHORT, std::future::pending::<()>()).await;
    }

    #[tokio::test]
    #[should_panic(expected = "a read finished at once; it should have been waiting")]
    async fn spawn_waiting_fails_on_a_future_that_does_not_wait() {
        spawn_waiting("a read", async {}).await;
    }

    #[tokio::test]
    async fn spawn_waiting_hands_over_a_waiter_that_is_woken_later() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let waiting = spawn_waiting("a receiver", rx).await;
        tx.send(7).expect("the receiver is there");
        let got = within("the receiver", Duration::from_secs(5), waiting).await;
        assert_eq!(got.expect("join").expect("received"), 7);
    }

    #[tokio::test]
    #[should_panic(expected = "task 2 failed")]
    async fn join_all_passes_a_task_panic_on() {
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..3 {
            tasks.spawn(async move { assert_ne!(task, 2, "task 2 failed") });
        }
        join_all("the tasks", Duration::from_secs(5), &mut tasks).await;
    }
}
