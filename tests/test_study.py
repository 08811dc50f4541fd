"""The notebook helpers of :mod:`sowa_lib.study` and :func:`sowa_lib.evaluate.category_predictions`
on the demo benchmark with the toy method."""
from __future__ import annotations

import torch

import sowa_lib.study
from sowa_lib import evaluate
from sowa_lib.evaluate import Plan, run_plan
from sowa_lib.profiles import REPO_ROOT

TOY = "toy_method:MeanDistance"


def test_open_returns_study_executor_and_categories(demo_data, tmp_path, capsys) -> None:
    opened = sowa_lib.study.open("demo", demo_data, tmp_path / "results")
    assert opened.study.name == "demo" and set(opened.categories) == {"demo_a", "demo_b"}
    assert hasattr(opened.executor, "attempt")
    assert "profile demo on cpu" in capsys.readouterr().out


def test_shown_path_is_relative_inside_the_repository(tmp_path) -> None:
    assert sowa_lib.study.shown_path(REPO_ROOT / "results" / "demo") == "results/demo"
    assert sowa_lib.study.shown_path(tmp_path) == str(tmp_path.resolve())


def test_reference_draws_mark_runs_on_the_common_draw(demo_study) -> None:
    plan = dict(setting="few_shot", datasets=("demo_a",), shots=(1,), seeds=(0,), categories=("brick",))
    run_plan(Plan(TOY, **plan), demo_study, progress=False)
    draws = sowa_lib.study.reference_draws(demo_study, [TOY])
    assert len(draws) == 1 and draws["shared"].all() and draws.iloc[0]["method"] == TOY


def test_category_predictions_build_once_and_match_predictions(demo_study, monkeypatch) -> None:
    plan = Plan(TOY, "few_shot", ("demo_a",), shots=(1,))
    builds = []
    original = evaluate._build_trained
    monkeypatch.setattr(evaluate, "_build_trained", lambda *a, **k: builds.append(1) or original(*a, **k))
    together = list(evaluate.category_predictions(plan, demo_study, "demo_a", ["brick", "grass"], shots=1))
    assert len(builds) == 1 and len(together) == 2
    for category, (_, samples, pred, masks) in zip(["brick", "grass"], together):
        _, alone_samples, alone, alone_masks = evaluate.predictions(plan, demo_study, "demo_a", category, shots=1)
        assert samples == alone_samples and torch.equal(pred.maps, alone.maps) and torch.equal(masks, alone_masks)
        assert masks.shape[-1] == pred.maps.shape[-1]
