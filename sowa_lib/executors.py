"""Where a sweep's jobs run: this process (``local``), a Ray cluster (``ray``) or SLURM through
submitit (``slurm``). The jobs (:class:`sowa_lib.jobs.Job`) are idempotent and write each
run atomically, so every executor produces the same result files, a pre-empted job leaves no
partial file, and a rerun computes only what is missing. The runner hands each executor the
function that runs one job (:func:`sowa_lib.evaluate.execute_job`, a module-level function that
pickles by reference), so that this module knows jobs but not the runner.

Workers never download weights: Ray workers receive the driver's ``DATA_ROOT``/``WEIGHTS_DIR``
(:data:`SHARED_PATH_VARIABLES`) through a ``runtime_env``, local worker processes and SLURM jobs
inherit them, and every worker runs with :data:`OFFLINE_ENVIRONMENT` set.

Ray and submitit are optional extras: ``pip install -e '.[ray]'`` / ``'.[slurm]'``.
"""
from __future__ import annotations

import multiprocessing
from multiprocessing import connection
import os
import pickle
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from sowa_lib.backbones.clip import KEEP_BUILT_ENV
from sowa_lib.errors import SweepError
from sowa_lib.features import FEATURE_CACHE_ENV, FEATURE_CACHE_GB_ENV
from sowa_lib.jobs import Job
from sowa_lib.progress import tqdm


#: Variables that say where the shared datasets, weights and caches are (and how the frozen-feature
#: cache runs and how many backbone builds a process keeps); forwarded to Ray workers.
SHARED_PATH_VARIABLES = ("DATA_ROOT", "WEIGHTS_DIR", "TORCH_HOME", "HF_HOME", FEATURE_CACHE_ENV, FEATURE_CACHE_GB_ENV,
                         KEEP_BUILT_ENV)
#: Set in every worker process: Hugging Face hub (open_clip, timm) and torch hub
#: (:mod:`sowa_lib.backbones.cnn`) then read their caches and never download.
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1"}

#: What runs one job in the process it is called in and returns the result files it wrote
#: (:func:`sowa_lib.evaluate.execute_job`); module-level, so that it pickles by reference.
JobFunction = Callable[[Job], list[str]]


@dataclass
class Outcome:
    """One job's result: ``error`` is its traceback, None when it succeeded."""

    job: Job
    error: str | None = None


def sweep_error(failures: Sequence[Outcome], retries: int, skipped: Sequence[Job] = ()) -> SweepError:
    """One error listing every failed job (its last error line) and the jobs skipped because of them."""
    lines = [f"{len(failures)} job(s) failed after {retries} retr{'y' if retries == 1 else 'ies'}:"]
    lines += [f"- {o.job.describe()}: {_last_error_line(o.error or '')}" for o in failures]
    if skipped:
        lines.append(f"{len(skipped)} job(s) not run because the training they need failed:")
        lines += [f"- {job.describe()}" for job in skipped]
    return SweepError("\n".join(lines))


def worker_environment() -> dict[str, str]:
    """The driver's :data:`SHARED_PATH_VARIABLES` that are set, plus :data:`OFFLINE_ENVIRONMENT`."""
    return {**{name: os.environ[name] for name in SHARED_PATH_VARIABLES if os.environ.get(name)}, **OFFLINE_ENVIRONMENT}


def _execute_in_worker(pickled_call: bytes) -> list[str]:
    """A pickled ``(run, job)`` pair, called in a dedicated worker process (never the driver). It
    arrives pickled and is unpickled only once the worker is offline, so that no library that
    ``run``'s module or the job's classes import can read the variable before it is set."""
    os.environ.update(OFFLINE_ENVIRONMENT)
    run, job = pickle.loads(pickled_call)
    return run(job)


def _uses_cuda(jobs: Sequence[Job]) -> bool:
    return any(str(job.profile.device).startswith("cuda") for job in jobs)


@dataclass
class Executor:
    """Runs a list of jobs, retrying each failed one up to ``retries`` times, then reports failures."""

    retries: int = 1
    progress: bool = True

    def attempt(self, jobs: Sequence[Job], run: JobFunction, desc: str = "jobs") -> list[Outcome]:
        """Run each of ``jobs`` through ``run``, retrying each failed one up to ``retries`` times;
        return those still failing."""
        pending, failures = list(jobs), []
        for attempt in range(self.retries + 1):
            if not pending:
                break
            outcomes = self._map(pending, run, f"{desc}" if attempt == 0 else f"{desc} (retry {attempt})")
            failures = [o for o in outcomes if o.error is not None]
            pending = [o.job for o in failures]
        return failures

    def _map(self, jobs: list[Job], run: JobFunction, desc: str) -> list[Outcome]:  # pragma: no cover - abstract
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

    def _map(self, jobs: list[Job], run: JobFunction, desc: str) -> list[Outcome]:
        bar = tqdm(total=len(jobs), desc=desc, disable=not self.progress or not jobs)
        outcomes = []
        if self.jobs <= 1:
            for job in jobs:
                outcomes.append(_guarded(run, job))
                bar.update(1)
        else:
            for outcome in _in_worker_processes(jobs, run, self.jobs):
                outcomes.append(outcome)
                bar.update(1)
        bar.close()
        return outcomes


def _in_worker_processes(jobs: list[Job], run: JobFunction, parallel: int) -> Iterator[Outcome]:
    """Run each job through ``run`` in a fresh spawned process, ``parallel`` at a time; yield
    outcomes as they end."""
    context = multiprocessing.get_context("spawn")
    pending, running = list(jobs), {}
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_report, args=(pickle.dumps((run, job)), sender), daemon=True)
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
            yield Outcome(job, error)


def _report(pickled_call: bytes, sender: connection.Connection) -> None:
    """:func:`_execute_in_worker`, sending its traceback (None on success) back to the driver."""
    sender.send(_traceback(lambda: _execute_in_worker(pickled_call)))
    sender.close()


def _guarded(run: JobFunction, job: Job) -> Outcome:
    """``run(job)`` in this process, an exception kept as the outcome's traceback."""
    return Outcome(job, _traceback(lambda: run(job)))


def _traceback(call: Callable[[], object]) -> str | None:
    """The traceback of the exception ``call()`` raises, None when it returns."""
    try:
        call()
        return None
    except Exception:
        return traceback.format_exc()


@dataclass
class RayExecutor(Executor):
    """Ray tasks, one per job, each asking for ``num_cpus``/``num_gpus`` (``None``: 1 GPU when the
    profile's device is CUDA, else 0). Connects to ``address`` (an existing cluster, e.g. ``"auto"``
    or ``"ray://head:10001"``) or starts a local instance. Each task runs with
    :func:`worker_environment` as its ``runtime_env`` variables."""

    address: str | None = None
    num_cpus: float = 1
    num_gpus: float | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)

    def _map(self, jobs: list[Job], run: JobFunction, desc: str) -> list[Outcome]:
        ray = _require("ray", "ray")
        if not ray.is_initialized():
            ray.init(address=self.address, ignore_reinit_error=True, **self.init_kwargs)
        num_gpus = self.num_gpus if self.num_gpus is not None else float(_uses_cuda(jobs))
        runtime_env = {"env_vars": worker_environment()}  # merged with the job-level runtime_env's variables
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=num_gpus, runtime_env=runtime_env)(run)
        refs = {task.remote(job): job for job in jobs}
        outcomes = []
        for ref, job in tqdm(refs.items(), desc=desc, disable=not self.progress):
            try:
                ray.get(ref)
                outcomes.append(Outcome(job))
            except Exception:
                outcomes.append(Outcome(job, traceback.format_exc()))
        return outcomes


@dataclass
class SlurmExecutor(Executor):
    """submitit jobs on SLURM (``cluster="slurm"``), or submitit's local executor (``"local"``) for
    tests. ``folder`` holds submitit's logs and pickles and must be on a shared file system. Jobs
    inherit the submitting environment (``DATA_ROOT``, ``WEIGHTS_DIR``) and run offline;
    ``gpus_per_node=None`` asks for 1 GPU when the profile's device is CUDA, else 0."""

    folder: str = "results/submitit"
    cluster: str | None = None
    partition: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int = 4
    timeout_min: int = 240
    extra: dict[str, Any] = field(default_factory=dict)

    def _map(self, jobs: list[Job], run: JobFunction, desc: str) -> list[Outcome]:
        submitit = _require("submitit", "slurm")
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params: dict[str, Any] = {"timeout_min": self.timeout_min, "cpus_per_task": self.cpus_per_task, **self.extra}
        if executor.cluster == "slurm":
            gpus = self.gpus_per_node if self.gpus_per_node is not None else int(_uses_cuda(jobs))
            params.update(gpus_per_node=gpus, **({"slurm_partition": self.partition} if self.partition else {}))
        executor.update_parameters(**params)
        handles = executor.map_array(_execute_in_worker, [pickle.dumps((run, job)) for job in jobs])
        outcomes = []
        for handle, job in tqdm(list(zip(handles, jobs)), desc=desc, disable=not self.progress):
            try:
                handle.result()
                outcomes.append(Outcome(job))
            except Exception:
                outcomes.append(Outcome(job, traceback.format_exc()))
        return outcomes


def _require(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(f"the {extra!r} executor needs {module}: pip install -e '.[{extra}]'") from err


EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor, "ray": RayExecutor, "slurm": SlurmExecutor}

#: Options read from the environment when not given (``make reproduce-all EXECUTOR=ray RAY_NUM_GPUS=1``):
#: option -> (variable, type), per executor and for all of them.
ENVIRONMENT_OPTIONS: dict[str, dict[str, tuple[str, type]]] = {
    "all": {"retries": ("RETRIES", int)},
    "local": {"jobs": ("JOBS", int)},
    "ray": {"address": ("RAY_ADDRESS", str), "num_gpus": ("RAY_NUM_GPUS", float), "num_cpus": ("RAY_NUM_CPUS", float)},
    # prefixed: SLURM itself reads SLURM_PARTITION and sets SLURM_GPUS inside an allocation
    "slurm": {"partition": ("SOWA_SLURM_PARTITION", str), "gpus_per_node": ("SOWA_SLURM_GPUS", int),
              "timeout_min": ("SOWA_SLURM_TIME_MIN", int)},
}


def get_executor(name: str = "local", **options: Any) -> Executor:
    """``local`` (option ``jobs``), ``ray`` (``address``, ``num_cpus``, ``num_gpus``) or ``slurm``
    (``partition``, ``gpus_per_node``, ``timeout_min``, ``folder``, ``cluster``); all take ``retries``.
    Options not given come from the environment variables of :data:`ENVIRONMENT_OPTIONS`."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
    for option, (variable, kind) in {**ENVIRONMENT_OPTIONS["all"], **ENVIRONMENT_OPTIONS[name]}.items():
        if option not in options and os.environ.get(variable):
            options[option] = _parse_variable(variable, kind)
    return EXECUTORS[name](**options)


def _parse_variable(variable: str, kind: type) -> Any:
    value = os.environ[variable]
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{variable}={value!r} is not a valid {kind.__name__}; set it to a plain number or unset it") from None
