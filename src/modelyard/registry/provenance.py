"""What data a version was trained on: each file with its sha256, the SQL query with its
database (password removed) and the tables it reads, or the data function's reference.

Recorded by the run where the data is read (:func:`modelyard.pipeline.data.load_dataset`) and
kept with the version (``ModelVersion.data_sources``); the registry indexes each source's kind,
location and digest, so ``modelyard lineage FILE_OR_TABLE`` finds the versions trained on a
file (by path or content) or a table. Each source is a plain JSON-ready dict::

    {"kind": "file", "location": "/data/2026-01.csv", "digest": "<sha256>", "size": 1234}
    {"kind": "sql", "location": "postgresql://etl@db/warehouse", "digest": "<sha256 of query>",
     "query": "SELECT ...", "tables": ["public.transactions"]}
    {"kind": "function", "location": "features.py:load", "digest": None}
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError

#: the kinds of source a version records (``feast`` is added by the feature store's part).
KINDS = ("file", "sql", "function", "feast")
#: the kind of the index rows that name one table a query reads.
TABLE = "table"
_CHUNK = 1 << 20
_WORD = r'(?:"[^"]+"|`[^`]+`|\[[^\]]+\]|[A-Za-z_][\w$]*)'
_TABLE_NAME = rf"{_WORD}(?:\s*\.\s*{_WORD}){{0,2}}"
# a table's alias: a word that is not the keyword after it (FROM t JOIN u, FROM t WHERE ...)
_ALIAS = (r"(?:\s+(?:as\s+)?(?!(?:join|inner|left|right|full|cross|outer|natural|where|group|"
          rf"order|on|using|limit|union|having|window|except|intersect|offset|fetch|for)\b){_WORD})?")
# after FROM or JOIN: a name, and more after commas (FROM a, b); a "(" is a subquery, skipped
_FROM = re.compile(rf"\b(?:from|join)\s+(?P<first>{_TABLE_NAME})"
                   rf"(?P<more>{_ALIAS}(?:\s*,\s*{_TABLE_NAME}{_ALIAS})*)", re.IGNORECASE)
_NAME_IN_LIST = re.compile(rf",\s*(?P<name>{_TABLE_NAME})")
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_STRING = re.compile(r"'(?:[^']|'')*'")
#: words that can follow FROM without being a table (EXTRACT(x FROM y), ... FROM LATERAL).
_NOT_TABLES = {"lateral", "unnest", "select", "only"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SECRET_PARAMS = re.compile(r"(pass|secret|token|key)", re.IGNORECASE)


def file_digest(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in chunks (a large file is never held in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_source(path: str | Path) -> dict[str, Any]:
    """A data file as a source: its absolute path, sha256 and size."""
    full = Path(path).absolute()
    return {"kind": "file", "location": str(full), "digest": file_digest(full),
            "size": full.stat().st_size}


def sql_source(query: str, url: str) -> dict[str, Any]:
    """A query as a source: the database (no password), the query, its hash and its tables."""
    return {"kind": "sql", "location": redact_url(url),
            "digest": hashlib.sha256(query.encode()).hexdigest(), "query": query,
            "tables": sql_tables(query)}


def function_source(ref: str) -> dict[str, Any]:
    """A data function as a source: its ``module:fn`` (or ``file.py:fn``) reference."""
    return {"kind": "function", "location": ref, "digest": None}


def feature_service_source(repo: str, service: str, digest: str) -> dict[str, Any]:
    """A feature store's service as a source: the service, its repository and the sha256 of
    its definition (equal digests: the same features)."""
    return {"kind": "feast", "location": service, "repo": repo,
            "digest": digest.removeprefix("sha256:")}


def redact_url(url: str) -> str:
    """``url`` without its password, nor query parameters that look like secrets."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy reads: keep only what comes before any credentials
        return re.sub(r"//[^@/]*@", "//", url)
    kept = {k: v for k, v in parsed.query.items() if not _SECRET_PARAMS.search(k)}
    # URL.set ignores None, so the password is replaced, not set
    return parsed.set(query=kept)._replace(password=None).render_as_string(hide_password=False)


def sql_tables(query: str) -> list[str]:
    """The tables ``query`` reads: the names after FROM and JOIN (and in FROM a, b lists),
    lowercased, quotes removed, schema kept (``public.transactions``); CTE names left out."""
    text = _STRING.sub("''", _COMMENT.sub(" ", query))
    ctes = {m.lower() for m in re.findall(r"\b(\w+)\s+as\s*\(", text, re.IGNORECASE)}
    found: list[str] = []
    spans = _paren_spans(text)
    for match in _FROM.finditer(text):
        around = [(start, call) for start, end, call in spans if start < match.start() < end]
        if around and max(around)[1]:
            continue  # EXTRACT(year FROM ts), SUBSTRING(s FROM 2): not a table
        names = [match["first"]] + [m["name"] for m in _NAME_IN_LIST.finditer(match["more"])]
        for name in names:
            clean = normalize_table(name)
            if clean and clean not in ctes and clean not in _NOT_TABLES and clean not in found:
                found.append(clean)
    return found


def _paren_spans(text: str) -> list[tuple[int, int, bool]]:
    """Each pair of parentheses: ``(start, end, is a call)``; a call's content does not start
    with SELECT or WITH, and a FROM right inside one is not a table's."""
    spans: list[tuple[int, int, bool]] = []
    opened: list[int] = []
    for i, char in enumerate(text):
        if char == "(":
            opened.append(i)
        elif char == ")" and opened:
            start = opened.pop()
            head = text[start + 1 : start + 12].lstrip().lower()
            spans.append((start, i, not head.startswith(("select", "with"))))
    return spans


def normalize_table(name: str) -> str:
    """A table name as the index keeps it: lowercased, unquoted, no spaces around dots."""
    parts = [p.strip().strip('"`[]').lower() for p in name.split(".")]
    return ".".join(p for p in parts if p)


def check_sources(sources: Any) -> list[dict[str, Any]]:
    """``sources`` as a version records them, or :class:`ConfigError` (exit 2, HTTP 400) naming
    the first that is not an object with a text ``kind`` (up to 20 characters) and
    ``location``, and a ``digest`` that is null or a sha256 in hex."""
    if not isinstance(sources, list):
        raise ConfigError("data_sources must be a list of objects")
    for i, source in enumerate(sources):
        ok = (isinstance(source, dict) and isinstance(source.get("kind"), str)
              and 0 < len(source["kind"]) <= 20 and isinstance(source.get("location"), str)
              and (source.get("digest") is None or _SHA256.match(str(source["digest"]))))
        tables = source.get("tables") if isinstance(source, dict) else None
        if not ok or not (tables is None or (isinstance(tables, list)
                                             and all(isinstance(t, str) for t in tables))):
            raise ConfigError(f"data_sources[{i}] must be an object with kind and location "
                              "(text), digest (a sha256 in hex, or null) and tables (a list of "
                              "names, if any)")
    return sources


def index_rows(sources: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    """The ``(kind, location, digest)`` rows the registry indexes for ``sources``: one per
    source, and one ``table`` row per table a query reads."""
    rows: list[tuple[str, str, str | None]] = []
    for source in sources:
        rows.append((str(source["kind"]), str(source["location"])[:1000], source.get("digest")))
        rows.extend((TABLE, table[:1000], None) for table in source.get("tables") or ())
    return rows


__all__ = ["KINDS", "TABLE", "check_sources", "feature_service_source", "file_digest",
           "file_source", "function_source", "index_rows", "normalize_table", "redact_url",
           "sql_source", "sql_tables"]
