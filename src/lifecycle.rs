//! The one place that sequences lameduck's life:
//! starting -> ready -> draining -> stopping child -> exit, inside one deadline budget.
//!
//! Read [`Lifecycle::run`] top to bottom: each phase is a few lines, and every way out of it (a
//! signal, the child dying, a deadline) is one arm of a `select!`.
//!
//! # The deadline budget
//!
//! The platform SIGKILLs lameduck `--grace-period` after its SIGTERM. That time is spent as:
//!
//! ```text
//! SIGTERM ── drain (drain budget) ── cut (CUT_GRACE) ── stop child (--child-stop-timeout) ── clean up (CHILD_CLEAN_UP) ── exit (EXIT_SLACK) ── SIGKILL
//!            └──────────────────────────────────────────── --grace-period ────────────────────────────────────────────────────────────────┘
//! ```
//!
//! so the drain budget is `grace_period - child_stop_timeout - EXIT_MARGIN`, where
//! `EXIT_MARGIN = CUT_GRACE + CHILD_CLEAN_UP + EXIT_SLACK` (1 s, checked when compiling). A drain
//! that ends early lets the last responses flush for up to [`FLUSH_LINGER`], never past the drain
//! deadline.
//!
//! [`Budget::fit`] checks, before anything runs, that the options fit: a grace period shorter
//! than the exit margin, or a `--child-stop-timeout` given that leaves no room for the margin, is
//! refused (exit 2); the *default* child stop timeout (5 s) shrinks to half of what a short grace
//! period leaves after the margin, so that the drain gets the other half. Then every step after
//! SIGTERM is bounded by an instant computed from the signal's time, and a step that ran late
//! shortens the next ones instead of pushing the exit past the grace period.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::time::{sleep_until, Instant};
use tracing::{error, info, warn};

use crate::admission::{Admission, Gauge};
use crate::advisor::Advisor;
use crate::backend::Backend;
use crate::child::{self, Child, ExitStatus, Stopped};
use crate::config::{Config, ConfigError, Effective};
use crate::cut::Cut;
use crate::phase::{self, Phase, PhaseWriter};
use crate::probes::Probes;
use crate::proxy::Proxy;
use crate::server::{self, Shared};
use crate::signals::{self, Signal};
use crate::telemetry::{Parts, Telemetry};

/// Kept between the end of the child's stop timeout and the platform's SIGKILL.
pub const EXIT_MARGIN: Duration = Duration::from_secs(1);
/// At the cut, how long requests get to end gracefully (close frames, final events, trailers,
/// 503s) and flush.
const CUT_GRACE: Duration = Duration::from_millis(500);
/// After the child has stopped, how long lameduck may spend killing and reaping what is left of
/// its descendants.
const CHILD_CLEAN_UP: Duration = Duration::from_millis(300);
/// Reaping the SIGKILLed child, the final log line, and the process exit itself.
const EXIT_SLACK: Duration = Duration::from_millis(200);
const _: () = assert!(
    CUT_GRACE.as_millis() + CHILD_CLEAN_UP.as_millis() + EXIT_SLACK.as_millis()
        == EXIT_MARGIN.as_millis(),
    "the shutdown steps after the drain must fit in the exit margin"
);
/// After the last response of a drain that ended early, how long finished connections get to
/// flush before the child stops. Spent inside the drain budget.
const FLUSH_LINGER: Duration = Duration::from_millis(500);

/// How often the upstream's port is probed while it starts.
const PROBE_INTERVAL: Duration = Duration::from_millis(25);
/// How often `--backend-ready-path` is asked while the backend starts.
const READY_PATH_INTERVAL: Duration = Duration::from_millis(100);

/// Exit statuses (SPEC §4).
pub mod exit {
    /// Shutdown by signal; every request finished; the child exited in time.
    pub const CLEAN: u8 = 0;
    /// Shutdown by signal, but requests were cut or the child had to be SIGKILLed; or startup
    /// failed.
    pub const FORCED: u8 = 1;
    /// Invalid options or configuration.
    pub const USAGE: u8 = 2;
}

/// How long after the shutdown signal the drain may last, so that lameduck has exited before
/// the platform's SIGKILL.
pub fn drain_budget(grace_period: Duration, child_stop_timeout: Duration) -> Duration {
    grace_period
        .saturating_sub(child_stop_timeout)
        .saturating_sub(EXIT_MARGIN)
}

/// The shutdown's timings as lameduck keeps them: the drain, the child's stop and the exit margin
/// fitted inside `--grace-period`. Built once by [`Budget::fit`], before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// From SIGTERM to the platform's SIGKILL.
    pub grace_period: Duration,
    /// The child's time between its SIGTERM and SIGKILL, as lameduck will give it.
    pub child_stop_timeout: Duration,
    /// How long after SIGTERM the drain may last: the drain deadline.
    pub drain: Duration,
    /// `--child-stop-timeout` as given, and whether it was (rather than left at its default,
    /// which shrinks to fit a short grace period).
    child_stop_asked: Duration,
    child_stop_given: bool,
    /// What fitting changed, and what will be cut short: logged at start, shown by
    /// `--print-config`.
    pub notes: Vec<Note>,
}

/// One thing [`Budget::fit`] has to say about an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The option's key.
    pub key: &'static str,
    /// The value in effect, when fitting changed it.
    pub effective: Option<Duration>,
    pub text: String,
    /// A warning (the configuration loses something) rather than information.
    pub warning: bool,
}

impl Budget {
    /// Fits the shutdown into the grace period, or refuses the configuration with one line
    /// (exit 2). In every configuration it accepts, the drain, the cut, the child's stop and the
    /// exit add up to the grace period at most.
    ///
    /// - A grace period shorter than [`EXIT_MARGIN`] is refused: there is not even time to exit.
    /// - A `--child-stop-timeout` given by the user (flag, env var, file) that does not fit with
    ///   the margin is refused, naming both values and the largest stop timeout that fits: two
    ///   settings contradict each other, and which to sacrifice is the user's call.
    /// - The *default* stop timeout is no one's choice: when it is more than half of what the
    ///   grace period leaves after the margin (a grace period under 11 s), it shrinks to that
    ///   half, so that a short cerebrium.toml `response_grace_period` still leaves time to drain.
    /// - A `--drain-delay` at or past the drain deadline is accepted, with a warning: the deadline
    ///   ends it.
    pub fn fit(config: &Config) -> Result<Budget, ConfigError> {
        let grace_period = config.grace_period;
        if grace_period < EXIT_MARGIN {
            return Err(config.reject(
                "grace_period",
                &format!(
                    "shorter than the {} lameduck keeps, besides the child's stop timeout, to \
                     end cut requests, clean up and exit; the shortest grace period accepted is {}",
                    show(EXIT_MARGIN),
                    show(EXIT_MARGIN)
                ),
            ));
        }
        let room = grace_period - EXIT_MARGIN;
        let mut notes = Vec::new();
        let mut child_stop_timeout = config.child_stop_timeout;
        if child_stop_timeout > room && !config.is_default("child_stop_timeout") {
            return Err(config.reject(
                "child_stop_timeout",
                &format!(
                    "does not fit in --grace-period {} ({}) with lameduck's {} exit margin; \
                     the largest --child-stop-timeout that fits is {}",
                    show(grace_period),
                    config.origin("grace_period"),
                    show(EXIT_MARGIN),
                    show(floor_ms(room))
                ),
            ));
        }
        let half = floor_ms(room / 2);
        if config.is_default("child_stop_timeout") && child_stop_timeout > half {
            child_stop_timeout = half;
            notes.push(Note {
                key: "child_stop_timeout",
                effective: Some(half),
                text: format!(
                    "the default child stop timeout {} is more than half of what --grace-period \
                     {} leaves after the {} exit margin: the child gets {}, the drain up to {}",
                    show(config.child_stop_timeout),
                    show(grace_period),
                    show(EXIT_MARGIN),
                    show(half),
                    show(drain_budget(grace_period, half))
                ),
                warning: false,
            });
        }
        let drain = drain_budget(grace_period, child_stop_timeout);
        if drain.is_zero() {
            notes.push(Note {
                key: "grace_period",
                effective: None,
                text: format!(
                    "no time to drain: --grace-period {} less the child's stop timeout {} and the \
                     {} exit margin leaves nothing; requests in flight at SIGTERM will be cut at once",
                    show(grace_period),
                    show(child_stop_timeout),
                    show(EXIT_MARGIN)
                ),
                warning: true,
            });
        } else if !config.drain_delay.is_zero() && config.drain_delay >= drain {
            notes.push(Note {
                key: "drain_delay",
                effective: None,
                text: format!(
                    "--drain-delay {} reaches the drain deadline, {} after SIGTERM: the delay ends \
                     there, and requests still in flight are cut",
                    show(config.drain_delay),
                    show(drain)
                ),
                warning: true,
            });
        }
        Ok(Budget {
            grace_period,
            child_stop_timeout,
            drain,
            child_stop_asked: config.child_stop_timeout,
            child_stop_given: !config.is_default("child_stop_timeout"),
            notes,
        })
    }

    /// The notes as `--print-config` shows them, beside the options they are about.
    pub fn effective(&self) -> Vec<Effective> {
        self.notes
            .iter()
            .map(|note| Effective {
                key: note.key,
                value: note.effective.map(show),
                note: note.text.clone(),
            })
            .collect()
    }

    /// One line: how the grace period will be spent.
    pub fn summary(&self) -> String {
        format!(
            "shutdown budget: drain {} + child stop {} + exit margin {} = grace_period {}; \
             requests still running {} after SIGTERM are cut",
            show(self.drain),
            show(self.child_stop_timeout),
            show(EXIT_MARGIN),
            show(self.grace_period),
            show(self.drain)
        )
    }

    /// The shortest grace period, in whole seconds, whose drain budget lets a request of
    /// `duration` finish: the duration, the child's stop timeout and the exit margin (a default
    /// stop timeout shrinks to fit, as [`Budget::fit`] does).
    pub fn covering(&self, duration: Duration) -> Duration {
        let child_stop = if self.child_stop_given {
            self.child_stop_asked
        } else {
            // The default is held to half of what the grace period leaves after the margin; with
            // a stop no longer than the drain, that half is at least the stop.
            self.child_stop_asked.min(duration)
        };
        let grace = duration + child_stop + EXIT_MARGIN;
        Duration::from_secs(grace.as_secs() + u64::from(grace.subsec_nanos() > 0))
    }

    /// Logs the notes, once logging is up.
    pub fn log(&self) {
        for note in &self.notes {
            if note.warning {
                warn!(option = note.key, "{}", note.text);
            } else {
                info!(option = note.key, "{}", note.text);
            }
        }
    }
}

/// A duration as a flag would take it: `5s`, `2500ms`.
pub fn show(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{duration:?}")
    }
}

/// Rounded down to the millisecond: fitted values stay inside the budget and print plainly.
fn floor_ms(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64)
}

/// Runs lameduck on `listener` until shutdown, moved on by `signals`, and returns the exit
/// status. The caller binds the listener and supplies the signals, so tests can do both;
/// `budget` is [`Budget::fit`]'s for `config`.
pub async fn run(
    config: Config,
    budget: Budget,
    listener: TcpListener,
    signals: impl Stream<Item = Signal> + Unpin,
) -> u8 {
    let child = match &config.command {
        None => {
            if std::process::id() == 1 {
                tokio::spawn(child::reap_orphans());
            }
            None
        }
        Some(command) => match Child::spawn(command, &config.upstream) {
            Ok(child) => {
                let words = std::iter::once(&command.program).chain(&command.args);
                let command: Vec<_> = words.map(|word| word.to_string_lossy()).collect();
                info!(pid = child.pid(), command = %command.join(" "), "spawned the backend");
                Some(child)
            }
            Err(err) => {
                error!(error = %err, "cannot start the backend");
                return err.exit_code();
            }
        },
    };
    let (life, shared) = Lifecycle::new(config, budget, signals, child);
    tokio::spawn(server::serve(listener, shared));
    life.run().await
}

/// Something that moves the lifecycle on.
#[derive(Debug)]
enum Event {
    Stop(Stop),
    /// The child exited on its own.
    ChildExited(ExitStatus),
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The first SIGTERM/SIGINT: drain, then stop the child.
    Graceful,
    /// A second one, or SIGQUIT: skip the drain, stop the child now.
    Fast,
}

struct Lifecycle<S> {
    config: Config,
    budget: Budget,
    phase: PhaseWriter,
    admission: Arc<Admission>,
    cut: Arc<Cut>,
    probes: Arc<Probes>,
    telemetry: Arc<Telemetry>,
    backend: Arc<Backend>,
    connections: Arc<Gauge>,
    signals: S,
    child: Option<Child>,
    terminations: u32,
}

impl<S: Stream<Item = Signal> + Unpin> Lifecycle<S> {
    /// Builds every shared part; returns the lifecycle and what the connections share.
    fn new(
        config: Config,
        budget: Budget,
        signals: S,
        child: Option<Child>,
    ) -> (Lifecycle<S>, Arc<Shared>) {
        let (phase, phases) = phase::cell();
        let cut = Cut::new();
        let advisor = Arc::new(Advisor::new(&config, &budget));
        let admission = Admission::new(
            phases.clone(),
            Arc::clone(&cut),
            Arc::clone(&advisor),
            config.max_concurrency,
        );
        let probes = Arc::new(Probes::new(phases.clone(), Arc::clone(&admission)));
        let telemetry = Telemetry::new(
            Parts {
                admission: Arc::clone(&admission),
                phase: phases.clone(),
                advisor,
                cut: Arc::clone(&cut),
            },
            config.metrics_path.is_some(),
            config.log.access_log,
        );
        let backend = Arc::new(Backend::new(
            config.upstream.clone(),
            config.upstream_protocol,
            config.backend_timeout,
            config.upstream_idle_max,
        ));
        let connections = Arc::new(Gauge::default());
        let proxy = Proxy::new(
            &config,
            Arc::clone(&backend),
            phases.clone(),
            Arc::clone(&admission),
            Arc::clone(&cut),
            Arc::clone(&probes),
            Arc::clone(&telemetry),
        );
        let shared = Arc::new(Shared {
            proxy,
            backend: Arc::clone(&backend),
            phase: phases,
            connections: Arc::clone(&connections),
            limits: server::Limits::new(&config),
        });
        let life = Lifecycle {
            config,
            budget,
            phase,
            admission,
            cut,
            probes,
            telemetry,
            backend,
            connections,
            signals,
            child,
            terminations: 0,
        };
        (life, shared)
    }

    async fn run(mut self) -> u8 {
        // 1. starting: wait for the backend to accept connections.
        let started = Instant::now();
        info!(upstream = %self.config.upstream, "starting; waiting for the backend");
        let backend = Arc::clone(&self.backend);
        let ready_path = self.config.backend_ready_path.clone();
        let startup_deadline = started + self.config.startup_timeout;
        let stop = tokio::select! {
            () = wait_until_up(&backend, ready_path.as_deref()) => None,
            () = sleep_until(startup_deadline) => {
                error!(timeout = ?self.config.startup_timeout, "the backend did not start in time");
                self.phase.set(Phase::Stopping);
                let exit_by = Instant::now()
                    + self.budget.child_stop_timeout
                    + CHILD_CLEAN_UP
                    + EXIT_SLACK;
                self.stop_child(exit_by).await;
                return exit::FORCED;
            }
            event = self.next_event() => match event {
                Event::Stop(stop) => Some(stop),
                Event::ChildExited(status) => return self.child_exited(status).await,
            },
        };

        // 2. ready: proxy until a signal (or the child's death).
        let stop = match stop {
            Some(_) => {
                info!("shutdown requested while starting: nothing to drain");
                Stop::Fast
            }
            None => {
                self.phase.set(Phase::Ready);
                info!(after = ?started.elapsed(), "the backend is up; ready");
                if let Some(path) = self.config.backend_health_path.clone() {
                    let watch = Arc::clone(&self.probes).watch_backend_health(backend, path);
                    tokio::spawn(watch);
                }
                match self.next_event().await {
                    Event::Stop(stop) => stop,
                    Event::ChildExited(status) => return self.child_exited(status).await,
                }
            }
        };

        // 3. draining, inside the budget that leaves time to stop the child before the
        //    platform's SIGKILL.
        let shutdown = Instant::now();
        let deadline = shutdown + self.budget.drain;
        let cut = match self.drain(stop, shutdown, deadline).await {
            Ok(cut) => cut,
            Err(status) => return self.child_exited(status).await,
        };

        // 4. stopping child, over before the platform's SIGKILL.
        self.phase.set(Phase::Stopping);
        let stopped = self.stop_child(shutdown + self.budget.grace_period).await;

        // 5. exit.
        let clean = cut == 0 && !matches!(stopped, Some(Stopped::Killed));
        let status = if clean { exit::CLEAN } else { exit::FORCED };
        info!(
            status,
            cut,
            child = %describe(stopped),
            after = ?shutdown.elapsed(),
            "exiting"
        );
        status
    }

    /// Stops admitting (after the drain delay), then waits for in-flight requests until none is
    /// left or the deadline comes. Returns how many requests the deadline (or a fast stop) cut,
    /// or the child's status if it died on its own meanwhile.
    async fn drain(
        &mut self,
        mut stop: Stop,
        shutdown: Instant,
        deadline: Instant,
    ) -> Result<usize, ExitStatus> {
        if stop == Stop::Graceful {
            self.phase.set(Phase::DrainDelay);
        }
        self.telemetry.drain_began(shutdown);
        let oldest = self.admission.oldest();
        info!(
            in_flight = self.admission.in_flight(),
            oldest = oldest.as_ref().map(|o| o.request.as_str()),
            oldest_age = oldest.as_ref().map(|o| show(floor_ms(o.age))),
            budget = %show(self.budget.drain),
            drain_delay = %show(self.config.drain_delay),
            "draining: /ready now fails"
        );

        // The drain delay: keep admitting, unless `--drain-quiet` sees traffic has stopped.
        let delay_end = deadline.min(shutdown + self.config.drain_delay);
        while stop == Stop::Graceful && Instant::now() < delay_end {
            let quiet_end = self.config.drain_quiet.map(|quiet| {
                Instant::now() + quiet.saturating_sub(self.admission.quiet_for(shutdown))
            });
            if quiet_end.is_some_and(|end| end <= Instant::now()) {
                info!(quiet = ?self.config.drain_quiet, "no new request for the quiet period: ending the drain delay");
                break;
            }
            let wake = quiet_end.map_or(delay_end, |end| end.min(delay_end));
            tokio::select! {
                () = sleep_until(wake) => {}
                event = self.next_event() => stop = on_event_while_draining(event)?,
            }
        }

        self.phase.set(Phase::Draining);
        info!(
            in_flight = self.admission.in_flight(),
            "no longer admitting new requests"
        );
        let admission = Arc::clone(&self.admission);
        while stop == Stop::Graceful {
            tokio::select! {
                () = admission.wait_idle() => {
                    self.telemetry.drain_ended();
                    info!(after = ?shutdown.elapsed(), "drained: no request in flight");
                    // Let the last responses flush before the child (and lameduck) go.
                    self.phase.set(Phase::Stopping);
                    let linger = deadline.min(Instant::now() + FLUSH_LINGER);
                    let _ = tokio::time::timeout_at(linger, self.connections.wait_zero()).await;
                    return Ok(0);
                }
                () = sleep_until(deadline) => {
                    let cut = self.admission.in_flight();
                    let oldest = self.admission.oldest();
                    warn!(
                        cut,
                        after = ?shutdown.elapsed(),
                        oldest = oldest.as_ref().map(|o| o.request.as_str()),
                        oldest_age = oldest.as_ref().map(|o| show(floor_ms(o.age))),
                        "drain deadline reached; ending requests still in flight"
                    );
                    self.cut(cut).await;
                    return Ok(cut);
                }
                event = self.next_event() => stop = on_event_while_draining(event)?,
            }
        }
        let cut = self.admission.in_flight();
        if cut > 0 {
            warn!(cut, "fast stop; ending requests still in flight");
            self.cut(cut).await;
        }
        self.telemetry.drain_ended();
        Ok(cut)
    }

    /// Ends every request still in flight, each as gracefully as its kind allows (see
    /// [`crate::body`] and [`crate::tunnel`]), and gives the endings [`CUT_GRACE`] to reach
    /// clients.
    async fn cut(&self, in_flight: usize) {
        self.telemetry.record_cut(in_flight);
        self.cut.now();
        let grace = Instant::now() + CUT_GRACE;
        let ended = tokio::time::timeout_at(grace, self.admission.wait_idle()).await;
        self.phase.set(Phase::Stopping);
        self.telemetry.drain_ended();
        let _ = tokio::time::timeout_at(grace, self.connections.wait_zero()).await;
        info!(
            cut = in_flight,
            still_open = self.admission.in_flight(),
            endings = %self.cut.endings(),
            all_ended = ended.is_ok(),
            "requests in flight ended"
        );
    }

    /// SIGTERM to the child's group, SIGKILL after its stop timeout, then nothing of the child's
    /// left running, all done [`EXIT_SLACK`] before `exit_by`. `None` without a child.
    async fn stop_child(&mut self, exit_by: Instant) -> Option<Stopped> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        let (timeout, clean_up_by) =
            stop_schedule(started, exit_by, self.budget.child_stop_timeout);
        info!(pid = child.pid(), ?timeout, "stopping the child");
        let stopped = child.stop(timeout).await;
        child
            .clean_up(clean_up_by.saturating_duration_since(Instant::now()))
            .await;
        match stopped {
            Stopped::Exited(status) => self.probes.child_died(format!("child stopped: {status}")),
            Stopped::Killed => self.probes.child_died("child killed".into()),
        }
        info!(child = %describe(Some(stopped)), after = ?started.elapsed(), "the child has stopped");
        Some(stopped)
    }

    /// The child died on its own: fail the probes, clear its descendants, exit with its status.
    async fn child_exited(&mut self, status: ExitStatus) -> u8 {
        self.probes.child_died(format!("child exited: {status}"));
        self.phase.set(Phase::Stopping);
        error!(%status, in_flight = self.admission.in_flight(), "the child exited on its own");
        if let Some(child) = self.child.as_mut() {
            child.clean_up(CHILD_CLEAN_UP).await;
        }
        status.code()
    }

    /// The next signal or child exit. Forwarded signals are passed on here and never surface.
    async fn next_event(&mut self) -> Event {
        loop {
            let signal = tokio::select! {
                signal = self.signals.next() => match signal {
                    Some(signal) => signal,
                    // No more signals can come: wait for the child alone.
                    None => return Event::ChildExited(wait_child(&mut self.child).await),
                },
                status = wait_child(&mut self.child) => return Event::ChildExited(status),
            };
            match signal {
                Signal::Terminate(sig) => {
                    self.terminations += 1;
                    info!(signal = signals::name(sig), "received");
                    return Event::Stop(if self.terminations == 1 {
                        Stop::Graceful
                    } else {
                        Stop::Fast
                    });
                }
                Signal::Quit => {
                    info!(signal = "SIGQUIT", "received");
                    return Event::Stop(Stop::Fast);
                }
                Signal::Forward(sig) => match &self.child {
                    Some(child) => {
                        info!(
                            signal = signals::name(sig),
                            pid = child.pid(),
                            "forwarding to the child"
                        );
                        child.forward(sig);
                    }
                    None => info!(
                        signal = signals::name(sig),
                        "no child to forward to; ignored"
                    ),
                },
            }
        }
    }
}

/// The child's stop timeout and the end of its clean-up, for a stop that starts at `now` and must
/// be over [`EXIT_SLACK`] before `exit_by`. On time, the child gets its whole `stop_timeout`; a
/// step that ran late before (a cut that overran on a starved machine) shortens it, so that the
/// exit never moves.
fn stop_schedule(now: Instant, exit_by: Instant, stop_timeout: Duration) -> (Duration, Instant) {
    let clean_up_by = exit_by.checked_sub(EXIT_SLACK).unwrap_or(now).max(now);
    let kill_by = clean_up_by.checked_sub(CHILD_CLEAN_UP).unwrap_or(now);
    let timeout = stop_timeout.min(kill_by.saturating_duration_since(now));
    (timeout, clean_up_by)
}

fn on_event_while_draining(event: Event) -> Result<Stop, ExitStatus> {
    match event {
        Event::Stop(stop) => {
            info!(?stop, "skipping the rest of the drain");
            Ok(Stop::Fast)
        }
        Event::ChildExited(status) => Err(status),
    }
}

async fn wait_child(child: &mut Option<Child>) -> ExitStatus {
    match child {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the backend is up: its port accepts, or its ready path answers 2xx.
async fn wait_until_up(backend: &Backend, ready_path: Option<&str>) {
    let interval = match ready_path {
        Some(_) => READY_PATH_INTERVAL,
        None => PROBE_INTERVAL,
    };
    while !backend.is_up(ready_path).await {
        tokio::time::sleep(interval).await;
    }
}

fn describe(stopped: Option<Stopped>) -> String {
    match stopped {
        None => "none".into(),
        Some(Stopped::Exited(status)) => status.to_string(),
        Some(Stopped::Killed) => "killed after its stop timeout".into(),
    }
}

/// The drain and its deadline, in-process on tokio's paused clock: requests are in-flight guards
/// held by the test, signals come through a channel, and time moves only when everything waits.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Admit;
    use crate::cut::Ending;
    use crate::phase::Phases;
    use tokio::sync::mpsc;

    struct Running {
        task: tokio::task::JoinHandle<u8>,
        signals: mpsc::UnboundedSender<Signal>,
        admission: Arc<Admission>,
        cut: Arc<Cut>,
        phase: Phases,
        /// Accepts (through its backlog) for as long as the test runs: the backend is up.
        _upstream: std::net::TcpListener,
    }

    /// A lifecycle with no child, ready, with the clock paused from then on.
    async fn ready(args: &[&str]) -> Running {
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", upstream.local_addr().unwrap());
        let fixed = [
            "lameduck",
            "--cerebrium-toml",
            "/dev/null",
            "--upstream",
            &url,
        ];
        let config = Config::parse_from(fixed.iter().chain(args)).unwrap();
        let budget = Budget::fit(&config).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let signals = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let (life, shared) = Lifecycle::new(config, budget, signals, None);
        let running = Running {
            admission: Arc::clone(&life.admission),
            cut: Arc::clone(&life.cut),
            phase: shared.phase.clone(),
            task: tokio::spawn(life.run()),
            signals: tx,
            _upstream: upstream,
        };
        running.reach(Phase::Ready).await;
        tokio::time::pause();
        running
    }

    impl Running {
        fn signal(&self, signal: Signal) {
            self.signals.send(signal).unwrap();
        }

        async fn reach(&self, phase: Phase) {
            let mut rx = self.phase.subscribe();
            while rx.borrow_and_update() < phase {
                rx.changed().await.unwrap();
            }
        }

        /// A request in flight that ends when the cut comes, as a streamed response does.
        fn request_until_cut(&self) -> tokio::task::JoinHandle<Instant> {
            let in_flight = self.admission.admit(&http::Method::GET, "/").now();
            let cut = Arc::clone(&self.cut);
            tokio::spawn(async move {
                cut.signal().await;
                cut.count(Ending::Torn);
                drop(in_flight);
                Instant::now()
            })
        }
    }

    const SIGTERM: Signal = Signal::Terminate(15);

    /// `actual` is `expected`, give or take the timer's 1 ms resolution. The clock is paused, so
    /// this holds however busy the machine is.
    fn assert_at(actual: Duration, expected: Duration) {
        assert!(
            actual >= expected && actual <= expected + Duration::from_millis(2),
            "at {actual:?}, expected {expected:?}"
        );
    }

    #[tokio::test]
    async fn the_drain_waits_for_the_last_request_and_no_longer() {
        let life = ready(&["--grace-period", "10s", "--child-stop-timeout", "2s"]).await;
        let request = life.admission.admit(&http::Method::GET, "/").now();
        let signalled = Instant::now();
        life.signal(SIGTERM);
        life.reach(Phase::Draining).await;
        assert!(matches!(
            life.admission.admit(&http::Method::GET, "/"),
            Admit::Refused
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!life.task.is_finished(), "exited with a request in flight");
        drop(request);
        assert_eq!(life.task.await.unwrap(), exit::CLEAN);
        assert_at(signalled.elapsed(), Duration::from_secs(5));
        assert!(!life.cut.has_come());
    }

    #[tokio::test]
    async fn the_deadline_cuts_at_grace_less_child_stop_less_the_margin() {
        let life = ready(&["--grace-period", "10s", "--child-stop-timeout", "2s"]).await;
        let request = life.request_until_cut();
        let signalled = Instant::now();
        life.signal(SIGTERM);
        assert_eq!(life.task.await.unwrap(), exit::FORCED);
        let cut_at = request.await.unwrap() - signalled;
        // 10 s grace = 7 s drain + 2 s for the child + the 1 s margin.
        assert_at(cut_at, Duration::from_secs(7));
        assert_eq!(
            life.cut.endings().to_string(),
            "completed=0 sse_ended=0 websockets_closed=0 grpc_unavailable=0 refused=0 torn=1"
        );
    }

    #[tokio::test]
    async fn a_request_that_ignores_the_cut_gets_only_the_cut_grace() {
        let life = ready(&["--grace-period", "10s", "--child-stop-timeout", "2s"]).await;
        let _stuck = life.admission.admit(&http::Method::GET, "/").now();
        let signalled = Instant::now();
        life.signal(SIGTERM);
        assert_eq!(life.task.await.unwrap(), exit::FORCED);
        assert_at(signalled.elapsed(), Duration::from_secs(7) + CUT_GRACE);
    }

    #[tokio::test]
    async fn sigquit_skips_the_drain_that_sigterm_waits_for() {
        let life = ready(&["--grace-period", "60s"]).await;
        let request = life.request_until_cut();
        let signalled = Instant::now();
        life.signal(Signal::Quit);
        assert_eq!(life.task.await.unwrap(), exit::FORCED);
        assert_eq!(
            request.await.unwrap(),
            signalled,
            "cut at once, not at the deadline"
        );
    }

    #[tokio::test]
    async fn a_second_sigterm_ends_the_drain_at_once() {
        let life = ready(&["--grace-period", "60s"]).await;
        let request = life.request_until_cut();
        life.signal(SIGTERM);
        life.reach(Phase::Draining).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!life.task.is_finished());
        let second = Instant::now();
        life.signal(SIGTERM);
        assert_eq!(life.task.await.unwrap(), exit::FORCED);
        assert_eq!(request.await.unwrap(), second);
    }

    #[tokio::test]
    async fn the_drain_delay_admits_until_traffic_has_been_quiet() {
        let life = ready(&["--drain-delay", "5s", "--drain-quiet", "1s"]).await;
        let signalled = Instant::now();
        life.signal(SIGTERM);
        life.reach(Phase::DrainDelay).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let late = life.admission.admit(&http::Method::GET, "/").now();
        drop(late);
        life.reach(Phase::Draining).await;
        // 1 s after the last arrival, not 5 s after SIGTERM.
        assert_at(signalled.elapsed(), Duration::from_millis(1600));
        assert_eq!(life.task.await.unwrap(), exit::CLEAN);
    }

    /// A stuck request (it ignores the cut) and a drain delay that outlasts the budget: the
    /// drain and the cut still end where the budget says, leaving the child's stop timeout and the
    /// clean-up inside the grace period, in every kind of configuration `fit` accepts.
    #[tokio::test]
    async fn every_accepted_configuration_ends_its_drain_in_time() {
        let configurations: &[&[&str]] = &[
            &["--grace-period", "1s"],
            &["--grace-period", "1s", "--child-stop-timeout", "0s"],
            &["--grace-period", "2s", "--drain-delay", "1m"],
            &["--grace-period", "3s", "--child-stop-timeout", "2s"],
            &["--grace-period", "5s"],
            &[
                "--grace-period",
                "10s",
                "--child-stop-timeout",
                "2s",
                "--drain-delay",
                "30s",
            ],
            &[
                "--grace-period",
                "30s",
                "--drain-delay",
                "5s",
                "--drain-quiet",
                "1s",
            ],
        ];
        for args in configurations {
            let budget = Budget::fit(&config(args)).unwrap();
            let life = ready(args).await;
            let _stuck = life.admission.admit(&http::Method::GET, "/").now();
            let signalled = Instant::now();
            life.signal(SIGTERM);
            assert_eq!(life.task.await.unwrap(), exit::FORCED, "{args:?}");
            let elapsed = signalled.elapsed();
            assert_at(elapsed, budget.drain + CUT_GRACE);
            let after_the_child = elapsed + budget.child_stop_timeout + CHILD_CLEAN_UP;
            assert!(
                after_the_child + EXIT_SLACK <= budget.grace_period + Duration::from_millis(2),
                "{args:?}: {budget:?}"
            );
            tokio::time::resume();
        }
    }

    #[tokio::test]
    async fn a_drain_delay_past_the_budget_ends_at_the_drain_deadline() {
        let args = [
            "--grace-period",
            "10s",
            "--child-stop-timeout",
            "2s",
            "--drain-delay",
            "30s",
        ];
        let life = ready(&args).await;
        let signalled = Instant::now();
        life.signal(SIGTERM);
        life.reach(Phase::DrainDelay).await;
        tokio::time::sleep(Duration::from_millis(6900)).await;
        let late = life.admission.admit(&http::Method::GET, "/").now();
        drop(late);
        life.reach(Phase::Draining).await;
        assert_at(signalled.elapsed(), Duration::from_secs(7));
        assert_eq!(life.task.await.unwrap(), exit::CLEAN);
    }

    /// The child's part of the budget: on time it gets its whole stop timeout; late, less, and
    /// the clean-up still ends [`EXIT_SLACK`] before the exit.
    #[test]
    fn a_late_stop_shortens_the_childs_time_not_the_exit() {
        let shutdown = Instant::now();
        let budget = Budget::fit(&config(&[
            "--grace-period",
            "10s",
            "--child-stop-timeout",
            "2s",
        ]))
        .unwrap();
        let exit_by = shutdown + budget.grace_period;
        let on_time = shutdown + budget.drain + CUT_GRACE;
        let (timeout, clean_up_by) = stop_schedule(on_time, exit_by, budget.child_stop_timeout);
        assert_eq!(timeout, Duration::from_secs(2));
        assert_eq!(clean_up_by, on_time + timeout + CHILD_CLEAN_UP);
        assert_eq!(clean_up_by + EXIT_SLACK, exit_by);

        let late = on_time + Duration::from_millis(1500);
        let (timeout, clean_up_by) = stop_schedule(late, exit_by, budget.child_stop_timeout);
        assert_eq!(timeout, Duration::from_millis(500));
        assert_eq!(clean_up_by + EXIT_SLACK, exit_by);

        let very_late = exit_by + Duration::from_secs(1);
        let (timeout, clean_up_by) = stop_schedule(very_late, exit_by, budget.child_stop_timeout);
        assert_eq!((timeout, clean_up_by), (Duration::ZERO, very_late));
    }

    /// The grace period the advisor proposes for a request is the shortest whole number of
    /// seconds whose drain budget lets it finish, with the same child stop timeout (given, or the
    /// default that shrinks to fit).
    #[test]
    fn the_covering_grace_period_lets_the_request_finish() {
        for args in [
            &[][..],
            &["--child-stop-timeout", "2s"],
            &["--child-stop-timeout", "0s"],
        ] {
            let budget = Budget::fit(&config(args)).unwrap();
            for ms in [1, 800, 2_500, 4_999, 5_000, 7_300, 41_200, 600_000] {
                let duration = Duration::from_millis(ms);
                let covering = budget.covering(duration);
                assert_eq!(covering.subsec_nanos(), 0);
                let grace = show(covering);
                let fits = |grace: &str| {
                    let args = [args, &["--grace-period", grace]].concat();
                    Budget::fit(&config(&args)).unwrap().drain >= duration
                };
                assert!(fits(&grace), "{args:?} {duration:?}: {grace} is too short");
                let shorter = show(covering - Duration::from_secs(1));
                assert!(!fits(&shorter), "{args:?} {duration:?}: {shorter} would do");
            }
        }
    }

    fn config(args: &[&str]) -> Config {
        let fixed = ["lameduck", "--cerebrium-toml", "/dev/null"];
        Config::parse_from(fixed.iter().chain(args)).unwrap()
    }

    fn refusal(args: &[&str]) -> String {
        match Budget::fit(&config(args)) {
            Err(ConfigError::Invalid(line)) => line,
            other => panic!("{args:?}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_grace_period_shorter_than_the_exit_margin_is_refused() {
        for grace in ["0", "0s", "999ms"] {
            assert_eq!(
                refusal(&["--grace-period", grace]),
                format!(
                    "error: invalid value '{grace}' for --grace-period: shorter than the 1s \
                     lameduck keeps, besides the child's stop timeout, to end cut requests, clean \
                     up and exit; the shortest grace period accepted is 1s"
                )
            );
        }
    }

    /// The issue's case: grace 1 s, child stop 5 s used to run 5 s past the platform's SIGKILL.
    #[test]
    fn a_child_stop_timeout_given_that_does_not_fit_is_refused_naming_both() {
        assert_eq!(
            refusal(&["--grace-period", "1s", "--child-stop-timeout", "5s"]),
            "error: invalid value '5s' for --child-stop-timeout: does not fit in --grace-period 1s \
             (flag) with lameduck's 1s exit margin; the largest --child-stop-timeout that fits is 0s"
        );
        assert_eq!(
            refusal(&["--grace-period", "3.5", "--child-stop-timeout", "3s"]),
            "error: invalid value '3s' for --child-stop-timeout: does not fit in --grace-period \
             3500ms (flag) with lameduck's 1s exit margin; the largest --child-stop-timeout that \
             fits is 2500ms"
        );
        // Exactly the largest fits, with nothing left to drain.
        let budget = Budget::fit(&config(&[
            "--grace-period",
            "3s",
            "--child-stop-timeout",
            "2s",
        ]))
        .unwrap();
        assert_eq!(
            (budget.child_stop_timeout, budget.drain),
            (Duration::from_secs(2), Duration::ZERO)
        );
        assert_eq!(budget.notes.len(), 1);
        assert!(budget.notes[0].warning && budget.notes[0].text.starts_with("no time to drain"));
    }

    /// cerebrium.toml users set a short `response_grace_period` and never the child's stop
    /// timeout: its default shares what the grace period leaves with the drain.
    #[test]
    fn the_default_child_stop_timeout_shrinks_to_fit_a_short_grace_period() {
        let budget = Budget::fit(&config(&["--grace-period", "5"])).unwrap();
        assert_eq!(
            (budget.child_stop_timeout, budget.drain),
            (Duration::from_secs(2), Duration::from_secs(2))
        );
        assert_eq!(budget.notes.len(), 1);
        let note = &budget.notes[0];
        assert_eq!(
            (note.key, note.effective, note.warning),
            ("child_stop_timeout", Some(Duration::from_secs(2)), false)
        );
        assert_eq!(
            budget.effective()[0].value.as_deref(),
            Some("2s"),
            "--print-config shows the value in effect"
        );

        for (grace, child, drain) in [(30, 5000, 24000), (11, 5000, 5000), (8, 3500, 3500)] {
            let budget = Budget::fit(&config(&["--grace-period", &grace.to_string()])).unwrap();
            assert_eq!(
                (budget.child_stop_timeout, budget.drain),
                (Duration::from_millis(child), Duration::from_millis(drain)),
                "grace {grace}s"
            );
        }
        assert!(Budget::fit(&config(&[])).unwrap().notes.is_empty());

        let budget = Budget::fit(&config(&["--grace-period", "1s"])).unwrap();
        assert_eq!(
            (budget.child_stop_timeout, budget.drain),
            (Duration::ZERO, Duration::ZERO)
        );
        assert!(budget.notes.iter().any(|note| note.warning));
    }

    #[test]
    fn a_drain_delay_at_or_past_the_drain_deadline_is_accepted_with_a_warning() {
        let args = ["--grace-period", "10s", "--child-stop-timeout", "2s"];
        let with_delay = |delay: &str| {
            Budget::fit(&config(&[&args[..], &["--drain-delay", delay]].concat())).unwrap()
        };
        assert!(with_delay("6999ms").notes.is_empty());
        for (delay, shown) in [("7s", "7s"), ("1h", "3600s")] {
            let budget = with_delay(delay);
            assert_eq!(budget.drain, Duration::from_secs(7));
            let [note] = &budget.notes[..] else {
                panic!("{:?}", budget.notes)
            };
            assert_eq!((note.key, note.warning), ("drain_delay", true));
            assert!(
                note.text.contains(&format!("--drain-delay {shown}")),
                "{}",
                note.text
            );
        }
    }

    /// Over a grid of grace periods, child stop timeouts (the default or given) and drain delays:
    /// whatever `fit` accepts adds up to the grace period at most, and it refuses only a grace
    /// period under the exit margin or a given stop timeout that leaves no room for it.
    #[test]
    fn whatever_fit_accepts_adds_up_to_the_grace_period() {
        let graces = [
            "0", "250ms", "1s", "1.3333", "1500ms", "2s", "3s", "5s", "6s", "11s", "12s", "30s",
            "15m",
        ];
        let childs = [
            None,
            Some("0s"),
            Some("1ms"),
            Some("500ms"),
            Some("2s"),
            Some("5s"),
            Some("1m"),
        ];
        let delays = ["0s", "1s", "30s"];
        let mut accepted = 0;
        for grace in graces {
            for child in childs {
                for delay in delays {
                    let mut args = vec!["--grace-period", grace, "--drain-delay", delay];
                    if let Some(child) = child {
                        args.extend(["--child-stop-timeout", child]);
                    }
                    let config = config(&args);
                    let room = config.grace_period.checked_sub(EXIT_MARGIN);
                    match Budget::fit(&config) {
                        Ok(budget) => {
                            accepted += 1;
                            let spent = budget.drain
                                + CUT_GRACE
                                + budget.child_stop_timeout
                                + CHILD_CLEAN_UP
                                + EXIT_SLACK;
                            assert!(spent <= config.grace_period, "{args:?}: {budget:?}");
                            if child.is_some() {
                                assert_eq!(budget.child_stop_timeout, config.child_stop_timeout);
                            }
                        }
                        Err(_) => {
                            let given_too_long = child.is_some()
                                && room.is_some_and(|room| config.child_stop_timeout > room);
                            assert!(room.is_none() || given_too_long, "{args:?} refused");
                        }
                    }
                }
            }
        }
        assert!(accepted > 100, "only {accepted} accepted");
    }

    #[test]
    fn the_budget_never_goes_negative() {
        assert_eq!(
            drain_budget(Duration::from_secs(30), Duration::from_secs(5)),
            Duration::from_secs(24)
        );
        assert_eq!(
            drain_budget(Duration::from_secs(2), Duration::from_secs(5)),
            Duration::ZERO
        );
    }
}
