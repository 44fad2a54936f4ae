# Shared by bench/streaming.sh and bench/admission.sh: logging, installing what is missing,
# building lameduck, a temporary directory, and stopping every process started (PIDS) on exit.
# Set BENCH_NAME before sourcing.

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$BENCH_NAME" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# install_missing COMMAND:PACKAGE ...
install_missing() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  if ((${#need[@]})); then
    log "installing: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
      die "apt-get install ${need[*]} failed"
  fi
}

build_lameduck() {
  log "building lameduck (cargo build --release)"
  (cd "$ROOT" && cargo build --release -q) || die "build failed"
  LAMEDUCK="$ROOT/target/release/lameduck"
}

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
