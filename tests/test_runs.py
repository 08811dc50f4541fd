import json
import math
import multiprocessing as mp
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch

from sowa_lib import runs


def _spec(category="bottle", seed=0, shots=1):
    return runs.RunSpec("demo", "demo_a", category, "winclip", "few_shot", shots, seed)


def test_write_and_load_round_trip(tmp_path):
    runs.write_run(tmp_path, _spec(), {"image_auroc": 0.75, "aupro": math.nan}, reasons={"aupro": "no anomalous pixel"},
                   references=["bottle/train/good/001.png"], provenance=runs.provenance(weights="random"), aupro_variant="mvtec")
    frame = runs.load_results(tmp_path)
    assert list(frame.columns) == runs.RESULT_COLUMNS
    assert len(frame) == 2
    row = frame.set_index("metric").loc["aupro"]
    assert math.isnan(row.value) and row.reason == "no anomalous pixel"
    assert (row.aupro_variant, row.weights, row.torch) == ("mvtec", "random", torch.__version__)
    assert row.open_clip == runs.provenance()["open_clip"] and row.sowa_lib == runs.provenance()["sowa_lib"]
    assert frame.set_index("metric").loc["image_auroc", "value"] == 0.75
    assert runs.is_done(tmp_path, _spec()) and not runs.is_done(tmp_path, _spec(seed=1))


def test_provenance_is_required():
    with pytest.raises(TypeError, match="provenance"):
        runs.write_run(Path("unused"), _spec(), {"image_auroc": 0.5})


def _finished_process_id() -> int:
    process = mp.get_context("fork").Process(target=int)
    process.start()
    process.join()
    return process.pid


def test_only_orphaned_temporary_files_are_removed(tmp_path):
    folder = runs.run_path(tmp_path, _spec()).parent
    folder.mkdir(parents=True)
    host, old = socket.gethostname(), time.time() - runs.ORPHAN_AGE_SECONDS - 10
    live = folder / f".k1_seed0@{host}@{os.getpid()}@abc.tmp"  # this process: a write in progress
    dead = folder / f".k1_seed1@{host}@{_finished_process_id()}@abc.tmp"
    remote_fresh = folder / ".k1_seed2@other-node@123@abc.tmp"  # cannot tell; young: left alone
    remote_old = folder / ".k1_seed3@other-node@123@abc.tmp"
    for path in (live, dead, remote_fresh, remote_old):
        path.write_text("{")
    os.utime(remote_old, (old, old))
    assert sorted(runs.remove_orphaned_temporaries(tmp_path)) == sorted([dead, remote_old])
    assert sorted(folder.iterdir()) == sorted([live, remote_fresh])


def test_spec_validation():
    with pytest.raises(ValueError):
        runs.RunSpec("demo", "d", "c", "m", "zero-shot")
    with pytest.raises(ValueError):
        runs.RunSpec("demo", "d", "../c", "m", "zero_shot")


def test_failed_write_leaves_no_file(tmp_path):
    class Unserialisable:
        def __repr__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        runs.write_run(tmp_path, _spec(), {"image_auroc": 0.5}, provenance={}, config=Unserialisable())
    assert not runs.is_done(tmp_path, _spec())
    assert not list((tmp_path / "runs").rglob("*.tmp")) and not list((tmp_path / "runs").rglob(".*"))


def _sweep(results_dir: str, n: int, delay: float) -> None:
    for i in range(n):
        spec = _spec(seed=i)
        if runs.is_done(Path(results_dir), spec):
            continue
        time.sleep(delay)
        runs.write_run(Path(results_dir), spec, {"image_auroc": i / n}, provenance={})


def test_killed_sweep_resumes_without_recomputing(tmp_path):
    proc = mp.get_context("fork").Process(target=_sweep, args=(str(tmp_path), 40, 0.05))
    proc.start()
    time.sleep(0.6)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    done_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*.json")}
    assert 0 < len(done_before) < 40
    for path in done_before:
        json.loads(path.read_text())  # every file that exists is complete
    _sweep(str(tmp_path), 40, 0.0)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*.json")}
    assert len(after) == 40
    assert all(after[p] == t for p, t in done_before.items())  # finished runs were not recomputed
    assert sorted(runs.load_results(tmp_path).seed) == list(range(40))
