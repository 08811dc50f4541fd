"""benchmarks/sweep.py (issue #15): on a small demo sweep its cached run encodes exactly the distinct
(encoder, image) pairs it counts from the data, and it prints what the README quotes from it."""
from __future__ import annotations

import re

import pytest
import torch

from sowa_lib import features


@pytest.fixture(scope="module")
def sweep_benchmark(load_script):
    return load_script("benchmarks/sweep.py")


@pytest.mark.slow
def test_the_cached_demo_sweep_encodes_each_distinct_image_once(sweep_benchmark, capsys, monkeypatch):
    monkeypatch.setenv(features.FEATURE_CACHE_ENV, "off")  # restored after: the script sets it per mode
    monkeypatch.setattr(features, "_RUNNER_CACHES", {})  # no encodings left from other tests
    threads = torch.get_num_threads()
    assert sweep_benchmark.main(["--shape", "demo", "--methods", "april_gan", "padim", "--shots", "1", "2",
                                 "--seeds", "0", "1", "--threads", str(threads)]) == 0
    printed = capsys.readouterr().out
    assert "cached forward passes == distinct pairs: True" in printed
    forwards = {mode: int(count) for mode, count in re.findall(r"^(off|memory)\s+(\d+)", printed, re.MULTILINE)}
    assert 0 < forwards["memory"] < forwards["off"]
    assert re.search(r"lowest wall ratio of any cache \(every uncached encoding free\): 0\.\d+", printed)
