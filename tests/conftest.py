"""Shared fixtures: the demo benchmark, generated once per test session."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The embedded demo benchmark (default parameters) in a session-wide temporary folder."""
    from sowa_lib.data import demo

    root = tmp_path_factory.mktemp("demo")
    demo.generate(root)
    return root


@pytest.fixture
def demo_study(demo_data, tmp_path):
    """The demo profile over the session's demo data, with a fresh results folder."""
    from sowa_lib.profiles import get_profile

    return get_profile("demo", data_root=demo_data, results_dir=tmp_path / "results")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core box: one intra-op thread per process is far faster than two
    that contend (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """Import a script of the repository by its path: ``load_script("benchmarks/gpu.py")``."""

    def load(relative: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(Path(relative).stem, REPO / relative)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
