# Build lameduck with the official Rust image, run it on slim Debian as PID 1.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
RUN cargo build --release --locked --bin lameduck

FROM debian:bookworm-slim
# The example backend below is Python's built-in server; replace it with your own.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/lameduck /usr/local/bin/lameduck
# lameduck owns the public port; the backend listens on localhost:8080 (lameduck sets PORT=8080).
ENV LAMEDUCK_PORT=8000 \
    LAMEDUCK_UPSTREAM=http://127.0.0.1:8080 \
    LAMEDUCK_GRACE_PERIOD=30s
EXPOSE 8000
# Exec form, so lameduck is PID 1: it receives the platform's SIGTERM, reaps orphans, and stops
# the backend only once in-flight requests are done.
ENTRYPOINT ["lameduck", "--"]
CMD ["python3", "-m", "http.server", "8080", "--bind", "127.0.0.1"]
