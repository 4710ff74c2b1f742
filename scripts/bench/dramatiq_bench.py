#!/usr/bin/env python3
"""Dramatiq queue throughput (jobs/s, enqueue -> done) on Redis or RabbitMQ.

The reference that the original plan (Python, Dramatiq workers) would have had,
for comparing with Switchboard's own queue backends on the same Redis and
RabbitMQ.

usage (after `scripts/install-test-tools.sh --bench`, which pins dramatiq):

    .venv-tools/bin/python scripts/bench/dramatiq_bench.py --broker redis
    .venv-tools/bin/python scripts/bench/dramatiq_bench.py --broker rabbitmq --jobs 2000

    --broker redis|rabbitmq    required
    --jobs N                   measured jobs (default 2000)
    --processes P --threads T  worker shape (default 2 x 8: one process per core
                               of the 2-core machine, Dramatiq's default 8 threads)
    --warmup W                 jobs run and waited for before the measured ones
                               (default 200; 0 for none)
    --redis-url, --amqp-url    default redis://127.0.0.1:6379/0 and
                               amqp://guest:guest@127.0.0.1:5672/%2F
    --queue-name NAME          default bench-<broker>-<pid>-<unix time>, new each run
    --timeout S                give up when a batch is not done S seconds after its
                               first send, or 1 s after its last (default 300)

What it does, for one broker per run:
  1. starts `python -m dramatiq dramatiq_actors` (this directory) with P
     processes x T threads as a subprocess, and waits until every process has
     booted (a middleware INCRs a ready counter after worker boot) and is
     consuming (Redis: one broker heartbeat per process; RabbitMQ: the queue's
     consumer count);
  2. runs W warm-up jobs to completion, so connections and prefetch are set up;
  3. enqueues N jobs with `actor.send()` one by one (enqueue_s), and waits until
     the N-th has run (total_s, from the first send to the moment the bench sees
     the last completion); jobs_per_s = N / total_s;
  4. prints ONE JSON line on stdout:
     {"system": "dramatiq", "broker", "jobs", "enqueue_s", "total_s",
      "jobs_per_s", "processes", "threads", "dramatiq_version"}
     (progress and warnings go to stderr);
  5. stops the workers with SIGTERM (Dramatiq's graceful shutdown; SIGKILL to
     their process group after 30 s) and deletes the run's Redis keys and, for
     RabbitMQ, its queues (<queue>, <queue>.DQ, <queue>.XQ).

The job does nothing but record completion (Redis INCR on a counter, for both
brokers, so counting is the same; see dramatiq_actors.py), so the number is
the queue's overhead per job: serialising, broker round trips, dispatch to a
worker thread, acknowledgement. The Redis at --redis-url is needed for the
rabbitmq run too (it holds the counters). Exit status: 0 on success, 1 when the
workers fail or the jobs do not complete in time, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType, ModuleType
from typing import Optional

import dramatiq
import pika
import pika.exceptions
import redis

HERE = Path(__file__).resolve().parent
ACTORS_MODULE = "dramatiq_actors"
# dramatiq_actors.KEY_ROOT: every Redis key of a run is under KEY_ROOT:<queue>:
KEY_ROOT = "switchboard-bench"
DEFAULT_JOBS = 2000
DEFAULT_PROCESSES = 2
DEFAULT_THREADS = 8
DEFAULT_WARMUP = 200
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
WORKER_SHUTDOWN_TIMEOUT_MS = 20_000
POLL_INTERVAL_S = 0.05
QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


class BenchError(Exception):
    """A failure that ends the run with exit status 1."""


def log(message: str) -> None:
    print(f"dramatiq-bench: {message}", file=sys.stderr, flush=True)


def queue_name_arg(value: str) -> str:
    if not QUEUE_NAME_RE.fullmatch(value) or value.endswith((".DQ", ".XQ")):
        raise argparse.ArgumentTypeError(
            "letters, digits, '_', '.', '-' only (at most 100), not ending in .DQ or .XQ"
        )
    return value


def positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Dramatiq throughput (jobs/s, enqueue -> done) on Redis or RabbitMQ; "
        "prints one JSON line.",
    )
    parser.add_argument("--broker", required=True, choices=("redis", "rabbitmq"))
    parser.add_argument(
        "--jobs", type=positive_int, default=DEFAULT_JOBS, help="measured jobs (default %(default)s)"
    )
    parser.add_argument(
        "--processes",
        type=positive_int,
        default=DEFAULT_PROCESSES,
        help="worker processes (default %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=DEFAULT_THREADS,
        help="threads per worker process (default %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        help="warm-up jobs before the measured ones (default %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help="Redis: broker for --broker redis, counters always (default %(default)s)",
    )
    parser.add_argument(
        "--amqp-url", default=DEFAULT_AMQP_URL, help="RabbitMQ, for --broker rabbitmq (default %(default)s)"
    )
    parser.add_argument("--queue-name", type=queue_name_arg, help="default bench-<broker>-<pid>-<unix time>")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds from a batch's first send to giving up, at least 1 after its last "
        "(default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.queue_name is None:
        args.queue_name = f"bench-{args.broker}-{os.getpid()}-{int(time.time())}"
    return args


def run_prefix(queue_name: str) -> str:
    """Same as dramatiq_actors.key_prefix, usable before that module is imported."""
    return f"{KEY_ROOT}:{queue_name}"


def actors_env(args: argparse.Namespace) -> dict[str, str]:
    """The variables dramatiq_actors.py reads, for the workers and for this process."""
    return {
        "SWITCHBOARD_BENCH_BROKER": args.broker,
        "SWITCHBOARD_BENCH_QUEUE": args.queue_name,
        "SWITCHBOARD_BENCH_REDIS_URL": args.redis_url,
        "SWITCHBOARD_BENCH_AMQP_URL": args.amqp_url,
    }


def start_workers(args: argparse.Namespace, log_path: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        ACTORS_MODULE,
        "--processes",
        str(args.processes),
        "--threads",
        str(args.threads),
        "--worker-shutdown-timeout",
        str(WORKER_SHUTDOWN_TIMEOUT_MS),
        "--path",
        str(HERE),
    ]
    with log_path.open("wb") as log_file:
        # A session of its own, so that a stuck shutdown can be ended by process group.
        return subprocess.Popen(
            command,
            env={**os.environ, **actors_env(args)},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def worker_log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no worker log)"


def rabbitmq_consumers(amqp_url: str, queue_name: str) -> int:
    """Consumers on the queue, 0 while it does not exist yet."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        frame = connection.channel().queue_declare(queue=queue_name, passive=True)
        return int(frame.method.consumer_count or 0)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if connection.is_open:
            connection.close()


def wait_ready(
    args: argparse.Namespace,
    workers: subprocess.Popen[bytes],
    client: redis.Redis,
    actors: ModuleType,
    log_path: Path,
) -> None:
    """Until every worker process has booted and is consuming the queue."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    ready_key = actors.ready_key(args.queue_name)
    heartbeats_key = f"{run_prefix(args.queue_name)}:__heartbeats__"  # the Redis broker's namespace
    while True:
        if workers.poll() is not None:
            status = workers.returncode
            raise BenchError(
                f"dramatiq exited with status {status} during start-up:\n{worker_log_tail(log_path)}"
            )
        booted = int(client.get(ready_key) or 0)
        if booted >= args.processes:
            if args.broker == "redis":
                consuming = client.zcard(heartbeats_key)
            else:
                consuming = rabbitmq_consumers(args.amqp_url, args.queue_name)
            if consuming >= args.processes:
                return
        if time.monotonic() > deadline:
            raise BenchError(
                f"workers not ready within {READY_TIMEOUT_S:.0f} s:\n{worker_log_tail(log_path)}"
            )
        time.sleep(POLL_INTERVAL_S)


def run_batch(
    actors: ModuleType, client: redis.Redis, counter_key: str, jobs: int, timeout_s: float
) -> tuple[float, float]:
    """Enqueue `jobs` jobs and wait for the last; (enqueue seconds, enqueue start -> all done seconds)."""
    send = actors.record_done.send
    start = time.perf_counter()
    for _ in range(jobs):
        send(counter_key, jobs)
    enqueued = time.perf_counter()
    remaining = max(1, math.ceil(timeout_s - (enqueued - start)))
    if client.blpop([actors.finished_key(counter_key)], timeout=remaining) is None:
        done = int(client.get(counter_key) or 0)
        elapsed = time.perf_counter() - start
        raise BenchError(f"only {done} of {jobs} jobs done {elapsed:.1f} s after the first send")
    finished = time.perf_counter()
    done = int(client.get(counter_key) or 0)
    if done != jobs:
        log(f"WARNING: the counter is at {done} for {jobs} jobs (redelivered jobs?)")
    return enqueued - start, finished - start


def stop_workers(workers: subprocess.Popen[bytes]) -> None:
    if workers.poll() is not None:
        return
    workers.send_signal(signal.SIGTERM)
    try:
        workers.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log(
            f"WARNING: dramatiq still running {STOP_TIMEOUT_S:.0f} s after SIGTERM; killing its process group"
        )
        os.killpg(workers.pid, signal.SIGKILL)
        workers.wait()
    if workers.returncode != 0:
        log(f"WARNING: dramatiq exited with status {workers.returncode}")


def delete_run_state(args: argparse.Namespace, client: redis.Redis, actors: Optional[ModuleType]) -> None:
    """The run's Redis keys (counters, and the Redis broker's namespace) and RabbitMQ queues.

    Best effort: a failure here is reported and does not hide the run's own result or error.
    """
    try:
        prefix = run_prefix(args.queue_name)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.exceptions.RedisError as e:
        log(f"WARNING: could not delete the Redis keys under {run_prefix(args.queue_name)}: {e!r}")
    if actors is not None:
        actors.broker.close()
    if args.broker == "rabbitmq":
        try:
            connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
            try:
                channel = connection.channel()
                for name in (args.queue_name, f"{args.queue_name}.DQ", f"{args.queue_name}.XQ"):
                    channel.queue_delete(queue=name)
            finally:
                connection.close()
        except pika.exceptions.AMQPError as e:
            log(f"WARNING: could not delete the RabbitMQ queues {args.queue_name}{{,.DQ,.XQ}}: {e!r}")


def exit_on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    raise SystemExit(128 + signum)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    client = redis.Redis.from_url(args.redis_url)
    prefix = run_prefix(args.queue_name)
    try:
        if next(client.scan_iter(match=f"{prefix}:*", count=1000), None) is not None:
            log(f"FAIL: Redis already has keys under {prefix}: pick another --queue-name")
            return 1
        if args.broker == "rabbitmq":
            rabbitmq_consumers(args.amqp_url, args.queue_name)  # reachable, before any worker starts
    except redis.exceptions.RedisError as e:
        log(f"FAIL: Redis at {args.redis_url}: {type(e).__name__}: {e}")
        return 1
    except pika.exceptions.AMQPError as e:
        log(f"FAIL: RabbitMQ at {args.amqp_url}: {type(e).__name__}: {e}")
        return 1

    # This process enqueues through the same broker module as the workers.
    os.environ.update(actors_env(args))
    sys.path.insert(0, str(HERE))
    actors: Optional[ModuleType] = None
    workers: Optional[subprocess.Popen[bytes]] = None
    with tempfile.TemporaryDirectory(prefix="dramatiq-bench.") as tmp:
        log_path = Path(tmp) / "workers.log"
        try:
            actors = importlib.import_module(ACTORS_MODULE)
            log(
                f"dramatiq {dramatiq.__version__}, {args.broker}, queue {args.queue_name}, "
                f"{args.processes} processes x {args.threads} threads"
            )
            workers = start_workers(args, log_path)
            wait_ready(args, workers, client, actors, log_path)
            if args.warmup:
                run_batch(actors, client, f"{prefix}:warmup", args.warmup, args.timeout)
            enqueue_s, total_s = run_batch(actors, client, f"{prefix}:done", args.jobs, args.timeout)
            result = {
                "system": "dramatiq",
                "broker": args.broker,
                "jobs": args.jobs,
                "enqueue_s": round(enqueue_s, 4),
                "total_s": round(total_s, 4),
                "jobs_per_s": round(args.jobs / total_s, 1),
                "processes": args.processes,
                "threads": args.threads,
                "dramatiq_version": dramatiq.__version__,
            }
            print(json.dumps(result), flush=True)
            return 0
        except BenchError as e:
            log(f"FAIL: {e}")
            return 1
        except (redis.exceptions.RedisError, pika.exceptions.AMQPError) as e:
            log(f"FAIL: lost the broker or the counter store: {e!r}\n{worker_log_tail(log_path)}")
            return 1
        finally:
            if workers is not None:
                stop_workers(workers)
            delete_run_state(args, client, actors)


if __name__ == "__main__":
    sys.exit(main())
