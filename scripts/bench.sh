#!/usr/bin/env bash
# Switchboard's benchmarks, against release builds on 127.0.0.1; each section
# rewrites its results block of docs/benchmarks.md (unless BENCH_WRITE=0).
#
# usage: scripts/bench.sh [BINARY [BENCH_BINARY]]
#   BINARY        default target/release/switchboard
#   BENCH_BINARY  default target/release/switchboard-bench (crates/bench)
#   (just bench builds both: cargo build --release -p switchboard -p switchboard-bench)
#
# BENCH_SECTIONS picks the sections, in this order (default: "http chat queue memory growth connections"):
#
# http — one read RPC (ChatService.GetConversation) over native gRPC, gRPC-Web
#   and REST, signed in (bearer JWT, and an API key for one REST row), then
#   sign-in itself (Login: argon2id, a session and an audit row), with h2load.
#   The server runs with SWITCHBOARD_ENGINE__TOKEN_DELAY_MS=0 and a temporary
#   SQLite data dir. One conversation is created over REST, then the same
#   GetConversation is driven over each transport with the same h2load
#   settings, in BENCH_ROUNDS interleaved rounds (each after a short warm-up);
#   the table gives the median round's requests/s, p50/p99 latency over all
#   rounds' requests (from h2load --log-file) and the server's CPU time per
#   request (from /proc/PID/stat; steadier than requests/s when other work
#   shares the cores). The reference, `switchboard-bench hello` (a bare tonic
#   hello-world, same tonic), gets the same h2load command in the same
#   interleaved rounds. Targets: signed-in native gRPC requests/s at least
#   50 % of the bare server's, and REST (h2c) at least 85 % of native gRPC's;
#   prints PASS/FAIL for each and exits 1 on FAIL when BENCH_STRICT=1.
#   Block <!-- bench:begin --> … <!-- bench:end -->.
#
# chat — chat turns per second and first-token latency with the zero-delay dev
#   engine (SWITCHBOARD_ENGINE__TOKEN_DELAY_MS=0), in two deployments:
#   embedded: one `switchboard serve` (SQLite in a temporary data dir, jobs in
#     its `jobs` table, workers in-process);
#   redis: `switchboard serve --no-workers` plus one `switchboard worker`
#     process, REDIS_URL set and SWITCHBOARD_QUEUE__BACKEND=redis (Redis
#     streams carry the jobs, the Redis reply bus carries the events from the
#     worker to the API process), DATABASE_URL a PostgreSQL database created
#     for the run on BENCH_POSTGRES_URL's server and dropped after it, and a
#     SWITCHBOARD_QUEUE__PREFIX of its own whose keys are deleted after it.
#   For each: a user registers, then `switchboard-bench chat` (BENCH_CHAT_USERS
#   users x BENCH_CHAT_TURNS turns, each turn SendMessage over REST and the
#   reply's SSE stream until `done`, HTTP/1.1 keep-alive) runs once as a
#   warm-up (2 turns each) and BENCH_CHAT_ROUNDS times measured; the table
#   gives the round with the median turns/s, with its first-token and turn
#   p50/p99. Block <!-- bench-chat:begin --> … <!-- bench-chat:end -->.
#
# queue — job-queue throughput, enqueue -> done, BENCH_QUEUE_JOBS no-op jobs:
#   `switchboard-bench queue` (Jobs::enqueue, a Worker of concurrency
#   BENCH_QUEUE_CONCURRENCY and the real transport, in one process; a fresh
#   SQLite file or PostgreSQL database for the job rows, its own Redis prefix
#   or RabbitMQ queue prefix, all removed afterwards) for the backends
#   sqlite, postgres, redis and amqp (the last two twice: job rows in
#   PostgreSQL, as when processes share the queue, and in SQLite, which
#   separates the broker's cost from PostgreSQL's commits), every one with
#   the jobs enqueued one after the other as Dramatiq's bench sends them, and
#   the PostgreSQL ones again with 16 tasks enqueueing at once (--producers
#   16, as a server's concurrent requests do), then
#   scripts/bench/dramatiq_bench.py (Dramatiq, 2 processes x 8 threads)
#   with the same job count on the same Redis and RabbitMQ; every system runs
#   200 warm-up jobs first. BENCH_QUEUE_ROUNDS interleaved rounds; the table
#   gives each row's round with the median jobs/s.
#   Rows marked enqueue_many use Jobs::enqueue_many (--enqueue-batch 500:
#   one transaction and one broker round trip per 500 jobs); rows with
#   BENCH_QUEUE_GROWN_ROWS (100,000) finished jobs already in the table are
#   item 6's growth row. apalis (scripts/bench/apalis-peer, built here with
#   its own target dir, or BENCH_QUEUE_APALIS_BIN) runs the same no-op job on
#   the same Redis and PostgreSQL. PASS/FAIL: Switchboard >= 3x Dramatiq's
#   jobs/s on Redis and RabbitMQ with job rows in PostgreSQL, printed for
#   each way of enqueueing.
#   Block <!-- bench-queue:begin --> … <!-- bench-queue:end -->.
#   Dramatiq comes from .venv-tools (scripts/install-test-tools.sh --bench,
#   run here if it is missing).
#
# growth — how read cost grows with what is stored: for each of BENCH_GROWTH_SIZES
#   (default "10 10000 1000000") a fresh `switchboard serve` (SQLite), one
#   registered user and one conversation made over REST, then the rest of the
#   conversations (all the user's, older) written into its SQLite file while
#   the server is stopped; then h2load (-c BENCH_GROWTH_C, default 4, -m 1,
#   -n BENCH_GROWTH_N, default 4000) for GetConversation, ListConversations'
#   first page and the page halfway down the list (its token found by walking
#   the list). Target: at the largest size every p50 within 2x + 0.5 ms of the
#   smallest size's. Block <!-- bench-growth:begin --> … <!-- bench-growth:end -->.
#
# memory — the server's resident memory under a burst of failed sign-ins:
#   `switchboard serve` with the default configuration and a temporary SQLite
#   data dir; its VmRSS (/proc/PID/status) once ready is the idle figure.
#   `switchboard-bench logins` registers BENCH_MEMORY_ACCOUNTS accounts (each
#   from its own address in 127.0.1.0/24), reads VmRSS (the baseline), resets
#   VmHWM (/proc/PID/clear_refs), then sends BENCH_MEMORY_ATTEMPTS sign-ins with
#   wrong passwords at once, from 127.0.0.2, 127.0.0.3, … (one loopback source
#   address and one email each; the accounts' emails and unknown ones), so no
#   throttle answers before the argon2id work; it samples VmRSS every 20 ms
#   until the last answer and reads it again 1, 3 and 5 s after. Bounds:
#   idle < 40 MiB; peak (the larger of VmHWM and the samples) <= baseline +
#   hashing slots (max(2, cores)) x 19 MiB + BENCH_MEMORY_PEAK_MARGIN_MIB; 5 s
#   after <= baseline + BENCH_MEMORY_SETTLED_MARGIN_MIB. Prints PASS/FAIL
#   (exit 1 on FAIL with BENCH_STRICT=1). BENCH_MEMORY_BEFORE_BIN names another
#   switchboard binary (a release build of an earlier commit) measured the
#   same way in the same run, as it is and with MALLOC_MMAP_THRESHOLD_=131072,
#   for comparison (rows without a verdict).
#   Block <!-- bench-memory:begin --> … <!-- bench-memory:end -->.
#
# connections — open reply streams: for each transport in BENCH_CONNECTIONS_TRANSPORTS
#   (ws sse) and each count in BENCH_CONNECTIONS_CLIENTS (2000 10000), a fresh `switchboard
#   serve` (SQLite, temporary data dir) whose engine is `switchboard-bench connections`
#   itself (engine.kind = openai at a local port: a first token at once, one a second while
#   the clients connect, then BENCH_CONNECTIONS_TOKENS tokens back to back once every client
#   has subscribed). A user registers; that many clients, each on its own connection from
#   127.0.0.1-.4, follow the one reply: a /v1/ws subscription naming it, or StreamReply as
#   Server-Sent Events. Every client checks its events (seqs 1, 2, … with no gap, deltas,
#   usage, `done` whose text is the deltas joined and the engine's text). Memory per
#   connection: server VmRSS with every client subscribed minus VmRSS before the first
#   connected, over the clients. Latency: from the engine writing its last token to each
#   client's `done` (p50, p99, last). Targets: every client complete and <= 40 KiB per
#   connection in every row; the last `done` under 250 ms after the last token with 2,000
#   clients of one reply; and, from the first server of the section, start-up (process
#   start to /readyz 200) < 100 ms and idle VmRSS < 40 MiB. The server's open-files limit
#   (it raises its soft limit to the hard one) is read from /proc/PID/limits. Prints
#   PASS/FAIL (exit 1 on FAIL with BENCH_STRICT=1).
#   Block <!-- bench-connections:begin --> … <!-- bench-connections:end -->.
#
# Environment: BENCH_N (requests per round, default 30000), BENCH_C (clients,
# default 32), BENCH_M (streams per client, default 10), BENCH_ROUNDS (default 5),
# BENCH_WARMUP (requests per warm-up, default 5000), BENCH_LOGIN_N (sign-ins,
# default 400), BENCH_STRICT, BENCH_WRITE; BENCH_SECTIONS; BENCH_CHAT_USERS
# (default 16), BENCH_CHAT_TURNS (default 20), BENCH_CHAT_ROUNDS (default 3);
# BENCH_QUEUE_JOBS (default 2000), BENCH_QUEUE_CONCURRENCY (default 16),
# BENCH_QUEUE_ROUNDS (default 5); BENCH_MEMORY_ATTEMPTS (default 200),
# BENCH_MEMORY_ACCOUNTS (default 40), BENCH_MEMORY_PEAK_MARGIN_MIB (default 24),
# BENCH_MEMORY_SETTLED_MARGIN_MIB (default 16), BENCH_MEMORY_BEFORE_BIN;
# BENCH_CONNECTIONS_TRANSPORTS (default "ws sse"), BENCH_CONNECTIONS_CLIENTS (default
# "2000 10000"), BENCH_CONNECTIONS_TOKENS (default 20);
# BENCH_REDIS_URL (default
# redis://127.0.0.1:6379), BENCH_AMQP_URL (default
# amqp://guest:guest@127.0.0.1:5672/%2f), BENCH_POSTGRES_URL (a server where
# databases may be created; default postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${1:-$TARGET_DIR/release/switchboard}
BENCH_BIN=${2:-$TARGET_DIR/release/switchboard-bench}
SECTIONS=" ${BENCH_SECTIONS:-http chat queue memory growth connections} "
N=${BENCH_N:-30000} C=${BENCH_C:-16} M=${BENCH_M:-32} ROUNDS=${BENCH_ROUNDS:-5} WARMUP=${BENCH_WARMUP:-5000}
LOGIN_N=${BENCH_LOGIN_N:-400}
CHAT_USERS=${BENCH_CHAT_USERS:-16} CHAT_TURNS=${BENCH_CHAT_TURNS:-20} CHAT_ROUNDS=${BENCH_CHAT_ROUNDS:-3}
CHAT_ONE_TURNS=${BENCH_CHAT_ONE_TURNS:-200} CHAT_EMBEDDED_MIN=1400 CHAT_REDIS_MIN=816
QUEUE_JOBS=${BENCH_QUEUE_JOBS:-2000} QUEUE_CONCURRENCY=${BENCH_QUEUE_CONCURRENCY:-16} QUEUE_ROUNDS=${BENCH_QUEUE_ROUNDS:-3}
QUEUE_GROWN_ROWS=${BENCH_QUEUE_GROWN_ROWS:-100000} QUEUE_APALIS_VERSION=1.0.0
QUEUE_APALIS_BIN=${BENCH_QUEUE_APALIS_BIN:-}
MEMORY_ATTEMPTS=${BENCH_MEMORY_ATTEMPTS:-200} MEMORY_ACCOUNTS=${BENCH_MEMORY_ACCOUNTS:-40}
MEMORY_PEAK_MARGIN=${BENCH_MEMORY_PEAK_MARGIN_MIB:-24} MEMORY_SETTLED_MARGIN=${BENCH_MEMORY_SETTLED_MARGIN_MIB:-16}
MEMORY_BEFORE_BIN=${BENCH_MEMORY_BEFORE_BIN:-}
GROWTH_SIZES=${BENCH_GROWTH_SIZES:-10 10000 1000000} GROWTH_N=${BENCH_GROWTH_N:-4000} GROWTH_C=${BENCH_GROWTH_C:-4}
CONNECTIONS_TRANSPORTS=${BENCH_CONNECTIONS_TRANSPORTS:-ws sse} CONNECTIONS_CLIENTS=${BENCH_CONNECTIONS_CLIENTS:-2000 10000}
CONNECTIONS_TOKENS=${BENCH_CONNECTIONS_TOKENS:-20}
REDIS=${BENCH_REDIS_URL:-redis://127.0.0.1:6379}
AMQP=${BENCH_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
PG=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PYTHON=$ROOT/.venv-tools/bin/python
DOC=$ROOT/docs/benchmarks.md
TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-bench.XXXXXX")
PIDS=()          # every process started here, stopped on exit
SERVER_PID=      # the server of the http section, whose CPU time it reads
CHAT_DB=         # the PostgreSQL database of the chat section's redis mode
CHAT_PREFIX=     # its Redis key prefix

die() { printf 'bench: FAIL: %s\n' "$*" >&2; exit 1; }
want() { [[ $SECTIONS == *" $1 "* ]]; }
stop_pid() { # PID: SIGTERM, up to 5 s, then SIGKILL
  kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ -n $CHAT_DB ]]; then
    psql -q "$PG" -c "DROP DATABASE IF EXISTS $CHAT_DB WITH (FORCE)" >/dev/null 2>&1 \
      || echo "bench: WARNING: could not drop the database $CHAT_DB" >&2
  fi
  if [[ -n $CHAT_PREFIX ]]; then
    redis-cli -u "$REDIS" --scan --pattern "$CHAT_PREFIX:*" | xargs -r redis-cli -u "$REDIS" del >/dev/null \
      || echo "bench: WARNING: could not delete the Redis keys $CHAT_PREFIX:*" >&2
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -x $BIN ]] || die "$BIN not found; build it with: cargo build --release -p switchboard"
BIN=$(realpath "$BIN")
if want http || want chat || want queue || want memory || want connections; then
  [[ -x $BENCH_BIN ]] || die "$BENCH_BIN not found; build it with: cargo build --release -p switchboard-bench"
  BENCH_BIN=$(realpath "$BENCH_BIN")
fi
if want http || want growth; then
  command -v h2load >/dev/null || bash "$ROOT/scripts/install-test-tools.sh" --bench >/dev/null || die "could not install h2load"
  command -v h2load >/dev/null || die "h2load is missing (scripts/install-test-tools.sh --bench)"
fi
if want queue && ! { [[ -x $PYTHON ]] && "$PYTHON" -c 'import dramatiq, pika, redis' 2>/dev/null; }; then
  bash "$ROOT/scripts/install-test-tools.sh" --bench >/dev/null || die "could not install Dramatiq (scripts/install-test-tools.sh --bench)"
fi
if want chat; then
  command -v psql >/dev/null || die "psql is needed for the chat section's PostgreSQL database"
  command -v redis-cli >/dev/null || die "redis-cli is needed for the chat section's Redis cleanup"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start NAME [VAR=VALUE…] -- ARGS…: the switchboard binary in the background, in $TMP (so no
# ./switchboard.toml is read), with none of the caller's DATABASE_URL, REDIS_URL, AMQP_URL or
# SWITCHBOARD_* variables, plus the given ones; output in $TMP/NAME.log, pid in STARTED.
start() {
  local name=$1 vars=() unset=(-u DATABASE_URL -u REDIS_URL -u AMQP_URL) var
  shift
  while [[ $1 != -- ]]; do vars+=("$1"); shift; done
  shift
  for var in $(compgen -e | grep '^SWITCHBOARD_' || true); do unset+=(-u "$var"); done
  (cd "$TMP" && exec env "${unset[@]}" NO_COLOR=1 "${vars[@]}" "$BIN" "$@" >"$TMP/$name.log" 2>&1 </dev/null) &
  STARTED=$!
  PIDS+=("$STARTED")
}
wait_ready() { # BASE PID NAME: until /readyz answers 200
  for _ in $(seq 300); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1/readyz" || true) == 200 ]] && return 0
    kill -0 "$2" 2>/dev/null || { tail -20 "$TMP/$3.log" >&2; die "$3 exited during start-up"; }
    sleep 0.2
  done
  die "$3: /readyz not 200 within 60 s"
}
register() { # BASE -> a new user's access token
  curl -sS --fail-with-body -H 'content-type: application/json' \
    -d '{"email":"bench@example.test","password":"bench pass phrase 1"}' "$1/v1/auth:register" | jq -er .accessToken
}
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rewrite_block() { # NAME CONTENT: replaces <!-- NAME:begin --> … <!-- NAME:end --> in docs/benchmarks.md
  [[ ${BENCH_WRITE:-1} == 1 ]] || return 0
  [[ -f $DOC ]] && grep -q "<!-- $1:begin -->" "$DOC" || die "$DOC has no <!-- $1:begin --> marker; not written"
  BLOCK="<!-- $1:begin -->"$'\n'"$2"$'\n'"<!-- $1:end -->" python3 - "$DOC" "$1" <<'EOF'
import os, re, sys
p, name = sys.argv[1], re.escape(sys.argv[2])
s = open(p).read()
s = re.sub(rf"<!-- {name}:begin -->.*?<!-- {name}:end -->", lambda _: os.environ["BLOCK"], s, flags=re.S)
open(p, "w").write(s)
EOF
  echo "bench: $1 results written to docs/benchmarks.md"
}

load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN {exit !(l > 0.5)}'; then
  echo "bench: WARNING: load average $load before the run: other work shares the cores and the numbers will be noisy"
fi
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo "+changes" || true)
machine() { echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on commit $rev$dirty, $(nproc) cores ($cpu_model), load generator and servers on the same machine, load average $load before the run"; }
VERDICT=PASS
HELLO_VERDICT=PASS
MEMORY_VERDICT=PASS
GROWTH_VERDICT=PASS
CONNECTIONS_VERDICT=PASS
CHAT_VERDICT=PASS

# ---------------------------------------------------------------- http
bench_http() {
  local port addr base token auth key id
  port=$(free_port)
  addr=127.0.0.1:$port
  base=http://$addr
  mkdir -p "$TMP/http-data"
  # The sign-in throttle is opened wide: the Login row measures the work of a
  # sign-in, not the throttle.
  start http-server SWITCHBOARD_ENGINE__TOKEN_DELAY_MS=0 \
    SWITCHBOARD_AUTH__LOGIN_ATTEMPTS_PER_ACCOUNT=1000000 SWITCHBOARD_AUTH__LOGIN_ATTEMPTS_PER_ACCOUNT_CEILING=1000000 \
    SWITCHBOARD_AUTH__LOGIN_ATTEMPTS_PER_ADDRESS=1000000 \
    RUST_LOG="${RUST_LOG:-warn}" -- serve --listen "$addr" --data-dir "$TMP/http-data"
  SERVER_PID=$STARTED
  wait_ready "$base" "$SERVER_PID" http-server
  # The reference: a bare tonic hello-world server (switchboard-bench hello, same tonic).
  local hello_addr hello_pid
  hello_addr=127.0.0.1:$(free_port)
  (cd "$TMP" && exec "$BENCH_BIN" hello --listen "$hello_addr" >"$TMP/hello.log" 2>&1 </dev/null) &
  hello_pid=$!
  PIDS+=("$hello_pid")
  # HelloRequest{name: "bench"} as one length-prefixed gRPC message.
  printf '\x00\x00\x00\x00\x07\x0a\x05bench' >"$TMP/hello.bin"
  for _ in $(seq 100); do
    curl -sS --http2-prior-knowledge -o /dev/null -D "$TMP/hello.hdr" -H 'content-type: application/grpc' -H 'te: trailers' \
      --data-binary @"$TMP/hello.bin" "http://$hello_addr/helloworld.Greeter/SayHello" 2>/dev/null && break
    sleep 0.1
  done
  grep -qi '^grpc-status: 0' "$TMP/hello.hdr" || die "the hello-world reference server does not answer"

  # A signed-in user (every ChatService call needs credentials), and an API key of theirs.
  printf '{"email":"bench@example.test","password":"bench pass phrase 1"}' >"$TMP/login.json"
  token=$(register "$base") || die "could not register the bench user"
  auth="authorization: Bearer $token"
  key=$(curl -sS --fail-with-body -H "$auth" -H 'content-type: application/json' -d '{"name":"bench"}' "$base/v1/me/api-keys" | jq -r .secret) \
    || die "could not create an API key"
  id=$(curl -sS --fail-with-body -H "$auth" -H 'content-type: application/json' -d '{"title":"bench"}' "$base/v1/conversations" | jq -r .id) \
    || die "could not create a conversation"
  # GetConversationRequest{id} as one length-prefixed gRPC message: flag 0, u32 big-endian length, protobuf.
  python3 - "$id" "$TMP/get.bin" <<'EOF'
import struct, sys
idb = sys.argv[1].encode()
msg = b"\x0a" + bytes([len(idb)]) + idb          # field 1 (string), length < 128
open(sys.argv[2], "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
EOF

  # One request per transport first, to be sure each answers the conversation (h2load counts a
  # gRPC error as a 200).
  curl -sS --http2-prior-knowledge -o "$TMP/grpc.out" -D "$TMP/grpc.hdr" -H "$auth" -H 'content-type: application/grpc' -H 'te: trailers' \
    --data-binary @"$TMP/get.bin" "$base/switchboard.v1.ChatService/GetConversation" || die "gRPC probe failed"
  grep -qi '^grpc-status: 0' "$TMP/grpc.hdr" && grep -q "$id" "$TMP/grpc.out" || die "gRPC probe: no grpc-status 0 or no conversation in the answer"
  curl -sS --http2-prior-knowledge -o "$TMP/web.out" -H "$auth" -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' \
    --data-binary @"$TMP/get.bin" "$base/switchboard.v1.ChatService/GetConversation" || die "gRPC-Web probe failed"
  grep -qa 'grpc-status: \{0,1\}0' "$TMP/web.out" && grep -qa "$id" "$TMP/web.out" || die "gRPC-Web probe: no grpc-status 0 trailer or no conversation in the answer"
  curl -sS --fail --http2-prior-knowledge -H "$auth" "$base/v1/conversations/$id" | jq -e --arg id "$id" '.id == $id' >/dev/null || die "REST h2c probe failed"
  curl -sS --fail --http1.1 -H "$auth" "$base/v1/conversations/$id" | jq -e --arg id "$id" '.id == $id' >/dev/null || die "REST HTTP/1.1 probe failed"
  curl -sS --fail --http2-prior-knowledge -H "x-api-key: $key" "$base/v1/conversations/$id" | jq -e --arg id "$id" '.id == $id' >/dev/null || die "REST API-key probe failed"
  [[ $(curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge "$base/v1/conversations/$id") == 401 ]] || die "an anonymous GET must be refused"

  local modes=(hello grpc grpcweb rest-h2c rest-h1 rest-key)
  declare -gA LABEL=([hello]="bare tonic hello-world (reference)" [grpc]="native gRPC (h2c)" [grpcweb]="gRPC-Web (h2c, grpc-web+proto)" [rest-h2c]="REST GET (h2c)" [rest-h1]="REST GET (HTTP/1.1, --h1)" [rest-key]="REST GET (h2c), API key" [login]="Login (REST, h2c)")
  args_for() { # MODE -> h2load arguments after the common ones
    case $1 in
      hello) echo "-H 'content-type: application/grpc' -H 'te: trailers' -d hello.bin http://$hello_addr/helloworld.Greeter/SayHello" ;;
      grpc) echo "-H '$auth' -H 'content-type: application/grpc' -H 'te: trailers' -d get.bin $base/switchboard.v1.ChatService/GetConversation" ;;
      grpcweb) echo "-H '$auth' -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' -d get.bin $base/switchboard.v1.ChatService/GetConversation" ;;
      rest-h2c) echo "-H '$auth' $base/v1/conversations/$id" ;;
      rest-h1) echo "-H '$auth' --h1 $base/v1/conversations/$id" ;;
      rest-key) echo "-H 'x-api-key: $key' $base/v1/conversations/$id" ;;
      login) echo "-H 'content-type: application/json' -d login.json $base/v1/auth:login" ;;
    esac
  }
  local common="h2load -t 1 -c $C -m $M"
  cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; } # server user+system CPU, in clock ticks
  local tick
  tick=$(getconf CLK_TCK)
  run() { # MODE N LOGFILE -> "req/s server-CPU-µs-per-request"
    local before after
    local h2load=$common
    # Sign-ins are slow and memory-hungry by design (19 MiB each): a few clients.
    [[ $1 == login ]] && h2load="h2load -t 1 -c ${BENCH_LOGIN_C:-4} -m 1"
    before=$(cpu_ticks)
    (cd "$TMP" && eval "$h2load -n $2 ${3:+--log-file=$3} $(args_for "$1")") >"$TMP/h2load.out" 2>&1 \
      || { cat "$TMP/h2load.out" >&2; die "h2load failed for $1"; }
    after=$(cpu_ticks)
    grep -q "requests: $2 total, $2 started, $2 done, $2 succeeded" "$TMP/h2load.out" \
      || { cat "$TMP/h2load.out" >&2; die "$1: not every request succeeded"; }
    grep -q "status codes: $2 2xx" "$TMP/h2load.out" || { cat "$TMP/h2load.out" >&2; die "$1: not every answer was 2xx"; }
    printf '%s %s\n' "$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$TMP/h2load.out")" \
      "$(awk -v t="$((after - before))" -v hz="$tick" -v n="$2" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
  }

  echo "bench: http: $(basename "$BIN") on $addr, conversation $id; $common -n $N, $ROUNDS rounds per transport, $(nproc) cores"
  declare -gA RPS CPU
  local r mode rps cpu p50 p99
  for r in $(seq "$ROUNDS"); do
    for mode in "${modes[@]}"; do
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
  stop_pid "$SERVER_PID"
  stop_pid "$hello_pid"

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
  local g_rps r_rps h_rps ratio pct table target meta hello_verdict hello_pct
  read -r g_rps _ < <(stats grpc)
  read -r h_rps _ < <(stats hello)
  table="| transport | requests/s (median of $ROUNDS) | vs native gRPC | p50 latency | p99 latency | server CPU per request |
| --- | ---: | ---: | ---: | ---: | ---: |"
  for mode in "${modes[@]}"; do
    read -r rps cpu p50 p99 < <(stats "$mode")
    # The reference runs in another process: the server's CPU says nothing of it.
    [[ $mode == hello ]] && cpu=—
    ratio=$(awk -v a="$rps" -v b="$g_rps" 'BEGIN {printf "%.0f %%", 100*a/b}')
    table+=$'\n'"| ${LABEL[$mode]} | $(printf '%.0f' "$rps") | $ratio | $p50 ms | $p99 ms | $cpu µs |"
  done
  read -r rps cpu p50 p99 < <(stats login)
  table+=$'\n'"| ${LABEL[login]}, $LOGIN_N sign-ins once | $(printf '%.0f' "$rps") | — | $p50 ms | $p99 ms | $cpu µs |"
  read -r r_rps _ < <(stats rest-h2c)
  VERDICT=$(awk -v a="$r_rps" -v b="$g_rps" 'BEGIN {print (a >= 0.85*b) ? "PASS" : "FAIL"}')
  pct=$(awk -v a="$r_rps" -v b="$g_rps" 'BEGIN {printf "%.0f", 100*a/b}')
  HTTP_PCT=$pct
  hello_verdict=$(awk -v a="$g_rps" -v b="$h_rps" 'BEGIN {print (a >= 0.5*b) ? "PASS" : "FAIL"}')
  hello_pct=$(awk -v a="$g_rps" -v b="$h_rps" 'BEGIN {printf "%.0f", 100*a/b}')
  HELLO_PCT=$hello_pct
  HELLO_VERDICT=$hello_verdict
  echo "bench: http: signed-in GetConversation (native gRPC) >= 0.5x the bare tonic server: $hello_verdict ($hello_pct %)"
  echo "bench: http: REST (h2c) >= 0.85x native gRPC: $VERDICT ($pct %)"
  target="Target: signed-in GetConversation over native gRPC at least half the bare tonic hello-world's requests/s: **$hello_verdict** (gRPC at $hello_pct % of the bare server).
Target: REST (h2c) throughput within 15 % of native gRPC: **$VERDICT** (REST at $pct % of gRPC)."
  meta="$(machine); \`h2load -t 1 -c $C -m $M -n $N\` per round, $ROUNDS rounds per transport after a $WARMUP-request warm-up each."
  printf '\n%s\n\n%s\n\n%s\n\n' "$meta" "$table" "$target"
  rewrite_block bench "$meta"$'\n\n'"$table"$'\n\n'"$target"
}

# ---------------------------------------------------------------- chat
# chat_rounds MODE BASE TOKEN USERS TURNS PID…: a warm-up, then CHAT_ROUNDS measured runs of USERS x
# TURNS into $TMP/chat.MODE.jsonl, each with the CPU time (user+system, /proc/PID/stat) the server
# processes PID… spent over the round divided by its turns (server_cpu_ms_per_turn)
chat_rounds() {
  local mode=$1 base=$2 token=$3 users=$4 turns=$5 r before after tick
  shift 5
  tick=$(getconf CLK_TCK)
  chat_cpu_ticks() { local pid sum=0; for pid in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$sum"; }
  SWITCHBOARD_BENCH_TOKEN=$token "$BENCH_BIN" chat --base-url "$base" --users "$users" --turns 2 >/dev/null \
    || die "chat $mode: the warm-up failed"
  for r in $(seq "$CHAT_ROUNDS"); do
    before=$(chat_cpu_ticks "$@")
    SWITCHBOARD_BENCH_TOKEN=$token "$BENCH_BIN" chat --base-url "$base" --users "$users" --turns "$turns" \
      >"$TMP/chat.out" || die "chat $mode: round $r failed"
    after=$(chat_cpu_ticks "$@")
    jq -c --arg mode "$mode" --argjson ticks "$((after - before))" --argjson hz "$tick" \
      '. + {mode: $mode, server_cpu_ms_per_turn: ((if .turns > 0 then $ticks / $hz * 1000 / .turns else null end) | if . then (. * 1000 | round / 1000) else . end)}' \
      "$TMP/chat.out" >>"$TMP/chat.$mode.jsonl"
    jq -r --arg r "$r" --arg mode "$mode" \
      '"bench: chat \($mode) round \($r): \(.turns) turns in \(.seconds) s, \(.turns_per_s) turns/s, first token p50 \(.first_token_ms.p50) ms p99 \(.first_token_ms.p99) ms, turn p50 \(.turn_ms.p50) ms p99 \(.turn_ms.p99) ms; CPU per turn: server \(.server_cpu_ms_per_turn) ms, load generator \(.client_cpu_ms_per_turn) ms"' \
      <(tail -1 "$TMP/chat.$mode.jsonl")
  done
}

bench_chat() {
  local port base pid token worker
  # embedded: one process, SQLite, in-process workers
  port=$(free_port)
  base=http://127.0.0.1:$port
  start chat-embedded SWITCHBOARD_ENGINE__TOKEN_DELAY_MS=0 SWITCHBOARD_LOG_LEVEL=warn \
    -- serve --listen "127.0.0.1:$port" --data-dir "$TMP/chat-embedded"
  pid=$STARTED
  wait_ready "$base" "$pid" chat-embedded
  token=$(register "$base") || die "chat embedded: could not register the bench user"
  echo "bench: chat embedded: serve (SQLite, in-process workers) on $base; $CHAT_USERS users x $CHAT_TURNS turns, $CHAT_ROUNDS rounds"
  chat_rounds embedded "$base" "$token" "$CHAT_USERS" "$CHAT_TURNS" "$pid"
  echo "bench: chat embedded, one user: 1 user x $CHAT_ONE_TURNS turns, $CHAT_ROUNDS rounds"
  chat_rounds one-user "$base" "$token" 1 "$CHAT_ONE_TURNS" "$pid"
  stop_pid "$pid"

  # redis: API process and worker process, Redis streams and reply bus, PostgreSQL
  CHAT_DB=sb_bench_chat_$$_$(date +%s)
  CHAT_PREFIX=sb-bench-chat-$$-$(date +%s)
  psql -q -v ON_ERROR_STOP=1 "$PG" -c "CREATE DATABASE $CHAT_DB" >/dev/null || die "cannot create the database $CHAT_DB on $PG"
  local vars=(SWITCHBOARD_ENGINE__TOKEN_DELAY_MS=0 SWITCHBOARD_LOG_LEVEL=warn "DATABASE_URL=${PG%/*}/$CHAT_DB"
    "REDIS_URL=$REDIS" SWITCHBOARD_QUEUE__BACKEND=redis "SWITCHBOARD_QUEUE__PREFIX=$CHAT_PREFIX")
  port=$(free_port)
  base=http://127.0.0.1:$port
  start chat-redis-api "${vars[@]}" -- serve --no-workers --listen "127.0.0.1:$port" --data-dir "$TMP/chat-redis"
  pid=$STARTED
  wait_ready "$base" "$pid" chat-redis-api
  # Started after the API process has migrated the database. "worker started" is logged at info.
  start chat-redis-worker "${vars[@]}" SWITCHBOARD_LOG_LEVEL=warn,switchboard_workers::worker=info -- worker --data-dir "$TMP/chat-redis"
  worker=$STARTED
  for _ in $(seq 300); do
    grep -q 'worker started' "$TMP/chat-redis-worker.log" && break
    kill -0 "$worker" 2>/dev/null || { tail -20 "$TMP/chat-redis-worker.log" >&2; die "the chat worker exited during start-up"; }
    sleep 0.2
  done
  grep -q 'worker started' "$TMP/chat-redis-worker.log" || die "the chat worker did not start within 60 s"
  token=$(register "$base") || die "chat redis: could not register the bench user"
  echo "bench: chat redis: serve --no-workers + 1 worker process (PostgreSQL, Redis streams and reply bus) on $base"
  chat_rounds redis "$base" "$token" "$CHAT_USERS" "$CHAT_TURNS" "$pid" "$worker"
  stop_pid "$worker"
  stop_pid "$pid"

  local table mode row meta commands label verdicts=() verdict
  table="| mode | turns/s (median of $CHAT_ROUNDS) | first token p50 | first token p99 | turn p50 | turn p99 | server CPU per turn | load generator CPU per turn | turns |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for mode in embedded one-user redis; do
    row=$(jq -s 'sort_by(.turns_per_s) | .[(length - 1) / 2 | floor]' "$TMP/chat.$mode.jsonl")
    case $mode in
      embedded) label="embedded: \`serve\`, SQLite, in-process workers, $CHAT_USERS users x $CHAT_TURNS turns" ;;
      one-user) label="embedded, 1 user x $CHAT_ONE_TURNS turns" ;;
      redis) label="Redis: \`serve --no-workers\` + 1 \`worker\`, PostgreSQL, $CHAT_USERS users x $CHAT_TURNS turns" ;;
    esac
    table+=$'\n'$(jq -r --arg name "$label" \
      '"| \($name) | \(.turns_per_s) | \(.first_token_ms.p50) ms | \(.first_token_ms.p99) ms | \(.turn_ms.p50) ms | \(.turn_ms.p99) ms | \(.server_cpu_ms_per_turn) ms | \(.client_cpu_ms_per_turn) ms | \(.turns) |"' <<<"$row")
    case $mode in
      embedded) verdict=$(jq -r --argjson min "$CHAT_EMBEDDED_MIN" 'if .turns_per_s >= $min then "PASS" else "FAIL" end' <<<"$row")
        verdicts+=("embedded, $CHAT_USERS users: >= $CHAT_EMBEDDED_MIN turns/s (4x the 350 before issue 11): **$verdict** ($(jq -r .turns_per_s <<<"$row"))") ;;
      one-user) verdict=$(jq -r 'if .first_token_ms.p50 < 1 then "PASS" else "FAIL" end' <<<"$row")
        verdicts+=("embedded, 1 user: first-token p50 < 1 ms: **$verdict** ($(jq -r .first_token_ms.p50 <<<"$row") ms)") ;;
      redis) verdict=$(jq -r --argjson min "$CHAT_REDIS_MIN" 'if .turns_per_s >= $min then "PASS" else "FAIL" end' <<<"$row")
        verdicts+=("scaled out, $CHAT_USERS users: >= $CHAT_REDIS_MIN turns/s (3x the 272 before issue 11): **$verdict** ($(jq -r .turns_per_s <<<"$row"))") ;;
    esac
    echo "bench: chat target: ${verdicts[-1]//\*\*/}"
    [[ $verdict == PASS ]] || CHAT_VERDICT=FAIL
  done
  local targets
  targets=$(printf -- '- %s\n' "${verdicts[@]}")
  meta="$(machine). Dev engine with \`SWITCHBOARD_ENGINE__TOKEN_DELAY_MS=0\`; over HTTP/1.1 keep-alive, $CHAT_ROUNDS rounds per row after a warm-up (2 turns per user); each row is the round with the median turns/s. CPU per turn: the server processes' user+system time (/proc/PID/stat) over the round divided by its turns, and the load generator's own (/proc/self/stat)."
  commands="\`\`\`sh
# embedded
SWITCHBOARD_ENGINE__TOKEN_DELAY_MS=0 switchboard serve --listen 127.0.0.1:PORT --data-dir DIR
# Redis (DB: a database created for the run; PREFIX: a Redis key prefix of its own)
export SWITCHBOARD_ENGINE__TOKEN_DELAY_MS=0 DATABASE_URL=${PG%/*}/DB REDIS_URL=$REDIS \\
  SWITCHBOARD_QUEUE__BACKEND=redis SWITCHBOARD_QUEUE__PREFIX=PREFIX
switchboard serve --no-workers --listen 127.0.0.1:PORT --data-dir DIR & switchboard worker --data-dir DIR &
# each figure (TOKEN: the access token of a registered user)
switchboard-bench chat --base-url http://127.0.0.1:PORT --token TOKEN --users $CHAT_USERS --turns $CHAT_TURNS
switchboard-bench chat --base-url http://127.0.0.1:PORT --token TOKEN --users 1 --turns $CHAT_ONE_TURNS
\`\`\`"
  printf '\n%s\n\n%s\n\nTargets:\n%s\n\n' "$meta" "$table" "$targets"
  rewrite_block bench-chat "$meta"$'\n\n'"$table"$'\n\n'"Targets:"$'\n'"$targets"$'\n\n'"$commands"
}

# ---------------------------------------------------------------- queue
bench_queue() {
  local r backend broker out
  # The apalis peer: its own cargo project and target directory (the first build takes minutes).
  if [[ -z $QUEUE_APALIS_BIN ]]; then
    echo "bench: queue: building the apalis peer (scripts/bench/apalis-peer)"
    CARGO_TARGET_DIR=$TARGET_DIR/apalis-peer cargo build --release --quiet \
      --manifest-path "$ROOT/scripts/bench/apalis-peer/Cargo.toml" || die "cannot build scripts/bench/apalis-peer"
    QUEUE_APALIS_BIN=$TARGET_DIR/apalis-peer/release/apalis-peer
  fi
  echo "bench: queue: $QUEUE_JOBS jobs per run, $QUEUE_ROUNDS rounds; switchboard concurrency $QUEUE_CONCURRENCY, Dramatiq 2 processes x 8 threads"
  for r in $(seq "$QUEUE_ROUNDS"); do
    # BACKEND[:ROWS][@PRODUCERS]
    # BACKEND[:ROWS][@PRODUCERS][+many: Jobs::enqueue_many, 500 a call][+grown: 100,000 finished rows first]
    for variant in sqlite sqlite+many postgres postgres@16 postgres+many postgres+many+grown \
      redis:postgres redis:postgres@16 redis:postgres+many redis:postgres+many+grown redis:sqlite \
      amqp:postgres amqp:postgres@16 amqp:postgres+many amqp:sqlite; do
      local backend=${variant%%[:@+]*} producers=1 args=()
      [[ $variant == *+many* ]] && args+=(--enqueue-batch 500)
      [[ $variant == *+grown* ]] && args+=(--seed-rows "$QUEUE_GROWN_ROWS")
      variant=${variant%%+*}
      [[ $variant == *@* ]] && producers=${variant#*@}
      case $variant in
        redis:*) args+=(--url "$REDIS") ;;
        amqp:*) args+=(--url "$AMQP") ;;
      esac
      [[ $variant == *:* ]] && { local rows=${variant#*:}; args+=(--rows "${rows%@*}"); }
      args+=(--producers "$producers")
      out=$(SWITCHBOARD_BENCH_POSTGRES_URL=$PG "$BENCH_BIN" queue --backend "$backend" --jobs "$QUEUE_JOBS" \
        --concurrency "$QUEUE_CONCURRENCY" "${args[@]}") || die "switchboard-bench queue --backend $backend ${args[*]} failed"
      echo "$out" >>"$TMP/queue.jsonl"
      jq -r --arg r "$r" '"bench: queue round \($r): \(.system) \(.broker) (rows: \(.rows), producers: \(.producers), enqueue_many: \(.enqueue_batch), seeded: \(.seeded_rows)): \(.jobs_per_s) jobs/s, enqueue \(.enqueue_s) s, total \(.total_s) s"' <<<"$out"
    done
    if [[ -x $QUEUE_APALIS_BIN ]]; then
      for broker in redis postgres; do
        local url=$REDIS; [[ $broker == postgres ]] && url=$PG
        out=$("$QUEUE_APALIS_BIN" --backend "$broker" --jobs "$QUEUE_JOBS" --concurrency "$QUEUE_CONCURRENCY" --url "$url") \
          || die "apalis-peer --backend $broker failed"
        echo "$out" >>"$TMP/queue.jsonl"
        jq -r --arg r "$r" '"bench: queue round \($r): \(.system) \(.broker): \(.jobs_per_s) jobs/s, enqueue \(.enqueue_s) s, total \(.total_s) s"' <<<"$out"
      done
    fi
    for broker in redis rabbitmq; do
      out=$("$PYTHON" "$ROOT/scripts/bench/dramatiq_bench.py" --broker "$broker" --jobs "$QUEUE_JOBS" \
        --redis-url "$REDIS" --amqp-url "$AMQP" 2>"$TMP/dramatiq.err") \
        || { cat "$TMP/dramatiq.err" >&2; die "dramatiq_bench.py --broker $broker failed"; }
      echo "$out" >>"$TMP/queue.jsonl"
      jq -r --arg r "$r" '"bench: queue round \($r): \(.system) \(.broker): \(.jobs_per_s) jobs/s, enqueue \(.enqueue_s) s, total \(.total_s) s"' <<<"$out"
    done
  done

  local table versions meta commands dramatiq_version
  dramatiq_version=$(jq -rs 'map(select(.system == "dramatiq"))[0].dramatiq_version' "$TMP/queue.jsonl")
  # Every row is the median round of its group.
  jq -s 'group_by([.system, .broker, .rows, .producers, .enqueue_batch, .seeded_rows])
    | map(sort_by(.jobs_per_s) | .[(length - 1) / 2 | floor])' "$TMP/queue.jsonl" >"$TMP/queue-medians.json"
  table="| system | broker | job rows | enqueue | rows already in the table | workers | jobs | jobs/s (median of $QUEUE_ROUNDS) | enqueue s | total s |
| --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"
  table+=$'\n'$(jq -r '
    def order: {"switchboard": 0, "apalis": 1, "dramatiq": 2}[.system] * 1000
      + {"sqlite": 0, "postgres": 1, "redis": 2, "rabbitmq": 3}[.broker] * 100
      + {"postgres": 0, "sqlite": 50}[.rows // "postgres"] + (.producers // 1) / 100
      + (if (.enqueue_batch // 0) > 0 then 20 else 0 end) + (if (.seeded_rows // 0) > 0 then 30 else 0 end);
    def rows: {"sqlite": "SQLite", "postgres": "PostgreSQL"}[.rows // ""] // (if .system == "apalis" then "apalis own" else "none" end);
    def enqueue: if (.enqueue_batch // 0) > 0 then "enqueue_many, \(.enqueue_batch) a call"
      elif (.producers // 1) > 1 then "one by one, \(.producers) tasks at once" else "one by one" end;
    def workers: if .system == "dramatiq" then "\(.processes) processes x \(.threads) threads"
      else "1 process, \(.concurrency) at once" end;
    sort_by(order)[]
    | "| \(.system) | \(.broker) | \(rows) | \(enqueue) | \(.seeded_rows // 0) | \(workers) | \(.jobs) | \(.jobs_per_s) | \(.enqueue_s) | \(.total_s) |"' \
    "$TMP/queue-medians.json")
  # The targets: Switchboard >= 3x Dramatiq on the same broker (job rows in PostgreSQL).
  local verdicts
  verdicts=$(jq -r '
    def rate(f): (map(select(f)) | first | .jobs_per_s) // 0;
    . as $all | ["redis", "rabbitmq"][] as $b
    | ($all | rate(.system == "dramatiq" and .broker == $b)) as $d
    | ($all | rate(.system == "switchboard" and .broker == $b and .rows == "postgres" and (.enqueue_batch // 0) == 0 and (.producers // 1) == 1 and (.seeded_rows // 0) == 0)) as $one
    | ($all | rate(.system == "switchboard" and .broker == $b and .rows == "postgres" and (.enqueue_batch // 0) == 0 and (.producers // 1) > 1)) as $many_tasks
    | ($all | rate(.system == "switchboard" and .broker == $b and .rows == "postgres" and (.enqueue_batch // 0) > 0 and (.seeded_rows // 0) == 0)) as $batch
    | def verdict(x): if $d > 0 and x >= 3 * $d then "PASS" else "FAIL" end;
      "bench: queue target \($b) (rows in PostgreSQL) >= 3x Dramatiq (\($d) jobs/s): enqueue_many \($batch) jobs/s \(verdict($batch)); one by one \($one) \(verdict($one)); 16 tasks \($many_tasks) \(verdict($many_tasks))"' \
    "$TMP/queue-medians.json")
  echo "$verdicts"
  versions="Redis $(redis-cli -u "$REDIS" info server 2>/dev/null | sed -n 's/^redis_version:\([^\r]*\).*/\1/p'), RabbitMQ $(rabbitmqctl version 2>/dev/null || echo '?'), PostgreSQL $(psql -tA "$PG" -c 'SHOW server_version' 2>/dev/null || echo '?'), Dramatiq $dramatiq_version"
  meta="$(machine); $versions. $QUEUE_JOBS no-op jobs per run after 200 warm-up jobs, enqueued one by one from one task (from 16 tasks at once where producers says 16); $QUEUE_ROUNDS interleaved rounds, each row the round with the median jobs/s."
  commands="\`\`\`sh
# Switchboard: Jobs::enqueue -> transport -> Worker, in one process (rows: a fresh SQLite file or PostgreSQL database)
switchboard-bench queue --backend sqlite   --jobs $QUEUE_JOBS --concurrency $QUEUE_CONCURRENCY
switchboard-bench queue --backend postgres --jobs $QUEUE_JOBS --concurrency $QUEUE_CONCURRENCY  # and --producers 16
switchboard-bench queue --backend redis    --jobs $QUEUE_JOBS --concurrency $QUEUE_CONCURRENCY --url $REDIS --rows postgres  # and --producers 16; or --rows sqlite
switchboard-bench queue --backend amqp     --jobs $QUEUE_JOBS --concurrency $QUEUE_CONCURRENCY --url '$AMQP' --rows postgres  # and --producers 16; or --rows sqlite
# enqueue_many rows: --enqueue-batch 500; grown table: --seed-rows $QUEUE_GROWN_ROWS
# apalis $QUEUE_APALIS_VERSION on the same Redis and PostgreSQL (scripts/bench/apalis-peer, its own cargo project)
apalis-peer --backend redis    --jobs $QUEUE_JOBS --concurrency $QUEUE_CONCURRENCY --url $REDIS
apalis-peer --backend postgres --jobs $QUEUE_JOBS --concurrency $QUEUE_CONCURRENCY --url $PG
# Dramatiq on the same brokers (2 worker processes x 8 threads)
.venv-tools/bin/python scripts/bench/dramatiq_bench.py --broker redis    --jobs $QUEUE_JOBS
.venv-tools/bin/python scripts/bench/dramatiq_bench.py --broker rabbitmq --jobs $QUEUE_JOBS
\`\`\`"
  printf '\n%s\n\n%s\n\n' "$meta" "$table"
  rewrite_block bench-queue "$meta"$'\n\n'"$table"$'\n\n'"${verdicts//bench: /}"$'\n\n'"$commands"
}

# ---------------------------------------------------------------- memory
# memory_run NAME BINARY [VAR=VALUE…]: one server, one burst; "idle_mib" and the report's fields
# appended to $TMP/memory.jsonl with {name}
memory_run() {
  local name=$1 bin=$2 port base pid idle out
  shift 2
  port=$(free_port)
  base=http://127.0.0.1:$port
  BIN=$bin start "memory-$name" SWITCHBOARD_LOG_LEVEL=warn "$@" -- serve --listen "127.0.0.1:$port" --data-dir "$TMP/memory-$name"
  pid=$STARTED
  wait_ready "$base" "$pid" "memory-$name"
  idle=$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  out=$("$BENCH_BIN" logins --base-url "$base" --pid "$pid" --attempts "$MEMORY_ATTEMPTS" --accounts "$MEMORY_ACCOUNTS") \
    || die "memory $name: switchboard-bench logins failed"
  stop_pid "$pid"
  jq -c --arg name "$name" --argjson idle "$idle" '. + {name: $name, idle_mib: $idle}' <<<"$out" >>"$TMP/memory.jsonl"
  jq -r --arg name "$name" '"bench: memory \($name): idle \(.idle_mib) MiB, baseline \(.baseline_mib) MiB, peak \([.peak_sampled_mib, .peak_hwm_mib // 0] | max) MiB, at the last answer \(.at_end_mib) MiB, +1 s \(.after_1s_mib), +3 s \(.after_3s_mib), +5 s \(.after_5s_mib) MiB; \(.refused) of \(.attempts) refused in \(.burst_s) s"' \
    <(tail -1 "$TMP/memory.jsonl")
}

bench_memory() {
  local slots block_mib=19 table row label verdict meta commands bounds
  slots=$(nproc)
  (( slots < 2 )) && slots=2
  echo "bench: memory: $MEMORY_ATTEMPTS failed sign-ins at once ($MEMORY_ACCOUNTS for registered accounts), $slots hashing slots"
  memory_run current "$BIN"
  if [[ -n $MEMORY_BEFORE_BIN ]]; then
    [[ -x $MEMORY_BEFORE_BIN ]] || die "BENCH_MEMORY_BEFORE_BIN=$MEMORY_BEFORE_BIN is not an executable"
    memory_run before "$(realpath "$MEMORY_BEFORE_BIN")"
    memory_run before-mmap-threshold "$(realpath "$MEMORY_BEFORE_BIN")" MALLOC_MMAP_THRESHOLD_=131072
  fi

  # verdict for the current binary: idle, peak and settled bounds
  row=$(jq -s 'map(select(.name == "current"))[0]' "$TMP/memory.jsonl")
  verdict=$(jq -r --argjson slots "$slots" --argjson block "$block_mib" --argjson peak_margin "$MEMORY_PEAK_MARGIN" \
    --argjson settled_margin "$MEMORY_SETTLED_MARGIN" '
    ([.peak_sampled_mib, .peak_hwm_mib // 0] | max) as $peak
    | if .idle_mib < 40 and $peak <= .baseline_mib + $slots * $block + $peak_margin
        and .after_5s_mib <= .baseline_mib + $settled_margin and (.unexpected | length) == 0
      then "PASS" else "FAIL" end' <<<"$row")
  MEMORY_VERDICT=$verdict
  table="| server | idle | baseline | peak | at the last answer | +1 s | +3 s | +5 s | burst |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  table+=$'\n'$(jq -rs '
    def server: {"current": "this commit", "before": "before the fix (BENCH_MEMORY_BEFORE_BIN)",
      "before-mmap-threshold": "before the fix, with MALLOC_MMAP_THRESHOLD_=131072"}[.name];
    .[] | "| \(server) | \(.idle_mib) MiB | \(.baseline_mib) MiB | \([.peak_sampled_mib, .peak_hwm_mib // 0] | max) MiB | \(.at_end_mib) MiB | \(.after_1s_mib) MiB | \(.after_3s_mib) MiB | \(.after_5s_mib) MiB | \(.burst_s) s |"' \
    "$TMP/memory.jsonl")
  bounds=$(jq -r --argjson slots "$slots" --argjson block "$block_mib" --argjson peak_margin "$MEMORY_PEAK_MARGIN" \
    --argjson settled_margin "$MEMORY_SETTLED_MARGIN" --arg verdict "$verdict" '
    "Bounds for this commit: idle < 40 MiB; peak <= baseline + \($slots) hashing slots x \($block) MiB + \($peak_margin) MiB = \((.baseline_mib + $slots * $block + $peak_margin) * 10 | round / 10) MiB; 5 s after the burst <= baseline + \($settled_margin) MiB = \((.baseline_mib + $settled_margin) * 10 | round / 10) MiB: **\($verdict)**."' <<<"$row")
  meta="$(machine). \`switchboard serve\` with the default configuration and a fresh SQLite data dir; $MEMORY_ACCOUNTS accounts registered, then $MEMORY_ATTEMPTS sign-ins with wrong passwords at once from 127.0.0.2 on (one source address and one email each, $MEMORY_ACCOUNTS of them the accounts', the rest unknown); every one answered 401. Idle: VmRSS once ready; baseline: VmRSS before the burst; peak: the larger of VmHWM (reset before the burst) and VmRSS sampled every 20 ms; the rest VmRSS after the last answer."
  commands="\`\`\`sh
switchboard serve --listen 127.0.0.1:PORT --data-dir DIR &
switchboard-bench logins --base-url http://127.0.0.1:PORT --pid \$! --attempts $MEMORY_ATTEMPTS --accounts $MEMORY_ACCOUNTS
\`\`\`"
  printf '\n%s\n\n%s\n\n%s\n\n' "$meta" "$table" "$bounds"
  rewrite_block bench-memory "$meta"$'\n\n'"$table"$'\n\n'"$bounds"$'\n\n'"$commands"
}

# ---------------------------------------------------------------- growth
# growth_seed DB OWNER TOTAL: adds TOTAL - 1 conversations of OWNER to the stopped server's SQLite
# file, older than the one the API created, in one transaction (python3's sqlite3: no CLI needed)
growth_seed() {
  python3 - "$1" "$2" "$3" <<'EOF'
import sqlite3, sys, time
db, owner, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = sqlite3.connect(db)
start = int(time.time() * 1e6) - total * 1000 - 10_000_000   # a millisecond apart, all older
con.execute("BEGIN")
con.execute("""
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
  INSERT INTO conversations (id, owner_id, title, created_at, updated_at)
  SELECT printf('%08x-0000-4000-8000-%012x', i, i), ?, 'seeded conversation ' || i, ? + i * 1000, ? + i * 1000 FROM n
""", (total - 1, owner, start, start))
con.commit()
print(con.execute("SELECT count(*) FROM conversations WHERE owner_id = ?", (owner,)).fetchone()[0])
EOF
}

# growth_deep_token BASE TOKEN TOTAL: the page token of the page that starts halfway down the
# caller's list, reached by walking it with pages of up to 1000 (one keep-alive connection)
growth_deep_token() {
  python3 - "$1" "$2" "$3" <<'EOF'
import http.client, json, sys, urllib.parse
base, token, total = urllib.parse.urlparse(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection(base.hostname, base.port)
half, seen, page_token = total // 2, 0, ""
size = max(1, min(1000, half))
while seen < half:
    query = urllib.parse.urlencode({"pageSize": size, "pageToken": page_token})
    conn.request("GET", f"/v1/conversations?{query}", headers={"authorization": f"Bearer {token}"})
    answer = conn.getresponse()
    body = json.loads(answer.read())
    if answer.status != 200:
        sys.exit(f"ListConversations answered {answer.status}: {body}")
    seen += len(body.get("conversations", []))
    page_token = body.get("nextPageToken", "")
    if not page_token:
        sys.exit(f"the list ended after {seen} conversations, before {half}")
print(page_token)
EOF
}

bench_growth() {
  local sizes=($GROWTH_SIZES) size port base token owner id deep table="" row verdict=PASS meta commands
  local -A P50
  echo "bench: growth: GetConversation and ListConversations with ${sizes[*]} stored conversations of one user; h2load -t 1 -c $GROWTH_C -m 1 -n $GROWTH_N per figure"
  # growth_measure NAME URL: h2load over h2c with the caller's token -> "req/s p50_ms p99_ms"
  growth_measure() {
    (cd "$TMP" && h2load -t 1 -c "$GROWTH_C" -m 1 -n "$GROWTH_N" --log-file="$TMP/growth.log" -H "authorization: Bearer $token" "$2") \
      >"$TMP/h2load.out" 2>&1 || { cat "$TMP/h2load.out" >&2; die "growth: h2load failed for $1"; }
    grep -q "status codes: $GROWTH_N 2xx" "$TMP/h2load.out" || { cat "$TMP/h2load.out" >&2; die "growth: $1: not every answer was 2xx"; }
    awk -F'\t' '{print $3}' "$TMP/growth.log" | sort -n | awk -v rps="$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$TMP/h2load.out")" '
      {a[NR]=$1} END {i = int(NR*0.50); if (i < 1) i = 1; j = int(NR*0.99); if (j < 1) j = 1
        printf "%.0f %.3f %.3f\n", rps, a[i]/1000, a[j]/1000}'
  }
  for size in "${sizes[@]}"; do
    local dir=$TMP/growth-$size seed_s
    port=$(free_port)
    base=http://127.0.0.1:$port
    start "growth-$size" RUST_LOG=warn -- serve --listen "127.0.0.1:$port" --data-dir "$dir"
    wait_ready "$base" "$STARTED" "growth-$size"
    token=$(register "$base") || die "growth: could not register"
    owner=$(curl -sS --fail -H "authorization: Bearer $token" "$base/v1/me" | jq -er '.user.id // .id') || die "growth: no user id from /v1/me"
    id=$(curl -sS --fail-with-body -H "authorization: Bearer $token" -H 'content-type: application/json' -d '{"title":"measured"}' "$base/v1/conversations" | jq -er .id) \
      || die "growth: could not create a conversation"
    stop_pid "$STARTED"
    local t0=$EPOCHREALTIME
    [[ $(growth_seed "$dir/switchboard.db" "$owner" "$size") == "$size" ]] || die "growth: seeding $size conversations failed"
    seed_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')
    start "growth-$size" RUST_LOG=warn -- serve --listen "127.0.0.1:$port" --data-dir "$dir"
    wait_ready "$base" "$STARTED" "growth-$size"
    deep=$(growth_deep_token "$base" "$token" "$size") || die "growth: could not walk to the middle of the list"
    local get first half
    read -r -a get < <(growth_measure get "$base/v1/conversations/$id")
    read -r -a first < <(growth_measure list-first "$base/v1/conversations?pageSize=50")
    read -r -a half < <(growth_measure list-half "$base/v1/conversations?pageSize=50&pageToken=$deep")
    stop_pid "$STARTED"
    P50[$size]="${get[1]} ${first[1]} ${half[1]}"
    printf 'bench: growth %8s conversations (seeded in %s s): GetConversation p50 %s ms p99 %s ms; first page p50 %s ms p99 %s ms; page halfway p50 %s ms p99 %s ms\n' \
      "$size" "$seed_s" "${get[1]}" "${get[2]}" "${first[1]}" "${first[2]}" "${half[1]}" "${half[2]}"
    table+=$'\n'"| $size | ${get[1]} / ${get[2]} ms | ${get[0]} | ${first[1]} / ${first[2]} ms | ${first[0]} | ${half[1]} / ${half[2]} ms | ${half[0]} |"
    rm -rf "$dir"
  done
  # O(page): every p50 at the largest size within 2x (+ 0.5 ms) of the smallest size's
  local small=(${P50[${sizes[0]}]}) large=(${P50[${sizes[-1]}]}) i
  for i in 0 1 2; do
    awk -v s="${small[$i]}" -v l="${large[$i]}" 'BEGIN {exit !(l <= 2 * s + 0.5)}' || verdict=FAIL
  done
  GROWTH_VERDICT=$verdict
  table="| stored conversations (all of the caller's) | GetConversation p50 / p99 | req/s | ListConversations first page (50) p50 / p99 | req/s | page halfway down (50) p50 / p99 | req/s |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: |$table"
  local target="Target: at ${sizes[-1]} conversations every p50 within 2x + 0.5 ms of the figure at ${sizes[0]} (reads and pages cost O(log n) and O(page), not O(n)): **$verdict**."
  meta="$(machine). \`switchboard serve\` (SQLite) per size; one registered user, one conversation made over REST, then the rest added to its SQLite file (older, the same owner) while the server was stopped; \`h2load -t 1 -c $GROWTH_C -m 1 -n $GROWTH_N\` over h2c with the user's bearer token per figure, p50/p99 from its log."
  commands="\`\`\`sh
h2load -t 1 -c $GROWTH_C -m 1 -n $GROWTH_N -H 'authorization: Bearer TOKEN' http://127.0.0.1:PORT/v1/conversations/ID
h2load -t 1 -c $GROWTH_C -m 1 -n $GROWTH_N -H 'authorization: Bearer TOKEN' 'http://127.0.0.1:PORT/v1/conversations?pageSize=50'
h2load -t 1 -c $GROWTH_C -m 1 -n $GROWTH_N -H 'authorization: Bearer TOKEN' 'http://127.0.0.1:PORT/v1/conversations?pageSize=50&pageToken=HALFWAY'
\`\`\`"
  printf '\n%s\n\n%s\n\n%s\n\n' "$meta" "$table" "$target"
  rewrite_block bench-growth "$meta"$'\n\n'"$table"$'\n\n'"$target"$'\n\n'"$commands"
}

# ---------------------------------------------------------------- connections
# connections_run TRANSPORT CLIENTS: one server, one reply followed by CLIENTS clients; the
# report appended to $TMP/connections.jsonl. The first server of the section also gives
# the start-up time and idle VmRSS ($TMP/connections-startup.json).
connections_run() {
  local transport=$1 clients=$2 port eport base pid token t0 t1 name=connections-$1-$2 out
  port=$(free_port)
  eport=$(free_port)
  base=http://127.0.0.1:$port
  t0=$(date +%s%N)
  start "$name" SWITCHBOARD_LOG_LEVEL=warn SWITCHBOARD_ENGINE__KIND=openai \
    "SWITCHBOARD_ENGINE__OPENAI__BASE_URL=http://127.0.0.1:$eport/v1" SWITCHBOARD_ENGINE__OPENAI__MODEL=bench \
    SWITCHBOARD_ENGINE__RESILIENCE__CALL_TIMEOUT_MS=600000 SWITCHBOARD_ENGINE__RESILIENCE__REPLY_DEADLINE_MS=600000 \
    -- serve --listen "127.0.0.1:$port" --data-dir "$TMP/$name"
  pid=$STARTED
  # /readyz as fast as curl can ask: the start-up time is process start to the first 200.
  for _ in $(seq 3000); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$base/readyz" || true) == 200 ]] && break
    kill -0 "$pid" 2>/dev/null || { tail -20 "$TMP/$name.log" >&2; die "$name exited during start-up"; }
  done
  t1=$(date +%s%N)
  wait_ready "$base" "$pid" "$name"
  if [[ ! -f $TMP/connections-startup.json ]]; then
    jq -n --argjson ms "$(( (t1 - t0) / 1000000 ))" \
      --argjson idle "$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")" \
      '{startup_ms: $ms, idle_mib: $idle}' >"$TMP/connections-startup.json"
  fi
  token=$(register "$base") || die "$name: could not register the bench user"
  out=$(SWITCHBOARD_BENCH_TOKEN=$token "$BENCH_BIN" connections --base-url "$base" --pid "$pid" \
    --engine-listen "127.0.0.1:$eport" --transport "$transport" --clients "$clients" \
    --final-tokens "$CONNECTIONS_TOKENS") || { echo "$out" >&2; die "$name: switchboard-bench connections failed"; }
  local nofile
  nofile=$(awk '/^Max open files/ {print $4}' "/proc/$pid/limits")
  stop_pid "$pid"
  jq -c --arg nofile "$nofile" '. + {server_open_files: $nofile}' <<<"$out" >>"$TMP/connections.jsonl"
  jq -r '"bench: connections \(.transport) x \(.clients): \(.complete) complete, \(.failed) failed; connected in \(.connect_s) s; \(.kib_per_connection) KiB per connection (VmRSS \(.rss_before_mib) -> \(.rss_open_mib) MiB); done after the last token p50 \(.done_after_last_token_ms.p50) ms, p99 \(.done_after_last_token_ms.p99) ms, last \(.last_done_after_last_token_ms) ms; open files: server \(.server_open_files), bench \(.open_files_limit)"' \
    <(tail -1 "$TMP/connections.jsonl")
}

bench_connections() {
  local transport clients table row verdict meta commands startup
  echo "bench: connections: transports $CONNECTIONS_TRANSPORTS, clients $CONNECTIONS_CLIENTS, one reply each run"
  for transport in $CONNECTIONS_TRANSPORTS; do
    for clients in $CONNECTIONS_CLIENTS; do
      connections_run "$transport" "$clients"
    done
  done
  table="| transport | clients | complete | connected in | KiB per connection | \`done\` after the last token p50 | p99 | last | verdict |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  table+=$'\n'$(jq -r '
    (if .failed == 0 and .kib_per_connection <= 40
        and (.clients != 2000 or .last_done_after_last_token_ms < 250) then "PASS" else "FAIL" end) as $v
    | "| \({"ws": "WebSocket (/v1/ws)", "sse": "SSE (StreamReply)"}[.transport]) | \(.clients) | \(.complete) | \(.connect_s) s | \(.kib_per_connection) | \(.done_after_last_token_ms.p50) ms | \(.done_after_last_token_ms.p99) ms | \(.last_done_after_last_token_ms) ms | \($v) |"' \
    "$TMP/connections.jsonl")
  startup=$(cat "$TMP/connections-startup.json")
  verdict=$(jq -rs --argjson s "$startup" '
    if all(.[]; .failed == 0 and .kib_per_connection <= 40 and (.clients != 2000 or .last_done_after_last_token_ms < 250))
       and $s.startup_ms < 100 and $s.idle_mib < 40 then "PASS" else "FAIL" end' "$TMP/connections.jsonl")
  CONNECTIONS_VERDICT=$verdict
  local targets
  targets=$(jq -r --arg v "$verdict" '"Start-up (process start to the first /readyz 200): \(.startup_ms) ms, target < 100 ms: \(if .startup_ms < 100 then "PASS" else "FAIL" end); idle VmRSS \(.idle_mib) MiB, target < 40 MiB: \(if .idle_mib < 40 then "PASS" else "FAIL" end). Rows: every client gets every event in order ending in `done`, <= 40 KiB of server memory per connection, and with 2,000 clients the last `done` < 250 ms after the engine'"'"'s last token. Overall: **\($v)**."' <<<"$startup")
  meta="$(machine). One fresh \`switchboard serve\` (SQLite, temporary data dir) per row; its engine is \`switchboard-bench connections\` (OpenAI-compatible, a token a second while the clients connect, then $CONNECTIONS_TOKENS tokens back to back); every client on its own connection from 127.0.0.1-127.0.0.4, signed in with one user's bearer token, following the same reply. Memory: server VmRSS with every client subscribed minus VmRSS before the first connected, over the clients."
  commands="\`\`\`sh
SWITCHBOARD_ENGINE__KIND=openai SWITCHBOARD_ENGINE__OPENAI__BASE_URL=http://127.0.0.1:EPORT/v1 SWITCHBOARD_ENGINE__OPENAI__MODEL=bench \\
  switchboard serve --listen 127.0.0.1:PORT --data-dir DIR &
switchboard-bench connections --base-url http://127.0.0.1:PORT --token TOKEN --pid \$! --engine-listen 127.0.0.1:EPORT \\
  --transport ws --clients 10000 --final-tokens $CONNECTIONS_TOKENS   # or --transport sse
\`\`\`"
  printf '\n%s\n\n%s\n\n%s\n\n' "$meta" "$table" "$targets"
  rewrite_block bench-connections "$meta"$'\n\n'"$table"$'\n\n'"$targets"$'\n\n'"$commands"
}

want http && bench_http
want chat && bench_chat
want queue && bench_queue
want memory && bench_memory
want growth && bench_growth
want connections && bench_connections
if [[ $HELLO_VERDICT == FAIL && ${BENCH_STRICT:-0} == 1 ]]; then
  die "signed-in GetConversation over native gRPC is at $HELLO_PCT % of the bare tonic server, below the 50 % target"
fi
if [[ $VERDICT == FAIL && ${BENCH_STRICT:-0} == 1 ]]; then
  die "REST (h2c) is at $HTTP_PCT % of native gRPC, below the 85 % target"
fi
if [[ $CHAT_VERDICT == FAIL && ${BENCH_STRICT:-0} == 1 ]]; then
  die "a chat target was not met"
fi
if [[ $MEMORY_VERDICT == FAIL && ${BENCH_STRICT:-0} == 1 ]]; then
  die "the memory bounds of a burst of failed sign-ins were not met"
fi
if [[ $GROWTH_VERDICT == FAIL && ${BENCH_STRICT:-0} == 1 ]]; then
  die "reads grew with the number of stored conversations"
fi
if [[ $CONNECTIONS_VERDICT == FAIL && ${BENCH_STRICT:-0} == 1 ]]; then
  die "the open-connections targets were not met"
fi
