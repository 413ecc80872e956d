"""What a ``.keras`` archive would run when loaded, read from its ``config.json`` without Keras.

A Keras 3 archive is a zip: ``config.json`` (the model's structure), ``model.weights.h5`` and
``assets/``. Only the config names code: each object in it is ``{"module", "class_name",
"config", "registered_name"}``, and a ``Lambda`` layer carries the marshalled bytecode of a
Python function (``"class_name": "__lambda__"``). Keras' ``safe_mode`` refuses that bytecode and
resolves modules outside ``keras`` only through objects registered in the loading process; this
check refuses both before Keras runs at all, and names them, so the registry can refuse such an
artifact when it is registered.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

#: objects Keras itself writes without a module: tensors, arrays, bytes, slices, specs.
_MARKERS = frozenset({
    "__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__",
    "__typespec__",
})
_BYTECODE = "__lambda__"


def check_keras(data: bytes, trusted: Callable[[str], bool]) -> list[str]:
    """The code a ``.keras`` archive names beyond Keras' own (empty: none), sorted.

    ``trusted`` accepts the ``module.ClassName`` or registered name of your own registered
    objects; Python bytecode (a ``Lambda`` layer's function) is never accepted.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError):
        return ["a file that is not a Keras 3 archive with a config.json (legacy formats run "
                "code)"]
    return sorted({name for name, trustable in _foreign(config, None)
                   if not (trustable and trusted(name))})


def _foreign(value: Any, layer: str | None) -> Iterator[tuple[str, bool]]:
    """``(name, trustable)`` of each non-Keras object and Python bytecode in ``value``.

    ``layer`` is the object ``value`` sits in, to name the layer that holds bytecode.
    """
    if isinstance(value, list):
        for item in value:
            yield from _foreign(item, layer)
        return
    if not isinstance(value, dict):
        return
    class_name = value.get("class_name")
    if isinstance(class_name, str):
        module = value.get("module")
        name = f"{module}.{class_name}" if isinstance(module, str) else class_name
        if class_name == _BYTECODE:
            yield f"{layer or 'a function'} (Python bytecode)", False
        elif not _is_keras(module, class_name):
            yield str(value.get("registered_name") or name), True
        layer = name
    for item in value.values():
        yield from _foreign(item, layer)


def _is_keras(module: Any, class_name: str) -> bool:
    if module is None:
        return class_name in _MARKERS
    # "builtins" is how Keras writes its own functions ('relu'); it looks them up in keras.*
    return module in ("keras", "builtins") or str(module).startswith("keras.")


__all__ = ["check_keras"]
