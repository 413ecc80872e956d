"""Queue-driven inference against HTTP: W1 through RabbitMQ and through native REST, one run.

W1 (scikit-learn HistGradientBoostingClassifier, 100 trees, 20 features, one row per request
or message; built as ``bench/serve.py`` builds it). Two phases, the server pinned to core 0 and
the load to core 1 (as in ``serve.py``), the prediction log at its default:

1. HTTP: ``modelyard serve``, native REST saturated by wrk (``serve.py``'s ``wrk`` and
   ``measured``): requests/s and server CPU per request;
2. RabbitMQ: ``modelyard consume amqp://...`` with ``--output``; a producer process publishes
   ``--messages`` one-row requests (``{"instances": [row], "scores": true}``, model in a
   header, a message id each) as fast as it can while the answers are counted in the output
   queue: messages/s from the first publish to the last answer, and the consumer's CPU per
   message (its process tree's CPU time over the phase ÷ messages).

CPU per message is the number to compare: it holds on a shared machine where rates swing.
RabbitMQ itself runs elsewhere on the machine and is not counted. Needs ``wrk``, ``taskset``,
the RabbitMQ on 127.0.0.1:5672 (guest/guest) and ``modelyard[queue,sklearn]``.

Run: ``python bench/consume.py`` (about a minute; ``--messages 20000 --seconds 8``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import procstat
import serve

URL = "amqp://guest:guest@127.0.0.1:5672/"
NAME = "tabular"

PRODUCER = r'''
import asyncio, json, sys, aio_pika
async def main(url, queue, body, n, prefix):
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        for i in range(n):
            await channel.default_exchange.publish(aio_pika.Message(
                body, headers={"model": "tabular"}, message_id=f"{prefix}{i}",
                correlation_id=f"c{i}"), routing_key=queue)
asyncio.run(main(sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read(), int(sys.argv[4]),
                 sys.argv[5]))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages to answer")
    parser.add_argument("--seconds", type=int, default=8, help="HTTP measurement duration")
    parser.add_argument("--prefetch", type=int, default=256, help="consume --prefetch")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("needs wrk and taskset on PATH")
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.pop("MODELYARD_PREDICTION_LOG", None)
    work = Path(tempfile.mkdtemp(prefix="modelyard-bench-consume-"))
    try:
        home = work / "home"
        print("registering W1 ...", flush=True)
        register(home)
        (work / "post.lua").write_text(serve.LUA)
        env = {**os.environ, "MODELYARD_HOME": str(home)}
        files = serve.bodies(NAME, work)
        http = http_phase(env, work, files, args)
        queue = queue_phase(env, work, files["native"], args)
        report(http, queue)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def register(home: Path) -> None:
    """W1 alone, as ``serve.py`` registers it."""
    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.testing import register_hgb

    with Registry.open(Settings.from_env(home=home, actor="bench")) as reg:
        register_hgb(reg, NAME, max_iter=100, n_features=20)


def http_phase(env: dict[str, str], work: Path, files: dict[str, Path],
               args: argparse.Namespace) -> dict[str, Any]:
    """Native REST saturated by wrk: requests/s and server CPU µs a request."""
    port = serve.PORT + 1
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/models/{NAME}/predict"
    cmd = serve.modelyard_cmd(port, argparse.Namespace(model_config=None))
    print("HTTP: modelyard serve, native REST ...", flush=True)
    with serve.Server(cmd, env, base + "/readyz") as server:
        serve.wrk(url, files["native"], work, args.connections, 2)  # warm up
        return serve.measured(server, base, lambda: serve.wrk(
            url, files["native"], work, args.connections, args.seconds))


def queue_phase(env: dict[str, str], work: Path, body: Path,
                args: argparse.Namespace) -> dict[str, Any]:
    """RabbitMQ: messages/s from the first publish to the last answer, consumer CPU µs each."""
    import aio_pika

    tag = uuid.uuid4().hex[:8]
    queue, output = f"bench-in-{tag}", f"bench-out-{tag}"
    cli = Path(sys.executable).with_name("modelyard")
    cmd = ["taskset", "-c", "0", str(cli), "consume", URL, "--queue", queue, "--output", output,
           "--prefetch", str(args.prefetch), "--preload", "--log-level", "warning",
           "--dedupe-window", "5m"]
    print(f"RabbitMQ: modelyard consume, {args.messages} messages ...", flush=True)
    log = work / "consume.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_consuming(queue, proc, log)
        warm = min(2000, args.messages // 5)
        _produce(queue, body, warm, "warm-")
        _wait_depth(output, warm, proc, log)
        _purge(output)
        time.sleep(1.0)
        cpu0 = procstat.tree_cpu(proc.pid)
        start = time.perf_counter()
        producer = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", PRODUCER, URL,
                                     queue, str(body), str(args.messages), "m-"])
        _wait_depth(output, args.messages, proc, log)
        wall = time.perf_counter() - start
        cpu1 = procstat.tree_cpu(proc.pid)
        producer.wait(60)
        return {"rps": args.messages / wall, "wall_s": wall, "messages": args.messages,
                "cpu_us": procstat.cpu_between(cpu0, cpu1) / args.messages * 1e6}
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        asyncio.run(_delete(aio_pika, queue, output))


def _produce(queue: str, body: Path, n: int, prefix: str) -> None:
    """Publish ``n`` requests (message ids ``prefix0``...: the dedupe window must not drop
    them as repeats of another phase's)."""
    subprocess.run(["taskset", "-c", "1", sys.executable, "-c", PRODUCER, URL, queue, str(body),
                    str(n), prefix], check=True)


def _depth(name: str) -> int:
    import aio_pika

    async def depth() -> int:
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel()
            q = await channel.declare_queue(name, durable=True)
            return int(q.declaration_result.message_count or 0)

    return asyncio.run(depth())


def _purge(name: str) -> None:
    import aio_pika

    async def purge() -> None:
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel()
            q = await channel.declare_queue(name, durable=True)
            await q.purge()

    asyncio.run(purge())


def _wait_consuming(queue: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import aio_pika

    async def consumers() -> int:
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel()
            q = await channel.declare_queue(queue, durable=True)
            return int(q.declaration_result.consumer_count or 0)

    deadline = time.monotonic() + 180
    while asyncio.run(consumers()) == 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the consumer did not start: {log.read_text()[-3000:]}")
        time.sleep(0.5)


def _wait_depth(name: str, n: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 600
    while _depth(name) < n:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"answers stopped coming: {log.read_text()[-3000:]}")
        time.sleep(0.1)


async def _delete(aio_pika: Any, *names: str) -> None:
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


def report(http: dict[str, Any], queue: dict[str, Any]) -> None:
    """One table: rate and server CPU per request, HTTP beside RabbitMQ."""
    print()
    print("W1 (HGB, 20 features, one row per request), server on one core")
    print(f"{'path':<28}{'per second':>12}{'server CPU µs':>16}")
    print(f"{'HTTP native REST (wrk)':<28}{http['rps']:>12.0f}{http['cpu_us']:>16.0f}")
    print(f"{'RabbitMQ (consume)':<28}{queue['rps']:>12.0f}{queue['cpu_us']:>16.0f}")
    print(f"queue / HTTP: {queue['rps'] / http['rps']:.2f}x the rate, "
          f"{queue['cpu_us'] / http['cpu_us']:.2f}x the CPU a request")
    print(json.dumps({"http": {k: http[k] for k in ("rps", "cpu_us", "requests")},
                      "rabbitmq": queue}))


if __name__ == "__main__":
    sys.exit(main())
