//! A client connection below HTTP: which protocol it speaks, when hyper is waiting for one of
//! its request heads, how long it has been idle, and the answers lameduck writes itself where
//! hyper has no rule or no JSON body (408, 414, 431, and some 400s).
//!
//! - [`detect`] reads the first bytes: the HTTP/2 preface, or HTTP/1.
//! - [`EdgeIo`] is the socket as hyper sees it. While hyper waits for an HTTP/1 request head, it
//!   scans the head's bytes on their way to hyper ([`HeadScan`]) and refuses a head that breaks
//!   a rule before hyper has seen all of it; and it carries out what the timers decide.
//! - [`HeadTimer`] is the timer hyper's HTTP/1 server uses for its header read timeout, and the
//!   way lameduck learns exactly when hyper starts and stops waiting for a request head: hyper
//!   asks it for a sleep when it starts reading a head (on a new connection, and after every
//!   response on a kept-alive one) and drops the sleep once the head is parsed. That window is
//!   where the header read timeout and the idle timeout apply, and nowhere else: never while a
//!   request body is read or a response written, never once the connection is upgraded.
//! - On an HTTP/2 connection, [`EdgeIo`] counts the control frames that cost lameduck an answer
//!   each (PING, SETTINGS: [`ControlFrames`]); a client that sends them faster than any client
//!   needs is told to go away (hyper's h2 already answers one at a time, so a flood costs no
//!   memory; this ends it).
//! - [`Activity`] is what these share with the connection's task: the window, the requests in
//!   progress, whether a response is waiting for the client to accept data, and a flood.
//! - An HTTP/1 connection kept alive without a request for [`PARK_AFTER`] is *parked*: its
//!   socket reads as closed to hyper (and shuts down as a no-op), so that hyper's connection ends
//!   and gives the socket back, and with it the buffers it holds (16 KiB and more). The
//!   connection's task waits for the next request without them (see `server::connection`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::Limits;
use crate::headers::{self, ClientError, MAX_HEADERS, REQUEST_LINE_MAX};

/// An HTTP/1 connection idle this long between requests gives hyper's buffers back until its
/// next request arrives. nginx frees its buffers at once; this keeps a busy connection's hyper
/// connection across its requests, while a burst of new connections gone idle holds hyper's
/// buffers only briefly (what they allocated at once is what the allocator keeps). A park and
/// the next request's new hyper connection cost a few microseconds: nothing beside a 20 ms gap.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(20);

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// After lameduck's own answer, how long the client's remaining bytes are read and dropped before
/// the socket closes, and how many at most: closing with unread bytes would send a reset, which
/// can destroy the answer before the client has read it (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_MAX: usize = 1024 * 1024;

/// The protocol a new connection speaks, and the bytes read to find out (the start of its first
/// HTTP/1 head, or the HTTP/2 preface), which hyper must still read. `None`: the client closed
/// without sending anything.
pub(super) async fn detect(stream: &mut TcpStream) -> io::Result<Option<(bool, Bytes)>> {
    let mut read = BytesMut::with_capacity(1024);
    loop {
        let eof = stream.read_buf(&mut read).await? == 0;
        let common = read.len().min(H2_PREFACE.len());
        if read[..common] != H2_PREFACE[..common] {
            return Ok(Some((false, read.freeze())));
        }
        if common == H2_PREFACE.len() {
            return Ok(Some((true, read.freeze())));
        }
        if eof {
            // The start of the preface, then nothing: hyper's HTTP/1 parser refuses it.
            return Ok((!read.is_empty()).then(|| (false, read.freeze())));
        }
    }
}

/// What the socket must do at its next read, instead of reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// End the connection quietly: an idle keep-alive connection.
    Close,
    /// Answer with this error's 4xx and close.
    Answer(ClientError),
    /// Let hyper's connection end and give the socket back: an idle keep-alive connection
    /// whose next head has not started.
    Park,
}

/// Why the connection's task must act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// No request in progress for `--idle-timeout` (HTTP/2; HTTP/1 idles in a head window).
    Idle,
    /// A response has waited `--idle-timeout` for the client to accept data.
    Stalled,
    /// The client floods the connection with control frames.
    Flood,
}

/// What a connection's socket, its head timer, its responses and its task share.
///
/// What the request path touches (a request starting or ending, a response frame) is counted
/// in atomics, without a clock: the connection's task ([`Watch`]) reads the counters on its own
/// schedule and tells an idle or stalled connection by counters that have not moved.
#[derive(Debug)]
pub(super) struct Activity {
    limits: Limits,
    accepted: Instant,
    state: Mutex<State>,
    /// Readable without the lock: set with the state's `action`, or at a flood. Every read
    /// checks it; few need the lock.
    attention: AtomicBool,
    /// The id of the open head window (0: none), readable without the lock.
    window: AtomicU64,
    flooded: AtomicBool,
    /// Requests in progress: from hyper's call of the service to the end of the response body.
    requests: AtomicUsize,
    /// Requests started and ended so far.
    started: AtomicU64,
    ended: AtomicU64,
    /// Response bodies that handed hyper a frame and have not been asked for the next one yet:
    /// they wait for the client to accept data.
    waiting_on_client: AtomicUsize,
    /// Moves whenever a response body hands hyper a frame or is asked for the next.
    progress: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// The head window hyper is in, if any: it is waiting for an HTTP/1 request head.
    window: Option<Window>,
    /// Windows opened so far; the first is the connection's first request.
    windows: u64,
    action: Option<Action>,
    /// The timer behind the head windows, kept from one to the next (see [`HeadWait`]).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    id: u64,
    /// When hyper first waited in it (set at the first poll of its sleep, which is when the
    /// wait begins; a head already buffered never waits).
    opened: Option<Instant>,
    /// Bytes of the head have arrived; when the first of them was seen waiting.
    head_started: bool,
    head_started_at: Option<Instant>,
    /// The window has been idle for [`PARK_AFTER`] and its socket told to park.
    park_due: bool,
}

impl Activity {
    pub(super) fn new(limits: Limits, accepted: Instant) -> Arc<Activity> {
        Arc::new(Activity {
            limits,
            accepted,
            state: Mutex::new(State {
                window: None,
                windows: 0,
                action: None,
                timer: None,
            }),
            attention: AtomicBool::new(false),
            window: AtomicU64::new(0),
            flooded: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            waiting_on_client: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; the state stays usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A request has reached the service: counted until its response body ends or is dropped.
    pub(super) fn request(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Relaxed);
        self.started.fetch_add(1, Relaxed);
        RequestGuard {
            activity: Arc::clone(self),
            waiting: false,
        }
    }

    /// A request was served without hyper: hyper's next head window is not the connection's
    /// first (whose deadline counts from the connection's start).
    pub(super) fn skip_window(&self) {
        let mut state = self.state();
        if state.windows == 0 {
            state.windows = 1;
        }
    }

    fn flood(&self) {
        self.flooded.store(true, Relaxed);
        self.attention.store(true, Relaxed);
    }

    fn is_flooded(&self) -> bool {
        self.attention.load(Relaxed) && self.flooded.load(Relaxed)
    }

    fn open_window(&self) -> u64 {
        let mut state = self.state();
        state.windows += 1;
        let id = state.windows;
        state.window = Some(Window {
            id,
            opened: None,
            head_started: false,
            head_started_at: None,
            park_due: false,
        });
        self.window.store(id, Relaxed);
        id
    }

    fn close_window(&self, id: u64) {
        let mut state = self.state();
        if state.window.is_some_and(|window| window.id == id) {
            state.window = None;
            self.window.store(0, Relaxed);
            // What the window decided applies to it alone.
            state.action = None;
        }
    }

    /// The open head window, and whether it is the connection's first; notes that the head has
    /// started (the caller has just read some of it).
    fn head_bytes_arrived(&self) -> Option<(u64, bool)> {
        if self.window.load(Relaxed) == 0 {
            return None;
        }
        let mut state = self.state();
        let window = state.window.as_mut()?;
        window.head_started = true;
        Some((window.id, window.id == 1))
    }

    /// When window `id` ends, and how: a head not complete by then is answered 408 (counted from
    /// the connection's start for its first request, from the head's first byte after that); a
    /// kept-alive connection whose next head has not started parks after [`PARK_AFTER`] (once),
    /// and is closed after the idle timeout. Called as hyper waits in the window; `now` is then.
    fn head_deadline(&self, state: &mut State, id: u64, now: Instant) -> Option<(Instant, Action)> {
        let window = state.window.as_mut().filter(|window| window.id == id)?;
        let opened = *window.opened.get_or_insert(now);
        let timeout = Action::Answer(ClientError::HeadTimeout);
        let idle_until = opened + self.limits.idle_timeout;
        Some(if id == 1 {
            (self.accepted + self.limits.header_read_timeout, timeout)
        } else if window.head_started {
            let started = *window.head_started_at.get_or_insert(now);
            (started + self.limits.header_read_timeout, timeout)
        } else if !window.park_due && opened + PARK_AFTER < idle_until {
            (opened + PARK_AFTER, Action::Park)
        } else {
            (idle_until, Action::Close)
        })
    }

    fn set_action(&self, action: Action) {
        let mut state = self.state();
        if action == Action::Park {
            if let Some(window) = &mut state.window {
                window.park_due = true;
            }
        }
        state.action.get_or_insert(action);
        self.attention.store(true, Relaxed);
    }

    fn take_action(&self) -> Option<Action> {
        if !self.attention.load(Relaxed) {
            return None;
        }
        let mut state = self.state();
        let action = state.action.take();
        self.attention.store(self.flooded.load(Relaxed), Relaxed);
        if action == Some(Action::Park) {
            // Only a connection whose next head has not started can do without hyper.
            state.window.filter(|window| !window.head_started)?;
        }
        action
    }
}

/// What the connection's task watches for, besides hyper: a flood, and (read every quarter of
/// the idle timeout) counters that have stopped moving. A connection is idle (HTTP/2; an HTTP/1
/// connection idles in a head window) when no request has been in progress, started or ended
/// for four checks in a row; it is stalled when a response body has waited for the client, with
/// no body moving, for four checks in a row. Either closes it between 1 and 1¼ times the idle
/// timeout after it began.
#[derive(Debug)]
pub(super) struct Watch {
    activity: Arc<Activity>,
    idles: bool,
    /// The next check, every `every` (later if the task was late for one, as an interval's
    /// missed ticks are delayed). Polled only when it has gone off or has never been polled
    /// since it was set: the connection's task (the only one that polls it) is woken anyway,
    /// and this is asked on every wake-up of that task, several per request.
    checks: Pin<Box<tokio::time::Sleep>>,
    every: Duration,
    /// `checks` holds the task's waker for its current deadline.
    armed: bool,
    /// The counters at the last check: started, ended, progress.
    seen: (u64, u64, u64),
    idle: u32,
    stalled: u32,
}

impl Watch {
    const CHECKS: u32 = 4;
    /// A check this late sets the next one from now, not from when it was due.
    const LATE: Duration = Duration::from_millis(5);

    pub(super) fn new(activity: &Arc<Activity>, http2: bool) -> Watch {
        let every = (activity.limits.idle_timeout / Self::CHECKS).max(Duration::from_millis(1));
        let first = tokio::time::Instant::from_std(activity.accepted) + every;
        Watch {
            activity: Arc::clone(activity),
            idles: http2,
            checks: Box::pin(tokio::time::sleep_until(first)),
            every,
            armed: false,
            seen: (0, 0, 0),
            idle: 0,
            stalled: 0,
        }
    }

    /// Whether the connection is closed once idle for the idle timeout: while lameduck serves
    /// it without hyper, and always over HTTP/2 (hyper's HTTP/1 server waits for heads in
    /// windows with their own deadlines instead).
    pub(super) fn close_when_idle(&mut self, on: bool) {
        self.idles = on;
    }

    /// Resolves when the connection must close, and why.
    pub(super) fn poll_expiry(&mut self, cx: &mut Context<'_>) -> Poll<Expiry> {
        loop {
            if self.activity.is_flooded() {
                return Poll::Ready(Expiry::Flood);
            }
            if self.armed && !self.checks.is_elapsed() {
                return Poll::Pending;
            }
            if self.checks.as_mut().poll(cx).is_pending() {
                self.armed = true;
                return Poll::Pending;
            }
            let due = self.checks.deadline();
            let now = tokio::time::Instant::now();
            let next = if now > due + Self::LATE {
                now + self.every
            } else {
                due + self.every
            };
            self.checks.as_mut().reset(next);
            self.armed = false;
            let a = &self.activity;
            let now = (
                a.started.load(Relaxed),
                a.ended.load(Relaxed),
                a.progress.load(Relaxed),
            );
            let quiet =
                a.requests.load(Relaxed) == 0 && now.0 == self.seen.0 && now.1 == self.seen.1;
            let waiting = a.waiting_on_client.load(Relaxed) > 0 && now.2 == self.seen.2;
            self.seen = now;
            self.idle = if self.idles && quiet {
                self.idle + 1
            } else {
                0
            };
            self.stalled = if waiting { self.stalled + 1 } else { 0 };
            if self.stalled >= Self::CHECKS {
                return Poll::Ready(Expiry::Stalled);
            }
            if self.idle >= Self::CHECKS {
                return Poll::Ready(Expiry::Idle);
            }
        }
    }
}

/// One request in progress (see [`Activity::request`]), and whether its response body waits for
/// the client.
#[derive(Debug)]
pub(super) struct RequestGuard {
    activity: Arc<Activity>,
    waiting: bool,
}

impl RequestGuard {
    /// hyper asks the response body for its next frame: the client has accepted the last one.
    pub(super) fn asked(&mut self) {
        let activity = &self.activity;
        activity.progress.fetch_add(1, Relaxed);
        if std::mem::take(&mut self.waiting) {
            activity.waiting_on_client.fetch_sub(1, Relaxed);
        }
    }

    /// The response body handed hyper a frame: until hyper asks for the next one, it waits for
    /// the client.
    pub(super) fn handed(&mut self) {
        let activity = &self.activity;
        activity.progress.fetch_add(1, Relaxed);
        if !std::mem::replace(&mut self.waiting, true) {
            activity.waiting_on_client.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let activity = &self.activity;
        if self.waiting {
            activity.waiting_on_client.fetch_sub(1, Relaxed);
        }
        activity.ended.fetch_add(1, Relaxed);
        activity.requests.fetch_sub(1, Relaxed);
    }
}

/// The timer of one HTTP/1 connection's hyper server: see the module's doc. hyper's HTTP/1
/// server uses its timer for the header read timeout only, so every sleep it asks for opens a
/// head window.
#[derive(Debug, Clone)]
pub(super) struct HeadTimer(pub(super) Arc<Activity>);

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, _: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadWait::open(&self.0))
    }

    fn sleep_until(&self, _: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadWait::open(&self.0))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, _: Instant) {
        *sleep = Box::pin(HeadWait::open(&self.0));
    }
}

/// One head window: open from hyper's request for a sleep until hyper drops it. It never
/// completes: when its deadline passes it has the socket answer 408 (or close an idle
/// connection) at hyper's next read, and hyper sees the connection end like any other. Its
/// timer is set at its first poll: a head that is already there is parsed without one.
///
/// The timer is the connection's, kept from one window to the next: set no later than the
/// window's deadline, and left running when the window closes. A timer set earlier (for an
/// earlier window) stays: it wakes the window early, which sets it again. So a kept-alive
/// connection whose heads come sooner than [`PARK_AFTER`] apart sets its timer about once per
/// [`PARK_AFTER`], not once per request (with a registration and a removal in the runtime's
/// timer wheel, and an allocation, each time); a timer that goes off after its window closed
/// costs one spurious wake-up of the connection's task.
#[derive(Debug)]
struct HeadWait {
    activity: Arc<Activity>,
    id: u64,
    fired: bool,
}

impl HeadWait {
    fn open(activity: &Arc<Activity>) -> HeadWait {
        HeadWait {
            activity: Arc::clone(activity),
            id: activity.open_window(),
            fired: false,
        }
    }
}

impl Future for HeadWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.fired {
            return Poll::Pending;
        }
        let action = {
            let activity = &this.activity;
            let mut state = activity.state();
            let Some((deadline, action)) =
                activity.head_deadline(&mut state, this.id, Instant::now())
            else {
                return Poll::Pending;
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            let timer = state
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            loop {
                ready!(timer.as_mut().poll(cx));
                if timer.deadline() >= deadline {
                    break action;
                }
                // Set for an earlier window: set it again, for this one.
                timer.as_mut().reset(deadline);
            }
        };
        match action {
            Action::Answer(err) => debug!(code = err.code(), "request head not complete in time"),
            Action::Close => debug!("idle keep-alive connection closed"),
            // If the head starts before the socket parks, the window's timing goes on.
            Action::Park => {}
        }
        this.fired = action != Action::Park;
        this.activity.set_action(action);
        // hyper reads again, and the socket acts.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl hyper::rt::Sleep for HeadWait {}

impl Drop for HeadWait {
    fn drop(&mut self) {
        self.activity.close_window(self.id);
    }
}

/// The rules checked on a request head's raw bytes, as they reach hyper: those hyper's parser
/// cannot express (the request line's own limit, `Content-Length` beside `Transfer-Encoding`,
/// which hyper resolves by itself, a repeated `Content-Length`) and those it answers without a
/// JSON body (size, header count, control characters, obs-fold, a `Content-Length` that is not a
/// number, a transfer coding other than `chunked`).
///
/// A scan starts with the window, which is at the head's first byte unless hyper already holds
/// part of the head (a client that pipelines); then it starts mid-head, undercounts, and may
/// take a header line's tail for the first line. The rules are written so that this only lets a
/// head through to hyper's and `headers::check_request`'s checks: the first line is never read
/// as a header, and an empty line always ends the scan. The one exception is the request line's
/// limit: a header line over 8 KiB whose tail is taken for the request line gets 414 (nginx
/// refuses a header line that long too, with 400).
#[derive(Debug, Default)]
struct HeadScan {
    window: u64,
    /// The connection's first head: the scan starts at its first byte for sure.
    first: bool,
    len: usize,
    /// Lines complete so far; line 0 is the request line.
    lines: usize,
    /// Bytes of the current line so far, CR included.
    line_len: usize,
    /// The current line's first bytes, lower case: enough to recognise the framing headers.
    name: [u8; 18],
    after_cr: bool,
    /// The current line is a header line whose first byte is not a framing header's: the
    /// rest of it needs no look one byte at a time.
    plain_line: bool,
    /// The current line's value, if it is a framing header's.
    framing: Framing,
    content_length: bool,
    transfer_encoding: bool,
    done: bool,
}

/// The value of a framing header, read as it arrives.
#[derive(Debug, Default)]
enum Framing {
    #[default]
    Other,
    /// `Content-Length`: one number, with optional whitespace around it.
    Length {
        digits: usize,
        ended: bool,
        bad: bool,
    },
    /// `Transfer-Encoding`: the value's first bytes, enough to tell `chunked` alone.
    Coding { value: [u8; 24], len: usize },
}

const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";

impl Framing {
    fn push(&mut self, byte: u8) {
        match self {
            Framing::Other => {}
            Framing::Length { digits, ended, bad } => match byte {
                b'0'..=b'9' if !*ended => *digits += 1,
                b' ' | b'\t' | b'\r' => *ended |= *digits > 0,
                _ => *bad = true,
            },
            Framing::Coding { value, len } => {
                if let Some(slot) = value.get_mut(*len) {
                    *slot = byte;
                }
                *len += 1;
            }
        }
    }

    /// Checks the complete value of one framing header line.
    fn check(&self) -> Result<(), ClientError> {
        match self {
            Framing::Other => Ok(()),
            // 19 digits: u64's range; hyper refuses more.
            Framing::Length { digits, bad, .. } if *bad || *digits == 0 || *digits > 19 => {
                Err(ClientError::InvalidContentLength)
            }
            Framing::Length { .. } => Ok(()),
            Framing::Coding { value, len } => {
                let value = value
                    .get(..*len)
                    .ok_or(ClientError::UnsupportedTransferCoding)?;
                if headers::is_chunked_alone(value) {
                    Ok(())
                } else {
                    Err(ClientError::UnsupportedTransferCoding)
                }
            }
        }
    }
}

impl HeadScan {
    fn new(window: u64, first: bool) -> HeadScan {
        HeadScan {
            window,
            first,
            ..HeadScan::default()
        }
    }

    /// Scans the next bytes of the head (bytes after its end are not looked at).
    fn feed(&mut self, mut bytes: &[u8], max_size: usize) -> Result<(), ClientError> {
        while let Some(&byte) = bytes.first() {
            if self.done {
                break;
            }
            // In bulk where nothing but the line's end, a control character or a limit can
            // happen; else (a header line's first byte, a framing header's value, the byte that
            // breaks a rule) one byte at a time.
            let room = &bytes[..bytes.len().min(max_size.saturating_sub(self.len + 1))];
            let run = if !matches!(self.framing, Framing::Other) {
                0
            } else if self.lines == 0 || self.plain_line || self.line_len >= TRANSFER_ENCODING.len()
            {
                self.take_plain(room)
            } else if self.line_len > 0 {
                self.take_name(room)
            } else {
                0
            };
            if run > 0 {
                bytes = &bytes[run..];
                continue;
            }
            self.feed_byte(byte, max_size)?;
            bytes = &bytes[1..];
        }
        Ok(())
    }

    /// Takes the bytes that need no look one at a time: in the request line, or in a header
    /// line past the longest framing header's name and not a framing header's value; up to the
    /// line's end, a control character, or the request line's limit (`bytes` stop short of the
    /// head's). Most of a head's bytes (long values: user agents, cookies) go this way. Returns
    /// how many it took.
    fn take_plain(&mut self, bytes: &[u8]) -> usize {
        let bytes = if self.lines == 0 {
            let room = REQUEST_LINE_MAX.saturating_sub(self.line_len + 1);
            &bytes[..bytes.len().min(room)]
        } else {
            bytes
        };
        let run = plain_len(bytes);
        self.took(&bytes[..run]);
        run
    }

    /// Takes the next bytes of a header line's name (after its first byte, before any framing
    /// header's value), in lower case for [`HeadScan::recognise_framing`]: up to where a framing
    /// header's name would end, the line's end, or a control character (`bytes` stop short of the
    /// head's limit). Returns how many it took.
    fn take_name(&mut self, bytes: &[u8]) -> usize {
        let stop = if self.line_len < CONTENT_LENGTH.len() {
            CONTENT_LENGTH.len()
        } else {
            TRANSFER_ENCODING.len()
        };
        let bytes = &bytes[..bytes.len().min(stop - self.line_len)];
        // At most 18 bytes: one at a time is quicker than `plain_len`'s chunks here.
        let run = bytes
            .iter()
            .position(|&byte| byte == b'\n' || is_forbidden_control(byte))
            .unwrap_or(bytes.len());
        for (slot, &byte) in self.name[self.line_len..].iter_mut().zip(&bytes[..run]) {
            *slot = byte.to_ascii_lowercase();
        }
        self.took(&bytes[..run]);
        if run > 0 && self.line_len == stop {
            self.recognise_framing();
        }
        run
    }

    /// Counts `run`, bytes of the current line that need no look one at a time.
    fn took(&mut self, run: &[u8]) {
        if let Some(&last) = run.last() {
            self.len += run.len();
            self.line_len += run.len();
            self.after_cr = last == b'\r';
        }
    }

    /// Scans one byte of the head.
    fn feed_byte(&mut self, byte: u8, max_size: usize) -> Result<(), ClientError> {
        self.len += 1;
        if byte == b'\n' {
            self.end_line()?;
        } else {
            if is_forbidden_control(byte) {
                return Err(ClientError::ControlCharacter);
            }
            if self.line_len == 0 && self.lines > 0 && (byte == b' ' || byte == b'\t') {
                return Err(ClientError::LineFolding);
            }
            if let Some(slot) = self.name.get_mut(self.line_len) {
                *slot = byte.to_ascii_lowercase();
            }
            // Neither `content-length:` nor `transfer-encoding:`, whatever follows.
            if self.line_len == 0 && self.lines > 0 {
                self.plain_line = !matches!(byte.to_ascii_lowercase(), b'c' | b't');
            }
            self.framing.push(byte);
            self.line_len += 1;
            if self.lines > 0
                && (self.line_len == CONTENT_LENGTH.len()
                    || self.line_len == TRANSFER_ENCODING.len())
            {
                self.recognise_framing();
            }
            self.after_cr = byte == b'\r';
            // With its LF to come.
            if self.lines == 0 && self.line_len + 1 > REQUEST_LINE_MAX {
                return Err(ClientError::RequestLineTooLong);
            }
        }
        // An unfinished head of `max_size` bytes is over the limit with its last byte.
        if self.len > max_size || (!self.done && self.len == max_size) {
            return Err(ClientError::HeadTooLarge);
        }
        Ok(())
    }

    /// Right after a header line's name and colon: whether its value, from the next byte on, is
    /// a framing header's.
    fn recognise_framing(&mut self) {
        let Some(name) = self.name.get(..self.line_len) else {
            return;
        };
        if name == CONTENT_LENGTH {
            self.framing = Framing::Length {
                digits: 0,
                ended: false,
                bad: false,
            };
        } else if name == TRANSFER_ENCODING {
            self.framing = Framing::Coding {
                value: [0; 24],
                len: 0,
            };
        }
    }

    fn end_line(&mut self) -> Result<(), ClientError> {
        let content = self.line_len - usize::from(self.after_cr);
        let header = self.lines > 0;
        let framing = std::mem::take(&mut self.framing);
        self.line_len = 0;
        self.after_cr = false;
        self.plain_line = false;
        if content == 0 {
            if self.first && self.lines == 0 {
                // Empty lines before the request line: parsers skip them (RFC 9112 §2.2).
                return Ok(());
            }
            self.done = true;
            if self.content_length && self.transfer_encoding {
                return Err(ClientError::LengthAndTransferEncoding);
            }
            return Ok(());
        }
        if header {
            framing.check()?;
            match framing {
                Framing::Length { .. } if self.content_length => {
                    return Err(ClientError::DuplicateContentLength)
                }
                Framing::Length { .. } => self.content_length = true,
                // `chunked` twice is a coding other than `chunked` alone.
                Framing::Coding { .. } if self.transfer_encoding => {
                    return Err(ClientError::UnsupportedTransferCoding)
                }
                Framing::Coding { .. } => self.transfer_encoding = true,
                Framing::Other => {}
            }
            if self.lines > MAX_HEADERS {
                return Err(ClientError::TooManyHeaders);
            }
        }
        self.lines += 1;
        Ok(())
    }
}

/// Control characters have no place anywhere in an HTTP/1 head (RFC 9110 §5.5, RFC 9112 §3);
/// HTAB separates, CR and LF end lines.
fn is_forbidden_control(byte: u8) -> bool {
    (byte < 0x20 && byte != b'\t' && byte != b'\r') || byte == 0x7f
}

/// How many of `bytes` come before the first LF or forbidden control character: eight at a
/// time, each word's stops found at once ([`stops`]).
fn plain_len(bytes: &[u8]) -> usize {
    let mut words = bytes.chunks_exact(8);
    let mut plain = 0;
    for word in &mut words {
        let mut eight = [0; 8];
        eight.copy_from_slice(word);
        let stops = stops(u64::from_le_bytes(eight));
        if stops != 0 {
            return plain + (stops.trailing_zeros() / 8) as usize;
        }
        plain += 8;
    }
    let rest = words.remainder();
    // Padded with spaces, which are no stops.
    let mut last = [b' '; 8];
    last[..rest.len()].copy_from_slice(rest);
    let stops = stops(u64::from_le_bytes(last));
    plain + ((stops.trailing_zeros() / 8) as usize).min(rest.len())
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` (little-endian) that is LF or a forbidden control
/// character ([`is_forbidden_control`]), and no other bit. Exact for every byte: no carry
/// crosses from one byte to the next.
fn stops(word: u64) -> u64 {
    // (b & 0x7f) + 0x60 reaches the high bit exactly when b & 0x7f >= 0x20.
    let below_space = !(((word & !HIGHS) + ONES * 0x60) | word) & HIGHS;
    (below_space & !bytes_equal(word, b'\t') & !bytes_equal(word, b'\r')) | bytes_equal(word, 0x7f)
}

/// The high bit of each byte of `word` equal to `byte`.
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    // (b & 0x7f) + 0x7f reaches the high bit exactly when b & 0x7f != 0.
    !(((x & !HIGHS) + !HIGHS) | x) & HIGHS
}

/// The HTTP/2 control frames a client sends that lameduck must answer (PING and SETTINGS
/// without ACK), counted against a budget that refills over time: a burst of
/// [`ControlFrames::BURST`], then [`ControlFrames::PER_SECOND`]. Clients send a handful (gRPC
/// keepalives and window probes, at most a few a second); a flood (CVE-2019-9512, -9515) spends
/// the budget within milliseconds.
#[derive(Debug)]
struct ControlFrames {
    /// Bytes of the connection preface still to pass.
    preface: usize,
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload: usize,
    budget: f64,
    refilled: Instant,
}

impl ControlFrames {
    const BURST: f64 = 1000.0;
    const PER_SECOND: f64 = 100.0;

    fn new() -> ControlFrames {
        ControlFrames {
            preface: H2_PREFACE.len(),
            header: [0; 9],
            have: 0,
            payload: 0,
            budget: Self::BURST,
            refilled: Instant::now(),
        }
    }

    /// Follows the frames through the next bytes the client sent; false once over budget.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        const SETTINGS: u8 = 0x4;
        const PING: u8 = 0x6;
        const ACK: u8 = 0x1;
        while !bytes.is_empty() {
            let skip = if self.preface > 0 {
                &mut self.preface
            } else {
                &mut self.payload
            };
            if *skip > 0 {
                let n = (*skip).min(bytes.len());
                *skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            self.header[self.have] = bytes[0];
            bytes = &bytes[1..];
            self.have += 1;
            if self.have < self.header.len() {
                continue;
            }
            self.have = 0;
            let [l0, l1, l2, kind, flags, ..] = self.header;
            self.payload = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
            if matches!(kind, SETTINGS | PING) && flags & ACK == 0 && !self.spend() {
                return false;
            }
        }
        true
    }

    fn spend(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f64() * Self::PER_SECOND;
        self.budget = (self.budget + refill).min(Self::BURST) - 1.0;
        self.refilled = now;
        self.budget >= 0.0
    }
}

/// lameduck's own answer to a head it refuses, as raw HTTP/1.1: the status, the JSON body, and
/// `Connection: close`.
fn answer_bytes(err: ClientError) -> Bytes {
    let status = err.status();
    let body = err.body();
    Bytes::from(format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\ncache-control: no-store\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    ))
}

/// The end of a connection that lameduck decided: its answer (none for a quiet close), written,
/// then the linger.
#[derive(Debug)]
struct Ending {
    answer: Bytes,
    written: usize,
    shut: bool,
    drained: usize,
    linger: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

/// A client's socket as hyper sees it: see the module's doc.
#[derive(Debug)]
pub(super) struct EdgeIo {
    stream: TcpStream,
    /// Bytes [`detect`] read, for hyper to read first.
    prefix: Bytes,
    activity: Arc<Activity>,
    scan: HeadScan,
    /// HTTP/2 only.
    control: Option<ControlFrames>,
    ending: Option<Ending>,
    /// hyper has written bytes it has not flushed: an answer of lameduck's must not go beside
    /// them.
    unflushed: bool,
    /// Reads end and shutdown does nothing, so that hyper gives the socket back (see the
    /// module's doc).
    parked: bool,
}

impl EdgeIo {
    pub(super) fn new(
        stream: TcpStream,
        prefix: Bytes,
        activity: Arc<Activity>,
        http2: bool,
    ) -> EdgeIo {
        EdgeIo {
            stream,
            prefix,
            activity,
            scan: HeadScan::default(),
            control: http2.then(ControlFrames::new),
            ending: None,
            unflushed: false,
            parked: false,
        }
    }

    /// The socket, and the bytes read from it that were meant for hyper and it never read.
    pub(super) fn into_parts(self) -> (TcpStream, Bytes) {
        (self.stream, self.prefix)
    }

    /// Whether hyper gave this socket back to be parked, rather than because it is done.
    pub(super) fn is_parked(&self) -> bool {
        self.parked
    }

    /// Answers `err` on a connection no hyper has taken over yet, and closes it.
    pub(super) async fn answer(stream: TcpStream, activity: Arc<Activity>, err: ClientError) {
        let mut io = EdgeIo::new(stream, Bytes::new(), activity, false);
        io.end(Action::Answer(err));
        // Reads nothing: drives the ending to its close.
        let _ = io.read(&mut [0u8; 1]).await;
    }

    fn end(&mut self, action: Action) {
        let answer = match action {
            Action::Answer(err) if !self.unflushed => {
                debug!(code = err.code(), error = %err, "request refused");
                answer_bytes(err)
            }
            Action::Park => {
                self.parked = true;
                return;
            }
            _ => Bytes::new(),
        };
        self.ending = Some(Ending {
            answer,
            written: 0,
            shut: false,
            drained: 0,
            linger: Box::pin(tokio::time::sleep(LINGER)),
            done: false,
        });
    }

    /// Writes the answer, shuts the write side, and reads what the client still sends until it
    /// closes too (or [`LINGER`]); then reads end, for hyper, as if the client had closed.
    fn poll_ending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(ending) = self.ending.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if ending.done || ending.answer.is_empty() || ending.linger.as_mut().poll(cx).is_ready() {
            ending.done = true;
            return Poll::Ready(Ok(()));
        }
        let stream = Pin::new(&mut self.stream);
        let finished = poll_ending_io(ending, stream, cx);
        if finished.is_ready() {
            ending.done = true;
        }
        finished
    }
}

fn poll_ending_io(
    ending: &mut Ending,
    mut stream: Pin<&mut TcpStream>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while ending.written < ending.answer.len() {
        match ready!(stream
            .as_mut()
            .poll_write(cx, &ending.answer[ending.written..]))
        {
            Ok(n) if n > 0 => ending.written += n,
            _ => return Poll::Ready(Ok(())),
        }
    }
    if !ending.shut {
        // Whatever the outcome, the answer is out or never will be.
        let _ = ready!(stream.as_mut().poll_shutdown(cx));
        ending.shut = true;
    }
    let mut scratch = [0u8; 4096];
    loop {
        let mut buf = ReadBuf::new(&mut scratch);
        match ready!(stream.as_mut().poll_read(cx, &mut buf)) {
            Ok(()) if !buf.filled().is_empty() && ending.drained < LINGER_MAX => {
                ending.drained += buf.filled().len();
            }
            _ => return Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for EdgeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.parked {
                return Poll::Ready(Ok(()));
            }
            if this.ending.is_some() {
                return this.poll_ending(cx);
            }
            if let Some(action) = this.activity.take_action() {
                this.end(action);
                continue;
            }
            if this.activity.is_flooded() {
                // Nothing more of a flooding client's is read; the connection's task closes it.
                return Poll::Pending;
            }
            let before = buf.filled().len();
            if this.prefix.is_empty() {
                ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
            } else {
                let n = this.prefix.len().min(buf.remaining());
                buf.put_slice(&this.prefix.split_to(n));
                if this.prefix.is_empty() {
                    // Let go of the buffer the bytes came in.
                    this.prefix = Bytes::new();
                }
            }
            let arrived = &buf.filled()[before..];
            if arrived.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if let Some(control) = &mut this.control {
                if !control.feed(arrived) && !this.activity.is_flooded() {
                    debug!("control frame flood");
                    this.activity.flood();
                    // The connection's task (this one) looks at once.
                    cx.waker().wake_by_ref();
                }
                return Poll::Ready(Ok(()));
            }
            let Some((window, first)) = this.activity.head_bytes_arrived() else {
                return Poll::Ready(Ok(()));
            };
            if this.scan.window != window {
                this.scan = HeadScan::new(window, first);
            }
            match this
                .scan
                .feed(arrived, this.activity.limits.max_header_size)
            {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(err) => {
                    // hyper never sees these bytes: the head it holds stays incomplete.
                    buf.set_filled(before);
                    this.end(Action::Answer(err));
                }
            }
        }
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ending.is_some() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let written = ready!(Pin::new(&mut this.stream).poll_write(cx, buf))?;
        this.unflushed |= written > 0;
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ending.is_some() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let written = ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, bufs))?;
        this.unflushed |= written > 0;
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        this.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked || this.ending.as_ref().is_some_and(|ending| ending.shut) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 32 * 1024;

    fn scan(head: &[u8]) -> Result<HeadScan, ClientError> {
        let mut scan = HeadScan::new(1, true);
        scan.feed(head, MAX)?;
        Ok(scan)
    }

    /// Every split of `head` into two reads gives the same verdict as one read.
    fn verdict(head: &[u8]) -> Result<(), ClientError> {
        let whole = scan(head).map(|_| ());
        for at in 0..head.len() {
            let mut split = HeadScan::new(1, true);
            let result = split
                .feed(&head[..at], MAX)
                .and_then(|()| split.feed(&head[at..], MAX));
            assert_eq!(result, whole, "split at {at}");
        }
        whole
    }

    /// The scan one byte at a time, as the reference for the bulk paths.
    fn scan_bytewise(head: &[u8], max: usize) -> (Result<(), ClientError>, HeadScan) {
        let mut scan = HeadScan::new(1, true);
        for &byte in head {
            if scan.done {
                break;
            }
            if let Err(err) = scan.feed_byte(byte, max) {
                return (Err(err), scan);
            }
        }
        (Ok(()), scan)
    }

    /// Every byte value, at every place in a word and in the last few bytes, stops
    /// [`plain_len`] exactly where one byte at a time would.
    #[test]
    fn plain_len_stops_at_the_first_lf_or_forbidden_control_character() {
        let bytewise = |bytes: &[u8]| {
            bytes
                .iter()
                .position(|&byte| byte == b'\n' || is_forbidden_control(byte))
                .unwrap_or(bytes.len())
        };
        for len in [1, 5, 8, 13, 16, 21] {
            for at in 0..len {
                for byte in 0..=u8::MAX {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    assert_eq!(
                        plain_len(&bytes),
                        bytewise(&bytes),
                        "{byte:#x} at {at} of {len}"
                    );
                    bytes[len - 1] = b'\r';
                    assert_eq!(
                        plain_len(&bytes),
                        bytewise(&bytes),
                        "{byte:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert_eq!(plain_len(b""), 0);
    }

    /// The bulk paths give what one byte at a time gives, verdict and position, on thousands of
    /// heads mutated at random (framing headers, long lines, control characters, limits), fed in
    /// random pieces.
    #[test]
    fn the_bulk_scan_agrees_with_the_bytewise_scan() {
        let seeds: [&[u8]; 4] = [
            b"GET /a/long/path/that/goes/on?and=on&and=on HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101\r\nAccept: */*\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nTransfer-Encoding: chunked\r\nX-Content-Length: 3\r\n\r\n",
            b"\r\nPUT /y HTTP/1.1\r\ncontent-length:5 \r\nTRANSFER-ENCODING: gzip, chunked\r\nCookie: a=b; c=d; e=ffffffffffffffffffffffffffffffff\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: y\r\n folded\r\nA:\tb\r\n\r\n",
        ];
        let alphabet = b"\r\n\t :;,aZ0\x00\x01\x7f\x80-/";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % n as u64).unwrap()
        };
        for case in 0..20_000 {
            let mut head = seeds[case % seeds.len()].to_vec();
            for _ in 0..random(4) {
                let at = random(head.len());
                match random(3) {
                    0 => head[at] = alphabet[random(alphabet.len())],
                    1 => head.insert(at, alphabet[random(alphabet.len())]),
                    _ => head
                        .splice(at..at, std::iter::repeat_n(b'q', random(40)))
                        .for_each(drop),
                }
            }
            let max = [64, 100, 1000, MAX][random(4)];
            let (expected, reference) = scan_bytewise(&head, max);
            let mut scan = HeadScan::new(1, true);
            let mut rest = &head[..];
            let mut got = Ok(());
            while !rest.is_empty() && got.is_ok() {
                let piece = 1 + random(rest.len());
                got = scan.feed(&rest[..piece], max);
                rest = &rest[piece..];
            }
            let shown = String::from_utf8_lossy(&head);
            assert_eq!(got, expected, "case {case}, max {max}: {shown:?}");
            assert_eq!(
                (scan.len, scan.lines, scan.done, scan.line_len),
                (
                    reference.len,
                    reference.lines,
                    reference.done,
                    reference.line_len
                ),
                "case {case}, max {max}: {shown:?}"
            );
        }
    }

    /// Long lines go through the scan's bulk path (sixteen bytes at a time past a line's
    /// name): the same verdicts, wherever the reads split them.
    #[test]
    fn long_lines_get_the_same_verdicts_in_bulk() {
        let long = "v".repeat(70);
        let head = format!(
            "GET /{long} HTTP/1.1\r\nHost: a\r\nUser-Agent: {long}\tx\r\nCookie: {long}\r\n\r\n"
        );
        assert_eq!(verdict(head.as_bytes()), Ok(()));
        let control = format!("GET / HTTP/1.1\r\nUser-Agent: {long}\x01{long}\r\n\r\n");
        assert_eq!(
            verdict(control.as_bytes()),
            Err(ClientError::ControlCharacter)
        );
        let length = format!(
            "GET / HTTP/1.1\r\nX-Content-Length-Padding: {long}\r\nContent-Length: 12x\r\n\r\n"
        );
        assert_eq!(
            verdict(length.as_bytes()),
            Err(ClientError::InvalidContentLength)
        );
        let line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(REQUEST_LINE_MAX));
        assert_eq!(
            verdict(line.as_bytes()),
            Err(ClientError::RequestLineTooLong)
        );
        let mut scan = HeadScan::new(1, true);
        let big = format!("GET / HTTP/1.1\r\nCookie: {}\r\n\r\n", "c".repeat(MAX));
        assert_eq!(
            scan.feed(big.as_bytes(), MAX),
            Err(ClientError::HeadTooLarge)
        );
        assert_eq!(scan.len, MAX);
    }

    #[test]
    fn good_heads_pass_and_the_scan_stops_at_their_end() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n\x01\x02\x03";
        assert_eq!(verdict(head), Ok(()));
        assert!(scan(head).unwrap().done);
        let head =
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length:\t12 \r\nX-Content-Length: x\r\n\r\n";
        assert_eq!(verdict(head), Ok(()));
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked\r\n\r\n";
        assert_eq!(verdict(head), Ok(()));
        // Bare LF line ends, and empty lines before the request line.
        assert_eq!(verdict(b"\r\n\nGET / HTTP/1.1\nHost: a\n\n"), Ok(()));
        // obs-text and HTAB are allowed in values.
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\tok\r\n\r\n"),
            Ok(())
        );
    }

    #[test]
    fn broken_rules_are_refused_with_their_code() {
        use ClientError::*;
        let cases: [(&[u8], ClientError); 14] = [
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3a\r\n\r\n",
                InvalidContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
                InvalidContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3 4\r\n\r\n",
                InvalidContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
                InvalidContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
                InvalidContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                DuplicateContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                UnsupportedTransferCoding,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                UnsupportedTransferCoding,
            ),
            (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", ControlCharacter),
            (b"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", ControlCharacter),
            (b"GET /\x00 HTTP/1.1\r\n\r\n", ControlCharacter),
            (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", LineFolding),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                LengthAndTransferEncoding,
            ),
            (
                b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\ncontent-length: 3\r\n\r\n",
                LengthAndTransferEncoding,
            ),
        ];
        for (head, err) in cases {
            assert_eq!(verdict(head), Err(err), "{}", head.escape_ascii());
        }
    }

    #[test]
    fn limits_fall_exactly_where_documented() {
        // A request line of 8 KiB exactly, CRLF included, fits; one byte more does not.
        let line = |len: usize| {
            let target = "a".repeat(len - "GET / HTTP/1.1\r\n".len());
            format!("GET /{target} HTTP/1.1\r\nHost: a\r\n\r\n")
        };
        assert_eq!(scan(line(REQUEST_LINE_MAX).as_bytes()).map(|_| ()), Ok(()));
        assert_eq!(
            scan(line(REQUEST_LINE_MAX + 1).as_bytes()).map(|_| ()),
            Err(ClientError::RequestLineTooLong)
        );
        // A head of MAX bytes exactly fits; one more does not, whether complete or not.
        let head = |len: usize| {
            let filler = "a".repeat(len - "GET / HTTP/1.1\r\nX: \r\n\r\n".len());
            format!("GET / HTTP/1.1\r\nX: {filler}\r\n\r\n")
        };
        assert_eq!(scan(head(MAX).as_bytes()).map(|_| ()), Ok(()));
        assert_eq!(
            scan(head(MAX + 1).as_bytes()).map(|_| ()),
            Err(ClientError::HeadTooLarge)
        );
        let unfinished = &head(MAX + 1).into_bytes()[..MAX];
        assert_eq!(scan(unfinished).map(|_| ()), Err(ClientError::HeadTooLarge));
        // 100 header fields fit, 101 do not.
        let fields = |n: usize| {
            let lines: String = (0..n).map(|i| format!("X-{i}: v\r\n")).collect();
            format!("GET / HTTP/1.1\r\n{lines}\r\n")
        };
        assert_eq!(scan(fields(MAX_HEADERS).as_bytes()).map(|_| ()), Ok(()));
        assert_eq!(
            scan(fields(MAX_HEADERS + 1).as_bytes()).map(|_| ()),
            Err(ClientError::TooManyHeaders)
        );
    }

    /// How long `watch` takes to call the connection closed, and why.
    async fn expiry_after(watch: &mut Watch) -> (Expiry, Duration) {
        let start = tokio::time::Instant::now();
        let expiry = std::future::poll_fn(|cx| watch.poll_expiry(cx)).await;
        (expiry, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_stalled_connections_close_between_1_and_1_25_idle_timeouts() {
        let limits = Limits {
            max_header_size: MAX,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(4),
        };
        let within = |took: Duration, from: u64| {
            let from = Duration::from_secs(from);
            took >= from + limits.idle_timeout && took <= from + limits.idle_timeout * 5 / 4
        };
        let now = || tokio::time::Instant::now().into_std();

        // An HTTP/2 connection without a request.
        let activity = Activity::new(limits, now());
        let (expiry, took) = expiry_after(&mut Watch::new(&activity, true)).await;
        assert!(
            expiry == Expiry::Idle && within(took, 0),
            "{expiry:?} {took:?}"
        );

        // One with a request for 10 s: idle only once it ends. HTTP/1 never idles here.
        let activity = Activity::new(limits, now());
        let mut watch = Watch::new(&activity, true);
        let request = activity.request();
        let end = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(request);
        });
        let (expiry, took) = expiry_after(&mut watch).await;
        assert!(
            expiry == Expiry::Idle && within(took, 10),
            "{expiry:?} {took:?}"
        );
        end.await.unwrap();
        let activity = Activity::new(limits, now());
        let mut http1 = Watch::new(&activity, false);
        let waited = tokio::time::timeout(Duration::from_secs(60), expiry_after(&mut http1));
        assert!(waited.await.is_err());

        // A response whose client takes a frame every 3 s is served; one that stops is not.
        let activity = Activity::new(limits, now());
        let mut watch = Watch::new(&activity, false);
        let mut request = activity.request();
        let client = tokio::spawn(async move {
            for _ in 0..5 {
                request.handed();
                tokio::time::sleep(Duration::from_secs(3)).await;
                request.asked();
            }
            request.handed();
            request
        });
        let (expiry, took) = expiry_after(&mut watch).await;
        assert!(
            expiry == Expiry::Stalled && within(took, 15),
            "{expiry:?} {took:?}"
        );
        drop(client.await.unwrap());

        // A flood is answered at once.
        let activity = Activity::new(limits, now());
        let mut watch = Watch::new(&activity, true);
        activity.flood();
        let (expiry, took) = expiry_after(&mut watch).await;
        assert!(
            expiry == Expiry::Flood && took.is_zero(),
            "{expiry:?} {took:?}"
        );
    }

    /// What `detect` makes of a client that writes `pieces` (one write each), then closes.
    async fn detected(pieces: &[&[u8]]) -> Option<(bool, Bytes)> {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        for piece in pieces {
            client.write_all(piece).await.unwrap();
            client.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        client.shutdown().await.unwrap();
        detect(&mut server).await.unwrap()
    }

    #[tokio::test]
    async fn the_preface_means_http2_and_every_byte_read_is_kept() {
        let settings = b"\0\0\0\x04\0\0\0\0\0";
        let mut both = H2_PREFACE.to_vec();
        both.extend_from_slice(settings);
        assert_eq!(
            detected(&[&both]).await,
            Some((true, Bytes::from(both.clone())))
        );
        let (http2, read) = detected(&[&H2_PREFACE[..5], &H2_PREFACE[5..], settings])
            .await
            .unwrap();
        assert!(http2 && both.starts_with(&read) && read.len() >= H2_PREFACE.len());
        for http1 in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /",
            b"PRI * HTTP/1.1\r\n",
            b"P",
        ] {
            let (http2, read) = detected(&[http1]).await.unwrap();
            assert!(
                !http2 && http1.starts_with(&read),
                "{}",
                http1.escape_ascii()
            );
        }
        assert_eq!(detected(&[]).await, None);
    }

    #[test]
    fn control_frames_beyond_the_budget_are_a_flood() {
        let frame = |kind: u8, flags: u8, payload: &[u8]| {
            let len = payload.len().to_be_bytes();
            let mut frame = vec![len[5], len[6], len[7], kind, flags, 0, 0, 0, 0];
            frame.extend_from_slice(payload);
            frame
        };
        let ping = frame(0x6, 0, &[0; 8]);
        let mut stream = H2_PREFACE.to_vec();
        stream.extend(frame(0x4, 0, &[0; 6]));
        // Acknowledgements, data and headers cost nothing, whatever their payload holds.
        for _ in 0..5000 {
            stream.extend(frame(0x6, 0x1, &[0; 8]));
            stream.extend(frame(0x0, 0, &ping.repeat(2)));
        }
        let mut control = ControlFrames::new();
        // In pieces, as reads may cut anywhere.
        assert!(stream.chunks(7).all(|chunk| control.feed(chunk)));
        let burst = ping.repeat(ControlFrames::BURST as usize - 1);
        assert!(control.feed(&burst));
        assert!(!control.feed(&ping.repeat(50)));
    }

    /// A scan that starts mid-head (hyper already held the head's start) never refuses what a
    /// scan from the start would let through.
    #[test]
    fn a_scan_starting_mid_head_refuses_nothing_more() {
        let heads: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nX: \" b\"\r\nContent-Length: 3\r\n\r\n   ",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for head in heads {
            assert_eq!(verdict(head), Ok(()));
            for at in 1..head.len() {
                let mut late = HeadScan::new(2, false);
                assert_eq!(late.feed(&head[at..], MAX), Ok(()), "from {at}");
            }
        }
    }
}
