"""benchmarks/gpu.py: its measuring loop stores efficiency runs (run here on the CPU with a tiny
configuration), and without a GPU it says so and exits with its own status."""
from __future__ import annotations

import pytest
import torch

from sowa_lib import runs
from sowa_lib.evaluate import Plan


@pytest.fixture(scope="module")
def gpu_benchmark(load_script):
    return load_script("benchmarks/gpu.py")


def test_entries_are_stored_as_efficiency_runs(gpu_benchmark, demo_study):
    entries = (("patchcore K=1", Plan("patchcore", "few_shot", (), shots=(1,))),)
    rows = gpu_benchmark.run_entries(demo_study, max_batch=2, entries=entries, dataset="demo_a", n_images=1, repeats=1)
    row = rows["patchcore K=1"]
    assert row["px"] == 112 and row["fps_batch1"] > 0 and row["largest_batch"] == 0  # no batch search on a CPU
    (record,) = [r for r in runs.iter_runs(demo_study.run_dir) if r["spec"]["setting"] == "efficiency"]
    assert (record["spec"]["method"], record["spec"]["shots"]) == ("patchcore", 1)
    assert record["metrics"]["fps"] == pytest.approx(row["fps_batch1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_it_says_so_and_exits_3(gpu_benchmark, capsys):
    assert gpu_benchmark.main([]) == gpu_benchmark.NO_GPU_STATUS == 3
    assert "no CUDA GPU is present" in capsys.readouterr().err
