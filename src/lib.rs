//! lameduck: a sidecar reverse proxy that gives any HTTP server a correct shutdown.
//!
//! It listens on the container's public port, forwards to a backend on localhost (which it can
//! spawn as its child), answers `/ready` and `/health` itself, and on SIGTERM stops admitting,
//! lets in-flight requests finish within the platform's grace period, and only then stops the
//! backend.
//!
//! # Lifecycle
//!
//! ```text
//! starting ──backend accepts──▶ ready ──SIGTERM/SIGINT──▶ draining ──in-flight = 0──▶ stopping child ──▶ exit
//!                                                            │ (deadline reached) ─────────▶ stopping child
//! ```
//!
//! The drain may last until `grace_period - child_stop_timeout - 1s`; see [`lifecycle`].
//!
//! # Layout
//!
//! - [`config`]: command line and environment -> a validated [`config::Config`]; no side effects.
//! - [`signals`]: OS signals -> lifecycle events.
//! - [`child`]: spawn the backend in its own process group, forward signals, stop it, reap.
//! - [`readiness`]: the shared phase, in-flight counting, and the `/ready` and `/health` answers.
//! - [`proxy`]: the request path: local endpoints, forwarding, header rules, error responses.
//! - [`body`]: response bodies, and how each kind (event stream, gRPC, other) ends at the cut.
//! - [`tunnel`]: upgraded connections (WebSockets), and their close frames at the cut.
//! - [`upstream`]: each HTTP/1.1 client connection's own backend connection, driven inline.
//! - [`framing`]: message boundaries in gRPC and WebSocket byte streams.
//! - [`server`]: the accept loop, one single-threaded worker per core, and each connection's
//!   graceful close.
//! - [`backend`]: probing the backend: is it up, is it healthy.
//! - [`telemetry`]: Prometheus metrics and the access log.
//! - [`lifecycle`]: the one place that sequences the phases, with the deadline budget.
#![forbid(unsafe_code)]

pub mod backend;
pub mod body;
pub mod child;
pub mod config;
pub mod framing;
pub mod lifecycle;
pub mod proxy;
pub mod readiness;
pub mod server;
pub mod signals;
pub mod telemetry;
pub mod tunnel;
pub mod upstream;
