"""The floor: the least CPU a request can cost in a batching server built of modelyard's parts.

``bench/serve.py`` loads it beside modelyard and the naive endpoint, in turn, to tell what its
ratio goals can reach on this machine. It keeps only what any server answering these requests
must do: modelyard's HTTP server (``httpserver``, the same connection code), the body read
(``http.read_body``) and parsed by orjson, one numpy conversion to the model's dtype, natural
batching (a batch waits for nothing, gives the loop
:data:`~modelyard.serving.batching.GATHER_TURNS` turns, runs on the loop when it is short and in
one thread otherwise, as modelyard's does) into the very call the bench times alone
(``Predictor.predict_batch(rows, scores=True)``), and the answer written by orjson. Everything
else a served prediction pays for is left out: routes, authentication, validation and its error
messages, versions and rollouts, metrics, request ids and the prediction log. It answers
``POST /predict`` with ``{"instances": [row, ...]}`` (a malformed body fails the request;
nothing here is meant to serve anyone) and ``GET /readyz``.

Run: ``MODELYARD_HOME=... python bench/floor_app.py MODEL PORT`` (a registered ``MODEL``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson

import modelyard
from modelyard.serving.batching import GATHER_TURNS
from modelyard.serving.http import read_body
from modelyard.serving.httpserver import bind, run

#: rows a batch, as modelyard's default policy
MAX_ROWS = 32
#: a batch expected to take less runs on the loop, as ``runner.INLINE_BUDGET_S``
INLINE_S = 0.001
MAX_BODY = 1 << 20
_HEAD = [(b"content-type", b"application/json")]


class Floor:
    """One model, its queue and the batching task."""

    def __init__(self, name: str) -> None:
        self.predictor = modelyard.load(f"{name}@production", device="cpu")
        self.dtype = np.float32 if self.predictor.flavor == "torch" else np.float64
        self.queue: list[tuple[np.ndarray, asyncio.Future[Any]]] = []
        self.wake = asyncio.Event()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="floor-predict")
        self.row_s = 1.0  # seconds a row, measured: the first batch runs in the thread

    def submit(self, rows: np.ndarray) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.append((rows, future))
        self.wake.set()
        return future

    async def batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                for _ in range(GATHER_TURNS):
                    if len(self.queue) >= MAX_ROWS:
                        break
                    await asyncio.sleep(0)
                taken, self.queue = self.queue[:MAX_ROWS], self.queue[MAX_ROWS:]
                batch = np.concatenate([rows for rows, _ in taken])
                if self.row_s * len(batch) < INLINE_S:
                    answer = self.predict(batch)
                else:
                    answer = await loop.run_in_executor(self.pool, self.predict, batch)
                for i, (_, future) in enumerate(taken):
                    future.set_result((answer.predictions[i:i + 1], answer.scores[i:i + 1]))

    def predict(self, batch: np.ndarray) -> Any:
        start = time.perf_counter()
        answer = self.predictor.predict_batch(batch, scores=True)
        self.row_s = (time.perf_counter() - start) / len(batch)
        return answer


def make_app(name: str) -> Any:
    floor: Floor | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal floor
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    floor = Floor(name)
                    asyncio.get_running_loop().create_task(floor.batches())
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert floor is not None
        body = await read_body(scope, receive, MAX_BODY)
        if scope["path"] == "/readyz":
            out = b'{"ready":true}'
        else:
            rows = np.array(orjson.loads(body)["instances"], dtype=floor.dtype)
            predictions, scores = await floor.submit(rows)
            out = orjson.dumps({"predictions": predictions, "scores": scores},
                               option=orjson.OPT_SERIALIZE_NUMPY)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_HEAD, (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    return app


if __name__ == "__main__":
    model, port = sys.argv[1], int(sys.argv[2])
    sys.exit(run(make_app(model), bind("127.0.0.1", port)))
