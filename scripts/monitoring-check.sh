#!/usr/bin/env bash
# Checks Switchboard's monitoring artefacts with the real tools, against a
# real Prometheus scraping a real Switchboard:
#   1 promtool check config / check rules / test rules (every alert fires on
#     the series that should raise it and stays silent otherwise), amtool
#     check-config, and the dashboard's JSON
#   2 a `switchboard serve` (SQLite, the dev engine, this machine's Redis for
#     the queue and the reply bus) under a short load:
#     a sign-up, conversations, replies streamed over SSE, refused and
#     unknown requests, native gRPC calls with and without credentials
#   3 a Prometheus (Debian's package) on loopback scraping it every second
#     and evaluating deploy/prometheus/rules.yml (its groups every 2 s here)
#   4 `switchboard probe` once and with --every --listen (its metrics through
#     promtool check metrics)
#   5 every panel expression of deploy/grafana/switchboard.json (with
#     $__rate_interval = 1m and $instance = .*) and every rule expression,
#     through Prometheus' HTTP API: each parses, each panel returns data,
#     and no alert fires on the healthy server
#
# usage: scripts/monitoring-check.sh BINARY
# Needs: promtool, amtool, prometheus (scripts/install-test-tools.sh
# --prometheus), curl, jq, .venv-tools (PyYAML), Redis at 127.0.0.1:6379. Prints "MONITORING FAIL: …"
# and exits non-zero on any mismatch.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:?usage: scripts/monitoring-check.sh BINARY}
PY=$ROOT/.venv-tools/bin/python
RULES=$ROOT/deploy/prometheus/rules.yml
DASHBOARD=$ROOT/deploy/grafana/switchboard.json
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { printf 'MONITORING FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf '  ok   %s\n' "$*"; }
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

for tool in promtool amtool prometheus curl jq; do
  command -v "$tool" >/dev/null || fail "$tool is missing: run scripts/install-test-tools.sh --prometheus"
done
[[ -x $PY ]] || fail "$PY is missing: run scripts/install-test-tools.sh"
[[ -x $BIN ]] || fail "no switchboard binary at $BIN"

printf '== the artefacts, by their own tools ==\n'
promtool check config "$ROOT/deploy/prometheus/prometheus.yml" >"$TMP/out" 2>&1 || fail "promtool check config: $(cat "$TMP/out")"
ok "promtool check config deploy/prometheus/prometheus.yml"
promtool check rules "$RULES" >"$TMP/out" 2>&1 || fail "promtool check rules: $(cat "$TMP/out")"
ok "promtool check rules: $(grep -o '[0-9]* rules found' "$TMP/out")"
(cd "$ROOT/deploy/prometheus" && promtool test rules rules_test.yml) >"$TMP/out" 2>&1 \
  || fail "promtool test rules: $(cat "$TMP/out")"
alerts=$("$PY" -c 'import sys, yaml; print(len([r for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"] if "alert" in r]))' "$RULES")
tested=$("$PY" -c '
import sys, yaml
tests = yaml.safe_load(open(sys.argv[1]))["tests"]
fired = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if c["exp_alerts"]}
silent = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if not c["exp_alerts"]}
print(len(fired & silent))' "$ROOT/deploy/prometheus/rules_test.yml")
[[ $tested == "$alerts" ]] || fail "rules_test.yml fires and silences $tested of the $alerts alerts"
ok "promtool test rules: each of the $alerts alerts fires and stays silent where it should"
amtool check-config "$ROOT/deploy/alertmanager/alertmanager.yml" >"$TMP/out" 2>&1 || fail "amtool check-config: $(cat "$TMP/out")"
ok "amtool check-config deploy/alertmanager/alertmanager.yml"
jq -e '.panels | length > 0' "$DASHBOARD" >/dev/null || fail "the dashboard has no panels"
ok "the dashboard is JSON with $(jq '[.panels[] | select(.type != "row")] | length' "$DASHBOARD") panels"

printf '\n== a Switchboard under load, scraped by a real Prometheus ==\n'
SB_PORT=$(free_port)
BASE=http://127.0.0.1:$SB_PORT
REDIS_URL=redis://127.0.0.1:6379 SWITCHBOARD_QUEUE__PREFIX=monitoring-$$-$RANDOM \
SWITCHBOARD_DATA_DIR=$TMP/data SWITCHBOARD_LOG_LEVEL=warn SWITCHBOARD_ENGINE__TOKEN_DELAY_MS=0 \
  "$BIN" serve --listen "127.0.0.1:$SB_PORT" >"$TMP/switchboard.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "$BASE/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "$BASE/readyz" >/dev/null || fail "switchboard did not get ready: $(tail -5 "$TMP/switchboard.log")"

PROM_PORT=$(free_port)
sed 's/^    interval: 30s$/    interval: 2s/' "$RULES" >"$TMP/rules.yml"
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $TMP/rules.yml
scrape_configs:
  - job_name: switchboard
    static_configs:
      - targets: ["127.0.0.1:$SB_PORT"]
EOF
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$TMP/prometheus.log" 2>&1 &
PIDS+=($!)
PROM=http://127.0.0.1:$PROM_PORT
for _ in $(seq 100); do curl -sf "$PROM/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -sf "$PROM/-/ready" >/dev/null || fail "prometheus did not get ready: $(tail -5 "$TMP/prometheus.log")"
ok "prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}') scrapes $BASE every second"

json() { curl -sS -H 'content-type: application/json' "$@"; }
token=$(json -X POST "$BASE/v1/auth:register" -d '{"email":"monitor@example.test","password":"a long enough password 1"}' | jq -r .accessToken)
[[ $token != null && -n $token ]] || fail "cannot register"
auth=(-H "authorization: Bearer $token")
printf '\0\0\0\0\0' >"$TMP/empty.grpc"   # one empty gRPC message
grpc() {
  curl -sS -o /dev/null --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
    --data-binary @"$TMP/empty.grpc" "$@" "$BASE/switchboard.v1.ChatService/ListConversations"
}
for round in 1 2 3 4 5 6 7 8; do
  cid=$(json "${auth[@]}" -X POST "$BASE/v1/conversations" -d "{\"title\":\"round $round\"}" | jq -r .id)
  reply=$(json "${auth[@]}" -X POST "$BASE/v1/conversations/$cid/messages" -d '{"content":"hello there"}' | jq -r .reply.id)
  curl -sS "${auth[@]}" -H 'accept: text/event-stream' "$BASE/v1/conversations/$cid/messages/$reply:stream" >/dev/null
  curl -sS -o /dev/null "$BASE/v1/conversations"                       # 401
  curl -sS -o /dev/null "${auth[@]}" "$BASE/v1/conversations/$(cat /proc/sys/kernel/random/uuid)"  # 404
  grpc "${auth[@]}"                                                    # gRPC OK, in the trailers
  grpc                                                                 # gRPC UNAUTHENTICATED
  sleep 1
done
ok "load: 8 rounds of a conversation, a reply streamed over SSE, a 401, a 404, and native gRPC calls (OK, UNAUTHENTICATED)"

key=$(json "${auth[@]}" -X POST "$BASE/v1/me/api-keys" -d '{"name":"probe"}' | jq -r .secret)
SWITCHBOARD_PROBE_API_KEY=$key "$BIN" probe "$BASE" >"$TMP/probe.txt" 2>&1 || fail "switchboard probe failed: $(cat "$TMP/probe.txt")"
PROBE_PORT=$(free_port)
SWITCHBOARD_PROBE_API_KEY=$key "$BIN" probe "$BASE" --every 1s --listen "127.0.0.1:$PROBE_PORT" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$PROBE_PORT/metrics" 2>/dev/null | grep -q '^switchboard_probe_up 1' && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:$PROBE_PORT/metrics" >"$TMP/probe-metrics.txt" || fail "the probe serves no metrics"
grep -q '^switchboard_probe_up 1' "$TMP/probe-metrics.txt" || fail "the probe does not pass: $(cat "$TMP/probe-metrics.txt")"
promtool check metrics <"$TMP/probe-metrics.txt" >"$TMP/out" 2>&1 || fail "promtool check metrics on the probe: $(cat "$TMP/out")"
ok "switchboard probe passes every step ($(grep -c '^ok' "$TMP/probe.txt") steps), and its own metrics pass promtool check metrics"

query() { curl -sS --get "$PROM/api/v1/query" --data-urlencode "query=$1"; }
for _ in $(seq 60); do
  [[ $(query 'count(switchboard:request_errors:ratio_rate5m)' | jq -r '.data.result[0].value[1] // 0') == 1 ]] && break
  sleep 1
done
[[ $(query 'up{job="switchboard"}' | jq -r '.data.result[0].value[1] // 0') == 1 ]] || fail "prometheus does not scrape switchboard"

panels=0
while IFS=$'\t' read -r title expr; do
  expr=${expr//'$__rate_interval'/1m}
  expr=${expr//'$instance'/.*}
  answer=$(query "$expr")
  [[ $(jq -r .status <<<"$answer") == success ]] || fail "panel \"$title\": $expr does not parse: $(jq -c . <<<"$answer")"
  [[ $(jq '.data.result | length' <<<"$answer") -gt 0 ]] || fail "panel \"$title\": $expr returns no data"
  panels=$((panels + 1))
done < <(jq -r '.panels[] | select(.type != "row") | .title as $t | .targets[] | [$t, .expr] | @tsv' "$DASHBOARD")
ok "every dashboard expression ($panels) parses and returns data"

rules=0
while IFS= read -r expr; do
  answer=$(query "$expr")
  [[ $(jq -r .status <<<"$answer") == success ]] || fail "rule expression does not parse: $expr: $(jq -c . <<<"$answer")"
  rules=$((rules + 1))
done < <("$PY" -c '
import json, sys, yaml
for group in yaml.safe_load(open(sys.argv[1]))["groups"]:
    for rule in group["rules"]:
        print(" ".join(rule["expr"].split()))' "$RULES")
ok "every rule expression ($rules) is evaluated by Prometheus"
firing=$(curl -sS "$PROM/api/v1/alerts" | jq -r '[.data.alerts[] | select(.state == "firing") | .labels.alertname] | join(", ")')
[[ -z $firing ]] || fail "alerts fire on a healthy server: $firing"
[[ $(curl -sS "$PROM/api/v1/rules" | jq '[.data.groups[].rules[] | select(.health != "ok")] | length') == 0 ]] \
  || fail "rules Prometheus could not evaluate: $(curl -sS "$PROM/api/v1/rules" | jq -c '[.data.groups[].rules[] | select(.health != "ok") | {name, lastError}]')"
ok "Prometheus evaluates every rule without error, and no alert fires on the healthy server"
printf '\nmonitoring: all checks passed\n'
