//! The HTTP/2 connection each worker thread keeps to an h2c backend (`--upstream-protocol
//! http2`), shared by all of the thread's requests to it.
//!
//! One connection multiplexes any number of requests, so a worker needs no more than one: it is
//! kept in a thread-local (only the worker touches it, as with [`super::links`]), found by the
//! backend it goes to, never by a request's authority. (hyper-util's pool keyed its HTTP/2
//! connections by authority: once `:authority` became the client's, each `Host` a client sent
//! opened a connection of its own.)
//!
//! The connection is opened by the first request that needs one; requests arriving while it is
//! being opened wait for it instead of opening their own. It is replaced once it has closed (the
//! backend went away, or sent GOAWAY) or has carried no new request for [`IDLE_TIMEOUT`]: a
//! backend may close an idle connection under a request just written to it. Then the sender is
//! dropped, and hyper closes the connection once its last stream ends; the worker's sweep does the
//! same to a connection left unused.

use std::cell::RefCell;
use std::future::Future;

use hyper::client::conn::http2::SendRequest;
use tokio::sync::watch;
use tokio::time::Instant;

use super::links::IDLE_TIMEOUT;
use super::{BackendError, RequestBody};

/// A handle on a worker's HTTP/2 connection: cloned for each request, which it multiplexes.
pub(super) type Sender = SendRequest<RequestBody>;

/// Where a worker's connection to one backend stands.
enum State {
    /// None yet, or the last one closed.
    None,
    /// Requests go on this one while it is open and fresh.
    Open { sender: Sender, last_used: Instant },
    /// A request is opening one; others wait for the sender it sends. Its sender dropped without
    /// sending (the opening failed, or its request was given up): a request that finds that
    /// opens the next.
    Opening(watch::Receiver<Option<Sender>>),
}

struct Slot {
    /// [`super::links::Home::backend`]: tells apart the backends of one process.
    backend: u64,
    state: State,
}

thread_local! {
    /// This thread's connections, one per backend (in practice, one).
    static SLOTS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's state for `backend`. What `f` returns is dropped after the borrow
/// ends: a sender dropped inside it would wake the connection's task from within the borrow.
fn with_state<R>(backend: u64, f: impl FnOnce(&mut State) -> R) -> R {
    SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        let index = match slots.iter().position(|slot| slot.backend == backend) {
            Some(index) => index,
            None => {
                slots.push(Slot {
                    backend,
                    state: State::None,
                });
                slots.len() - 1
            }
        };
        f(&mut slots[index].state)
    })
}

/// Whether requests may still go on a connection last used at `last_used`.
fn usable(sender: &Sender, last_used: Instant, now: Instant) -> bool {
    !sender.is_closed() && now.duration_since(last_used) < IDLE_TIMEOUT
}

/// Whether a connection is being opened by a request still alive to finish it.
fn opening(rx: &watch::Receiver<Option<Sender>>) -> bool {
    rx.has_changed().is_ok()
}

/// What a request does to get a connection.
enum Step {
    Use(Sender),
    Wait(watch::Receiver<Option<Sender>>),
    /// Open one, and send it to the requests that wait; `State` is the one replaced, to drop.
    Open(watch::Sender<Option<Sender>>, State),
}

/// A connection for one request to `backend`: this thread's, or a new one that `open` makes (and
/// that becomes this thread's). The flag says whether the connection was there before: a request
/// it could not take may be retried on another, whereas one a connection just opened for it
/// could not take would fail again.
pub(super) async fn sender<F, Fut>(backend: u64, open: F) -> Result<(Sender, bool), BackendError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Sender, BackendError>>,
{
    let now = Instant::now();
    let step = with_state(backend, |state| match state {
        State::Open { sender, last_used } if usable(sender, *last_used, now) => {
            *last_used = now;
            Step::Use(sender.clone())
        }
        State::Opening(rx) if opening(rx) => Step::Wait(rx.clone()),
        _ => {
            let (tx, rx) = watch::channel(None);
            Step::Open(tx, std::mem::replace(state, State::Opening(rx)))
        }
    });
    match step {
        Step::Use(sender) => Ok((sender, true)),
        Step::Open(tx, replaced) => {
            drop(replaced);
            // Dropped unsent if this request is given up here: waiters then open their own.
            let opened = open().await;
            let replaced = with_state(backend, |state| {
                let next = match &opened {
                    Ok(sender) => State::Open {
                        sender: sender.clone(),
                        last_used: Instant::now(),
                    },
                    Err(_) => State::None,
                };
                std::mem::replace(state, next)
            });
            drop(replaced);
            let sender = opened?;
            // No one waiting is no error.
            let _ = tx.send(Some(sender.clone()));
            Ok((sender, false))
        }
        Step::Wait(mut rx) => {
            let shared = rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|sender| sender.clone());
            if let Some(sender) = shared {
                return Ok((sender, true));
            }
            // The opening failed, or was given up. Try once more, alone, rather than queue
            // behind the next attempt: each request waits at most for two openings, and gets the
            // error of its own.
            let sender = open().await?;
            let replaced = with_state(backend, |state| match state {
                State::Open { sender, last_used } if usable(sender, *last_used, Instant::now()) => {
                    None
                }
                State::Opening(rx) if opening(rx) => None,
                _ => Some(std::mem::replace(
                    state,
                    State::Open {
                        sender: sender.clone(),
                        last_used: Instant::now(),
                    },
                )),
            });
            drop(replaced);
            Ok((sender, false))
        }
    }
}

/// Drops this thread's connection to `backend` once it has closed or gone unused too long, so
/// that it does not hold the backend's connection (and a file descriptor) while no request comes.
/// Streams still running on it go on to their end.
pub(super) fn sweep(backend: u64) {
    let now = Instant::now();
    let replaced = SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        let slot = slots.iter_mut().find(|slot| slot.backend == backend)?;
        let stale = match &slot.state {
            State::None => false,
            State::Open { sender, last_used } => !usable(sender, *last_used, now),
            State::Opening(rx) => !opening(rx),
        };
        stale.then(|| std::mem::replace(&mut slot.state, State::None))
    });
    drop(replaced);
}
