"""Where a sweep's jobs run: this process (``local``), a Ray cluster (``ray``) or SLURM through
submitit (``slurm``). The jobs (:class:`sowa_lib.evaluate.Job`) are idempotent and write each
run atomically, so every executor produces the same result files, a pre-empted job leaves no
partial file, and a rerun computes only what is missing.

Ray and submitit are optional extras: ``pip install -e '.[ray]'`` / ``'.[slurm]'``.
"""
from __future__ import annotations

import multiprocessing
from multiprocessing import connection
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from tqdm.auto import tqdm


class SweepError(RuntimeError):
    """Some jobs still failed after their retries; the others completed and are in the store."""


@dataclass
class _Outcome:
    job: Any
    error: str | None = None


def _execute(job: Any) -> list[str]:
    from sowa_lib.evaluate import execute_job

    return execute_job(job)


@dataclass
class Executor:
    """Runs a list of jobs, retrying each failed one up to ``retries`` times, then reports failures."""

    retries: int = 1
    progress: bool = True

    def run(self, jobs: Sequence[Any], desc: str = "jobs") -> None:
        pending, failures = list(jobs), []
        for attempt in range(self.retries + 1):
            if not pending:
                break
            outcomes = self._map(pending, f"{desc}" if attempt == 0 else f"{desc} (retry {attempt})")
            failures = [o for o in outcomes if o.error is not None]
            pending = [o.job for o in failures]
        if failures:
            details = "\n".join(f"- {o.job.describe()}: {_last_error_line(o.error)}" for o in failures)
            raise SweepError(f"{len(failures)} job(s) failed after {self.retries} retr{'y' if self.retries == 1 else 'ies'}:\n{details}")

    def _map(self, jobs: list[Any], desc: str) -> list[_Outcome]:  # pragma: no cover - abstract
        raise NotImplementedError


def _last_error_line(error: str) -> str:
    """The exception line of a traceback (the last line naming an error), else its last line."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]]
    return (named or lines or ["unknown error"])[-1]


@dataclass
class LocalExecutor(Executor):
    """This machine: sequentially in this process (``jobs=1``), or each job in its own worker
    process, ``jobs`` at a time — a worker that dies (killed, out of memory) fails only its job."""

    jobs: int = 1

    def _map(self, jobs: list[Any], desc: str) -> list[_Outcome]:
        bar = tqdm(total=len(jobs), desc=desc, disable=not self.progress or not jobs)
        outcomes = []
        if self.jobs <= 1:
            for job in jobs:
                outcomes.append(_guarded(job))
                bar.update(1)
        else:
            for outcome in _in_worker_processes(jobs, self.jobs):
                outcomes.append(outcome)
                bar.update(1)
        bar.close()
        return outcomes


def _in_worker_processes(jobs: list[Any], parallel: int) -> Iterator[_Outcome]:
    """Run each job in a fresh spawned process, ``parallel`` at a time; yield outcomes as they end."""
    context = multiprocessing.get_context("spawn")
    pending, running = list(jobs), {}
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_report, args=(job, sender), daemon=True)
            process.start()
            sender.close()
            running[process.sentinel] = (process, job, receiver)
        for sentinel in connection.wait(list(running)):
            process, job, receiver = running.pop(sentinel)
            process.join()
            try:
                error = receiver.recv()
            except EOFError:  # the worker died before it could report
                error = f"WorkerDied: worker process exited with code {process.exitcode}"
            receiver.close()
            yield _Outcome(job, error)


def _report(job: Any, sender: connection.Connection) -> None:
    sender.send(_guarded(job).error)
    sender.close()


def _guarded(job: Any) -> _Outcome:
    try:
        _execute(job)
        return _Outcome(job)
    except Exception:
        return _Outcome(job, traceback.format_exc())


@dataclass
class RayExecutor(Executor):
    """Ray tasks, one per job, each asking for ``num_cpus``/``num_gpus``. Connects to ``address``
    (an existing cluster, e.g. ``"auto"`` or ``"ray://head:10001"``) or starts a local instance."""

    address: str | None = None
    num_cpus: float = 1
    num_gpus: float = 0
    init_kwargs: dict[str, Any] = field(default_factory=dict)

    def _map(self, jobs: list[Any], desc: str) -> list[_Outcome]:
        ray = _require("ray", "ray")
        if not ray.is_initialized():
            ray.init(address=self.address, ignore_reinit_error=True, **self.init_kwargs)
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(_execute)
        refs = {task.remote(job): job for job in jobs}
        outcomes = []
        for ref, job in tqdm(refs.items(), desc=desc, disable=not self.progress):
            try:
                ray.get(ref)
                outcomes.append(_Outcome(job))
            except Exception:
                outcomes.append(_Outcome(job, traceback.format_exc()))
        return outcomes


@dataclass
class SlurmExecutor(Executor):
    """submitit jobs on SLURM (``cluster="slurm"``), or submitit's local executor (``"local"``) for
    tests. ``folder`` holds submitit's logs and pickles and must be on a shared file system."""

    folder: str = "results/submitit"
    cluster: str | None = None
    partition: str | None = None
    gpus_per_node: int = 1
    cpus_per_task: int = 4
    timeout_min: int = 240
    extra: dict[str, Any] = field(default_factory=dict)

    def _map(self, jobs: list[Any], desc: str) -> list[_Outcome]:
        submitit = _require("submitit", "slurm")
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params: dict[str, Any] = {"timeout_min": self.timeout_min, "cpus_per_task": self.cpus_per_task, **self.extra}
        if executor.cluster == "slurm":
            params.update(gpus_per_node=self.gpus_per_node, **({"slurm_partition": self.partition} if self.partition else {}))
        executor.update_parameters(**params)
        handles = executor.map_array(_execute, jobs)
        outcomes = []
        for handle, job in tqdm(list(zip(handles, jobs)), desc=desc, disable=not self.progress):
            try:
                handle.result()
                outcomes.append(_Outcome(job))
            except Exception:
                outcomes.append(_Outcome(job, traceback.format_exc()))
        return outcomes


def _require(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(f"the {extra!r} executor needs {module}: pip install -e '.[{extra}]'") from err


EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor, "ray": RayExecutor, "slurm": SlurmExecutor}


def get_executor(name: str = "local", **options: Any) -> Executor:
    """``local`` (option ``jobs``), ``ray`` (``address``, ``num_cpus``, ``num_gpus``) or ``slurm``
    (``partition``, ``gpus_per_node``, ``timeout_min``, ``folder``, ``cluster``); all take ``retries``.
    Options may also come from the environment: ``JOBS``, ``RAY_ADDRESS``, ``SLURM_PARTITION``."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
    env = {"local": {"jobs": "JOBS"}, "ray": {"address": "RAY_ADDRESS"}, "slurm": {"partition": "SLURM_PARTITION"}}[name]
    for option, var in env.items():
        if option not in options and os.environ.get(var):
            options[option] = int(os.environ[var]) if option == "jobs" else os.environ[var]
    return EXECUTORS[name](**options)
