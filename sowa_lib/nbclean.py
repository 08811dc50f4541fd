"""Normalising executed notebooks before they are committed (issue 16, "Clean outputs").

An executed notebook carries what changes with every run and every machine: papermill's and the
kernel's per-cell timestamps, the absolute input/output paths, widget state, and any absolute path a
cell printed. :func:`normalise` removes them so that a refresh rewrites only the outputs that
changed; :func:`problems` lists what a committed notebook must not hold (``tests/test_notebooks_clean.py``).
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import nbformat

from sowa_lib.profiles import REPO_ROOT

#: Largest committed notebook, in bytes.
MAX_NOTEBOOK_BYTES = 300 * 1024
#: Notebook-level and cell-level metadata keys written by papermill, nbclient and widget front ends.
VOLATILE_NOTEBOOK_KEYS = ("papermill", "widgets")
VOLATILE_CELL_KEYS = ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled")
#: An ISO-8601 time stamp (what papermill and the kernel write per cell).
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")
#: A POSIX path under a directory that only exists on some machine, or a Windows drive path.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~<>-])(?:/(?:home|Users|work|tmp|root|opt|usr|var|mnt|srv|scratch|private)/|[A-Za-z]:\\\\)")


def _replacements(repo_root: Path) -> list[tuple[str, str]]:
    """Machine-specific path prefixes and what they become: the repository (``notebooks/`` is the
    kernels' working directory, so paths below the repository become relative), the Python
    environment and the home directory. Longest first."""
    pairs = [(str(repo_root) + os.sep, ""), (str(repo_root), "."), (sys.prefix, "<python-env>"),
             (sys.base_prefix, "<python>"), (str(Path.home()), "~")]
    return sorted({p: r for p, r in pairs if len(p) > 1}.items(), key=lambda pair: -len(pair[0]))


def _scrub(text: str, replacements: list[tuple[str, str]]) -> str:
    for prefix, replacement in replacements:
        text = text.replace(prefix, replacement)
    return text


def _scrub_output(output: dict[str, Any], replacements: list[tuple[str, str]]) -> dict[str, Any]:
    """``output`` with machine paths replaced in its text (stream text, tracebacks, text/* data)."""
    out = dict(output)
    if "text" in out:
        out["text"] = _scrub("".join(out["text"]) if isinstance(out["text"], list) else out["text"], replacements)
    if "traceback" in out:
        out["traceback"] = [_scrub(line, replacements) for line in out["traceback"]]
    if "data" in out:
        out["data"] = {kind: (_scrub("".join(v) if isinstance(v, list) else v, replacements)
                              if kind.startswith("text/") or kind.endswith("json") and isinstance(v, str) else v)
                       for kind, v in out["data"].items()}
    out.get("metadata", {}).pop("execution", None)
    return out


def _merge_streams(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive stream outputs of the same stream joined into one (nbclient stores one per message)."""
    merged: list[dict[str, Any]] = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and previous is not None and previous.get("output_type") == "stream"
                and previous.get("name") == output.get("name")):
            previous["text"] = previous["text"] + output["text"]
        else:
            merged.append(output)
    return merged


def normalise(notebook: dict[str, Any], repo_root: Path = REPO_ROOT) -> dict[str, Any]:
    """``notebook`` (nbformat JSON as a dict) without volatile metadata (:data:`VOLATILE_NOTEBOOK_KEYS`,
    :data:`VOLATILE_CELL_KEYS`), with machine-specific paths replaced in its outputs and consecutive
    stream outputs merged. Sources are left as they are."""
    replacements = _replacements(Path(repo_root).resolve())
    out = dict(notebook)
    out["metadata"] = {k: v for k, v in notebook.get("metadata", {}).items() if k not in VOLATILE_NOTEBOOK_KEYS}
    cells = []
    for cell in notebook.get("cells", []):
        cell = dict(cell)
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k not in VOLATILE_CELL_KEYS}
        if "outputs" in cell:
            cell["outputs"] = _merge_streams([_scrub_output(o, replacements) for o in cell["outputs"]])
        cells.append(cell)
    out["cells"] = cells
    return out


def normalise_file(path: Path, repo_root: Path = REPO_ROOT) -> None:
    """Rewrite the notebook at ``path`` normalised (:func:`normalise`), in nbformat's layout."""
    path = Path(path)
    notebook = normalise(json.loads(path.read_text(encoding="utf-8")), repo_root)
    path.write_text(nbformat.writes(nbformat.from_dict(notebook)) + "\n", encoding="utf-8")  # as nbformat.write


def problems(path: Path, repo_root: Path = REPO_ROOT) -> list[str]:
    """What keeps the notebook at ``path`` from being committed: over :data:`MAX_NOTEBOOK_BYTES`, an
    absolute path, a time stamp, or volatile metadata. Empty when it is clean."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    found = []
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        found.append(f"{path.name}: {path.stat().st_size / 1024:.0f} KB > {MAX_NOTEBOOK_BYTES // 1024} KB")
    for pattern, what in ((ABSOLUTE_PATH, "absolute path"), (TIMESTAMP, "time stamp")):
        for match in list(pattern.finditer(text))[:3]:
            found.append(f"{path.name}: {what} {text[match.start():match.start() + 60]!r}")
    if str(Path(repo_root).resolve()) in text:
        found.append(f"{path.name}: the repository's absolute path {str(repo_root)!r}")
    notebook = json.loads(text)
    volatile = [k for k in VOLATILE_NOTEBOOK_KEYS if k in notebook.get("metadata", {})]
    volatile += sorted({k for c in notebook.get("cells", []) for k in c.get("metadata", {}) if k in VOLATILE_CELL_KEYS})
    if volatile:
        found.append(f"{path.name}: volatile metadata {volatile}; run `python -m sowa_lib.nbclean {path}`")
    return found


def main(argv: list[str] | None = None) -> int:
    """``python -m sowa_lib.nbclean NOTEBOOK...``: normalise each notebook in place, then print what
    is still wrong with it (exit status 1 if anything)."""
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    left = []
    for path in paths:
        normalise_file(path)
        left += problems(path)
    print("\n".join(left) if left else f"nbclean: {len(paths)} notebook(s) normalised and clean")
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
