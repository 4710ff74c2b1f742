"""Dramatiq broker and actor for scripts/bench/dramatiq_bench.py; not used on its own.

Both the `dramatiq` worker processes that dramatiq_bench.py starts and the
bench process that enqueues import this module, so the broker is configured
from the environment (dramatiq_bench.py sets these variables):

    SWITCHBOARD_BENCH_BROKER     redis | rabbitmq
    SWITCHBOARD_BENCH_QUEUE      the run's queue name
    SWITCHBOARD_BENCH_REDIS_URL  Redis: the broker for `redis`, and in both cases
                                 the store of the completion counter
    SWITCHBOARD_BENCH_AMQP_URL   RabbitMQ, for `rabbitmq`

The actor does nothing but record its completion: INCR of a counter key in
Redis, whichever broker carried the message, so completion is counted the same
way for both; the call that brings the counter to its target also pushes to
`<counter>:finished`, which the bench waits on with BLPOP. The Redis broker's
keys live under the namespace `switchboard-bench:<queue>`, beside the counters,
so the bench removes everything of a run with one SCAN.

Dramatiq's defaults are kept as the old plan would have had them: the default
middleware (age limit, time limit, shutdown notifications, callbacks,
pipelines, retries), durable RabbitMQ queues with persistent messages and no
publisher confirms, and the worker's prefetch of 2 x threads.

The module-level `broker` and `record_done` are what the `dramatiq` CLI looks
for when it imports a broker module; they are the only state here.
"""

from __future__ import annotations

import functools
import os

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

KEY_ROOT = "switchboard-bench"
BROKER_KIND = os.environ.get("SWITCHBOARD_BENCH_BROKER", "redis")
QUEUE_NAME = os.environ.get("SWITCHBOARD_BENCH_QUEUE", "switchboard-bench")
REDIS_URL = os.environ.get("SWITCHBOARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("SWITCHBOARD_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def key_prefix(queue_name: str) -> str:
    """The prefix of every Redis key of a run (counters, and the Redis broker's namespace)."""
    return f"{KEY_ROOT}:{queue_name}"


def ready_key(queue_name: str) -> str:
    """Counter that each worker process increments once it has booted."""
    return f"{key_prefix(queue_name)}:ready"


def finished_key(counter_key: str) -> str:
    """List that receives one item when `counter_key` reaches its target."""
    return f"{counter_key}:finished"


@functools.cache
def counter_client() -> redis.Redis:
    """One Redis client per process, made on first use (after the worker fork)."""
    return redis.Redis.from_url(REDIS_URL)


class ReadySignal(dramatiq.Middleware):
    """Tells the bench that a worker process has started its consumers and threads."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        counter_client().incr(ready_key(QUEUE_NAME))


def make_broker(kind: str) -> dramatiq.Broker:
    if kind == "redis":
        return RedisBroker(url=REDIS_URL, namespace=key_prefix(QUEUE_NAME))
    if kind == "rabbitmq":
        return RabbitmqBroker(url=AMQP_URL)
    raise RuntimeError(f"SWITCHBOARD_BENCH_BROKER must be redis or rabbitmq, not {kind!r}")


broker = make_broker(BROKER_KIND)
broker.add_middleware(ReadySignal())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE_NAME)
def record_done(counter_key: str, target: int) -> None:
    """The whole job: count one completion; the one that reaches `target` says so."""
    client = counter_client()
    if client.incr(counter_key) == target:
        client.rpush(finished_key(counter_key), 1)
