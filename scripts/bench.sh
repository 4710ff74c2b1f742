#!/usr/bin/env bash
# Load test of one read RPC (ChatService.GetConversation) over native gRPC,
# gRPC-Web and REST, signed in (bearer JWT, and an API key for one REST row),
# then of sign-in itself (Login: argon2id, a session and an audit row), with
# h2load against a release build on 127.0.0.1.
#
# usage: scripts/bench.sh [BINARY]        (default: target/release/switchboard)
#
# The server runs with SWITCHBOARD_ENGINE__TOKEN_DELAY_MS=0 and a temporary
# SQLite data dir. One conversation is created over REST, then the same
# GetConversation is driven over each transport with the same h2load settings,
# in BENCH_ROUNDS interleaved rounds (each after a short warm-up); the table
# gives the median round's requests/s, p50/p99 latency over all rounds'
# requests (from h2load --log-file) and the server's CPU time per request
# (from /proc/PID/stat; steadier than requests/s when other work shares the cores). Target: REST (h2c) requests/s at least 85 %
# of native gRPC's; prints PASS/FAIL and exits 1 on FAIL when BENCH_STRICT=1.
# Unless BENCH_WRITE=0, the results table in docs/benchmarks.md is regenerated.
#
# Environment: BENCH_N (requests per round, default 30000), BENCH_C (clients,
# default 32), BENCH_M (streams per client, default 10), BENCH_ROUNDS (default 5),
# BENCH_WARMUP (requests per warm-up, default 5000), BENCH_LOGIN_N (sign-ins,
# default 400), BENCH_STRICT, BENCH_WRITE.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/switchboard}
[[ -x $BIN ]] || { echo "bench: FAIL: $BIN not found; build it with: cargo build --release -p switchboard" >&2; exit 1; }
BIN=$(realpath "$BIN")
N=${BENCH_N:-30000} C=${BENCH_C:-32} M=${BENCH_M:-10} ROUNDS=${BENCH_ROUNDS:-5} WARMUP=${BENCH_WARMUP:-5000}
LOGIN_N=${BENCH_LOGIN_N:-400}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-bench.XXXXXX")
SERVER_PID=

die() { printf 'bench: FAIL: %s\n' "$*" >&2; exit 1; }
cleanup() {
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v h2load >/dev/null || bash "$ROOT/scripts/install-test-tools.sh" --bench >/dev/null || die "could not install h2load"
command -v h2load >/dev/null || die "h2load is missing (scripts/install-test-tools.sh --bench)"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT
BASE=http://$ADDR
mkdir -p "$TMP/data"
# The sign-in throttle is opened wide: the Login row measures the work of a
# sign-in, not the throttle.
env -u DATABASE_URL -u SWITCHBOARD_LISTEN -u SWITCHBOARD_DATA_DIR NO_COLOR=1 SWITCHBOARD_ENGINE__TOKEN_DELAY_MS=0 \
  SWITCHBOARD_AUTH__LOGIN_ATTEMPTS_PER_ACCOUNT=1000000 SWITCHBOARD_AUTH__LOGIN_ATTEMPTS_PER_ADDRESS=1000000 \
  RUST_LOG="${RUST_LOG:-warn}" "$BIN" serve --listen "$ADDR" --data-dir "$TMP/data" >"$TMP/server.log" 2>&1 </dev/null &
SERVER_PID=$!
for _ in $(seq 300); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE/readyz" || true) == 200 ]] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$TMP/server.log" >&2; die "server exited during start-up"; }
  sleep 0.2
done
[[ $(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz") == 200 ]] || die "/readyz not 200 within 60 s"

# A signed-in user (every ChatService call needs credentials), and an API key of theirs.
printf '{"email":"bench@example.test","password":"bench pass phrase 1"}' >"$TMP/login.json"
TOKEN=$(curl -sS --fail-with-body -H 'content-type: application/json' -d @"$TMP/login.json" "$BASE/v1/auth:register" | jq -r .accessToken) \
  || die "could not register the bench user"
AUTH="authorization: Bearer $TOKEN"
KEY=$(curl -sS --fail-with-body -H "$AUTH" -H 'content-type: application/json' -d '{"name":"bench"}' "$BASE/v1/me/api-keys" | jq -r .secret) \
  || die "could not create an API key"
ID=$(curl -sS --fail-with-body -H "$AUTH" -H 'content-type: application/json' -d '{"title":"bench"}' "$BASE/v1/conversations" | jq -r .id) \
  || die "could not create a conversation"
# GetConversationRequest{id} as one length-prefixed gRPC message: flag 0, u32 big-endian length, protobuf.
python3 - "$ID" "$TMP/get.bin" <<'EOF'
import struct, sys
idb = sys.argv[1].encode()
msg = b"\x0a" + bytes([len(idb)]) + idb          # field 1 (string), length < 128
open(sys.argv[2], "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
EOF

# One request per transport first, to be sure each answers the conversation (h2load counts a
# gRPC error as a 200).
curl -sS --http2-prior-knowledge -o "$TMP/grpc.out" -D "$TMP/grpc.hdr" -H "$AUTH" -H 'content-type: application/grpc' -H 'te: trailers' \
  --data-binary @"$TMP/get.bin" "$BASE/switchboard.v1.ChatService/GetConversation" || die "gRPC probe failed"
grep -qi '^grpc-status: 0' "$TMP/grpc.hdr" && grep -q "$ID" "$TMP/grpc.out" || die "gRPC probe: no grpc-status 0 or no conversation in the answer"
curl -sS --http2-prior-knowledge -o "$TMP/web.out" -H "$AUTH" -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' \
  --data-binary @"$TMP/get.bin" "$BASE/switchboard.v1.ChatService/GetConversation" || die "gRPC-Web probe failed"
grep -qa 'grpc-status: \{0,1\}0' "$TMP/web.out" && grep -qa "$ID" "$TMP/web.out" || die "gRPC-Web probe: no grpc-status 0 trailer or no conversation in the answer"
curl -sS --fail --http2-prior-knowledge -H "$AUTH" "$BASE/v1/conversations/$ID" | jq -e --arg id "$ID" '.id == $id' >/dev/null || die "REST h2c probe failed"
curl -sS --fail --http1.1 -H "$AUTH" "$BASE/v1/conversations/$ID" | jq -e --arg id "$ID" '.id == $id' >/dev/null || die "REST HTTP/1.1 probe failed"
curl -sS --fail --http2-prior-knowledge -H "x-api-key: $KEY" "$BASE/v1/conversations/$ID" | jq -e --arg id "$ID" '.id == $id' >/dev/null || die "REST API-key probe failed"
[[ $(curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge "$BASE/v1/conversations/$ID") == 401 ]] || die "an anonymous GET must be refused"

MODES=(grpc grpcweb rest-h2c rest-h1 rest-key)
declare -A LABEL=([grpc]="native gRPC (h2c)" [grpcweb]="gRPC-Web (h2c, grpc-web+proto)" [rest-h2c]="REST GET (h2c)" [rest-h1]="REST GET (HTTP/1.1, --h1)" [rest-key]="REST GET (h2c), API key" [login]="Login (REST, h2c)")
args_for() { # MODE -> h2load arguments after the common ones
  case $1 in
    grpc) echo "-H '$AUTH' -H 'content-type: application/grpc' -H 'te: trailers' -d get.bin $BASE/switchboard.v1.ChatService/GetConversation" ;;
    grpcweb) echo "-H '$AUTH' -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' -d get.bin $BASE/switchboard.v1.ChatService/GetConversation" ;;
    rest-h2c) echo "-H '$AUTH' $BASE/v1/conversations/$ID" ;;
    rest-h1) echo "-H '$AUTH' --h1 $BASE/v1/conversations/$ID" ;;
    rest-key) echo "-H 'x-api-key: $KEY' $BASE/v1/conversations/$ID" ;;
    login) echo "-H 'content-type: application/json' -d login.json $BASE/v1/auth:login" ;;
  esac
}
COMMON="h2load -t 1 -c $C -m $M"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; } # server user+system CPU, in clock ticks
TICK=$(getconf CLK_TCK)
run() { # MODE N LOGFILE -> "req/s server-CPU-µs-per-request"
  local before after
  local common=$COMMON
  # Sign-ins are slow and memory-hungry by design (19 MiB each): a few clients.
  [[ $1 == login ]] && common="h2load -t 1 -c ${BENCH_LOGIN_C:-4} -m 1"
  before=$(cpu_ticks)
  (cd "$TMP" && eval "$common -n $2 ${3:+--log-file=$3} $(args_for "$1")") >"$TMP/h2load.out" 2>&1 \
    || { cat "$TMP/h2load.out" >&2; die "h2load failed for $1"; }
  after=$(cpu_ticks)
  grep -q "requests: $2 total, $2 started, $2 done, $2 succeeded" "$TMP/h2load.out" \
    || { cat "$TMP/h2load.out" >&2; die "$1: not every request succeeded"; }
  grep -q "status codes: $2 2xx" "$TMP/h2load.out" || { cat "$TMP/h2load.out" >&2; die "$1: not every answer was 2xx"; }
  printf '%s %s\n' "$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$TMP/h2load.out")" \
    "$(awk -v t="$((after - before))" -v hz="$TICK" -v n="$2" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
}

echo "bench: $(basename "$BIN") on $ADDR, conversation $ID; $COMMON -n $N, $ROUNDS rounds per transport, $(nproc) cores"
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN {exit !(l > 0.5)}'; then
  echo "bench: WARNING: load average $load before the run: other work shares the cores and the numbers will be noisy"
fi
declare -A RPS CPU
for r in $(seq "$ROUNDS"); do
  for mode in "${MODES[@]}"; do
    run "$mode" "$WARMUP" "" >/dev/null
    read -r rps cpu < <(run "$mode" "$N" "$TMP/$mode.$r.log")
    RPS[$mode]="${RPS[$mode]:-} $rps"
    CPU[$mode]="${CPU[$mode]:-} $cpu"
    printf 'bench: round %d  %-32s %8.0f req/s  %6.1f µs server CPU/request\n' "$r" "${LABEL[$mode]}" "$rps" "$cpu"
  done
done

# Sign-in: argon2id by design, so far fewer requests, once.
run login 20 "" >/dev/null
read -r rps cpu < <(run login "$LOGIN_N" "$TMP/login.1.log")
RPS[login]=" $rps"
CPU[login]=" $cpu"
printf 'bench: %-40s %8.0f req/s  %6.1f µs server CPU/request\n' "${LABEL[login]}, $LOGIN_N" "$rps" "$cpu"

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# median req/s and server CPU per request over the rounds; p50/p99 over all logged requests
# (h2load --log-file column 3: µs until the end of the response)
stats() { # MODE -> "median_rps median_cpu_us p50_ms p99_ms"
  local rps cpu
  rps=$(median "${RPS[$1]}")
  cpu=$(median "${CPU[$1]}")
  cat "$TMP/$1".*.log | awk -F'\t' '{print $3}' | sort -n | awk -v rps="$rps" -v cpu="$cpu" '
    {a[NR]=$1} END {
      p50=a[int(NR*0.50) > 0 ? int(NR*0.50) : 1]; p99=a[int(NR*0.99) > 0 ? int(NR*0.99) : 1]
      printf "%s %s %.2f %.2f\n", rps, cpu, p50/1000, p99/1000 }'
}
read -r g_rps _ < <(stats grpc)
TABLE="| transport | requests/s (median of $ROUNDS) | vs native gRPC | p50 latency | p99 latency | server CPU per request |
| --- | ---: | ---: | ---: | ---: | ---: |"
for mode in "${MODES[@]}"; do
  read -r rps cpu p50 p99 < <(stats "$mode")
  ratio=$(awk -v a="$rps" -v b="$g_rps" 'BEGIN {printf "%.0f %%", 100*a/b}')
  TABLE+=$'\n'"| ${LABEL[$mode]} | $(printf '%.0f' "$rps") | $ratio | $p50 ms | $p99 ms | $cpu µs |"
done
read -r rps cpu p50 p99 < <(stats login)
TABLE+=$'\n'"| ${LABEL[login]}, $LOGIN_N sign-ins once | $(printf '%.0f' "$rps") | — | $p50 ms | $p99 ms | $cpu µs |"
read -r r_rps _ < <(stats rest-h2c)
verdict=$(awk -v a="$r_rps" -v b="$g_rps" 'BEGIN {print (a >= 0.85*b) ? "PASS" : "FAIL"}')
pct=$(awk -v a="$r_rps" -v b="$g_rps" 'BEGIN {printf "%.0f", 100*a/b}')
TARGET="Target: REST (h2c) throughput within 15 % of native gRPC: **$verdict** (REST at $pct % of gRPC)."
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo "+changes" || true)
META="Run $(date -u +%Y-%m-%dT%H:%MZ) on commit $rev$dirty, $(nproc) cores ($cpu_model), h2load and server on the same machine, load average $load before the run; \`h2load -t 1 -c $C -m $M -n $N\` per round, $ROUNDS rounds per transport after a $WARMUP-request warm-up each."

printf '\n%s\n\n%s\n\n%s\n' "$META" "$TABLE" "$TARGET"

if [[ ${BENCH_WRITE:-1} == 1 ]]; then
  DOC=$ROOT/docs/benchmarks.md
  [[ -f $DOC ]] && grep -q '<!-- bench:begin -->' "$DOC" || die "$DOC has no <!-- bench:begin --> marker; not written"
  SECTION=$'<!-- bench:begin -->\n'"$META"$'\n\n'"$TABLE"$'\n\n'"$TARGET"$'\n<!-- bench:end -->'
  SECTION=$SECTION python3 - "$DOC" <<'EOF'
import os, re, sys
p = sys.argv[1]
s = open(p).read()
s = re.sub(r"<!-- bench:begin -->.*?<!-- bench:end -->", lambda _: os.environ["SECTION"], s, flags=re.S)
open(p, "w").write(s)
EOF
  echo "bench: results written to docs/benchmarks.md"
fi
if [[ $verdict == FAIL && ${BENCH_STRICT:-0} == 1 ]]; then
  die "REST (h2c) is at $pct % of native gRPC, below the 85 % target"
fi
