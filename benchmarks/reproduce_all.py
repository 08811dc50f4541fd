"""Wall and CPU time of the whole study (``make reproduce-all``) without and with the frozen-feature
cache shared across notebooks (issue #15; :mod:`sowa_lib.features`). Prints measured numbers and ratios.

    python benchmarks/reproduce_all.py [--profile demo] [--only 01 02] [--modes off default]

Each mode executes the numbered notebooks one by one (``notebooks/reproduce.py --only NAME``) into its
own temporary results folder, so nothing is reused between the modes; ``off`` sets
``SOWA_FEATURE_CACHE=off``, ``default`` leaves it unset (``reproduce.py``'s default: the disk cache
under ``results/<profile>/features``, shared by every notebook's kernel). Per notebook it prints wall
seconds and the CPU seconds of the child processes (the kernels and their workers, from
``resource.getrusage(RUSAGE_CHILDREN)``, the fairer number on a shared machine), then the totals,
the ratios default / off and the size of the disk cache the default run left. Then, from the
one-line progress summaries in the executed notebooks (``SOWA_PROGRESS=summary``), where the time
went: seconds of training (``train <method>/<variant>``) and of evaluation
(``<method>/<variant>/<setting>``, which includes the frozen encodings and AGPNet's few-shot
training on the references) per method and mode. Last, from the kernels' encoder timings
(``SOWA_FEATURE_STATS``: every computation of a frozen encoder, images and prompt lists, whether a
cache could serve it or not), the seconds the frozen encoders ran in each mode and the lowest ratio
that *any* cache of frozen encodings could reach: the uncached run's wall time less all of its
encoder time, over its wall time. The demo data is generated before timing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sowa_lib.features import FEATURE_CACHE_ENV, FEATURE_STATS_ENV, FEATURES_DIRNAME, read_stats  # noqa: E402
from sowa_lib.preflight import prepare  # noqa: E402
from sowa_lib.profiles import get_profile  # noqa: E402

NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: A progress summary line (:mod:`sowa_lib.progress`): ``[train ]<method>/<variant>[/<setting>]: n/n in T s``.
STEP = re.compile(r"^(train )?([\w.:-]+)/[^\s:]+: \S+ in ([\d.]+) s", re.MULTILINE)


def children_cpu() -> float:
    """User + system CPU seconds of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_mode(mode: str, profile: str, books: list[str], results_dir: Path) -> dict[str, tuple[float, float]]:
    """Execute ``books`` in order with the cache ``mode``; ``{notebook: (wall s, CPU s)}``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), FEATURE_STATS_ENV: str(results_dir / "encoder_stats")}
    env.pop(FEATURE_CACHE_ENV, None)
    if mode == "off":
        env[FEATURE_CACHE_ENV] = "off"
    times = {}
    for book in books:
        wall, cpu = time.perf_counter(), children_cpu()
        command = [sys.executable, str(REPO / "notebooks" / "reproduce.py"), "--profile", profile,
                   "--results-dir", str(results_dir), "--only", book]
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        times[book] = (time.perf_counter() - wall, children_cpu() - cpu)
        print(f"{mode:>7} {book:<16} wall {times[book][0]:8.1f} s   CPU {times[book][1]:8.1f} s", flush=True)
    return times


def step_seconds(notebook: Path) -> dict[tuple[str, str], float]:
    """``{(method, "training" | "evaluation"): seconds}`` summed over the progress summaries that the
    executed ``notebook`` printed."""
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", ""))
            for train, method, value in STEP.findall(text):
                seconds[method, "training" if train else "evaluation"] += float(value)
    return seconds


def breakdown(results_dir: Path, profile: str, books: list[str]) -> dict[tuple[str, str], float]:
    """:func:`step_seconds` summed over the executed ``books`` of one mode's results folder."""
    total: dict[tuple[str, str], float] = defaultdict(float)
    for book in books:
        for key, value in step_seconds(results_dir / profile / "notebooks" / f"{book}.ipynb").items():
            total[key] += value
    return total


def disk_cache(results_dir: Path, profile: str) -> tuple[int, int]:
    """Files and bytes of the disk feature cache a run left."""
    files = list((results_dir / profile / FEATURES_DIRNAME).glob("*/*.pt"))
    return len(files), sum(f.stat().st_size for f in files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="demo", choices=["demo", "smoke"])
    parser.add_argument("--only", nargs="*", default=None, help="notebook name prefixes (default: all)")
    parser.add_argument("--modes", nargs="+", default=["off", "default"], choices=["off", "default"])
    args = parser.parse_args(argv)
    books = [b for b in NOTEBOOKS if not args.only or any(b.startswith(p) for p in args.only)]
    prepare(get_profile(args.profile))  # data generated before timing
    measured, steps, encoder_seconds = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="reproduce_all_") as tmp:
        for mode in args.modes:
            measured[mode] = run_mode(mode, args.profile, books, Path(tmp) / mode)
            steps[mode] = breakdown(Path(tmp) / mode, args.profile, books)
            encoder_seconds[mode] = read_stats(Path(tmp) / mode / "encoder_stats").seconds
        if "default" in measured:
            files, size = disk_cache(Path(tmp) / "default", args.profile)
            print(f"default run's disk feature cache: {files} entries, {size / 2**20:.1f} MiB")
    print("\nprogress summaries, wall s (evaluation includes the frozen encodings, and AGPNet's few-shot training "
          "on each draw of references, which runs inside its evaluation loop):")
    print(f"{'method':<12}" + "".join(f"{m + ' ' + kind:>22}" for m in steps for kind in ("training", "evaluation")))
    for method in sorted({key[0] for per_mode in steps.values() for key in per_mode}):
        print(f"{method:<12}" + "".join(f"{steps[m].get((method, kind), 0.0):22.1f}" for m in steps for kind in ("training", "evaluation")))
    print(f"\n{'notebook':<16}" + "".join(f"{m + ' wall':>14}{m + ' CPU':>14}" for m in measured))
    for book in books + ["total"]:
        row = {m: (sum(t[0] for t in v.values()), sum(t[1] for t in v.values())) if book == "total" else v[book]
               for m, v in measured.items()}
        print(f"{book:<16}" + "".join(f"{w:14.1f}{c:14.1f}" for w, c in row.values()))
    if len(measured) == 2:
        (off_wall, off_cpu), (on_wall, on_cpu) = (
            (sum(t[0] for t in measured[m].values()), sum(t[1] for t in measured[m].values())) for m in ("off", "default"))
        print(f"ratio default / off: wall {on_wall / off_wall:.2f}×, CPU {on_cpu / off_cpu:.2f}× "
              f"(goal of issue #15: ≤ 0.5×)")
    print_encoder_seconds(encoder_seconds, {m: sum(t[0] for t in v.values()) for m, v in measured.items()})
    return 0


def print_encoder_seconds(seconds: dict[str, Counter], walls: dict[str, float]) -> None:
    """Per encoder and mode, the seconds the frozen encoders ran in the kernels; then the bound on
    the ratio: a cache can at best serve every encoding of the uncached run for free."""
    print("\nfrozen encoders, wall s in the kernels (every computation, cacheable or not):")
    print(f"{'encoder':<52}" + "".join(f"{m:>12}" for m in seconds))
    for label in sorted({label for per_mode in seconds.values() for label in per_mode}):
        print(f"{label:<52}" + "".join(f"{seconds[m].get(label, 0.0):12.1f}" for m in seconds))
    print(f"{'total':<52}" + "".join(f"{sum(seconds[m].values()):12.1f}" for m in seconds))
    if "off" in seconds:
        encoders, wall = sum(seconds["off"].values()), walls["off"]
        print(f"a cache serving every frozen encoding for free: ≥ {wall - encoders:.1f} s of {wall:.1f} s, "
              f"ratio ≥ {(wall - encoders) / wall:.2f}×")


if __name__ == "__main__":
    raise SystemExit(main())
