"""A real server for tests: :class:`ServerProcess` on a free port, quiet, gRPC on request."""

from __future__ import annotations

from pathlib import Path

from modelyard.serving import process
from modelyard.serving.process import free_port


class ServerProcess(process.ServerProcess):
    """:class:`modelyard.serving.process.ServerProcess` on a free port with one BLAS thread.

    ``grpc=True`` also serves OIP v2 over gRPC on a free port, at ``grpc_address``. Ready when
    constructed unless ``wait=False`` (then call :meth:`wait_ready`, so several start in
    parallel); ``env`` adds to the environment (``MODELYARD_HOME`` is ``home``); ``port``
    names the port (a replica started again where its balancer expects it).
    """

    def __init__(self, home: Path, *, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), grpc: bool = False, wait: bool = True,
                 port: int | None = None) -> None:
        self.grpc_address = f"127.0.0.1:{free_port()}" if grpc else None
        extra = ("--grpc-port", self.grpc_address.rpartition(":")[2]) if self.grpc_address else ()
        # one BLAS thread: several servers, their load and the test share a few cores
        super().__init__(home, port=port, env={"OMP_NUM_THREADS": "1", **(env or {})},
                         args=(*extra, *args), wait=wait)


__all__ = ["ServerProcess"]
