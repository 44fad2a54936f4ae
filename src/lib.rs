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
//! Data flows one way, from the top of this list down:
//!
//! - [`config`]: command line, environment and files -> a validated [`config::Config`]; no side
//!   effects.
//! - [`lifecycle`]: the one place that sequences the phases, with the deadline budget.
//! - [`signals`]: OS signals -> lifecycle events.
//! - [`child`]: spawn the backend in its own process group with a parent-death signal, forward
//!   signals, stop it, reap.
//! - [`limits`]: the open-file limit, raised for lameduck and given back to the child.
//! - [`server`]: the accept loop, one single-threaded worker per core, each connection's
//!   graceful close, and the plain requests it serves without hyper.
//! - [`proxy`]: the request path: local endpoints, admission, forwarding, every error response.
//! - [`headers`]: every header rule (hop-by-hop, `X-Forwarded-*`, `Connection: close`).
//! - [`backend`]: every connection to the backend (per-worker idle links spoken to by lameduck's
//!   own HTTP/1.1 client, pooled, upgrade, probe), its timeouts and its errors.
//! - [`body`]: response bodies, and how each kind (event stream, gRPC, other) ends at the cut.
//! - [`tunnel`]: upgraded connections (WebSockets), and their close frames at the cut.
//! - [`framing`]: message boundaries in gRPC and WebSocket byte streams.
//! - [`phase`]: the phase: one watch cell, written by the lifecycle only.
//! - [`admission`]: the in-flight count and guard, concurrency slots and their queue,
//!   drain-quiet timing, and the ledger of which requests are in flight since when.
//! - [`advisor`]: request durations per kind against the drain budget, and the warning that the
//!   grace period is too short.
//! - [`cut`]: the drain deadline's cut, and how each request in flight during the drain ended.
//! - [`probes`]: the `/ready` and `/health` answers, and the backend's own health check.
//! - [`telemetry`]: Prometheus metrics and the access log.
//!
//! Beside them, [`probe_command`] is `lameduck probe`: a client that asks a running lameduck for
//! its health, for container health checks in images without curl.
#![forbid(unsafe_code)]

pub mod admission;
pub mod advisor;
pub mod backend;
pub mod body;
pub mod child;
pub mod config;
pub mod cut;
pub mod framing;
pub mod headers;
pub mod lifecycle;
pub mod limits;
pub mod phase;
pub mod probe_command;
pub mod probes;
pub mod proxy;
pub mod server;
pub mod signals;
pub mod telemetry;
pub mod tunnel;
