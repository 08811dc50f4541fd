"""Execute the numbered notebooks in order with papermill (``make reproduce-all`` / ``make reproduce``).

Executed copies go to ``results/<profile>/notebooks/``; with ``--in-place`` the notebooks in this
folder are overwritten instead (to refresh the demo outputs shown on the repository page). Runs
already in the results store are reused, so a rerun after an interruption only computes what is
missing. Prints the measured wall time of each notebook and of the whole study.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import papermill

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sowa_lib.ablations import ablations  # noqa: E402
from sowa_lib.executors import EXECUTORS  # noqa: E402
from sowa_lib.methods import available  # noqa: E402
from sowa_lib.nbclean import normalise_file  # noqa: E402
from sowa_lib.profiles import ProfileNotReadyError, check_weights, get_profile, prepare  # noqa: E402


def numbered_notebooks(only: str | None = None) -> list[Path]:
    books = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if only:
        books = [b for b in books if b.stem == only or b.stem.startswith(only)]
        if not books:
            raise SystemExit(f"no notebook matches {only!r}; available: {', '.join(b.stem for b in sorted(HERE.glob('[0-9][0-9]_*.ipynb')))}")
    return books


def kernel_options() -> dict:
    """papermill keyword arguments that start each kernel with CurveZMQ keys provisioned by the kernel
    manager (jupyter_client's ``KernelManager.transport_encryption``), so that ipykernel does not warn
    "Kernel is running over TCP without encryption" on the terminal; unchanged where pyzmq lacks CURVE."""
    import zmq
    from traitlets.config import Config

    return {"config": Config({"KernelManager": {"transport_encryption": "auto"}})} if zmq.has("curve") else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="demo", choices=["demo", "paper"])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--device", default=None, help="default: cpu for demo, cuda for paper")
    parser.add_argument("--executor", default="local", choices=list(EXECUTORS))
    parser.add_argument("--jobs", type=int, default=None, help="local executor: worker processes (sets JOBS)")
    parser.add_argument("--only", default=None, help="run one notebook, e.g. 02_few_shot")
    parser.add_argument("--in-place", action="store_true", help="overwrite the notebooks in notebooks/ (demo defaults only)")
    args = parser.parse_args(argv)

    if args.in_place and (args.profile != "demo" or args.data_root or args.results_dir):
        parser.error("--in-place refreshes the committed notebooks with their demo defaults only")
    device = args.device or ("cuda" if args.profile == "paper" else "cpu")
    try:
        profile = get_profile(args.profile, args.data_root, args.results_dir, device)
        prepare(profile)
        check_weights(profile, available(), [(a.method, a.overrides) for a in ablations(profile.name)])
    except ProfileNotReadyError as err:
        print(f"reproduce: {err}", file=sys.stderr)
        return 2

    if args.jobs:
        os.environ["JOBS"] = str(args.jobs)  # the notebooks' kernels inherit it; get_executor reads it
    os.environ.setdefault("SOWA_PROGRESS", "summary")  # one line per loop in the stored outputs (sowa_lib.progress)
    out_dir = profile.run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"profile": args.profile, "data_root": args.data_root, "results_dir": args.results_dir,
                  "device": device, "executor": args.executor}
    total = time.perf_counter()
    for book in numbered_notebooks(args.only):
        target = book if args.in_place else out_dir / book.name
        start = time.perf_counter()
        print(f"== {book.stem} -> {target}", flush=True)
        # in place: the notebooks keep their own (demo) defaults and no injected-parameters cell
        papermill.execute_notebook(str(book), str(target), parameters={} if args.in_place else parameters,
                                   cwd=str(HERE), progress_bar=False, kernel_name="python3", **kernel_options())
        if args.in_place:
            normalise_file(target)  # no timestamps, absolute paths or volatile metadata in committed notebooks
        print(f"   {book.stem}: {time.perf_counter() - start:.1f} s", flush=True)
    print(f"reproduce: profile {profile.name}, {len(numbered_notebooks(args.only))} notebook(s) in {time.perf_counter() - total:.1f} s (measured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
