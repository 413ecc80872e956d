"""What a saved PyTorch artifact would run when loaded, found without PyTorch and without loading.

Each check returns the offending names (empty: nothing found) and never imports torch, so the
registry can run it when a version is registered.

Why each format needs one:

* a state dict (``torch.save``) is a zip holding ``data.pkl``; ``weights_only=True`` refuses
  foreign globals, and this check names them first;
* a ``torch.export`` program (``.pt2``) is not pickle-free: ``torch.export.load`` unpickles
  weights and constants marked ``use_pickle`` and opaque objects with plain ``pickle``, falls back
  to ``weights_only=False`` when its sample inputs do not load, loads AOTInductor shared
  libraries, parses every ``expr_str`` in the graph with ``sympy.sympify`` (which evaluates
  Python), and turns any ``torch.*`` attribute path in a node's ``target`` (``torch.serialization
  .os.system``, say) into a call the graph makes when it runs;
* a TorchScript archive is a program: its code runs in the TorchScript interpreter (no Python,
  no imports), whose operators include ``from_file`` (maps any file, writable) and custom C++
  classes and operator namespaces that extensions register.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any

from modelyard.adapters.pickles import refused_imports

#: globals a weights-only pickle needs: tensor rebuilders, storages, dtypes, plain containers.
_TENSOR_GLOBALS = frozenset({
    "collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.slice",
    "torch.Size", "torch.device", "torch.UntypedStorage", "torch.storage.UntypedStorage",
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state", "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_nested_tensor",
    "torch._utils._rebuild_meta_tensor_no_storage", "torch._tensor._rebuild_from_type_v2",
    "torch.nn.parameter.Parameter", "torch.Tensor", "torch._tensor.Tensor",
})
_STORAGE = re.compile(r"^torch\.[A-Za-z0-9]*Storage$")
_DTYPE = re.compile(
    r"^torch\.(u?int(8|16|32|64)|float(16|32|64)|float8_\w+|bfloat16|complex(32|64|128)|bool|half"
    r"|double|long|short|int|float|cfloat|cdouble|chalf|q(u)?int\w*)$"
)
#: what TorchScript's own unpickler resolves besides tensors: helpers and the archive's classes.
_SCRIPT_GLOBALS = frozenset({
    "torch.jit._pickle.build_intlist", "torch.jit._pickle.build_tensorlist",
    "torch.jit._pickle.build_doublelist", "torch.jit._pickle.build_boollist",
    "torch.jit._pickle.build_complexlist", "torch.jit._pickle.build_tensor_from_id",
    "torch.jit._pickle.restore_type_tag",
})
#: operator namespaces a program may call: PyTorch's own kernels and control flow.
_OP_NAMESPACES = frozenset({"aten", "prim", "prims", "higher_order"})
#: operators that reach outside the tensors they are given (``from_file`` maps a file).
_IO_OPS = frozenset({"from_file", "_from_file"})
#: non-tensor targets ``torch.export`` writes for arithmetic on symbolic sizes.
_SYMBOLIC_TARGETS = frozenset({
    *(f"_operator.{op}" for op in (
        "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub", "floordiv",
        "mod", "pow", "truediv", "and_", "or_", "lshift", "rshift", "getitem", "not_", "abs",
    )),
    "math.trunc", "math.ceil", "math.floor", "math.sqrt",
    *(f"torch.sym_{op}" for op in ("not", "int", "float", "ite", "max", "min", "sqrt", "sum")),
})
#: archive folders and files of compiled code that ``torch.export.load`` may load and run.
_COMPILED_DIRS = frozenset({"aotinductor", "executorch", "mtia"})
_COMPILED_SUFFIXES = frozenset({".so", ".dll", ".dylib", ".cpp", ".cu", ".py"})
_TARGET = re.compile(r"^torch\.ops\.(\w+)\.(\w+)(?:\.\w+)?$")
#: the tokens of a size expression: names, numbers, quoted symbol names, operators.
_TOKEN = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_]\w*)|(?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"|(?P<string>'[A-Za-z_]\w*')|(?P<op>\*\*|//|==|!=|<=|>=|[-+*/%(),<>=&|~]))"
)
#: a symbol torch invents for a size (``s77``, ``u0``, ``ps3``).
_SYMBOL = re.compile(r"^[a-z]{1,8}\d+$")
#: the sympy names a size expression may use: constructors, assumptions, torch's size functions.
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "True", "False", "oo", "nan", "zoo", "Max", "Min",
    "Mod", "Abs", "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or",
    "Not", "positive", "negative", "integer", "real", "finite", "nonnegative", "nonpositive",
    "nonzero", "zero", "rational", "even", "odd", "FloorDiv", "ModularIndexing", "Where",
    "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift",
    "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
})

Allowed = Callable[[str], bool]


def tensor_global(name: str) -> bool:
    """Whether a weights-only pickle may import ``name``."""
    return name in _TENSOR_GLOBALS or bool(_STORAGE.match(name) or _DTYPE.match(name))


def _script_global(name: str) -> bool:
    if name.startswith("__torch__.torch.classes."):  # a custom C++ class: its code, not ours
        return False
    return tensor_global(name) or name in _SCRIPT_GLOBALS or name.startswith("__torch__.")


def check_state_dict(data: bytes, trusted: Allowed) -> list[str]:
    """What loading a ``torch.save`` archive of tensors would import beyond tensors."""
    with _open_zip(data) as archive:
        if archive is None:
            return ["a file that is not a torch.save zip archive (legacy pickle format)"]
        return _pickles(archive, lambda n: tensor_global(n) or trusted(n),
                        lambda m: m.endswith(".pkl"))


def check_torchscript(data: bytes, trusted: Allowed) -> list[str]:
    """What a TorchScript archive would import or call beyond PyTorch's own operators."""
    with _open_zip(data) as archive:
        if archive is None:
            return ["a file that is not a TorchScript zip archive"]
        refused = _pickles(archive, lambda n: _script_global(n) or trusted(n),
                           lambda m: m.endswith((".pkl", ".debug_pkl")))
        for member in archive.namelist():
            if "/code/" in f"/{member}" and member.endswith(".py"):
                refused += [n for n in _script_names(archive.read(member), member)
                            if not trusted(n)]
        return sorted(set(refused))


def check_export(data: bytes, trusted: Allowed) -> list[str]:
    """What loading or running a ``torch.export`` archive (``.pt2``) would run beyond operators."""
    with _open_zip(data) as archive:
        if archive is None:
            return ["a file that is not a torch.export zip archive"]
        refused: list[str] = []
        for member in archive.namelist():
            path = PurePosixPath(member)
            if _COMPILED_DIRS & set(path.parts) or path.suffix in _COMPILED_SUFFIXES:
                refused.append(f"compiled code ({member})")
            elif path.suffix == ".pt":  # nested torch.save archives: sample inputs, old weights
                refused += check_state_dict(archive.read(member), trusted)
            elif path.name.endswith("_config.json") and path.parent.name in ("weights",
                                                                               "constants"):
                refused += _pickled_payloads(_json(archive, member), path.parent.name)
            elif path.parent.name == "models" and path.suffix == ".json":
                refused += [n for n in _program_names(_json(archive, member)) if not trusted(n)]
        return sorted(set(refused))


# -- helpers ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _open_zip(data: bytes) -> Iterator[zipfile.ZipFile | None]:
    """The zip archive in ``data``, or ``None`` when ``data`` is not one."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        yield None
        return
    with archive:
        yield archive


def _pickles(archive: zipfile.ZipFile, allowed: Allowed,
             is_pickle: Callable[[str], bool]) -> list[str]:
    refused: list[str] = []
    for member in archive.namelist():
        if is_pickle(member):
            refused += refused_imports(archive.read(member), allowed)
    return refused


def _json(archive: zipfile.ZipFile, member: str) -> Any:
    try:
        return json.loads(archive.read(member))
    except ValueError:
        return {"<unreadable>": member}


def _pickled_payloads(config: Any, kind: str) -> list[str]:
    """Weights and constants ``torch.export.load`` would unpickle (``use_pickle``, objects)."""
    entries = config.get("config", {}) if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        return [f"an unreadable {kind} configuration"]
    refused = []
    for fqn, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            refused.append(f"pickled {kind} {fqn}")
        elif kind == "constants" and not str(entry.get("path_name", "")).startswith("tensor_"):
            refused.append(f"a Python object constant {fqn}")  # custom or opaque objects
    return refused


def _program_names(program: Any) -> Iterator[str]:
    """Node targets that are not PyTorch operators, and size expressions that are not sizes."""
    stack = [program]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            target = value.get("target")
            if isinstance(target, str) and "inputs" in value and not _known_target(target):
                yield target
            expr = value.get("expr_str")
            if isinstance(expr, str) and not _size_expression(expr):
                yield f"size expression {expr[:80]!r}"
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _known_target(target: str) -> bool:
    if target in _SYMBOLIC_TARGETS:
        return True
    match = _TARGET.match(target)
    return match is not None and match.group(1) in _OP_NAMESPACES and match.group(2) not in _IO_OPS


def _size_expression(expr: str) -> bool:
    """Whether ``expr`` only builds sympy sizes (``sympify`` evaluates it as Python)."""
    pos = 0
    for token in _TOKEN.finditer(expr):
        if token.start() != pos:
            return False
        pos = token.end()
        name = token.group("name")
        if name is not None and name not in _SYMPY_NAMES and not _SYMBOL.match(name):
            return False
    return not expr[pos:].strip()


def _script_names(source: bytes, member: str) -> Iterator[str]:
    """Operators in TorchScript code outside PyTorch's own, and custom C++ classes."""
    try:
        tree = ast.parse(source.decode("utf-8"), filename=member)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        yield f"unreadable TorchScript code ({member})"
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted is not None and _foreign_op(dotted):
                yield dotted


def _dotted(node: ast.Attribute) -> str | None:
    parts: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        return None
    return ".".join([current.id, *reversed(parts)])


def _foreign_op(dotted: str) -> bool:
    parts = dotted.split(".")
    if "classes" in parts[:3]:  # torch.classes.x / __torch__.torch.classes.x: C++ classes
        return parts[0] in ("torch", "__torch__")
    if parts[0] == "torch" and len(parts) > 1 and parts[1] in _IO_OPS:
        return True
    ops = parts[1:] if parts[0] == "ops" else parts[2:] if parts[:2] == ["torch", "ops"] else None
    if ops is None or len(ops) < 2:
        return False
    return ops[0] not in _OP_NAMESPACES or ops[1] in _IO_OPS


__all__ = ["check_export", "check_state_dict", "check_torchscript", "tensor_global"]
