#!/usr/bin/env bash
# Runs the whole lameduck acceptance harness (see README.md in this folder).
#   tests/acceptance/run_all.sh [--install] [--out DIR]
# --install: pip-install uvicorn, h2, ... / apt-get install haproxy when missing.
# Exit status: 0 when every check passes (the `direct` baselines only report), 1 otherwise.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
install=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --install) install=1 ;;
    --out) out="$2"; shift ;;
    *) echo "usage: $0 [--install] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
out="${out:-$(mktemp -d /tmp/lameduck-acc-XXXXXX)}"
mkdir -p "$out"
py="${PYTHON:-python3}"

pip_packages="uvicorn websockets grpcio grpcio-tools prometheus_client h2 openai"
if ! "$py" -c 'import uvicorn, websockets, grpc, grpc_tools, prometheus_client, h2, openai' 2>/dev/null; then
  if [ $install = 1 ]; then "$py" -m pip install --quiet $pip_packages; else echo "python packages missing: $py -m pip install $pip_packages (or pass --install)" >&2; exit 2; fi
fi
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  if [ $install = 1 ]; then apt-get update -qq && apt-get install -y -qq haproxy; else echo "haproxy missing: apt-get install -y haproxy (or pass --install)" >&2; exit 2; fi
fi
command -v node >/dev/null 2>&1 || { echo "node missing" >&2; exit 2; }
if [ -z "${LAMEDUCK_BIN:-}" ]; then
  (cd "$root" && cargo build --release --quiet) || exit 1
fi

bin="${LAMEDUCK_BIN:-$root/target/release/lameduck}"
echo "lameduck binary: $(ls -l --time-style=full-iso "$bin" | awk '{print $6, $7}') sha256 $(sha256sum "$bin" | cut -c1-16); repo HEAD $(git -C "$root" rev-parse --short HEAD 2>/dev/null)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
status=0
summary=()
run() {
  local name="$1"; shift
  echo "=================== $name"
  if timeout 300 "$py" "$@" --out "$out"; then summary+=("ok    $name"); else summary+=("FAIL  $name"); status=1; fi
}
run "A node"                         "$here/check_drain.py" --backend node
run "A uvicorn"                      "$here/check_drain.py" --backend uvicorn
run "A uvicorn on a Unix socket"     "$here/check_drain.py" --backend uvicorn-unix --slow 20
run "B lameduck (retries 0)"         "$here/check_rolling.py" --mode lameduck
run "B direct baseline (retries 0)"  "$here/check_rolling.py" --mode direct
run "B lameduck (retries 3, redispatch)"        "$here/check_rolling.py" --mode lameduck --retries 3 --redispatch
run "B direct baseline (retries 3, redispatch)" "$here/check_rolling.py" --mode direct --retries 3 --redispatch
run "C streaming, WebSockets, HTTP/2, gRPC"    "$here/check_streaming.py"
run "D admission, configuration, observability" "$here/check_admission.py"
run "E edge: strict HTTP/1, slow clients, HTTP/2 floods" "$here/check_edge.py"
run "F SSE endings as the OpenAI SDK sees them" "$here/check_sse_endings.py"
echo "=================== summary (logs and JSON results in $out)"
printf '%s\n' "${summary[@]}"
"$py" - "$out" <<'PYEOF'
import glob, json, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "rolling-*.json"))):
    d = json.load(open(path))
    print(f"  {d['label']:32} {d['failed']:4d} failed of {d['total']:5d} ({d['failure_rate_pct']:.2f}%) {d['by_kind']}")
PYEOF
exit $status
