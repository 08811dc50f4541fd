"""Fingerprints of runs, checkpoints and training snapshots (issue 13, "Content-keyed reuse")."""
from __future__ import annotations

import json

import pytest
import torch

from sowa_lib import fingerprint
from sowa_lib.errors import StaleCheckpointError
from sowa_lib.training import EpochCheckpoints, claim_snapshot_dir, load_checkpoint, save_checkpoint


def test_digest_is_canonical_and_differing_keys_are_named():
    a = {"config": {"lr": 0.001, "layers": (6, 12)}, "metrics": {"aupro_variant": "mvtec"}}
    b = {"metrics": {"aupro_variant": "mvtec"}, "config": {"layers": [6, 12], "lr": 0.001}}
    assert fingerprint.digest(a) == fingerprint.digest(b) and len(fingerprint.digest(a)) == 16
    c = {"config": {"lr": 0.01, "layers": (6, 12)}, "metrics": {"aupro_variant": "sowa"}}
    assert fingerprint.digest(c) != fingerprint.digest(a)
    assert fingerprint.differing_keys(a, c) == ["config.lr", "metrics.aupro_variant"]
    assert fingerprint.differing_keys(None, c) == ["<no fingerprint>"]


def test_files_identity_follows_size_and_mtime(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"12")
    before = fingerprint.files_identity([image], tmp_path)
    assert fingerprint.files_identity([image], tmp_path) == before
    image.write_bytes(b"123")
    assert fingerprint.files_identity([image], tmp_path) != before


def test_code_version_is_the_package_version_and_provenance_says_whether_the_tree_is_dirty():
    import sowa_lib

    assert fingerprint.code_version() == {"sowa_lib": sowa_lib.__version__}
    state = fingerprint.code_state()
    assert set(state) == {"commit", "dirty"} and state["dirty"] in (True, False, None)


def test_a_checkpoint_of_another_configuration_is_refused_naming_what_differs(tmp_path):
    path, parts = tmp_path / "heads.pt", {"config": {"lr": 0.001}, "code": {"sowa_lib": "1"}}
    state = {"w": torch.ones(2)}
    save_checkpoint(path, parts, state)
    assert torch.equal(load_checkpoint(path, parts)["w"], state["w"])
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"fingerprint", "config", "state"}
    with pytest.raises(StaleCheckpointError, match=r"differs: config.lr"):
        load_checkpoint(path, {**parts, "config": {"lr": 0.01}})
    torch.save(state, path)  # a bare state dict, written before fingerprints existed
    with pytest.raises(StaleCheckpointError, match="no fingerprint"):
        load_checkpoint(path, parts)


def test_snapshots_resume_only_with_the_same_fingerprint(tmp_path):
    folder = tmp_path / "run.parts"
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    claim_snapshot_dir(folder, {"config": {"epochs": 3}})
    EpochCheckpoints(folder).save(0, {"w": torch.zeros(1)}, optimizer, [1.0])
    assert EpochCheckpoints(folder).latest()["epoch"] == 0
    assert claim_snapshot_dir(folder, {"config": {"epochs": 3}}) is None  # same fingerprint: kept
    moved = claim_snapshot_dir(folder, {"config": {"epochs": 4}})
    assert moved is not None and moved.name.startswith("run.parts.stale-") and (moved / "epoch_000.pt").is_file()
    assert EpochCheckpoints(folder).latest() is None  # nothing to resume from for the new fingerprint
    # a snapshot written for another fingerprint in the folder is never resumed from
    torch.save({"epoch": 5, "fingerprint": "another"}, folder / "epoch_005.pt")
    assert EpochCheckpoints(folder).latest() is None
    assert json.loads((folder / "fingerprint.json").read_text())["config"] == {"config": {"epochs": 4}}


def test_runner_retrains_when_the_checkpoint_is_stale(demo_study):
    from sowa_lib.evaluate import Plan, run_plan

    def plan(size: int) -> Plan:
        return Plan("toy_method:TrainedMeanDistance", "multi_class", ("demo_a",), categories=("brick",), variant="t",
                    overrides={"image_size": size})

    run_plan(plan(32), demo_study, progress=False)
    folder = demo_study.run_dir / "checkpoints" / "toy_method:TrainedMeanDistance" / "t"
    assert [p.name for p in folder.glob("*.pt")] == ["demo_a_seed0.pt"]
    run_plan(plan(32), demo_study, progress=False)  # unchanged: loaded, not moved
    assert not list(folder.glob("*.stale-*"))
    with pytest.warns(UserWarning, match=r"differs: config.image_size"):
        run_plan(plan(48), demo_study, progress=False)
    assert len(list(folder.glob("demo_a_seed0.pt.stale-*"))) == 1 and (folder / "demo_a_seed0.pt").is_file()
