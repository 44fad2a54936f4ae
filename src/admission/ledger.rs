//! Which requests are in flight: each one's method, path and start, so that the drain can name
//! the oldest and the advisor the one that outlived the budget.
//!
//! The ledger is split into shards, one per thread that serves requests (a worker thread keeps
//! its requests from start to end), so entering and leaving take a lock no other thread wants.
//! Slots are reused, and a slot keeps its path's allocation: after warm-up a request costs two
//! uncontended locks and a copy of its path, no allocation.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

/// Shards: more than the worker threads of any machine this runs on is no gain, fewer than the
/// threads only shares a lock between two threads.
const SHARDS: usize = 16;
/// Longer paths are kept cut to this many bytes: enough to recognise an endpoint.
const PATH_MAX: usize = 256;

#[derive(Debug)]
pub struct Ledger {
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Debug, Default)]
struct Shard {
    entries: Vec<Entry>,
    /// Indexes of the entries not in use.
    free: Vec<u32>,
}

#[derive(Debug)]
struct Entry {
    started: Instant,
    method: Method,
    path: String,
    in_use: bool,
}

/// One request's place in the ledger.
#[derive(Debug)]
pub struct Ticket {
    shard: u16,
    index: u32,
    started: Instant,
}

impl Ticket {
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The oldest request in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oldest {
    /// `GET /path`.
    pub request: String,
    pub age: Duration,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Writes a request in; keep the ticket until it ends.
    pub fn enter(&self, method: &Method, path: &str) -> Ticket {
        let shard = this_threads_shard();
        let started = Instant::now();
        let mut entries = lock(&self.shards[shard]);
        let index = match entries.free.pop() {
            Some(index) => index,
            None => {
                entries.entries.push(Entry {
                    started,
                    method: Method::GET,
                    path: String::new(),
                    in_use: false,
                });
                (entries.entries.len() - 1) as u32
            }
        };
        let entry = &mut entries.entries[index as usize];
        entry.started = started;
        entry.method.clone_from(method);
        entry.path.clear();
        entry.path.push_str(truncate(path));
        entry.in_use = true;
        Ticket {
            shard: shard as u16,
            index,
            started,
        }
    }

    /// Writes a request out; `describe` says whether to return it as `GET /path`.
    pub fn leave(&self, ticket: &Ticket, describe: bool) -> Option<String> {
        let mut entries = lock(&self.shards[usize::from(ticket.shard)]);
        let entry = &mut entries.entries[ticket.index as usize];
        entry.in_use = false;
        let described = describe.then(|| format!("{} {}", entry.method, entry.path));
        entries.free.push(ticket.index);
        described
    }

    /// The request in flight the longest, if any.
    pub fn oldest(&self) -> Option<Oldest> {
        let mut oldest: Option<(Instant, String)> = None;
        for shard in self.shards.iter() {
            let entries = lock(shard);
            for entry in entries.entries.iter().filter(|entry| entry.in_use) {
                if oldest
                    .as_ref()
                    .is_none_or(|(started, _)| entry.started < *started)
                {
                    oldest = Some((entry.started, format!("{} {}", entry.method, entry.path)));
                }
            }
        }
        oldest.map(|(started, request)| Oldest {
            request,
            age: started.elapsed(),
        })
    }
}

/// A shard's lock. A panic while holding one leaves nothing half-written that matters here.
fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The shard of the calling thread, given out in turn the first time a thread asks.
fn this_threads_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

/// `path`, cut to at most [`PATH_MAX`] bytes on a character boundary.
fn truncate(path: &str) -> &str {
    if path.len() <= PATH_MAX {
        return path;
    }
    let mut end = PATH_MAX;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_oldest_request_in_flight_is_named_with_its_age() {
        let ledger = Ledger::new();
        assert_eq!(ledger.oldest(), None);
        let first = ledger.enter(&Method::POST, "/generate");
        tokio::time::advance(Duration::from_secs(3)).await;
        let second = ledger.enter(&Method::GET, "/hello");
        tokio::time::advance(Duration::from_secs(1)).await;
        let oldest = ledger.oldest().unwrap();
        assert_eq!(oldest.request, "POST /generate");
        assert_eq!(oldest.age, Duration::from_secs(4));
        assert_eq!(
            ledger.leave(&first, true).as_deref(),
            Some("POST /generate")
        );
        assert_eq!(ledger.oldest().unwrap().request, "GET /hello");
        // The freed slot is reused, with the new request's path.
        let third = ledger.enter(&Method::PUT, &"/x".repeat(200));
        assert_eq!(
            ledger.leave(&third, true).unwrap().len(),
            "PUT ".len() + PATH_MAX
        );
        assert_eq!(ledger.leave(&second, false), None);
        assert_eq!(ledger.oldest(), None);
    }
}
