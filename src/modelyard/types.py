"""The contracts between layers: small Protocols that implementations are checked against."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from modelyard.schema import Signature

if TYPE_CHECKING:
    from modelyard.pipeline.job import Executed, RunHooks, RunJob


@runtime_checkable
class Adapter(Protocol):
    """Everything modelyard needs from one framework (a *flavor*).

    Adapters are stateless: the framework object is passed in and returned. They import their
    framework lazily, inside the methods, so ``import modelyard`` needs none of them.
    """

    #: the registry key, stored with every version (``"sklearn"``, ``"torch"``, ...).
    flavor: ClassVar[str]
    #: the pip extra that installs this framework (``pip install 'modelyard[<extra>]'``).
    extra: ClassVar[str]
    #: ``True`` for frameworks that can run on a GPU (``cuda``); classic models are CPU-only.
    accelerated: ClassVar[bool]

    def handles(self, model: Any) -> bool:
        """Whether ``model`` is an object of this framework (used to pick the flavor)."""
        ...

    def save(self, model: Any, path: Path, *, sample: Any = None) -> dict[str, Any]:
        """Write ``model`` into the empty folder ``path``; return metadata needed to load it.

        ``sample`` is a small batch of training input, for frameworks that trace or export.
        """
        ...

    def load(self, path: Path, meta: dict[str, Any], device: str) -> Any:
        """Load a model saved by :meth:`save` onto ``device`` (already resolved, e.g. ``cpu``)."""
        ...

    def predict(self, model: Any, batch: Any) -> Any:
        """Predict a whole batch; returns an array (or dict of arrays) with one row per input."""
        ...

    def predict_scores(self, model: Any, batch: Any) -> Any:
        """Class probabilities ``(n, classes)`` for classifiers that give them, else ``None``."""
        ...

    def infer_signature(self, model: Any, X: Any, y: Any = None) -> Signature:
        """The signature of ``model`` trained on ``X`` (and ``y``)."""
        ...

    @classmethod
    def gpu_count(cls) -> int:
        """How many GPUs this framework can use here (0 for CPU-only flavors)."""
        ...


@runtime_checkable
class ArtifactVerifier(Protocol):
    """An adapter that can tell, without loading it, whether loading an artifact would be refused.

    Optional: the registry calls ``verify`` on what it is about to store, so an artifact its
    adapter would refuse to load never becomes a version. ``load`` must refuse the same things.
    """

    def verify(self, path: Path, meta: dict[str, Any]) -> None:
        """Raise :class:`~modelyard.errors.UnsafeArtifactError` naming what would run code."""
        ...


@runtime_checkable
class JointPredictor(Protocol):
    """An adapter that answers labels and class scores from one model call.

    Optional: when a request asks for scores, :class:`~modelyard.predictor.Predictor` calls
    ``predict_with_scores`` once instead of ``predict`` then ``predict_scores`` (two passes
    through the model). It must return exactly what those two would.
    """

    def predict_with_scores(self, model: Any, batch: Any) -> tuple[Any, Any]:
        """``(predict(model, batch), predict_scores(model, batch))`` from one model call."""
        ...


@runtime_checkable
class ArtifactStore(Protocol):
    """Content-addressed blob storage: a blob's name is its sha256 digest."""

    def put_file(self, path: Path) -> tuple[str, int]:
        """Store the file at ``path``; return ``(sha256 hex digest, size in bytes)``."""
        ...

    def get_file(self, digest: str, dest: Path) -> Path:
        """Copy the blob ``digest`` to ``dest``, verifying its digest; return ``dest``."""
        ...

    def exists(self, digest: str) -> bool:
        """Whether the blob ``digest`` is stored."""
        ...

    def delete(self, digest: str) -> None:
        """Remove the blob ``digest`` if present."""
        ...




@runtime_checkable
class Executor(Protocol):
    """Where a training run's work executes: here (``local``) or on a cluster (``ray``).

    :meth:`run` carries out :func:`modelyard.pipeline.job.execute` for ``job`` somewhere and
    leaves its results on this machine: the training output in ``work/train.log`` and the
    outcome's artifact as a local folder, so the pipeline gates and registers the same way
    whatever ran it. It reports through ``hooks`` and stops when ``hooks.stop()`` gives a reason
    (:class:`~modelyard.errors.RunCancelled`); it never touches the registry.
    """

    #: the name a spec's ``executor:`` and ``--executor`` give.
    name: ClassVar[str]

    def run(self, job: RunJob, work: Path, hooks: RunHooks) -> Executed:
        """Execute ``job``; raises the modelyard error the work raised, wherever it ran."""
        ...


__all__ = ["Adapter", "ArtifactStore", "ArtifactVerifier", "Executor", "JointPredictor"]
