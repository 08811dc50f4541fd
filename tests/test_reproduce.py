"""``notebooks/reproduce.py`` interrupted by Ctrl-C or SIGTERM, then rerun: one line says what
finished, an interrupted notebook is kept only as ``NAME.failed.ipynb``, and the rerun resumes,
rewriting no result and leaving no partial notebook or run file. Driven on tiny notebooks
(``--notebooks``); the interrupted one sweeps the toy method with ``run_plan``, as the study's do."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
PARAMETERS = 'profile = "demo"\ndata_root = None\nresults_dir = None\ndevice = None\nexecutor = "local"'
SWEEP = ('from sowa_lib.evaluate import Plan, run_plan\nfrom sowa_lib.profiles import get_profile\n'
         'study = get_profile(profile, data_root, results_dir, device)\n'
         'def sweep(shots):\n'
         '    run_plan(Plan("toy_method:MeanDistance", "few_shot", ("demo_a",), shots=(shots,), seeds=(0,), '
         'categories=("brick",)), study, progress=False)\n')
HANG = ('import os, time\nfrom pathlib import Path\nif os.environ.get("HANG_MARKER"):\n'
        '    Path(os.environ["HANG_MARKER"]).touch()\n    time.sleep(300)')


def _write_books(folder: Path, cells: dict[str, list[str]]) -> None:
    folder.mkdir()
    for name, sources in cells.items():
        book = nbformat.v4.new_notebook()
        parameters = nbformat.v4.new_code_cell(PARAMETERS)
        parameters.metadata["tags"] = ["parameters"]
        book.cells = [parameters] + [nbformat.v4.new_code_cell(source) for source in sources]
        book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(book, folder / f"{name}.ipynb")


def _reproduce(books: Path, data: Path, results: Path, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), **env}
    command = [sys.executable, str(REPO / "notebooks" / "reproduce.py"), "--notebooks", str(books),
               "--data-root", str(data), "--results-dir", str(results)]
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _interrupt(run: subprocess.Popen, marker: Path, signum: int) -> tuple[str, str]:
    """Send ``signum`` once a notebook hangs (it touched ``marker``); the run's output and the one
    ``reproduce:`` line, which must be its last, with no traceback or ZMQ error before it."""
    deadline = time.monotonic() + 120
    while not marker.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), run.communicate()
    # Ctrl-C in a terminal reaches the whole foreground process group; SIGTERM the process alone.
    os.killpg(run.pid, signum) if signum == signal.SIGINT else run.send_signal(signum)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 128 + signum, out + err
    assert "Traceback" not in out + err and "ZMQError" not in out + err, err
    message = [line for line in err.splitlines() if line.startswith("reproduce:")]
    assert len(message) == 1 and message == err.splitlines()[-1:], err
    return out, message[0]


def _files(results: Path) -> dict[str, tuple[int, int]]:
    """Every file under the results folder: (inode, mtime) by relative path."""
    return {str(p.relative_to(results)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in results.rglob("*") if p.is_file()}


def test_ctrl_c_says_what_finished_and_the_rerun_resumes_without_writing_twice(demo_data, tmp_path) -> None:
    books, results, marker = tmp_path / "books", tmp_path / "results", tmp_path / "hanging"
    _write_books(books, {"00_first": ["print('first')"], "01_second": [SWEEP, "sweep(2)", HANG, "sweep(4)"],
                         "02_third": ["print('done')"]})
    run = _reproduce(books, demo_data, results, HANG_MARKER=str(marker))
    _, message = _interrupt(run, marker, signal.SIGINT)
    assert "SIGINT during 01_second" in message and "finished: 00_first;" in message
    assert "kept as " in message and "01_second.failed.ipynb" in message and "rerun" in message
    notebooks = results / "demo" / "notebooks"
    assert sorted(p.name for p in notebooks.iterdir()) == ["00_first.ipynb", "01_second.failed.ipynb"]
    before = _files(results / "demo" / "runs")
    assert len(before) == 1 and all(name.endswith(".json") for name in before)  # K=2, written before the hang

    rerun = _reproduce(books, demo_data, results)
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, out + err
    assert sorted(p.name for p in notebooks.iterdir()) == ["00_first.ipynb", "01_second.ipynb", "02_third.ipynb"]
    after = _files(results / "demo" / "runs")
    assert len(after) == 2 and all(name.endswith(".json") for name in after)  # K=4 added; no temporary left
    assert {name: after[name] for name in before} == before  # nothing computed or written twice


def test_sigterm_stops_with_one_line_and_keeps_the_partial_notebook_as_failed(demo_data, tmp_path) -> None:
    books, results, marker = tmp_path / "books", tmp_path / "results", tmp_path / "hanging"
    _write_books(books, {"00_wait": [HANG], "01_never": ["print('never')"]})
    run = _reproduce(books, demo_data, results, HANG_MARKER=str(marker))
    out, message = _interrupt(run, marker, signal.SIGTERM)
    assert "SIGTERM during 00_wait" in message and "finished: none;" in message
    assert sorted(p.name for p in (results / "demo" / "notebooks").iterdir()) == ["00_wait.failed.ipynb"]
    assert "01_never" not in out


def test_a_failing_notebook_is_kept_as_failed_and_named_with_its_error(demo_data, tmp_path) -> None:
    books, results = tmp_path / "books", tmp_path / "results"
    _write_books(books, {"00_broken": ["raise ValueError('broken on purpose')"], "01_never": ["print('never')"]})
    out, err = _reproduce(books, demo_data, results).communicate(timeout=120)
    assert "broken on purpose" in err and err.splitlines()[-1].startswith("reproduce: 00_broken failed (kept as ")
    assert "finished: none" in err.splitlines()[-1] and "01_never" not in out
    assert sorted(p.name for p in (results / "demo" / "notebooks").iterdir()) == ["00_broken.failed.ipynb"]
