"""Speed as results (issue 13): measurements stored as runs with provenance, reused by fingerprint,
and set beside the papers' speed claims only on a like device."""
from __future__ import annotations

import pandas as pd

from sowa_lib import runs, tables
from sowa_lib.evaluate import Plan, speed_run


def test_speed_is_stored_as_a_run_and_a_cpu_number_is_never_judged_against_a_gpu_claim(demo_study):
    plan = Plan("winclip", "few_shot", ("demo_a",), shots=(1,))
    frame = speed_run(plan, demo_study, "demo_a", "brick", n_images=1, repeats=1)
    values = frame.set_index("metric")["value"]
    assert set(frame.setting) == {"efficiency"} and set(frame.device) == {"cpu"} and (frame.commit != "").all()
    assert values["fps"] > 0 and values["params"] >= 0 and values["gflops"] > 0 and pd.isna(values["peak_memory_gb"])
    path = runs.run_path(demo_study.run_dir, runs.RunSpec("demo", "demo_a", "brick", "winclip", "efficiency", 1, 0))
    written = path.stat().st_mtime_ns
    speed_run(plan, demo_study, "demo_a", "brick", n_images=1, repeats=1)
    assert path.stat().st_mtime_ns == written  # same fingerprint: reused
    stored = runs.load_results(demo_study.run_dir)
    fig9 = tables.build_table("sowa_fig9", stored, "demo")
    cell = fig9.loc[fig9["dataset"] == "demo_a (stands in for MVTec-AD)", "winclip"].item()
    assert cell.startswith("≈3.01 | ") and cell.endswith("(CPU) | –")
    compared = tables.compare(stored, "demo")
    fig9_winclip = compared[(compared["table"] == "fig9") & (compared["method"] == "winclip") & (compared["dataset"] == "mvtec")]
    assert fig9_winclip["status"].tolist() == ["other_device"]
