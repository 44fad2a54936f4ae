# syntax=docker/dockerfile:1
#
# Three stages (docs/deployment.md walks through each):
#
#   build     compiles lameduck as a static binary: it needs no glibc, musl or anything else at
#             run time, so it runs in any Linux image (Debian, Alpine, distroless, scratch).
#   lameduck  FROM scratch, holding only /lameduck. Build it, then copy the binary into your own
#             image:
#                 docker build --target lameduck -t lameduck:0.1.0 .
#                 COPY --from=lameduck:0.1.0 /lameduck /usr/local/bin/lameduck
#   example   (the default target) Python's built-in HTTP server behind lameduck, as a non-root
#             user, with a HEALTHCHECK. config/kubernetes.yaml and config/compose.yaml run it:
#                 docker build --target example -t lameduck-example:0.1.0 .
#
# Tags carry the version in Cargo.toml; tests/deployment.rs checks that the walkthroughs name them.
# .dockerignore sends only Cargo.toml, Cargo.lock and src/ as the build context: tests/, target/
# and docs/ never reach the builder, so changing them never rebuilds the binary.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Dependencies first, against placeholder sources: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every edit to src/.
#
# +crt-static links glibc statically. `--target` is what keeps that flag off the build scripts and
# proc macros, which must stay dynamic; `$(uname -m)` is x86_64 (or aarch64 on an arm64 builder),
# so the path is target/x86_64-unknown-linux-gnu/release/lameduck. `--bin lameduck` builds only
# the binary: the test backend (an [[example]] under tests/, which is not here) is never needed.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked \
        --target "$(uname -m)-unknown-linux-gnu" --bin lameduck \
    && rm -r src
COPY src ./src
# COPY keeps the files' own modification times, which can be older than the placeholder build:
# touching the crate roots makes cargo rebuild lameduck itself (and only it).
RUN touch src/main.rs src/lib.rs \
    && RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked \
        --target "$(uname -m)-unknown-linux-gnu" --bin lameduck \
    && cp "target/$(uname -m)-unknown-linux-gnu/release/lameduck" /lameduck \
    && /lameduck --print-config > /dev/null


# Only the binary. Not meant to be run (it has no backend to spawn): copy /lameduck out of it.
FROM scratch AS lameduck
COPY --from=build /lameduck /lameduck
USER 10001:10001
ENTRYPOINT ["/lameduck"]


# The example: the same two lines you add to your own image (the COPY and the ENTRYPOINT), on a
# Python slim image. Replace the CMD with your server; configure lameduck with LAMEDUCK_* variables.
FROM python:3.12-slim-bookworm AS example
COPY --from=lameduck /lameduck /usr/local/bin/lameduck
# A fixed numeric uid and gid: Kubernetes' runAsNonRoot can only verify a numeric USER, and
# config/kubernetes.yaml names the same ids. Nothing here needs root: port 8000 is unprivileged.
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app
WORKDIR /srv
USER 10001:10001
# lameduck owns the public port; the backend listens on 127.0.0.1:8080 (lameduck sets PORT=8080).
# LAMEDUCK_PORT is also where `lameduck probe` looks, so set the port here rather than by flag.
ENV LAMEDUCK_PORT=8000 \
    LAMEDUCK_UPSTREAM=http://127.0.0.1:8080 \
    LAMEDUCK_GRACE_PERIOD=30s
EXPOSE 8000
# `lameduck probe` GETs http://127.0.0.1:$LAMEDUCK_PORT/health: no curl or shell needed, so the
# same line works in distroless and scratch images. /health stays 200 through the drain.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/lameduck", "probe"]
# Exec form, so lameduck is PID 1: it receives the platform's SIGTERM, reaps orphans, and stops
# the backend only once in-flight requests are done. A shell-form ENTRYPOINT would make /bin/sh
# PID 1, and SIGTERM would never reach lameduck.
ENTRYPOINT ["/usr/local/bin/lameduck", "--"]
CMD ["python3", "-m", "http.server", "8080", "--bind", "127.0.0.1"]
