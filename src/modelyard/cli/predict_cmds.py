"""``modelyard predict``: load a version in this process and predict JSON from a file or stdin."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from modelyard.cli.output import print_json_flat
from modelyard.cli.state import State, pass_state
from modelyard.errors import InputError


@click.command(short_help="Predict JSON input with a registered version.")
@click.argument("ref", metavar="MODEL[:VERSION|@ALIAS]")
@click.option("--input", "-i", "source", default="-", show_default=True, metavar="FILE|-",
              help="JSON input: records [{...}], columns {name: [...]}, rows [[...]], a tensor "
                   "(nested lists) or strings. '-' reads stdin.")
@click.option("--scores", is_flag=True, help="Also print class scores and the class order.")
@click.option("--device", default="auto", show_default=True,
              help="Where to run the model: auto, cpu or cuda:N.")
@pass_state
def predict(state: State, ref: str, source: str, scores: bool, device: str) -> None:
    """Predict with a registered version, in-process, and print the result as JSON.

    \b
    modelyard predict fraud@production --input examples/fraud/example_input.json
    echo '["my parcel never came"]' | modelyard predict tickets --scores
    """
    payload = read_payload(source)
    if state.remote:  # the server predicts (and logs it); its request_id names it in feedback
        from modelyard.cli.remote import RemoteRegistry

        remote = state.registry()
        assert isinstance(remote, RemoteRegistry)
        print_json_flat(remote.predict(ref, payload, scores=scores))
        return
    from modelyard.predictor import load

    predictor = load(ref, device=device, registry=state.local_registry())
    result = predictor.predict_full(payload, scores=scores)
    print_json_flat({"model": predictor.name, "version": predictor.version,
                **result.to_dict(scores=scores)})


def read_payload(source: str) -> Any:
    """Parse JSON from the file ``source`` or from stdin (``-``); raises :class:`InputError`."""
    if source == "-":
        stream = sys.stdin
        if stream.isatty():
            raise InputError("no input: pipe JSON into stdin or pass --input FILE")
        text, where = stream.read(), "stdin"
    else:
        path = Path(source)
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise InputError(f"cannot read --input {source}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"--input {source} is not UTF-8 text (byte {exc.start}); "
                             "save it as UTF-8 JSON") from None
    if not text.strip():
        raise InputError(f"no input: {where} is empty; give JSON records, columns or rows")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None


__all__ = ["predict", "read_payload"]
