"""What a pickle would import, read from its opcodes without unpickling it.

Unpickling runs code: every callable it calls (``__reduce__``'s constructor, ``os.system``, ...)
is first imported by a ``GLOBAL``, ``STACK_GLOBAL`` or ``INST`` opcode. Reading those opcodes
with :mod:`pickletools` runs nothing, so comparing the names they import with an allow-list
decides whether a pickle may be loaded before anything loads it.
"""

from __future__ import annotations

import _compat_pickle
import pickletools
from collections.abc import Callable, Iterable

#: what an import is reported as when its name is computed rather than written in the stream
#: (``STACK_GLOBAL`` on values that are not plain strings, copyreg extension codes).
DYNAMIC = "<a global whose name is computed while unpickling>"
#: what a stream that is not a complete pickle is reported as.
UNREADABLE = "<not a readable pickle>"

_STRINGS = frozenset({
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
    "BINUNICODE8",
})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
#: opcodes that leave the stack alone, so two strings around them still name a STACK_GLOBAL.
_NEUTRAL = frozenset({"PROTO", "FRAME", "MEMOIZE", *_PUTS})
_EXTENSIONS = frozenset({"EXT1", "EXT2", "EXT4"})


def pickle_imports(data: bytes) -> set[str]:
    """Every ``module.name`` loading the pickle ``data`` would import (nothing is loaded).

    A name the stream computes instead of spelling out is reported as :data:`DYNAMIC`, and a
    stream :mod:`pickletools` cannot read to its end as :data:`UNREADABLE`, so an allow-list
    check refuses both.
    """
    found: set[str] = set()
    memo: dict[int, str | None] = {}
    recent: list[str | None] = []  # the values the last opcodes pushed; None: not a string
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.add(_python3_name(module, attr))
            elif name == "STACK_GLOBAL":
                pair = recent[-2:] if len(recent) >= 2 else [None, None]
                found.add(DYNAMIC if None in pair else _python3_name(str(pair[0]), str(pair[1])))
            elif name in _EXTENSIONS:
                found.add(DYNAMIC)
            if name in _STRINGS:
                recent.append(str(arg))
            elif name in _GETS:
                recent.append(memo.get(int(str(arg))))
            elif name == "MEMOIZE" or name in _PUTS:
                index = len(memo) if name == "MEMOIZE" else int(str(arg))
                memo[index] = recent[-1] if recent else None
            if name not in _STRINGS and name not in _GETS and name not in _NEUTRAL:
                recent.clear()  # anything else may have changed the stack: forget it
            del recent[:-2]
    except Exception:  # genops raises ValueError and friends on a truncated or bad stream
        found.add(UNREADABLE)
    return found


def _python3_name(module: str, attr: str) -> str:
    """``module.attr`` as Python 3 imports it (protocol 2 pickles say ``__builtin__.exec``)."""
    module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (module, attr))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{attr}"


def refused_imports(data: bytes, allowed: Callable[[str], bool]) -> list[str]:
    """The imports of the pickle ``data`` that ``allowed`` does not accept, sorted."""
    return sorted(name for name in pickle_imports(data) if not allowed(name))


def exact(names: Iterable[str]) -> Callable[[str], bool]:
    """An allow-list predicate that accepts exactly ``names``."""
    allowed = frozenset(names)
    return allowed.__contains__


__all__ = ["DYNAMIC", "UNREADABLE", "exact", "pickle_imports", "refused_imports"]
