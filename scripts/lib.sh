# Shared helpers for scripts/bootstrap, scripts/test and scripts/demo. Source it; do not run it.
# shellcheck shell=bash

TS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TS_VENV="$TS_ROOT/.venv"

ts_log() { printf '[%s] %s\n' "${TS_SCRIPT:-trafficshift}" "$*"; }
ts_warn() { printf '[%s] WARNING: %s\n' "${TS_SCRIPT:-trafficshift}" "$*" >&2; }
ts_die() {
    printf '[%s] ERROR: %s\n' "${TS_SCRIPT:-trafficshift}" "$*" >&2
    exit 1
}

ts_banner() {
    printf '\n==================== %s ====================\n' "$*"
}

# The venv's tools when bootstrap has run, else whatever is on PATH.
ts_python() {
    if [[ -x "$TS_VENV/bin/python" ]]; then echo "$TS_VENV/bin/python"; else command -v python3; fi
}
ts_tool() {
    if [[ -x "$TS_VENV/bin/$1" ]]; then echo "$TS_VENV/bin/$1"; else command -v "$1" || return 1; fi
}

# Print a TCP port that was free a moment ago.
ts_free_port() {
    "$(ts_python)" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ts_wait_http URL SECONDS WHAT: poll until URL answers any HTTP status, or fail saying WHAT.
ts_wait_http() {
    local url="$1" seconds="$2" what="$3" deadline
    deadline=$((SECONDS + seconds))
    until "$(ts_python)" - "$url" <<'EOF' 2>/dev/null; do
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
EOF
        if ((SECONDS >= deadline)); then
            ts_warn "timed out after ${seconds}s waiting for $what ($url)"
            return 1
        fi
        sleep 0.2
    done
}

# ts_start_moto LOGFILE: start moto_server on a free port on 127.0.0.1; sets MOTO_PID and MOTO_PORT.
# Retries with another port if the chosen one was taken in the meantime.
ts_start_moto() {
    local log="$1" moto attempt
    moto="$(ts_tool moto_server)" || ts_die "moto_server not found: run scripts/bootstrap"
    for attempt in 1 2 3; do
        MOTO_PORT="$(ts_free_port)"
        "$moto" -H 127.0.0.1 -p "$MOTO_PORT" >"$log" 2>&1 &
        MOTO_PID=$!
        if ts_wait_http "http://127.0.0.1:$MOTO_PORT/moto-api/" 30 "moto_server to answer"; then
            return 0
        fi
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
        ts_warn "moto_server did not start on port $MOTO_PORT (attempt $attempt); log: $(tail -n 5 "$log")"
    done
    ts_die "could not start moto_server; see $log"
}

# Clippy as the workspace's compiler wrapper (scripts/check-clippy, scripts/test lane 1): every
# cargo command that should reuse the clippy step's build must run with exactly these two.
ts_clippy_env() {
    local driver
    driver="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver || true)"
    [[ -x "$driver" ]] || ts_die "clippy-driver not found: rustup component add clippy"
    # cargo-clippy's own way of passing lint flags to the driver (`cargo clippy -- -D warnings`).
    TS_CLIPPY_ENV=(RUSTC_WORKSPACE_WRAPPER="$driver" CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__")
}

# The Dockerfile's `ENV RUSTFLAGS="..."` (one line): what the image's build stage compiles with,
# read by every script that must build as the image does (check-static-binary, gen-link-order).
ts_dockerfile_rustflags() {
    sed -n 's/^ENV RUSTFLAGS="\([^"]*\)".*/\1/p' "$TS_ROOT/Dockerfile"
}

# The link order's crates (link/startup-order.crates, written by scripts/gen-link-order, checked by
# scripts/check-static-binary). link/startup-order.txt names functions by their mangled symbols,
# and each symbol carries a hash of its crate's build (version, features, profile, compiler,
# dependencies): after a dependency bump, a profile change or another rustc, most names match
# nothing and the list silently stops saving memory. The build's own artifact names carry the
# same kind of hash, so the list of them tells whether the list of functions still fits.
TS_LINK_CRATES="link/startup-order.crates"

# ts_link_crates JSON: from `cargo build --message-format=json-render-diagnostics` output in the
# file JSON, print `rustc -V` and then every compiled library's file name (name-hash.rlib), sorted.
ts_link_crates() {
    rustc -V
    "$(ts_python)" - "$1" <<'PY'
import json, os, sys
names = set()
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact":
        continue
    rlibs = [os.path.basename(f) for f in msg["filenames"] if f.endswith(".rlib")]
    if not rlibs:
        continue  # binaries, build scripts, proc macros (a changed one changes its users' hashes)
    if msg["package_id"].startswith("path+"):
        # This workspace's own library: cargo names it libNAME.rlib or NAME-HASH.rlib depending on
        # the command, so its profile and features stand for the hash.
        names.add("{} {} features={}".format(msg["target"]["name"],
                  json.dumps(msg["profile"], sort_keys=True), ",".join(msg["features"])))
    else:
        names.update(rlibs)
print("\n".join(sorted(names)))
PY
}
