"""Committed notebooks stay small and carry nothing machine- or time-specific (``make
notebooks-refresh`` normalises them with :mod:`sowa_lib.nbclean`); progress bars write one line per
loop in stored outputs (:mod:`sowa_lib.progress`)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import nbformat
import pytest

from sowa_lib import nbclean, progress
from sowa_lib.profiles import REPO_ROOT

COMMITTED = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_committed_notebooks() -> None:
    assert len(COMMITTED) >= 8


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path: Path) -> None:
    assert nbclean.problems(path) == []


def _executed(tmp_path: Path) -> Path:
    """A notebook as papermill leaves it, executed under ``tmp_path`` (standing for the repository)."""
    cell = nbformat.v4.new_code_cell("print(path)", execution_count=1, outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="train: 10/10 in 1.0 s\n"),
        nbformat.v4.new_output("stream", name="stderr", text="eval: 4/4 in 0.2 s\n"),
        nbformat.v4.new_output("stream", name="stdout", text=f"results in {tmp_path}/results/demo\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": f"PosixPath('{tmp_path}/figures/demo/a.png')"}, execution_count=1),
    ])
    cell.metadata.update(tags=["NBVAL_CHECK_OUTPUT"], papermill={"start_time": "2026-01-02T03:04:05.678Z", "status": "completed"},
                         execution={"iopub.execute_input": "2026-01-02T03:04:05.679Z"})
    notebook = nbformat.v4.new_notebook(cells=[cell])
    notebook.metadata.update(papermill={"input_path": f"{tmp_path}/notebooks/x.ipynb", "start_time": "2026-01-02T03:04:05"},
                             kernelspec={"name": "python3", "display_name": "Python 3", "language": "python"})
    path = tmp_path / "x.ipynb"
    nbformat.write(notebook, path)
    return path


def test_problems_names_paths_timestamps_and_volatile_metadata(tmp_path: Path) -> None:
    found = "\n".join(nbclean.problems(_executed(tmp_path), repo_root=tmp_path))
    assert "absolute path" in found and "time stamp" in found and "volatile metadata" in found


def test_normalise_strips_what_changes_between_runs_and_keeps_the_rest(tmp_path: Path) -> None:
    path = _executed(tmp_path)
    nbclean.normalise_file(path, repo_root=tmp_path)
    assert nbclean.problems(path, repo_root=tmp_path) == []
    notebook = json.loads(path.read_text())
    cell = notebook["cells"][0]
    assert cell["metadata"] == {"tags": ["NBVAL_CHECK_OUTPUT"]} and set(notebook["metadata"]) == {"kernelspec"}
    stderr, stdout, result = cell["outputs"]  # the two stderr outputs merged into one
    assert "".join(stderr["text"]) == "train: 10/10 in 1.0 s\neval: 4/4 in 0.2 s\n"
    assert "".join(stdout["text"]) == "results in results/demo\n"
    assert "".join(result["data"]["text/plain"]) == "PosixPath('figures/demo/a.png')"
    before = path.read_text()
    nbclean.normalise_file(path, repo_root=tmp_path)
    assert path.read_text() == before  # idempotent: a refresh of unchanged outputs rewrites nothing


def test_size_limit_is_enforced(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("x" * (nbclean.MAX_NOTEBOOK_BYTES + 1))])
    nbformat.write(notebook, tmp_path / "big.ipynb")
    assert any("KB >" in p for p in nbclean.problems(tmp_path / "big.ipynb", repo_root=tmp_path))


def test_summary_progress_writes_one_line_per_loop(monkeypatch) -> None:
    monkeypatch.setenv(progress.ENVIRONMENT_VARIABLE, "summary")
    stream = io.StringIO()
    bar = progress.tqdm(total=40, desc="train", file=stream)
    for _ in range(40):
        bar.update(1)
        bar.set_postfix(loss="0.1234")
    bar.close()
    bar.close()
    for _ in progress.tqdm(range(3), desc="eval", file=stream):
        pass
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("train: 40/40 in ") and lines[0].endswith("(loss=0.1234)")
    assert lines[1].startswith("eval: 3/3 in ") and "\r" not in stream.getvalue()


def test_progress_mode_is_checked(monkeypatch) -> None:
    monkeypatch.setenv(progress.ENVIRONMENT_VARIABLE, "fancy")
    with pytest.raises(ValueError, match="SOWA_PROGRESS"):
        progress.mode()
    monkeypatch.setenv(progress.ENVIRONMENT_VARIABLE, "off")
    stream = io.StringIO()
    for _ in progress.tqdm(range(3), file=stream):
        pass
    assert stream.getvalue() == ""


def test_reproduce_starts_kernels_with_transport_encryption(load_script) -> None:
    """ipykernel warns "Kernel is running over TCP without encryption" unless the kernel manager
    provisions CurveZMQ keys; notebooks/reproduce.py asks for them wherever pyzmq supports CURVE."""
    import zmq

    reproduce = load_script("notebooks/reproduce.py")
    options = reproduce.kernel_options()
    if zmq.has("curve"):
        assert options["config"]["KernelManager"]["transport_encryption"] == "auto"
    else:
        assert options == {}
