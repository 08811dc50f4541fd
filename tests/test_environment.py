"""environment.yml (conda users), pyproject.toml (pip) and `make install` must agree."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _requirement(requirement: str) -> str:
    """``"open_clip_torch"`` -> ``"open-clip-torch"``, ``"numpy >= 2"`` -> ``"numpy>=2"``: name
    normalised, version specifier kept, so a pin present on one side only is a drift too."""
    name, specifier = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", requirement).groups()
    return name.lower().replace("_", "-") + specifier.replace(" ", "")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pyproject_packages() -> set[str]:
    """The core dependencies plus the ``dev`` extra: what ``make install`` installs."""
    project = _project()
    return {_requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}


def _conda_environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _conda_packages() -> set[str]:
    pip = next(d["pip"] for d in _conda_environment()["dependencies"] if isinstance(d, dict))
    return {_requirement(r) for r in pip if not r.startswith("-e")}


def test_environment_yml_matches_pyproject():
    pyproject, conda = _pyproject_packages(), _conda_packages()
    assert pyproject == conda, f"only in pyproject: {pyproject - conda}; only in environment.yml: {conda - pyproject}"


def test_make_install_installs_the_dev_extra_that_holds_the_test_tooling():
    assert "pip install --quiet -e '.[dev]'" in (ROOT / "Makefile").read_text()
    dev = {_requirement(r) for r in _project()["optional-dependencies"]["dev"]}
    assert {"pytest", "nbval", "ray", "submitit"} <= dev  # the executor tests drive ray and submitit


def test_python_versions_agree():
    assert _project()["requires-python"] == ">=3.11"  # tomllib
    python = next(d for d in _conda_environment()["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"
    assert re.search(r"^PYTHON\s*\?=\s*python3\.11$", (ROOT / "Makefile").read_text(), re.MULTILINE)


def test_design_card_packages_are_declared():
    card = {"jupyterlab", "papermill", "torch", "torchvision", "open-clip-torch", "timm", "numpy>=2", "pandas",
            "seaborn", "scikit-learn", "scikit-image", "scipy", "tqdm", "nbval", "pytest"}
    assert card <= _pyproject_packages()
