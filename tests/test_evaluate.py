"""The runner end to end on the demo benchmark with a toy method: store layout, resume, retries,
shared references, and every executor giving identical result files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sowa_lib import runs
from sowa_lib.errors import SweepError
from sowa_lib.evaluate import Plan, run_plan
from sowa_lib.executors import LocalExecutor, get_executor
from sowa_lib.jobs import expand, make_jobs

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


def test_worker_killed_while_writing_leaves_no_run_and_the_rerun_removes_its_temporary_file(demo_study):
    disarm = demo_study.results_dir / "disarmed"
    killer = _plan(method="toy_method:KilledMidway", overrides={"kill_on": "grass", "kill_at": "write", "disarmed_by": str(disarm)},
                   variant="killed")
    with pytest.raises(SweepError, match=r"demo_a/grass.*WorkerDied"):
        run_plan(killer, demo_study, executor=LocalExecutor(jobs=2, retries=0, progress=False), progress=False)
    run_dir = demo_study.run_dir / "runs"
    orphans = list(run_dir.rglob(".*.tmp"))
    assert [p.parent.name for p in orphans] == ["grass"]  # killed mid-write: the temporary file was there
    assert not [p for p in run_dir.rglob("*.json") if p.parent.name == "grass"]
    done = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.json")}
    assert len(done) == 4
    disarm.touch()  # the same configuration, no longer killed: the rerun must reuse the four completed runs
    assert len(run_plan(killer, demo_study, executor=LocalExecutor(jobs=2, progress=False), progress=False)) == 8 * 7
    assert not list(run_dir.rglob(".*.tmp"))
    assert {p: p.stat().st_mtime_ns for p in done} == done  # the completed runs were not recomputed


def test_failed_training_does_not_stop_the_other_evaluations(demo_study):
    plan = _plan(method="toy_method:TrainedMeanDistance", setting="one_class", shots=(0,), seeds=(0,),
                 variant="bad_training", overrides={"fail_training_on": "grass"})
    with pytest.raises(SweepError) as failure:
        run_plan(plan, demo_study, executor=LocalExecutor(retries=0, progress=False), progress=False)
    message = str(failure.value)
    assert "1 job(s) failed" in message and "train toy_method:TrainedMeanDistance/bad_training on ('demo_a', 'grass', 0)" in message
    assert "toy training failure on grass" in message
    assert "1 job(s) not run because the training they need failed:\n- toy_method:TrainedMeanDistance/bad_training demo_a/grass" in message
    done = list((demo_study.run_dir / "runs").rglob("*.json"))
    assert [p.parent.name for p in done] == ["brick"]


def test_a_completed_training_keeps_its_final_checkpoint_and_not_its_epoch_snapshots(demo_study):
    plan = _plan(method="toy_method:TrainedMeanDistance", setting="one_class", shots=(0,), seeds=(0,), categories=("brick",))
    run_plan(plan, demo_study, progress=False)
    folder = demo_study.run_dir / "checkpoints" / "toy_method:TrainedMeanDistance" / "default"
    assert sorted(p.name for p in folder.iterdir()) == ["demo_a-brick_seed0.log.json", "demo_a-brick_seed0.pt"]
    snapshots = json.loads((folder / "demo_a-brick_seed0.log.json").read_text())["snapshots"]
    assert any(".parts/epoch_" in s for s in snapshots)  # written (beside the folder's fingerprint) ...
    assert not any(Path(s).exists() for s in snapshots)  # ... then removed
    leftover = folder / "demo_a-brick_seed0.parts"  # a snapshot an older version left beside a final checkpoint
    leftover.mkdir()
    (leftover / "epoch_001.pt").write_bytes(b"")
    for result in (demo_study.run_dir / "runs").rglob("*.json"):
        result.unlink()
    run_plan(plan, demo_study, progress=False)  # loads the checkpoint
    assert not leftover.exists()


def _mtimes(study) -> dict[str, int]:
    return {str(p.relative_to(study.run_dir / "runs")): p.stat().st_mtime_ns for p in (study.run_dir / "runs").rglob("*.json")}


def test_runs_scored_with_another_aupro_variant_are_recomputed_and_the_old_ones_set_aside(demo_study):
    plan = _plan(shots=(1,), seeds=(0,))
    run_plan(plan, demo_study, progress=False)
    with pytest.warns(UserWarning, match=r"stored run is stale \(differs: metrics.aupro_variant\)"):
        frame = run_plan(plan, demo_study, progress=False, aupro_variant="cflow_loop")
    assert set(frame.aupro_variant) == {"cflow_loop"} and not frame.stale.any()
    assert len(list((demo_study.run_dir / "runs").rglob("*.json.stale-*"))) == 2
    assert {"sowa_lib", "torch", "open_clip", "weights", "dirty", "fingerprint"} <= set(frame.columns) and (frame.torch != "").all()


def test_changing_an_option_recomputes_exactly_the_runs_it_affects(demo_study):
    """Two variants share the store; changing one variant's option recomputes that variant's runs
    only, with the differing option named; rerunning unchanged recomputes nothing."""
    small, other = _plan(shots=(1,), variant="small", overrides={"image_size": 32}), _plan(shots=(1,), variant="other", overrides={"image_size": 32})
    run_plan(small, demo_study, progress=False)
    run_plan(other, demo_study, progress=False)
    before = _mtimes(demo_study)
    changed = _plan(shots=(1,), variant="small", overrides={"image_size": 48})
    with pytest.warns(UserWarning, match=r"differs: config.image_size"):
        run_plan(changed, demo_study, progress=False)
    after = _mtimes(demo_study)
    recomputed = {p for p in before if after[p] != before[p]}
    assert recomputed == {p for p in before if p.startswith("toy_method:MeanDistance/small/")} and len(recomputed) == 4
    run_plan(changed, demo_study, progress=False)
    run_plan(other, demo_study, progress=False)
    assert _mtimes(demo_study) == after


def test_stale_runs_are_kept_only_on_request_and_marked(demo_study, monkeypatch):
    run_plan(_plan(shots=(1,), seeds=(0,), variant="v", overrides={"image_size": 32}), demo_study, progress=False)
    before = _mtimes(demo_study)
    monkeypatch.setenv("SOWA_REUSE_STALE", "1")
    frame = run_plan(_plan(shots=(1,), seeds=(0,), variant="v", overrides={"image_size": 48}), demo_study, progress=False)
    assert frame.stale.all() and set(_mtimes(demo_study)) == set(before)
    monkeypatch.delenv("SOWA_REUSE_STALE")
    frame = run_plan(_plan(shots=(1,), seeds=(0,), variant="v", overrides={"image_size": 32}), demo_study, progress=False)
    assert not frame.stale.any()  # current again: the mark is cleared


def test_executor_options_come_from_the_environment(monkeypatch):
    from sowa_lib.executors import RayExecutor, SlurmExecutor, worker_environment

    for variable, value in {"JOBS": "3", "RETRIES": "4", "RAY_NUM_GPUS": "0.5", "RAY_NUM_CPUS": "2",
                            "SOWA_SLURM_GPUS": "2", "SOWA_SLURM_TIME_MIN": "90", "SOWA_SLURM_PARTITION": "gpu"}.items():
        monkeypatch.setenv(variable, value)
    local, ray_executor, slurm = get_executor("local"), get_executor("ray"), get_executor("slurm", timeout_min=30)
    assert (local.jobs, local.retries) == (3, 4)
    assert (ray_executor.num_gpus, ray_executor.num_cpus, ray_executor.retries) == (0.5, 2.0, 4)
    assert (slurm.gpus_per_node, slurm.timeout_min, slurm.partition) == (2, 30, "gpu")  # an argument beats the variable
    assert RayExecutor().num_gpus is None and SlurmExecutor().gpus_per_node is None  # None: 1 GPU on a CUDA profile
    monkeypatch.setenv("SOWA_SLURM_GPUS", "a100:2")
    with pytest.raises(ValueError, match=r"SOWA_SLURM_GPUS='a100:2' is not a valid int"):
        get_executor("slurm")
    for variable in ("DATA_ROOT", "TORCH_HOME", "HF_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("WEIGHTS_DIR", "/shared/weights")
    monkeypatch.setenv("SOWA_KEEP_BUILT", "0")
    assert worker_environment() == {"WEIGHTS_DIR": "/shared/weights", "SOWA_KEEP_BUILT": "0", "HF_HUB_OFFLINE": "1"}


def test_jobs_group_runs_by_category(demo_study):
    specs = expand(_plan(), demo_study, {"demo_a": list(CATS)})
    train_jobs, eval_jobs = make_jobs(_plan(), demo_study, specs)
    assert train_jobs == [] and len(eval_jobs) == 2 and all(len(j.specs) == 4 for j in eval_jobs)


#: A real method through every executor: PatchCore on the demo profile, one category, K = 1, one seed.
PATCHCORE = Plan("patchcore", "few_shot", ("demo_a",), shots=(1,), seeds=(0,), categories=("brick",))


@pytest.fixture(scope="module")
def single_thread_reference(demo_data, tmp_path_factory) -> dict[str, dict]:
    """The toy sweep and the PatchCore run computed sequentially in this process with one CPU thread:
    float sums depend on the thread count, so every executor's workers run with one thread too."""
    import torch

    from sowa_lib.profiles import get_profile

    reference = get_profile("demo", data_root=demo_data, results_dir=tmp_path_factory.mktemp("sequential"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for plan in (_plan(), PATCHCORE):
            run_plan(plan, reference, progress=False)
    finally:
        torch.set_num_threads(threads)
    return _results(reference)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["local-pool", "ray", "slurm-local"])
def test_executors_write_identical_result_files(single_thread_reference, demo_data, tmp_path, monkeypatch, request, name):
    from sowa_lib.profiles import get_profile

    other = get_profile("demo", data_root=demo_data, results_dir=tmp_path / name)
    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", tests_dir)  # workers in fresh interpreters import toy_method from here
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the reference (Ray sets it from num_cpus=1 itself)
    if name == "local-pool":
        executor = get_executor("local", jobs=2, progress=False)
    elif name == "ray":
        ray = pytest.importorskip("ray", reason="ray is an optional extra: pip install -e '.[ray]'")
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": tests_dir}})
        request.addfinalizer(ray.shutdown)
        executor = get_executor("ray", progress=False)
    else:
        pytest.importorskip("submitit", reason="submitit is an optional extra: pip install -e '.[slurm]'")
        executor = get_executor("slurm", cluster="local", folder=str(tmp_path / "submitit"), progress=False, timeout_min=5)
    # set after the Ray instance started: its workers see WEIGHTS_DIR only if the executor forwards it
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    probe = _plan(shots=(1,), seeds=(0,), categories=("brick",), variant="probe",
                  overrides={"expect_environment": {"WEIGHTS_DIR": str(tmp_path / "weights"), "HF_HUB_OFFLINE": "1"}})
    for plan in (_plan(), PATCHCORE, probe):
        run_plan(plan, other, executor=executor, progress=False)
    written = {path: record for path, record in _results(other).items() if "/probe/" not in path}
    assert written == single_thread_reference
    assert len(written) == 8 + 1 and any("/patchcore/" in path for path in written)
    assert all(not math.isnan(v) for r in written.values() for v in r["metrics"].values() if v is not None)


def test_paper_profile_refuses_to_start_without_data(tmp_path, capsys, load_script):
    reproduce = load_script("notebooks/reproduce.py")
    assert reproduce.main(["--profile", "paper", "--data-root", str(tmp_path / "nothing")]) == 2
    message = capsys.readouterr().err
    assert "cannot start" in message and "make data DATASETS=mvtec" in message and str(tmp_path / "nothing" / "mvtec") in message


def test_missing_weights_are_listed_before_the_study_starts(monkeypatch, tmp_path):
    from sowa_lib import methods
    from sowa_lib.errors import ProfileNotReadyError, WeightsNotFoundError
    from sowa_lib.preflight import check_weights
    from sowa_lib.profiles import get_profile

    built = []

    def missing(name, profile=None, **kw):
        built.append((name, kw))
        raise WeightsNotFoundError(f"put {kw.get('backbone', name)}.pt in the cache")

    monkeypatch.setattr(methods, "build", missing)
    paper = get_profile("paper", data_root=tmp_path)
    with pytest.raises(ProfileNotReadyError, match=r"(?s)winclip: put winclip\.pt.*sowa: put sowa\.pt"):
        check_weights(paper, ["winclip", "sowa"])
    variants = [("agpnet", {"backbone": "ViT-B-16", "taps": None}), ("sowa", {"window": 6}), ("agpnet", {"backbone": "ViT-B-16", "taps": (2,)})]
    built.clear()
    with pytest.raises(ProfileNotReadyError, match=r"agpnet \{'backbone': 'ViT-B-16'\}: put ViT-B-16\.pt"):
        check_weights(paper, ["agpnet"], variants)
    assert [name for name, _ in built] == ["agpnet", "agpnet"]  # the default, then one build per distinct backbone
    check_weights(get_profile("demo", data_root=tmp_path), ["winclip"])  # the demo needs no weights


def test_results_dir_defaults_to_sowa_results_dir_and_figures_follow_it(monkeypatch, tmp_path):
    """``make test-notebooks`` sets SOWA_RESULTS_DIR so that notebooks run with their defaults write
    nothing into the user's results/ or figures/."""
    from sowa_lib.profiles import REPO_ROOT, get_profile

    monkeypatch.delenv("SOWA_RESULTS_DIR", raising=False)
    assert get_profile("demo").run_dir == REPO_ROOT / "results" / "demo"
    monkeypatch.setenv("SOWA_RESULTS_DIR", str(tmp_path / "results"))
    study = get_profile("demo")
    assert (study.run_dir, study.figures_dir) == (tmp_path / "results" / "demo", tmp_path / "figures" / "demo")
    assert get_profile("demo", results_dir=tmp_path / "given").run_dir == tmp_path / "given" / "demo"


def test_few_shot_training_keeps_a_checkpoint_per_draw_and_resumes_from_it(demo_study):
    """AGPNet few-shot trains on the references inside ``set_references``: the runner gives it one
    checkpoint folder per (dataset, category, K, seed), so a lost result is recomputed without retraining."""
    plan = Plan("agpnet", "few_shot", ("demo_a",), shots=(1,), seeds=(0,), categories=("brick",),
                variant="two_epochs", overrides={"few_shot_epochs": 2})
    first = run_plan(plan, demo_study, progress=False)
    parts = sorted((demo_study.run_dir / "checkpoints" / "agpnet" / "two_epochs").glob("*.parts/*.pt"))
    assert [p.parent.name for p in parts] == ["demo_a-brick-k1_seed0.parts"]
    written = parts[0].stat().st_mtime_ns
    for result in (demo_study.run_dir / "runs").rglob("*.json"):
        result.unlink()
    again = run_plan(plan, demo_study, progress=False)
    assert parts[0].stat().st_mtime_ns == written  # resumed at its last epoch: nothing retrained
    assert again.drop(columns=["created"], errors="ignore").value.tolist() == first.value.tolist()
