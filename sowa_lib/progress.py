"""Progress bars that suit where the code runs (issue 16, "Clean outputs").

:func:`tqdm` takes the arguments of ``tqdm.tqdm`` and returns

- a widget bar (``tqdm.notebook``) in a Jupyter front end when ipywidgets is installed;
- a plain text bar in a terminal (stderr is a TTY);
- otherwise — papermill, nbval, CI logs, a notebook without ipywidgets — a bar that draws nothing
  while it runs and writes one summary line when it closes, so that a stored notebook holds one
  line per loop instead of one output per update (and no "IProgress not found" warning).

``SOWA_PROGRESS`` (:data:`MODES`) forces a mode: ``notebooks/reproduce.py`` and ``make
test-notebooks`` set ``summary`` for the kernels they start.

Importing this module also silences tqdm's "IProgress not found" warning, which third-party code
(huggingface_hub, through timm and open_clip) triggers by importing ``tqdm.auto`` in a kernel
without ipywidgets; the study's own bars never go through ``tqdm.auto``.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from typing import Any

from tqdm import tqdm as _text_bar

warnings.filterwarnings("ignore", message="IProgress not found")

MODES = ("widget", "text", "summary", "off")
ENVIRONMENT_VARIABLE = "SOWA_PROGRESS"


class _Discard:
    """A stream that swallows what the bar would draw while it runs."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


class SummaryBar(_text_bar):
    """A text bar that draws nothing until :meth:`close`, then writes one line to ``file`` (stderr by
    default): ``train: 40/40 in 3.1 s (epoch=3, loss=0.1234)``."""

    def __init__(self, *args: Any, file: Any = None, **kwargs: Any) -> None:
        self._summary_file = file
        super().__init__(*args, file=_Discard(), **kwargs)

    def close(self) -> None:
        report = not self.disable
        super().close()
        if report:
            stream = self._summary_file or sys.stderr
            done = f"{self.n}/{self.total}" if self.total else str(self.n)
            postfix = f" ({self.postfix})" if self.postfix else ""
            stream.write(f"{self.desc or 'progress'}: {done} in {self.format_dict['elapsed']:.1f} s{postfix}\n")
            stream.flush()


def _in_kernel() -> bool:
    """Whether this code runs inside a Jupyter (IPython) kernel."""
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def mode() -> str:
    """The mode :func:`tqdm` uses now: ``$SOWA_PROGRESS`` if set, else detected (module docstring)."""
    chosen = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"{ENVIRONMENT_VARIABLE}={chosen!r}: use one of {', '.join(MODES)}")
        return chosen
    if _in_kernel():
        return "widget" if importlib.util.find_spec("ipywidgets") is not None else "summary"
    return "text" if sys.stderr is not None and sys.stderr.isatty() else "summary"


def tqdm(*args: Any, **kwargs: Any) -> _text_bar:
    """A progress bar for the current :func:`mode`; same arguments as ``tqdm.tqdm``."""
    chosen = mode()
    if chosen == "off":
        kwargs["disable"] = True
    if chosen == "widget":
        from tqdm.notebook import tqdm as widget_bar

        return widget_bar(*args, **kwargs)
    if chosen == "summary":
        return SummaryBar(*args, **kwargs)
    return _text_bar(*args, **kwargs)


__all__ = ["ENVIRONMENT_VARIABLE", "MODES", "SummaryBar", "mode", "tqdm"]
