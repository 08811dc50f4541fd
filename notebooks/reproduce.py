"""Execute the numbered notebooks in order with papermill (``make reproduce-all`` / ``make reproduce``).

Executed copies go to ``results/<profile>/notebooks/``; with ``--in-place`` the notebooks in this
folder are overwritten instead (to refresh the demo outputs shown on the repository page). Each
notebook is executed to ``NAME.running.ipynb`` and renamed into place only when it completed; a
failed or interrupted one is kept as ``results/<profile>/notebooks/NAME.failed.ipynb``. Ctrl-C or
SIGTERM stops with one line that says which notebooks finished. Runs already in the results store
are reused, so a rerun after an interruption only computes what is missing. Frozen encodings are
shared by every notebook through the disk feature cache under ``results/<profile>/features``
(``SOWA_FEATURE_CACHE=disk`` unless set otherwise; ``make clean-features`` removes it). Prints the
measured wall time of each notebook and of the whole study.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

import papermill
import psutil
from papermill.exceptions import PapermillExecutionError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sowa_lib.ablations import ablations  # noqa: E402
from sowa_lib.errors import ProfileNotReadyError  # noqa: E402
from sowa_lib.executors import EXECUTORS  # noqa: E402
from sowa_lib.features import FEATURE_CACHE_ENV  # noqa: E402
from sowa_lib.fingerprint import REUSE_STALE_ENV  # noqa: E402
from sowa_lib.methods import available  # noqa: E402
from sowa_lib.nbclean import normalise_file  # noqa: E402
from sowa_lib.preflight import check_weights, prepare  # noqa: E402
from sowa_lib.profiles import PROFILES, get_profile, profile_note  # noqa: E402


def numbered_notebooks(only: str | None = None, folder: Path = HERE) -> list[Path]:
    every = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    books = [b for b in every if b.stem == only or b.stem.startswith(only)] if only else every
    if not books:
        raise SystemExit(f"no notebook matches {only!r} in {folder}; available: {', '.join(b.stem for b in every)}")
    return books


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived while a notebook ran (a KeyboardInterrupt, so nothing on the way
    up swallows it as an ordinary error)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    """The first Ctrl-C / SIGTERM stops the kernel and unwinds; later ones are ignored meanwhile."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _stop_kernels()
    raise Interrupted(signum)


def _stop_kernels() -> None:
    """Terminate the notebook kernel (and its workers) before the client tears down its connection:
    a kernel cut off mid-reply prints ZMQ errors. Kernels are this process's only children, each
    leading its own process group (jupyter_client starts them in a new session)."""
    for child in psutil.Process().children():
        try:
            os.killpg(child.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):  # already gone, or not a group leader
            child.terminate()


def execute(book: Path, target: Path, work_dir: Path, parameters: dict) -> None:
    """Execute ``book`` to ``work_dir/NAME.running.ipynb`` and rename it to ``target`` once it
    completed; a failed or interrupted execution is kept as ``work_dir/NAME.failed.ipynb``."""
    running = work_dir / f"{book.stem}.running.ipynb"
    failed = work_dir / f"{book.stem}.failed.ipynb"
    try:
        papermill.execute_notebook(str(book), str(running), parameters=parameters, cwd=str(book.parent),
                                   progress_bar=False, kernel_name="python3", **kernel_options())
    except BaseException:
        if running.exists():
            running.replace(failed)
        raise
    failed.unlink(missing_ok=True)
    running.replace(target)


def _quiet_kernel_shutdown() -> None:
    """Silence what an interrupted kernel client prints while it is torn down (nbclient / papermill
    log records, ZMQ errors of half-closed sockets): the one-line message says what happened."""
    for name in ("papermill", "nbclient", "traitlets", "asyncio", "jupyter_client"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    sys.stderr.flush()
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - until exit: finalizers of the torn-down client


def kernel_options() -> dict:
    """papermill keyword arguments that start each kernel with CurveZMQ keys provisioned by the kernel
    manager (jupyter_client's ``KernelManager.transport_encryption``), so that ipykernel does not warn
    "Kernel is running over TCP without encryption" on the terminal; unchanged where pyzmq lacks CURVE."""
    import zmq
    from traitlets.config import Config

    return {"config": Config({"KernelManager": {"transport_encryption": "auto"}})} if zmq.has("curve") else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="demo", choices=list(PROFILES),
                        help="smoke: the paper profile's code path on fabricated data with random weights (sowa_lib.profiles)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--device", default=None, help="default: cpu for demo, cuda for paper")
    parser.add_argument("--executor", default="local", choices=list(EXECUTORS))
    parser.add_argument("--jobs", type=int, default=None, help="local executor: worker processes (sets JOBS)")
    parser.add_argument("--only", default=None, help="run one notebook, e.g. 02_few_shot")
    parser.add_argument("--in-place", action="store_true", help="overwrite the notebooks in notebooks/ (demo defaults only)")
    parser.add_argument("--notebooks", type=Path, default=HERE, help="folder of the numbered notebooks (default: this one)")
    parser.add_argument("--reuse-stale", action="store_true",
                        help="keep stored runs whose fingerprint differs from the plan's (marked stale in the tables; sets SOWA_REUSE_STALE)")
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

    print(f"reproduce: profile {profile.name} — {profile_note(profile.name)}", flush=True)
    if args.jobs:
        os.environ["JOBS"] = str(args.jobs)  # the notebooks' kernels inherit it; get_executor reads it
    if args.reuse_stale:
        os.environ[REUSE_STALE_ENV] = "1"  # the kernels inherit it; run_plan reads it
    os.environ.setdefault("SOWA_PROGRESS", "summary")  # one line per loop in the stored outputs (sowa_lib.progress)
    # every notebook's kernel (and its workers) shares the frozen encodings through results/<profile>/features
    os.environ.setdefault(FEATURE_CACHE_ENV, "disk")
    out_dir = profile.run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"profile": args.profile, "data_root": args.data_root, "results_dir": args.results_dir,
                  "device": device, "executor": args.executor}
    books, finished = numbered_notebooks(args.only, args.notebooks), []
    book = books[0]
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    total = time.perf_counter()
    try:
        for book in books:
            target = book if args.in_place else out_dir / book.name
            start = time.perf_counter()
            print(f"== {book.stem} -> {target}", flush=True)
            # in place: the notebooks keep their own (demo) defaults and no injected-parameters cell
            execute(book, target, out_dir, {} if args.in_place else parameters)
            if args.in_place:
                normalise_file(target)  # no timestamps, absolute paths or volatile metadata in committed notebooks
            finished.append(book.stem)
            print(f"   {book.stem}: {time.perf_counter() - start:.1f} s", flush=True)
    except (Interrupted, PapermillExecutionError) as err:
        failed = out_dir / f"{book.stem}.failed.ipynb"
        kept = f" (kept as {failed})" if failed.exists() else ""
        done = f"finished: {', '.join(finished) or 'none'}"
        if isinstance(err, Interrupted):
            _quiet_kernel_shutdown()
            print(f"reproduce: {err} during {book.stem}{kept}; {done}; rerun the same command to resume: "
                  "finished runs are reused", file=sys.__stderr__, flush=True)
            return 128 + err.signum
        print(f"{err}\nreproduce: {book.stem} failed{kept}; {done}", file=sys.stderr)
        return 1
    print(f"reproduce: profile {profile.name} ({profile_note(profile.name)}), {len(books)} notebook(s) "
          f"in {time.perf_counter() - total:.1f} s (measured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
