"""The package's layer order, declared once in pyproject.toml (``[tool.importlinter]``): no module
imports a higher layer, and the modules of a package import each other without cycles."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter brings tomli
    import tomli as tomllib

PACKAGE = REPO / "hybridopt"


def declared_layers() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return layers


def test_no_module_imports_a_higher_layer_and_no_package_has_an_import_cycle():
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 kept, 0 broken" in run.stdout, run.stdout


def test_every_module_of_the_package_has_its_layer():
    """A new top-level module or subpackage is placed in the order, not left outside the check."""
    named = {m.strip() for layer in declared_layers() for m in re.split(r"[|:]", layer)}
    present = {f"hybridopt.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    present |= {f"hybridopt.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert present == named, f"without a layer: {sorted(present - named)}; gone: {sorted(named - present)}"
