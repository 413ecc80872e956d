"""``modelyard export``: a version to ONNX with a parity proof, registered as a derived version."""

from __future__ import annotations

from pathlib import Path

import click

from modelyard.cli.output import print_json
from modelyard.cli.register_cmds import read_sample
from modelyard.cli.state import State, pass_state

#: the default score tolerance, and the one for an int8-quantized export (lossy by design:
#: its labels are what must agree).
TOLERANCE = 1e-4
TOLERANCE_INT8 = 5e-2


@click.command(short_help="Export a version to ONNX, proving parity; registered as derived.")
@click.argument("ref", metavar="MODEL[:VERSION|@ALIAS]")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="The format to convert to.")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="Quantize the ONNX model's weights to int8 (dynamic quantization).")
@click.option("--data", type=click.Path(exists=True, path_type=Path), metavar="SAMPLE",
              help="Held-out input rows for the parity check (CSV, Parquet, JSON records, "
                   ".npy); default: rows rebuilt from the version's reference statistics.")
@click.option("--target", metavar="COLUMN", help="A label column in --data to leave out.")
@click.option("--tolerance", type=float, metavar="X",
              help=f"Largest allowed |score difference| (relative above a scale of 1); default "
                   f"{TOLERANCE:g}, {TOLERANCE_INT8:g} with --quantize int8.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=0.99, show_default=True,
              help="Smallest allowed share of rows whose labels agree.")
@click.option("--bundle", type=click.Path(path_type=Path), metavar="DIR",
              help="Also write an edge bundle into DIR (new or empty): the ONNX model, its "
                   "signature and a predictor package needing only onnxruntime and numpy.")
@click.option("--package", metavar="NAME",
              help="The bundle's Python package name (default: MODEL_model).")
@click.option("--json", "as_json", is_flag=True, help="Print the new version and parity as JSON.")
@pass_state
def export(state: State, ref: str, fmt: str, quantize: str | None, data: Path | None,
           target: str | None, tolerance: float | None, min_agreement: float,
           bundle: Path | None, package: str | None, as_json: bool) -> None:
    """Convert REF to ONNX, check that it answers the same, and register it as a new version.

    Both models answer a held-out sample; the maximum absolute difference of their scores
    and the share of agreeing labels become the new version's metrics (parity_*), and its meta
    names its source (derived_from). A conversion outside tolerance, or of a model part the
    converter does not support (named), is refused with exit 21 and nothing is registered.

    With --bundle DIR the ONNX version (REF itself when it already is one) is also written as
    a pip-installable package: 'pip install DIR', then 'import NAME; NAME.load().predict(rows)'.

    \b
    modelyard export fraud:3 --format onnx
    modelyard export vision@production --format onnx --quantize int8 --data sample.npy
    modelyard export fraud:3 --bundle dist/fraud-edge
    """
    from modelyard.deploy.bundle import check_target, write_bundle
    from modelyard.pipeline.export import export_onnx
    from modelyard.pipeline.parity import Limits

    registry = state.local_registry()
    found = registry.resolve(ref)
    if bundle is not None:
        check_target(bundle)  # before an export is registered for nothing
        if found.flavor == "onnx":  # already an export: bundle it as it is
            folder = write_bundle(registry, found, bundle, package)
            click.echo(f"bundled {found.ref} into {bundle} (package {folder.name})")
            return
    sample = read_sample(data, target)[0] if data is not None else None
    if tolerance is None:
        tolerance = TOLERANCE_INT8 if quantize == "int8" else TOLERANCE
    result = export_onnx(registry, ref, sample=sample, quantize=quantize,
                         limits=Limits(tolerance, min_agreement))
    written = (write_bundle(registry, result.version, bundle, package)
               if bundle is not None else None)
    if as_json:
        print_json({"version": result.version.to_dict(), "derived_from": result.source.ref,
                    "parity": result.parity.metrics(), "sample": result.sample,
                    "bundle": str(written) if written else None})
        return
    click.echo(f"exported {result.source.ref} -> {result.version.ref} ({fmt}"
               f"{', ' + quantize if quantize else ''}); parity on {result.sample} "
               f"{result.parity.summary()}")
    if written is not None:
        click.echo(f"bundled {result.version.ref} into {bundle} (package {written.name})")


__all__ = ["export"]
