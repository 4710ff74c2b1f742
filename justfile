# Everyday tasks. `just` is not in Debian bookworm: scripts/install-test-tools.sh
# puts it in .venv-tools/bin/just (PyPI rust-just), or `cargo install just --locked`.
# `just --list` shows the tasks.

target_dir := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target")

# list the tasks
default:
    @just --list

# start the server (SQLite under ./data): just run --listen 127.0.0.1:8080
run *args:
    cargo run -- serve {{args}}

# the workspace's tests (the README's test command)
test *args:
    cargo test --workspace {{args}}

# everything CI runs: services, fmt, clippy, tests, release build, e2e
ci:
    bash .ci/run

# end-to-end check with real clients against a fresh build: just e2e [debug|release]
e2e profile="debug": tools
    cargo build -p switchboard {{ if profile == "release" { "--release" } else { "" } }}
    scripts/e2e.sh {{target_dir}}/{{profile}}/switchboard

# the monitoring artefacts (rules, alerts, dashboard) against a real Prometheus scraping a fresh build
monitoring profile="debug": (tools "--prometheus")
    cargo build -p switchboard {{ if profile == "release" { "--release" } else { "" } }}
    scripts/monitoring-check.sh {{target_dir}}/{{profile}}/switchboard

# transports (h2load), chat turns, queue throughput vs Dramatiq, memory under failed sign-ins (BENCH_SECTIONS picks); rewrites docs/benchmarks.md
bench:
    cargo build --release -p switchboard -p switchboard-bench
    scripts/bench.sh {{target_dir}}/release/switchboard {{target_dir}}/release/switchboard-bench

# regenerate the committed OpenAPI document from proto/
openapi:
    cargo run -q -- openapi > openapi/switchboard.v1.json

# format the code
fmt:
    cargo fmt --all

# formatting check and clippy, as CI runs them
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# install the e2e/bench tools (.venv-tools, npm packages): just tools --bench --browser
tools *args:
    scripts/install-test-tools.sh {{args}}
