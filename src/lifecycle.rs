//! The one place that sequences lameduck's life:
//! starting -> ready -> draining -> stopping child -> exit, inside one deadline budget.
//!
//! Read [`run`] top to bottom: each phase is a few lines, and every way out of it (a signal, the
//! child dying, a deadline) is one arm of a `select!`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::{sleep_until, Instant};
use tracing::{error, info, warn};

use crate::backend::Backend;
use crate::child::{self, Child, ExitStatus, Stopped};
use crate::config::Config;
use crate::proxy::Proxy;
use crate::readiness::{Phase, State};
use crate::server;
use crate::signals::{self, Signal, Signals};
use crate::telemetry::Telemetry;

/// How often the upstream's port is probed while it starts.
const PROBE_INTERVAL: Duration = Duration::from_millis(25);
/// How often `--backend-ready-path` is asked while the backend starts.
const READY_PATH_INTERVAL: Duration = Duration::from_millis(100);
/// After the last response, how long finished connections get to flush before the child stops.
const FLUSH_LINGER: Duration = Duration::from_millis(500);
/// At the cut, how long requests get to end gracefully (close frames, final events, trailers,
/// 503s) and flush, taken from the exit margin.
const CUT_GRACE: Duration = Duration::from_millis(500);

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

/// Something that moves the lifecycle on.
#[derive(Debug)]
enum Event {
    /// SIGTERM/SIGINT (graceful) or a second one / SIGQUIT (fast).
    Stop(Stop),
    /// The child exited on its own.
    ChildExited(ExitStatus),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Drain, then stop the child.
    Graceful,
    /// Skip the drain: stop the child now.
    Fast,
}

/// Runs lameduck on `listener` until shutdown, and returns the exit status.
pub async fn run(config: Config, listener: TcpListener) -> u8 {
    let signals = match Signals::new() {
        Ok(signals) => signals,
        Err(err) => {
            error!(error = %err, "cannot install signal handlers");
            return exit::FORCED;
        }
    };
    let child = match &config.command {
        None => {
            if std::process::id() == 1 {
                tokio::spawn(child::reap_orphans());
            }
            None
        }
        Some(command) => match Child::spawn(command, config.upstream.port) {
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

    let state = State::new(config.max_concurrency);
    let telemetry = Telemetry::new(
        Arc::clone(&state),
        config.metrics_path.is_some(),
        config.log.access_log,
    );
    let proxy = Arc::new(Proxy::new(
        &config,
        Arc::clone(&state),
        Arc::clone(&telemetry),
    ));
    tokio::spawn(server::serve(listener, proxy, Arc::clone(&state)));

    let mut life = Lifecycle {
        backend: Arc::new(Backend::new(config.upstream.clone())),
        config,
        state,
        telemetry,
        signals,
        child,
        terminations: 0,
    };
    life.run().await
}

struct Lifecycle {
    config: Config,
    state: Arc<State>,
    telemetry: Arc<Telemetry>,
    backend: Arc<Backend>,
    signals: Signals,
    child: Option<Child>,
    terminations: u32,
}

impl Lifecycle {
    async fn run(&mut self) -> u8 {
        // 1. starting: wait for the backend to accept connections.
        let started = Instant::now();
        info!(upstream = %self.config.upstream.authority, "starting; waiting for the backend");
        let backend = Arc::clone(&self.backend);
        let ready_path = self.config.backend_ready_path.clone();
        let startup_deadline = started + self.config.startup_timeout;
        let stop = tokio::select! {
            () = wait_until_up(&backend, ready_path.as_deref()) => None,
            () = sleep_until(startup_deadline) => {
                error!(timeout = ?self.config.startup_timeout, "the backend did not start in time");
                self.state.set_phase(Phase::Stopping);
                self.stop_child().await;
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
                self.state.set_phase(Phase::Ready);
                info!(after = ?started.elapsed(), "the backend is up; ready");
                if let Some(path) = self.config.backend_health_path.clone() {
                    let watch = Arc::clone(&backend).watch_health(path, Arc::clone(&self.state));
                    tokio::spawn(watch);
                }
                match self.next_event().await {
                    Event::Stop(stop) => stop,
                    Event::ChildExited(status) => return self.child_exited(status).await,
                }
            }
        };

        // 3. draining, inside the budget that leaves time to stop the child before the platform's
        //    SIGKILL.
        let shutdown = Instant::now();
        let deadline = shutdown + self.config.drain_budget();
        let cut = match self.drain(stop, shutdown, deadline).await {
            Ok(cut) => cut,
            Err(status) => return self.child_exited(status).await,
        };

        // 4. stopping child.
        self.state.set_phase(Phase::Stopping);
        let stopped = self.stop_child().await;

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
            self.state.set_phase(Phase::DrainDelay);
        }
        info!(
            in_flight = self.state.in_flight(),
            drain_delay = ?self.config.drain_delay,
            budget = ?self.config.drain_budget(),
            "draining: /ready now fails"
        );

        // The drain delay: keep admitting, unless `--drain-quiet` sees traffic has stopped.
        let delay_end = deadline.min(shutdown + self.config.drain_delay);
        while stop == Stop::Graceful && Instant::now() < delay_end {
            let quiet_end = self
                .config
                .drain_quiet
                .map(|quiet| Instant::now() + quiet.saturating_sub(self.state.quiet_for(shutdown)));
            if quiet_end.is_some_and(|end| end <= Instant::now()) {
                info!(quiet = ?self.config.drain_quiet, "no new request for the quiet period: ending the drain delay");
                break;
            }
            let wake = quiet_end.map_or(delay_end, |end| end.min(delay_end));
            tokio::select! {
                () = sleep_until(wake) => {}
                event = self.next_event() => stop = self.on_event_while_draining(event)?,
            }
        }

        self.state.set_phase(Phase::Draining);
        info!(
            in_flight = self.state.in_flight(),
            "no longer admitting new requests"
        );
        let state = Arc::clone(&self.state);
        while stop == Stop::Graceful {
            tokio::select! {
                () = state.wait_idle() => {
                    info!(after = ?shutdown.elapsed(), "drained: no request in flight");
                    // Let the last responses flush before the child (and lameduck) go.
                    self.state.set_phase(Phase::Stopping);
                    let linger = deadline.min(Instant::now() + FLUSH_LINGER);
                    let _ = tokio::time::timeout_at(linger, state.wait_connections_closed()).await;
                    return Ok(0);
                }
                () = sleep_until(deadline) => {
                    let cut = self.state.in_flight();
                    warn!(cut, after = ?shutdown.elapsed(), "drain deadline reached; ending requests still in flight");
                    self.cut(cut).await;
                    return Ok(cut);
                }
                event = self.next_event() => stop = self.on_event_while_draining(event)?,
            }
        }
        let cut = self.state.in_flight();
        if cut > 0 {
            warn!(cut, "fast stop; ending requests still in flight");
            self.cut(cut).await;
        }
        Ok(cut)
    }

    /// Ends every request still in flight, each as gracefully as its kind allows (see
    /// [`crate::body`] and [`crate::tunnel`]), and gives the endings a moment to reach clients.
    async fn cut(&self, in_flight: usize) {
        self.telemetry.record_cut(in_flight);
        self.state.cut();
        let grace = Instant::now() + CUT_GRACE;
        let ended = tokio::time::timeout_at(grace, self.state.wait_idle()).await;
        self.state.set_phase(Phase::Stopping);
        let _ = tokio::time::timeout_at(grace, self.state.wait_connections_closed()).await;
        info!(
            cut = in_flight,
            still_open = self.state.in_flight(),
            endings = %self.state.endings(),
            all_ended = ended.is_ok(),
            "requests in flight ended"
        );
    }

    fn on_event_while_draining(&self, event: Event) -> Result<Stop, ExitStatus> {
        match event {
            Event::Stop(stop) => {
                info!(?stop, "skipping the rest of the drain");
                Ok(Stop::Fast)
            }
            Event::ChildExited(status) => Err(status),
        }
    }

    /// SIGTERM to the child's group, SIGKILL after `--child-stop-timeout`, then nothing of the
    /// child's left running. `None` without a child.
    async fn stop_child(&mut self) -> Option<Stopped> {
        let child = self.child.as_mut()?;
        info!(pid = child.pid(), timeout = ?self.config.child_stop_timeout, "stopping the child");
        let started = Instant::now();
        let stopped = child.stop(self.config.child_stop_timeout).await;
        child.clean_up().await;
        if let Stopped::Exited(status) = stopped {
            self.state.child_died(format!("child stopped: {status}"));
        } else {
            self.state.child_died("child killed".into());
        }
        info!(child = %describe(Some(stopped)), after = ?started.elapsed(), "the child has stopped");
        Some(stopped)
    }

    /// The child died on its own: fail the probes, clear its descendants, exit with its status.
    async fn child_exited(&mut self, status: ExitStatus) -> u8 {
        self.state.child_died(format!("child exited: {status}"));
        self.state.set_phase(Phase::Stopping);
        error!(%status, in_flight = self.state.in_flight(), "the child exited on its own");
        if let Some(child) = self.child.as_mut() {
            child.clean_up().await;
        }
        status.code()
    }

    /// The next signal or child exit. Forwarded signals are passed on here and never surface.
    async fn next_event(&mut self) -> Event {
        loop {
            let signal = tokio::select! {
                signal = self.signals.next() => signal,
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
