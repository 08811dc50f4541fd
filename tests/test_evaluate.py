"""The runner end to end on the demo benchmark with a toy method: store layout, resume, retries,
shared references, and every executor giving identical result files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sowa_lib import runs
from sowa_lib.evaluate import Plan, make_jobs, run_plan
from sowa_lib.executors import LocalExecutor, SweepError, get_executor

TOY = "toy_method:MeanDistance"
CATS = ("brick", "grass")


def _plan(**kw) -> Plan:
    defaults = dict(method=TOY, setting="few_shot", datasets=("demo_a",), shots=(1, 2), seeds=(0, 1), categories=CATS)
    return Plan(**{**defaults, **kw})


def _results(study) -> dict[str, dict]:
    """Result files keyed by relative path, without the fields that legitimately differ between runs."""
    out = {}
    for path in sorted((study.run_dir / "runs").rglob("*.json")):
        record = json.loads(path.read_text())
        record.pop("provenance"), record.pop("seconds")
        out[str(path.relative_to(study.run_dir))] = record
    return out


def test_sweep_writes_one_file_per_run_and_resumes(demo_study):
    frame = run_plan(_plan(), demo_study, progress=False)
    assert len(frame) == 2 * 2 * 2 * 7  # categories x shots x seeds x metrics
    assert frame.value.between(0, 1).all()
    files = {p: p.stat().st_mtime_ns for p in (demo_study.run_dir / "runs").rglob("*.json")}
    assert len(files) == 8
    record = json.loads(next(iter(files)).read_text())
    assert {"commit", "torch", "open_clip", "host", "device", "created"} <= set(record["provenance"])
    assert len(record["references"]) == record["spec"]["shots"]
    again = run_plan(_plan(), demo_study, progress=False)
    assert again.equals(frame)
    assert {p: p.stat().st_mtime_ns for p in files} == files  # nothing recomputed


def test_interrupted_sweep_completes_only_missing_runs(demo_study):
    run_plan(_plan(shots=(1,)), demo_study, progress=False)
    done = {p: p.stat().st_mtime_ns for p in (demo_study.run_dir / "runs").rglob("*.json")}
    run_plan(_plan(), demo_study, progress=False)  # the "rerun" asks for more than was finished
    after = {p: p.stat().st_mtime_ns for p in (demo_study.run_dir / "runs").rglob("*.json")}
    assert len(after) == 8 and all(after[p] == t for p, t in done.items())


def test_zero_shot_runs_once_per_category(demo_study):
    frame = run_plan(_plan(setting="zero_shot", shots=(0,)), demo_study, progress=False)
    assert sorted(frame.seed.unique()) == [0] and frame.category.nunique() == 2


def test_same_references_across_methods(demo_study):
    run_plan(_plan(), demo_study, progress=False)
    run_plan(_plan(method="toy_method:KilledMidway"), demo_study, progress=False)
    refs: dict[tuple, set] = {}
    for run in runs.iter_runs(demo_study.run_dir):
        spec = run["spec"]
        refs.setdefault((spec["category"], spec["shots"], spec["seed"]), set()).add(tuple(run["references"]))
    assert len(refs) == 8 and all(len(v) == 1 for v in refs.values())


def test_transient_failure_is_retried(demo_study, tmp_path):
    marker = tmp_path / "failed-once"
    plan = _plan(variant="flaky", overrides={"fail_marker": str(marker)})
    frame = run_plan(plan, demo_study, executor=LocalExecutor(retries=1, progress=False), progress=False)
    assert marker.exists() and len(frame) == 8 * 7


def test_persistent_failure_is_reported_after_the_rest_completes(demo_study):
    plan = _plan(variant="broken", overrides={"always_fail_on": "grass"})
    with pytest.raises(SweepError, match="grass"):
        run_plan(plan, demo_study, executor=LocalExecutor(retries=1, progress=False), progress=False)
    done = list((demo_study.run_dir / "runs").rglob("*.json"))
    assert len(done) == 4 and all("/brick/" in str(p) for p in done)


def test_killed_worker_leaves_no_partial_file_and_rerun_completes(demo_study):
    killer = _plan(method="toy_method:KilledMidway", overrides={"kill_on": "grass"}, variant="killed")
    with pytest.raises(SweepError, match=r"demo_a/grass.*WorkerDied: worker process exited with code 9"):
        run_plan(killer, demo_study, executor=LocalExecutor(jobs=2, retries=0, progress=False), progress=False)
    run_dir = demo_study.run_dir / "runs"
    assert not [p for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".json"]
    assert {p.parent.name for p in run_dir.rglob("*.json")} == {"brick"}
    healed = _plan(method="toy_method:KilledMidway", overrides={"kill_on": "none"}, variant="killed")
    assert len(run_plan(healed, demo_study, progress=False)) == 8 * 7


def test_jobs_group_runs_by_category(demo_study):
    from sowa_lib.evaluate import expand

    specs = expand(_plan(), demo_study, {"demo_a": list(CATS)})
    train_jobs, eval_jobs = make_jobs(_plan(), demo_study, specs)
    assert train_jobs == [] and len(eval_jobs) == 2 and all(len(j.specs) == 4 for j in eval_jobs)


@pytest.mark.parametrize("name", ["local-pool", "ray", "slurm-local"])
def test_executors_write_identical_result_files(demo_data, tmp_path, monkeypatch, name):
    from sowa_lib.profiles import get_profile

    reference = get_profile("demo", data_root=demo_data, results_dir=tmp_path / "sequential")
    run_plan(_plan(), reference, progress=False)
    other = get_profile("demo", data_root=demo_data, results_dir=tmp_path / name)
    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", tests_dir)  # workers in fresh interpreters import toy_method from here
    if name == "local-pool":
        executor = get_executor("local", jobs=2, progress=False)
    elif name == "ray":
        pytest.importorskip("ray", reason="ray is an optional extra: pip install -e '.[ray]'")
        executor = get_executor("ray", progress=False, init_kwargs={
            "num_cpus": 2, "include_dashboard": False, "runtime_env": {"env_vars": {"PYTHONPATH": tests_dir}}})
    else:
        pytest.importorskip("submitit", reason="submitit is an optional extra: pip install -e '.[slurm]'")
        executor = get_executor("slurm", cluster="local", folder=str(tmp_path / "submitit"), progress=False, timeout_min=5)
    try:
        run_plan(_plan(), other, executor=executor, progress=False)
    finally:
        if name == "ray":
            import ray

            ray.shutdown()
    assert _results(other) == _results(reference)
    assert len(_results(other)) == 8
    assert all(not math.isnan(v) for r in _results(other).values() for v in r["metrics"].values() if v is not None)


def test_paper_profile_refuses_to_start_without_data(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", Path(__file__).parent.parent / "notebooks" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    assert reproduce.main(["--profile", "paper", "--data-root", str(tmp_path / "nothing")]) == 2
    message = capsys.readouterr().err
    assert "cannot start" in message and "make data DATASETS=mvtec" in message and str(tmp_path / "nothing" / "mvtec") in message


def test_missing_weights_are_listed_before_the_study_starts(monkeypatch, tmp_path):
    from sowa_lib import methods
    from sowa_lib.backbones.weights import WeightsNotFoundError
    from sowa_lib.profiles import ProfileNotReadyError, check_weights, get_profile

    def missing(name, profile=None, **kw):
        raise WeightsNotFoundError(f"put {name}.pt in the cache")

    monkeypatch.setattr(methods, "build", missing)
    paper = get_profile("paper", data_root=tmp_path)
    with pytest.raises(ProfileNotReadyError, match=r"(?s)winclip: put winclip\.pt.*sowa: put sowa\.pt"):
        check_weights(paper, ["winclip", "sowa"])
    check_weights(get_profile("demo", data_root=tmp_path), ["winclip"])  # the demo needs no weights
