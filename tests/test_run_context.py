"""What the runner tells a method (DESIGN.md, "One face for every method"): declarations read, never
signatures; the training seed and snapshot folder in a RunContext; the auxiliary set's reference
schedule from the profiles (issue #14)."""
from __future__ import annotations

import json

from sowa_lib import runs
from sowa_lib.evaluate import Plan, method_options, run_plan
from sowa_lib.profiles import get_profile

TRAINED_TOY = "toy_method:TrainedMeanDistance"


def test_trainings_on_the_target_get_their_seed_in_the_run_context_and_runs_record_weights_id(demo_study):
    plan = Plan(TRAINED_TOY, "one_class", ("demo_a",), shots=(0,), seeds=(0, 1), categories=("brick",))
    frame = run_plan(plan, demo_study, progress=False)
    folder = demo_study.run_dir / "checkpoints" / TRAINED_TOY / "default"
    assert [json.loads((folder / f"demo_a-brick_seed{s}.log.json").read_text())["seed"] for s in (0, 1)] == [0, 1]
    assert set(frame.weights) == {"toy:none"}
    stored = json.loads(runs.run_path(demo_study.run_dir, runs.RunSpec("demo", "demo_a", "brick", TRAINED_TOY, "one_class", 0, 1)).read_text())
    assert "seed" not in stored["config"]  # the seed is the training's, not a constructor option


def test_the_auxiliary_sets_schedule_fills_what_neither_the_plan_nor_the_profile_sets(tmp_path):
    paper, smoke, demo = (get_profile(name, data_root=tmp_path, results_dir=tmp_path) for name in ("paper", "smoke", "demo"))
    april_gan, sowa = Plan("april_gan", "zero_shot", ("mvtec",)), Plan("sowa", "zero_shot", ("mvtec",))
    assert method_options(april_gan, paper, ("visa", None, 0)) == {"epochs": 15, "mosaic_rate": 0.0}
    assert method_options(april_gan, paper, ("mvtec", None, 0)) == {"epochs": 3, "mosaic_rate": 0.2}
    assert method_options(april_gan, paper, None) == {}  # nothing trained (e.g. given weights)
    given = Plan("april_gan", "zero_shot", ("mvtec",), variant="short", overrides={"epochs": 2})
    assert method_options(given, paper, ("visa", None, 0)) == {"epochs": 2, "mosaic_rate": 0.0}
    assert method_options(april_gan, smoke, ("visa", None, 0)) == {"mosaic_rate": 0.0}  # the smoke's epochs=1 stands
    assert method_options(april_gan, demo, ("demo_b", None, 0)) == {}  # the demo's own epochs and mosaic stand
    assert method_options(sowa, demo, ("demo_a", None, 0)) == {"mosaic_rate": 0.2}  # demo_a plays MVTec AD
    assert method_options(sowa, demo, ("demo_b", None, 0)) == {"mosaic_rate": 0.0}
