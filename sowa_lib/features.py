"""Frozen-feature cache: one encoder pass per distinct (backbone, resolution, image) per sweep
(DESIGN.md, layer "frozen-feature cache"; issue #15).

A few-shot sweep evaluates every category for K ∈ {1, 2, 4} × seeds, and every run encodes the
same test images with a *frozen* backbone whose output depends on neither K nor seed. The backbones
route their frozen encodings (``ClipBackbone.encode_image``, ``DinoBackbone.forward``,
``TappedCNN.forward``, WinCLIP's window embeddings) through :func:`frozen_features`, and the
CLIP methods' prompt ensembles through :func:`frozen_prompts`; while the
runner holds a :class:`FeatureCache` active (:func:`active`), an encoding already computed is served
from memory (or from disk), else computed and stored. Anything trained (heads, adapters, prompts,
decoders) runs after these calls and is always recomputed. Outside an :func:`active` context, and
while autograd records or a forward hook watches the backbone, nothing is cached.

Key of an entry: the backbone's **weights fingerprint** (every tensor of the frozen module, its
architecture ``repr`` — activation included — and its eval/train mode), the operation and the part
asked for (tap, CLS, window scale), the environment that decides the float result (torch and model
library versions, device, thread count, autocast state) and the **content hash** of the batch of
preprocessed image tensors (so resolution and normalisation are part of it). Float results of a
batched forward can depend on the batch's composition, so an entry is one batch exactly as the
uncached path encodes it: the test images of a category are split into the same batches for every
run and method, so they hit. References are encoded **one image at a time** in both modes
(``per_image``), so every K and seed reuses each reference image's own encoding. Results with and
without the cache are therefore bit-identical (``tests/test_features.py``).

The module imports nothing of ``sowa_lib``: it sits just below the backbones, which call it.

Memory is bounded by scope: :meth:`FeatureCache.enter` with a new scope (the runner's dataset and
category) drops what the previous scope held. The optional disk cache (``directory``, the runner's
``results/<profile>/features/``) writes one file per entry atomically (temporary name, then rename),
reads it memory-mapped, and deletes the least recently used files beyond ``max_disk_bytes`` (the folder
is scanned for that only when the cap may have been reached).
Several processes (the executors' workers) may share the folder: a file is complete once it has its
name, and a file deleted by another process's cap is a miss, recomputed.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import platform
import weakref
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from time import perf_counter
from typing import Callable, Hashable, Iterator, Sequence

import torch
from torch import nn

#: Environment variable choosing the runner's cache: ``off``, ``memory`` (default) or ``disk``.
FEATURE_CACHE_ENV = "SOWA_FEATURE_CACHE"
FEATURE_CACHE_MODES = ("off", "memory", "disk")
#: Size cap of the disk cache in GiB (default :data:`DEFAULT_DISK_GB`).
FEATURE_CACHE_GB_ENV = "SOWA_FEATURE_CACHE_GB"
DEFAULT_DISK_GB = 50.0
#: A disk cache rescans its folder after writing this fraction of its cap (:meth:`FeatureCache.put`), so
#: the folder may exceed the cap by at most that much per process writing to it at once.
RESCAN_FRACTION = 1 / 64
#: Folder of the disk cache inside a profile's results folder (``make clean-features`` removes it).
FEATURES_DIRNAME = "features"
#: A folder: each process that imports this module writes its :data:`STATS` there as ``<pid>.json``
#: when it exits (``benchmarks/reproduce_all.py`` sums the notebooks' kernels), and its CUDA encoder
#: timings are synchronised so that they count the GPU work.
FEATURE_STATS_ENV = "SOWA_FEATURE_STATS"

Parts = dict[Hashable, torch.Tensor]
Compute = Callable[[torch.Tensor, Sequence[Hashable]], Parts]


@dataclass
class FeatureStats:
    """What went through :func:`frozen_features` within :func:`active` contexts, in this process:
    ``encoded`` counts the images the backbone actually ran on, ``served`` those answered from a
    cache, both per operation label (``"<library>.<backbone class>/<operation>"``). ``seconds`` is
    the wall time the frozen encoders ran per label (prompt lists: ``".../prompts"``), counted for
    every computation that :func:`frozen_features` and :func:`frozen_prompts` make, within an
    :func:`active` context or not, with gradients or without: more than any cache of frozen
    encodings could save (it cannot serve an encoding of a freshly perturbed image, for one)."""

    encoded: Counter = field(default_factory=Counter)
    served: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)

    def total_encoded(self) -> int:
        return sum(self.encoded.values())

    def reset(self) -> None:
        self.encoded.clear()
        self.served.clear()
        self.seconds.clear()

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {"encoded": dict(self.encoded), "served": dict(self.served), "seconds": dict(self.seconds)}


#: The process's counters (the sweep benchmark reads and resets them).
STATS = FeatureStats()


def _write_stats(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{os.getpid()}.json").write_text(json.dumps(STATS.as_dict()))


#: Where this process writes its :data:`STATS` at exit (:data:`FEATURE_STATS_ENV`), or None.
_STATS_FOLDER = os.environ.get(FEATURE_STATS_ENV) or None
if _STATS_FOLDER:
    atexit.register(_write_stats, Path(_STATS_FOLDER))


def read_stats(folder: Path) -> FeatureStats:
    """The sum of the :data:`STATS` that the processes run with :data:`FEATURE_STATS_ENV` = ``folder``
    wrote there."""
    total = FeatureStats()
    for path in sorted(Path(folder).glob("*.json")):
        written = json.loads(path.read_text())
        for name in ("encoded", "served", "seconds"):
            getattr(total, name).update(written[name])
    return total


class FeatureCache:
    """Encodings of frozen backbones, keyed by content (module docstring), in memory per scope and
    optionally on disk under ``directory`` (at most ``max_disk_bytes``, least recently used files
    deleted first)."""

    def __init__(self, directory: str | Path | None = None, max_disk_bytes: int | None = None, *, in_memory: bool = True) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_disk_bytes = max_disk_bytes if max_disk_bytes is not None else int(DEFAULT_DISK_GB * 2**30)
        self.in_memory = in_memory
        self._disk_bytes_seen: int | None = None  # the folder's size after the last scan (None: not scanned yet)
        self._written_since_scan = 0
        self.scope: Hashable = None
        self._memory: dict[str, torch.Tensor] = {}
        self._stored_images: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ scope
    def enter(self, scope: Hashable) -> None:
        """Start ``scope`` (e.g. one dataset's category): a new scope drops the memory of the last."""
        if scope != self.scope:
            self._memory.clear()
            self.scope = scope

    def disk_only(self) -> "FeatureCache | None":
        """A cache of the same folder that keeps nothing in memory (a training set's encodings: many
        GB at paper size, read back once per training), or None without a folder."""
        return None if self.directory is None else FeatureCache(self.directory, self.max_disk_bytes, in_memory=False)

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._memory.values())

    def record(self, encoder: str, image_hashes: Sequence[str]) -> None:
        """Note that ``encoder`` (fingerprint and operation) was run on these images."""
        self._stored_images.update((encoder, h) for h in image_hashes)

    def distinct_images(self) -> int:
        """Distinct (backbone and operation, image) pairs this cache computed since it was built."""
        return len(self._stored_images)

    # ------------------------------------------------------------------ entries
    def get(self, key: str, device: torch.device) -> torch.Tensor | None:
        if key in self._memory:
            return self._memory[key].to(device)
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            tensor = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            os.utime(path)  # the size cap deletes the least recently used files first
        except (OSError, RuntimeError, EOFError):  # removed by another process's size cap meanwhile
            return None
        tensor = tensor.to(device)
        if self.in_memory:
            self._memory[key] = tensor
        return tensor

    def put(self, key: str, tensor: torch.Tensor) -> None:
        if self.in_memory:
            self._memory[key] = tensor
        path = self._path(key)
        if path is None or path.is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(tensor.detach().cpu().clone(), temporary)
        size = temporary.stat().st_size
        os.replace(temporary, path)
        self._enforce_disk_cap(size)

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / key[:2] / f"{key}.pt"

    def disk_bytes(self) -> int:
        return sum(stat.st_size for _, stat in self._stored_files())

    def _stored_files(self) -> list[tuple[Path, os.stat_result]]:
        """The folder's entries with their ``stat``, each read once; a file that another process's cap
        deleted meanwhile is left out."""
        if self.directory is None or not self.directory.is_dir():
            return []
        stored = []
        for path in self.directory.glob("*/*.pt"):
            try:
                stored.append((path, path.stat()))
            except FileNotFoundError:
                continue
        return stored

    def _enforce_disk_cap(self, written: int) -> None:
        """After writing ``written`` bytes, :meth:`_trim_to_cap` if what this cache knows of the folder
        could exceed the cap, or once it wrote :data:`RESCAN_FRACTION` of the cap since the last scan
        (other processes write to it too): a scan per write made a sweep quadratic in its file count."""
        self._written_since_scan += written
        if self._disk_bytes_seen is None or self._disk_bytes_seen + self._written_since_scan > self.max_disk_bytes \
                or self._written_since_scan > self.max_disk_bytes * RESCAN_FRACTION:
            self._trim_to_cap()

    def _trim_to_cap(self) -> None:
        """Delete the least recently used (written or read) files until the folder holds at most the cap."""
        stored = sorted(self._stored_files(), key=lambda entry: entry[1].st_mtime_ns)
        total = sum(stat.st_size for _, stat in stored)
        for path, stat in stored:
            if total <= self.max_disk_bytes:
                break
            total -= stat.st_size
            path.unlink(missing_ok=True)
        self._disk_bytes_seen, self._written_since_scan = total, 0


# ---------------------------------------------------------------------- the active context


@dataclass(frozen=True)
class _Context:
    cache: FeatureCache | None
    per_image: bool


_CONTEXT: _Context | None = None


@contextmanager
def active(cache: FeatureCache | None, *, per_image: bool = False) -> Iterator[FeatureStats]:
    """Within the block, frozen encodings go through ``cache`` (``None``: computed, not cached) and are
    counted in :data:`STATS`; ``per_image`` encodes every image of a batch alone (the runner's
    references, in both modes, so that each reference image has one encoding whatever K and seed
    draw it)."""
    global _CONTEXT
    previous = _CONTEXT
    _CONTEXT = _Context(cache, per_image)
    try:
        yield STATS
    finally:
        _CONTEXT = previous


def frozen_features(
    owner: nn.Module, operation: Hashable, images: torch.Tensor, parts: Sequence[Hashable], compute: Compute,
    superset: Sequence[Hashable] | None = None,
) -> Parts:
    """``{part: [B, ...]}`` of the frozen ``owner`` on ``images`` ``[B, 3, S, S]``.

    ``compute(images, parts)`` runs the backbone and returns at least the ``parts`` asked for; each
    part's value must not depend on which other parts are asked for. With a cache active, a miss
    computes ``superset`` (default ``parts``: e.g. all CNN stages, so SPADE, PaDiM and PatchCore share
    one pass) and stores every part. Within an :func:`active` context the returned tensors are
    contiguous, cached or not (a disk entry reads back contiguous); outside one this is exactly
    ``compute(images, parts)``.
    """
    context = _CONTEXT
    label = _label(owner, operation)
    if context is None or torch.is_grad_enabled():
        return _timed(label, compute, images, parts)
    if context.per_image and len(images) > 1:
        single = [frozen_features(owner, operation, images[i : i + 1], parts, compute, superset) for i in range(len(images))]
        return {part: torch.cat([s[part] for s in single]) for part in parts}
    cache = context.cache
    if cache is None or _has_hooks(owner):
        STATS.encoded[label] += len(images)
        return _contiguous(_timed(label, compute, images, parts))
    image_hashes = [_tensor_hash(image) for image in images]
    entry = _entry_key(fingerprint(owner), operation, compute, images, image_hashes)
    found = {part: cache.get(_part_key(entry, part), images.device) for part in parts}
    if all(value is not None for value in found.values()):
        STATS.served[label] += len(images)
        return found
    computed = _contiguous(_timed(label, compute, images, superset or parts))
    STATS.encoded[label] += len(images)
    for part, value in computed.items():
        cache.put(_part_key(entry, part), value)
    cache.record(f"{fingerprint(owner)}/{operation}", image_hashes)
    return {part: computed[part] for part in parts}


def frozen_prompts(owner: nn.Module, tower: tuple[str, ...], token_ids: torch.Tensor,
                   compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``compute(token_ids)``: the features ``[N, D]`` of a prompt list ``[N, L]`` through the frozen
    text tower of ``owner`` (a CLIP model; ``tower``: the attributes of ``owner`` that make up its
    text path, the only ones fingerprinted: :func:`fingerprint`), served from the active cache when
    it holds them.

    A method's prompt ensemble for a class name (April-GAN: 420 sentences, WinCLIP: 231) is one
    entry, keyed like an image batch (weights, code, environment, the token ids' content): the list
    is encoded as one batch in both modes, so a served entry is bit-identical to a computed one.
    Prompts are not images: :data:`STATS` and :meth:`FeatureCache.distinct_images` leave them out,
    and references' ``per_image`` encoding does not split them. Without the cache, April-GAN's list
    goes through ViT-L's text tower once per plan and category: 17 s on two CPU cores (measured).
    """
    context = _CONTEXT
    label = _label(owner, "prompts")
    if context is None or torch.is_grad_enabled():
        return _timed(label, compute, token_ids)
    if context.cache is None or _has_hooks(owner):
        return _timed(label, compute, token_ids).contiguous()
    entry = _entry_key(fingerprint(owner, tower), "prompts", compute, token_ids, [_tensor_hash(token_ids)])
    key = _part_key(entry, "features")
    found = context.cache.get(key, token_ids.device)
    if found is not None:
        return found
    value = _timed(label, compute, token_ids).contiguous()
    context.cache.put(key, value)
    return value


def _label(owner: nn.Module, operation: Hashable) -> str:
    """The :data:`STATS` label of an operation: ``"<library>.<backbone class>/<operation>"``."""
    return f"{type(owner).__module__.split('.')[0]}.{type(owner).__name__}/{operation}"


def _timed(label: str, compute: Callable, *inputs: object) -> object:
    """``compute(*inputs)``, its wall time added to :data:`STATS` ``.seconds[label]`` (on CUDA, between
    two synchronisations when :data:`FEATURE_STATS_ENV` asks for the timings)."""
    synchronise = _STATS_FOLDER is not None and torch.cuda.is_available()
    if synchronise:
        torch.cuda.synchronize()
    start = perf_counter()
    result = compute(*inputs)
    if synchronise:
        torch.cuda.synchronize()
    STATS.seconds[label] += perf_counter() - start
    return result


def _contiguous(parts: Parts) -> Parts:
    return {part: value.contiguous() for part, value in parts.items()}


def _has_hooks(module: nn.Module) -> bool:
    """Forward hooks (e.g. AGPNet's attention prior on a CLIP block) must see the forward run."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


# ---------------------------------------------------------------------- keys


def _digest(*pieces: object) -> str:
    return hashlib.blake2b(repr(pieces).encode(), digest_size=20).hexdigest()


def _tensor_hash(tensor: torch.Tensor) -> str:
    """Content hash of one tensor: dtype, shape and bytes."""
    data = tensor.detach().contiguous().cpu()
    digest = hashlib.blake2b(f"{data.dtype}{tuple(data.shape)}".encode(), digest_size=20)
    if data.numel():
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


_FINGERPRINTS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, ...] | None, tuple[tuple, str | _CopiedFrom]]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _CopiedFrom:
    """A copy's fingerprint not yet hashed: its source's, while the source is alive and unchanged."""

    source: "weakref.ref[nn.Module]"
    source_version: tuple

    def resolve(self, names: tuple[str, ...] | None) -> str | None:
        source = self.source()
        if source is None or _version(source, _tensors(source, names)) != self.source_version:
            return None
        return fingerprint(source, names)


def fingerprint(module: nn.Module, names: tuple[str, ...] | None = None) -> str:
    """Content hash of a frozen module: every parameter and buffer (name, dtype, shape, bytes), its
    ``repr`` (architecture, activation) and its training flag; with ``names``, of those attributes
    of it only (submodules and tensors: a CLIP's text tower without its vision tower). Recomputed
    only after a tensor of it is replaced or modified in place."""
    tensors = _tensors(module, names)
    version = _version(module, tensors)
    memo = _FINGERPRINTS.setdefault(module, {})
    if names in memo and memo[names][0] == version:
        known = memo[names][1]
        value = known if isinstance(known, str) else known.resolve(names)
        if value is not None:
            memo[names] = (version, value)
            return value
    architecture = repr(module) if names is None else repr([(n, getattr(module, n)) for n in names if isinstance(getattr(module, n), nn.Module)])
    digest = hashlib.blake2b(f"{type(module).__qualname__}\n{architecture}\n{module.training}".encode(), digest_size=20)
    for name, tensor in tensors:
        digest.update(f"{name}:{_tensor_hash(tensor)}".encode())
    value = digest.hexdigest()
    memo[names] = (version, value)
    return value


def copy_fingerprint(source: nn.Module, target: nn.Module, names: tuple[str, ...] | None = None) -> None:
    """Give ``target``, a copy of ``source`` (``copy.deepcopy``, then moved to any device: equal
    tensors, architecture and mode), the :func:`fingerprint` of ``source`` without hashing its
    tensors again. Lazy: nothing is hashed until ``target``'s fingerprint is asked for, and then
    ``source``'s (memoised there for the next copy), provided ``source`` is alive and unchanged since
    the copy; it holds until a tensor of ``target`` is replaced or modified in place."""
    copied = _CopiedFrom(weakref.ref(source), _version(source, _tensors(source, names)))
    _FINGERPRINTS.setdefault(target, {})[names] = (_version(target, _tensors(target, names)), copied)


def _tensors(module: nn.Module, names: tuple[str, ...] | None) -> list[tuple[str, torch.Tensor]]:
    return [(name, t) for name, t in module.state_dict(keep_vars=True).items() if names is None or name.split(".")[0] in names]


def _version(module: nn.Module, tensors: list[tuple[str, torch.Tensor]]) -> tuple:
    """What changes when a tensor of ``module`` is replaced or modified in place, or its mode flips."""
    return module.training, tuple((name, t.data_ptr(), t._version, t.device.type) for name, t in tensors)


def environment_key(device: torch.device) -> tuple:
    """What decides the float result of a forward besides weights and inputs: library versions,
    device (model), CPU threads and autocast state."""
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    autocast = tuple(
        (kind, torch.is_autocast_enabled(kind), str(torch.get_autocast_dtype(kind))) for kind in ("cpu", "cuda")
    )
    return (torch.__version__, *_library_versions(), device.type, hardware, torch.get_num_threads(), autocast)


@lru_cache(maxsize=1)
def _library_versions() -> tuple[str, ...]:
    """Versions of the libraries that define the backbones' modules."""
    return tuple(f"{name}=={metadata.version(name)}" for name in ("open_clip_torch", "timm", "torchvision"))


def _entry_key(weights: str, operation: Hashable, compute: Compute, images: torch.Tensor, image_hashes: list[str]) -> str:
    """The key of one entry: the frozen weights' :func:`fingerprint`, the operation, the code and
    environment that compute it and the inputs' content."""
    code = _source_hash(getattr(compute, "__func__", compute).__code__.co_filename)
    return _digest(weights, operation, code, environment_key(images.device), tuple(image_hashes))


@lru_cache(maxsize=None)
def _source_hash(compute_file: str) -> str:
    """Hash of the code that computes an entry: the file defining ``compute`` and the backbones'
    modules (so a disk cache never serves features of an older version of that code)."""
    files = sorted({Path(compute_file), *Path(__file__).with_name("backbones").glob("*.py")})
    digest = hashlib.blake2b(digest_size=20)
    for path in files:
        digest.update(path.read_bytes() if path.is_file() else path.name.encode())
    return digest.hexdigest()


def _part_key(entry: str, part: Hashable) -> str:
    return _digest(entry, part)


# ---------------------------------------------------------------------- the runner's cache

_RUNNER_CACHES: dict[tuple, FeatureCache] = {}


def runner_cache(run_dir: Path) -> FeatureCache | None:
    """The process-wide cache the runner uses for a profile's results folder ``run_dir``, as
    :data:`FEATURE_CACHE_ENV` asks: ``memory`` (default), ``disk`` (also under
    ``run_dir/features``, capped at :data:`FEATURE_CACHE_GB_ENV` GiB) or ``off`` (``None``)."""
    mode = os.environ.get(FEATURE_CACHE_ENV, "memory").strip().lower() or "memory"
    if mode not in FEATURE_CACHE_MODES:
        raise ValueError(f"{FEATURE_CACHE_ENV}={mode!r}; choose one of {FEATURE_CACHE_MODES}")
    if mode == "off":
        return None
    directory = Path(run_dir) / FEATURES_DIRNAME if mode == "disk" else None
    cap = int(float(os.environ.get(FEATURE_CACHE_GB_ENV, DEFAULT_DISK_GB)) * 2**30)
    key = (mode, str(directory), cap)
    if key not in _RUNNER_CACHES:
        _RUNNER_CACHES[key] = FeatureCache(directory, cap)
    return _RUNNER_CACHES[key]
