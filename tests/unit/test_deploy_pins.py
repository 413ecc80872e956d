"""Pins: an image's requirements closed over the installed versions; its wheels from a cache."""

from __future__ import annotations

import importlib.metadata

import pytest
from packaging.tags import Tag

from modelyard.deploy.dockerfile import GPU_BASE
from modelyard.deploy.image import (
    BASE_EXTRAS,
    FLAVOR_EXTRAS,
    BuildRequest,
    ModelyardWheel,
    image_plan,
)
from modelyard.deploy.pins import Installed, Pin, installed, pin_closure
from modelyard.deploy.plan import Pool
from modelyard.deploy.wheelhouse import choose_wheels
from modelyard.errors import ConfigError

ENV = {
    "numpy": Installed("numpy", "2.1.0"),
    "scikit-learn": Installed("scikit-learn", "1.5.2", ("numpy>=1.19", "joblib>=1.2")),
    "joblib": Installed("joblib", "1.4.2"),
    "psycopg": Installed("psycopg", "3.2.3", ('psycopg-binary==3.2.3; extra == "binary"',
                                               'tzdata; sys_platform == "win32"')),
    "psycopg-binary": Installed("psycopg-binary", "3.2.3"),
    "torch": Installed("torch", "2.5.1+cpu"),
}
REQUIRES = ["numpy>=1.26", 'scikit-learn>=1.4; extra == "sklearn"',
            'psycopg[binary]>=3.1; extra == "postgres"', 'torch>=2.3; extra == "torch"']


def test_only_the_extras_asked_for_are_pinned_with_their_dependencies():
    pins = pin_closure(REQUIRES, ["sklearn", "postgres"], ENV.get)
    assert pins == [Pin("joblib", "1.4.2"), Pin("numpy", "2.1.0"), Pin("psycopg", "3.2.3"),
                    Pin("psycopg-binary", "3.2.3"), Pin("scikit-learn", "1.5.2")]


def test_no_extras_pins_the_core_only():
    assert pin_closure(REQUIRES, [], ENV.get) == [Pin("numpy", "2.1.0")]


def test_a_requirement_that_is_not_installed_names_what_to_install():
    with pytest.raises(ConfigError, match=r"joblib \(needed by scikit-learn\) is not installed"):
        pin_closure(REQUIRES, ["sklearn"], {k: v for k, v in ENV.items() if k != "joblib"}.get)


def test_an_installed_version_the_requirement_refuses_is_an_error():
    old = {**ENV, "numpy": Installed("numpy", "1.20.0")}
    with pytest.raises(ConfigError, match=r"numpy 1\.20\.0 is installed but modelyard needs"):
        pin_closure(REQUIRES, [], old.get)


def test_names_are_canonical_so_pins_match_wheel_files():
    env = {"pyyaml": Installed("PyYAML", "6.0.2"), "ruamel.yaml": Installed("ruamel.yaml", "1")}
    pins = pin_closure(["PyYAML>=6", "ruamel.yaml"], [], lambda n: env.get(n.lower()))
    assert pins == [Pin("pyyaml", "6.0.2"), Pin("ruamel-yaml", "1")]


def test_an_sklearn_pool_from_this_environment_carries_no_torch_or_tensorflow():
    requires = importlib.metadata.requires("modelyard") or []
    pins = pin_closure(requires, [FLAVOR_EXTRAS["sklearn"], *BASE_EXTRAS], installed)
    names = {pin.name for pin in pins}
    assert {"scikit-learn", "numpy", "psycopg"} <= names
    assert not names & {"torch", "tensorflow", "tensorflow-cpu", "keras", "xgboost-cpu"}


TAGS = [Tag("cp311", "cp311", "manylinux_2_28_x86_64"), Tag("cp311", "abi3", "linux_x86_64"),
        Tag("py3", "none", "any")]


def test_the_wheel_for_this_platform_is_chosen_and_missing_pins_are_listed():
    files = ["numpy-2.1.0-cp311-cp311-manylinux_2_28_x86_64.whl",
             "numpy-2.1.0-cp312-cp312-manylinux_2_28_x86_64.whl",
             "numpy-2.0.0-cp311-cp311-manylinux_2_28_x86_64.whl",
             "joblib-1.4.2-py3-none-any.whl", "not-a-wheel.txt",
             "scikit_learn-1.5.2-cp311-cp311-win_amd64.whl"]
    pins = [Pin("numpy", "2.1.0"), Pin("joblib", "1.4.2"), Pin("scikit-learn", "1.5.2")]
    chosen, missing = choose_wheels(pins, files, TAGS)
    assert chosen == {Pin("numpy", "2.1.0"): files[0], Pin("joblib", "1.4.2"): files[3]}
    assert missing == [Pin("scikit-learn", "1.5.2")]


def test_the_most_specific_tag_wins_when_several_wheels_fit():
    files = ["orjson-3.10.0-py3-none-any.whl",
             "orjson-3.10.0-cp311-cp311-manylinux_2_28_x86_64.whl"]
    chosen, _ = choose_wheels([Pin("orjson", "3.10.0")], files, TAGS)
    assert chosen[Pin("orjson", "3.10.0")] == files[1]


def test_versions_compare_as_versions_not_text():
    chosen, missing = choose_wheels([Pin("torch", "2.5.1+cpu"), Pin("six", "1.16")],
                                    ["torch-2.5.1+cpu-cp311-cp311-linux_x86_64.whl",
                                     "six-1.16.0-py3-none-any.whl"],
                                    [Tag("cp311", "cp311", "linux_x86_64"), *TAGS])
    assert len(chosen) == 2 and not missing


def test_an_image_plan_pins_its_pools_extras_and_modelyard_itself(tmp_path):
    own = ModelyardWheel(tmp_path / "modelyard-0.3.0-py3-none-any.whl", "0.3.0",
                         tuple(REQUIRES), ("sklearn", "postgres", "torch"))
    request = BuildRequest(project=tmp_path / "modelyard.yaml", out=tmp_path, tag="acme/yard")
    cpu = image_plan(request, Pool("cpu", False, ("fraud",), ("sklearn",)), own,
                     lookup=ENV.get)
    assert cpu.tag == "acme/yard-cpu:0.3.0" and cpu.python == "python3"
    assert cpu.base_image.startswith("python:3.") and cpu.base_image.endswith("-slim-bookworm")
    assert [str(p) for p in cpu.pins] == [
        "joblib==1.4.2", "modelyard==0.3.0", "numpy==2.1.0", "psycopg==3.2.3",
        "psycopg-binary==3.2.3", "scikit-learn==1.5.2"]
    gpu = image_plan(request, Pool("gpu", True, ("digits",), ("torch",)), own, lookup=ENV.get)
    assert (gpu.base_image, gpu.python) == (GPU_BASE, "python3.11")
    assert Pin("torch", "2.5.1+cpu") in gpu.pins and Pin("scikit-learn", "1.5.2") not in gpu.pins


def test_the_wheel_is_built_offline_only_when_the_build_backend_is_installed(tmp_path):
    from modelyard.deploy.image import _backend_installed

    (tmp_path / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=1"]\n')
    assert _backend_installed(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=999"]\n')
    assert not _backend_installed(tmp_path)
