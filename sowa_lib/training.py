"""The training machinery of every trained method: one loop (:func:`train_epochs`), one kind of epoch
snapshot to resume from (:class:`EpochCheckpoints`) and one fingerprinted checkpoint format for
trained weights (:func:`save_checkpoint`). April-GAN and SOWA train through
:func:`train_segmentation`, AGPNet feeds its own batches of target images to :func:`train_epochs`.

Supervised segmentation training on auxiliary samples (April-GAN, SOWA; spec april_gan_winclip_peers
§1.7; sowa §2.1-§2.4): the *test* split of the auxiliary dataset with its masks, shuffled batches,
each sample replaced by a 2×2 mosaic with probability ``mosaic_rate``, images resized to the
method's size and normalised, masks resized bilinearly and thresholded at 0.5. The method supplies
the loss and the optimizer; this module only feeds batches.

Shuffling and mosaic draws are seeded per epoch (``seed``, ``epoch``), so a run resumed from an
epoch checkpoint continues exactly as an uninterrupted one.

Checkpoint files know what computed them (:mod:`sowa_lib.fingerprint`): a trained model is saved as
``{fingerprint, config, state}`` (:func:`save_checkpoint`) and :func:`load_checkpoint` refuses one
whose fingerprint differs, naming the parts that differ. A folder of training snapshots is claimed
for one fingerprint (:func:`claim_snapshot_dir`); snapshots carry it, and a resumed training starts
only from a snapshot with the folder's fingerprint.
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from sowa_lib import fingerprint
from sowa_lib.data.augment import draw_tiles, group_by_defect, mosaic
from sowa_lib.data.sample import Sample
from sowa_lib.data.transforms import image_to_tensor, mask_to_tensor
from sowa_lib.errors import StaleCheckpointError
from sowa_lib.progress import tqdm



@dataclass(frozen=True)
class TrainingBatch:
    """What a method's loss sees: ``images [B,3,S,S]`` (normalised), float ``masks [B,S,S]`` in {0,1},
    ``labels [B]`` and the samples' ``categories`` (April-GAN picks each sample's class prompts)."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    categories: tuple[str, ...]


LossFunction = Callable[[TrainingBatch], torch.Tensor]


@dataclass(frozen=True)
class TrainingSchedule:
    """How long and on what: the reference defaults are April-GAN's (§1.7)."""

    epochs: int
    batch_size: int = 8
    mosaic_rate: float = 0.0
    seed: int = 111
    mask_threshold: float = 0.5  # SOWA trains on masks resized bilinearly then > 0 (sowa §2.2)
    mosaic_label_fix: bool = False  # True: a mosaic is anomalous iff a tile is (sowa §5.4.9 bug fixed)


def epoch_rng(seed: int, epoch: int) -> random.Random:
    """The generator for one epoch's shuffle and mosaic draws."""
    return random.Random(seed * 1_000_003 + epoch)


def load_training_pair(
    sample: Sample, pools: dict[str, dict[str, list[Sample]]], rng: random.Random, mosaic_rate: float,
    mosaic_label_fix: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The sample's image, mask and label, or with probability ``mosaic_rate`` a mosaic of its
    category; the mosaic keeps ``sample.label`` unless ``mosaic_label_fix`` (then: any tile's label)."""
    if mosaic_rate > 0 and rng.random() < mosaic_rate:
        tiles = draw_tiles(pools[sample.category], rng)
        label = max(t.label for t in tiles) if mosaic_label_fix else sample.label
        return (*mosaic(tiles), label)
    return sample.read_image(), sample.read_mask(), sample.label


def load_training_batch(
    samples: Sequence[Sample],
    pools: dict[str, dict[str, list[Sample]]],
    rng: random.Random,
    *,
    image_size: int,
    normalization: str,
    mosaic_rate: float,
    device: torch.device | str = "cpu",
    mask_threshold: float = 0.5,
    mosaic_label_fix: bool = False,
) -> TrainingBatch:
    """The batch of ``samples``; a mosaic keeps the label and category of the sample it replaces, as
    both reference datasets do (sowa §2.4)."""
    triples = [load_training_pair(s, pools, rng, mosaic_rate, mosaic_label_fix) for s in samples]
    images = torch.stack([image_to_tensor(image, image_size, normalization) for image, _, _ in triples])
    masks = torch.stack([mask_to_tensor(mask, image_size, mask_threshold) for _, mask, _ in triples]).float()
    labels = torch.tensor([label for _, _, label in triples], dtype=torch.long)
    return TrainingBatch(images.to(device), masks.to(device), labels.to(device), tuple(s.category for s in samples))


def train_segmentation(
    samples: Sequence[Sample],
    loss_fn: LossFunction,
    optimizer: torch.optim.Optimizer,
    schedule: TrainingSchedule,
    *,
    image_size: int,
    normalization: str = "clip",
    device: torch.device | str = "cpu",
    start_epoch: int = 0,
    on_epoch_end: Callable[[int, list[float]], bool | None] | None = None,
    progress: bool = True,
) -> list[float]:
    """Train for ``schedule.epochs`` epochs (:func:`train_epochs`); returns the loss of every
    optimisation step.

    ``loss_fn(batch)`` returns the scalar to minimise for a :class:`TrainingBatch`. ``on_epoch_end(epoch, step_losses_so_far)`` runs after each epoch (checkpointing);
    training stops early when it returns True.
    Epochs before ``start_epoch`` are skipped (resuming).
    """
    if not samples:
        raise ValueError("no training samples")
    pools = group_by_defect(samples)

    def epoch_batches(epoch: int) -> Iterator[TrainingBatch]:
        rng = epoch_rng(schedule.seed, epoch)
        order = list(range(len(samples)))
        rng.shuffle(order)
        for start in range(0, len(order), schedule.batch_size):
            yield load_training_batch(
                [samples[i] for i in order[start : start + schedule.batch_size]], pools, rng, image_size=image_size,
                normalization=normalization, mosaic_rate=schedule.mosaic_rate, device=device,
                mask_threshold=schedule.mask_threshold, mosaic_label_fix=schedule.mosaic_label_fix,
            )

    return train_epochs(epoch_batches, loss_fn, optimizer, schedule.epochs, start_epoch=start_epoch,
                        steps_per_epoch=batch_count(len(samples), schedule.batch_size), on_epoch_end=on_epoch_end, progress=progress)


def train_epochs(
    epoch_batches: Callable[[int], Iterable[Any]],
    loss_fn: Callable[[Any], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    *,
    start_epoch: int = 0,
    steps_per_epoch: int | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    clip_gradients: Callable[[], Any] | None = None,
    after_step: Callable[[], None] | None = None,
    on_epoch_end: Callable[[int, list[float]], bool | None] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> list[float]:
    """The one training loop of every trained method: epochs ``start_epoch .. epochs - 1`` (0-based;
    earlier ones were done before a resume) of one optimisation step per batch of
    ``epoch_batches(epoch)``; returns the loss of every step.

    Per epoch: ``on_epoch_start(epoch)`` (a learning-rate schedule), then per batch ``loss_fn(batch)``,
    ``zero_grad``, ``backward``, ``clip_gradients()``, ``optimizer.step()``, ``after_step()`` (a
    mean-teacher update); after the epoch ``on_epoch_end(epoch, step_losses_so_far)`` (an epoch
    snapshot, :class:`EpochCheckpoints`), which stops the training when it returns True.
    ``steps_per_epoch`` only sizes the progress bar.
    """
    losses: list[float] = []
    total = (epochs - start_epoch) * steps_per_epoch if steps_per_epoch is not None else None
    bar = tqdm(total=total, disable=not progress, desc=desc)
    for epoch in range(start_epoch, epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        for batch in epoch_batches(epoch):
            loss = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_gradients is not None:
                clip_gradients()
            optimizer.step()
            if after_step is not None:
                after_step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}")
        if on_epoch_end is not None and on_epoch_end(epoch, losses):
            break
    bar.close()
    return losses


def batch_count(n_items: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches per epoch of ``n_items`` in batches of ``batch_size``; ``drop_last`` drops a partial last one."""
    return n_items // batch_size if drop_last else -(-n_items // batch_size)


def shuffled_batches(n_items: int, batch_size: int, generator: torch.Generator, drop_last: bool = False) -> list[torch.Tensor]:
    """One epoch's index batches of a ``torch.randperm`` drawn from ``generator`` (on its device);
    with ``drop_last`` the last partial batch is dropped (ViTAD's loader)."""
    count = batch_count(n_items, batch_size, drop_last)
    if count == 0:
        raise ValueError(f"drop_last=True with {n_items} training images < batch_size={batch_size} trains nothing; "
                         "lower batch_size or pass drop_last=False")
    return list(torch.randperm(n_items, generator=generator, device=generator.device).split(batch_size))[:count]


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename (never a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, parts: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Atomically save ``{fingerprint, config, state}``: ``config`` holds the fingerprint ``parts``."""
    atomic_torch_save({"fingerprint": fingerprint.digest(parts), "config": parts, "state": state}, path)


def load_checkpoint(path: Path, parts: dict[str, Any], map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The ``state`` saved at ``path`` if it was saved with ``parts``; otherwise
    :class:`StaleCheckpointError` naming the parts that differ (a file without a fingerprint, written
    before fingerprints existed, is refused too)."""
    saved = torch.load(path, map_location=map_location, weights_only=True)
    stored = saved.get("fingerprint") if isinstance(saved, dict) else None
    if stored != fingerprint.digest(parts):
        config = saved.get("config") if stored is not None else None
        raise StaleCheckpointError(f"{path} was not computed with this configuration, data or code version "
                                   f"(differs: {', '.join(fingerprint.differing_keys(config, parts))}); "
                                   "the runner moves it aside and retrains")
    return saved["state"]


SNAPSHOT_MARKER = "fingerprint.json"


def snapshot_fingerprint(directory: Path | str | None) -> str | None:
    """The fingerprint ``directory`` was claimed for (:func:`claim_snapshot_dir`); None if unclaimed."""
    marker = Path(directory) / SNAPSHOT_MARKER if directory is not None else None
    if marker is None or not marker.is_file():
        return None
    return json.loads(marker.read_text())["fingerprint"]


def claim_snapshot_dir(directory: Path, parts: dict[str, Any]) -> Path | None:
    """Make ``directory`` the snapshot folder of the training ``parts`` describe: a folder claimed for
    another fingerprint (or for none) is moved aside (:func:`sowa_lib.fingerprint.set_aside`; returned)
    so that no training resumes from another one's snapshots."""
    directory, expected = Path(directory), fingerprint.digest(parts)
    moved = None
    if directory.exists() and snapshot_fingerprint(directory) != expected:
        moved = fingerprint.set_aside(directory)
    if not directory.exists():
        directory.mkdir(parents=True)
        (directory / SNAPSHOT_MARKER).write_text(json.dumps({"fingerprint": expected, "config": parts}, indent=1, default=str))
    return moved


class TrainLossMonitor:
    """What SOWA's Lightning callbacks do with each epoch's mean training loss (``train/loss``, sowa
    §2.3): ``ReduceLROnPlateau(mode="min", factor, patience)`` steps on it (``plateau``);
    ``ModelCheckpoint(monitor="train/loss", mode="min")`` remembers the epoch with the lowest loss
    (strictly lower than every earlier one); ``EarlyStopping(patience=stop_patience)`` asks to stop
    after that many epochs without a new lowest loss."""

    def __init__(self, optimizer: torch.optim.Optimizer, plateau: bool, factor: float = 0.1, patience: int = 5,
                 stop_patience: int | None = 10) -> None:
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience) if plateau else None
        self.stop_patience = stop_patience
        self.best_loss, self.best_epoch, self.best_state, self.stale = math.inf, -1, None, 0

    def update(self, epoch: int, loss: float, state: Callable[[], dict[str, torch.Tensor]] | None = None) -> bool:
        """Record epoch ``epoch``'s mean loss; ``state()`` gives its weights, kept when they are the best
        (None when replaying earlier epochs on resume). Returns True when training should stop."""
        if self.scheduler is not None:
            self.scheduler.step(loss)
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self.stale = loss, epoch, 0
            self.best_state = state() if state is not None else None
        else:
            self.stale += 1
        return self.stop_patience is not None and self.stale >= self.stop_patience


def epoch_mean_losses(step_losses: Sequence[float], steps_per_epoch: int) -> list[float]:
    """Per-epoch means of consecutive step losses (torchmetrics ``MeanMetric`` over an epoch's steps)."""
    return [sum(chunk) / len(chunk) for chunk in (step_losses[i : i + steps_per_epoch] for i in range(0, len(step_losses), steps_per_epoch))]


class EpochCheckpoints:
    """The epoch snapshots of one training, what an interrupted training resumes from: one file per
    finished epoch (``epoch_003.pt``: trainable state, optimizer state, step losses, the folder's
    fingerprint (:func:`snapshot_fingerprint`), ``identity`` and any ``extra`` state such as a
    generator's). :meth:`latest` gives what a resumed run starts from: the last snapshot written with
    the folder's current fingerprint.

    identity: what the training must match to resume from a snapshot (a method's configuration, the
        size of its training set); a snapshot of another identity is refused with the parts that
        differ (:class:`StaleCheckpointError`). None: not checked.
    keep_last: keep only the newest snapshot (a long training whose earlier epochs nobody reloads).
    """

    def __init__(self, directory: Path | str | None, *, identity: dict[str, Any] | None = None, keep_last: bool = False) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.identity, self.keep_last = identity, keep_last

    def save(self, epoch: int, state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, losses: list[float],
             **extra: Any) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {"epoch": epoch, "state": state, "optimizer": optimizer.state_dict(), "losses": list(losses),
                   "fingerprint": snapshot_fingerprint(self.directory), "identity": self.identity, **extra}
        path = self.directory / f"epoch_{epoch:03d}.pt"
        atomic_torch_save(payload, path)
        if self.keep_last:
            for older in self.directory.glob("epoch_*.pt"):
                if older != path:
                    older.unlink()

    def load(self, epoch: int) -> dict[str, Any]:
        """The checkpoint written after ``epoch``."""
        return torch.load(self.directory / f"epoch_{epoch:03d}.pt", map_location="cpu", weights_only=True)

    def latest(self) -> dict[str, Any] | None:
        if self.directory is None or not self.directory.is_dir():
            return None
        expected = snapshot_fingerprint(self.directory)
        for path in sorted(self.directory.glob("epoch_*.pt"), reverse=True):
            snapshot = torch.load(path, map_location="cpu", weights_only=True)
            if snapshot.get("fingerprint") == expected:
                self._check_identity(path, snapshot.get("identity"))
                return snapshot
        return None

    def restore(self, load_state: Callable[[dict[str, torch.Tensor]], None], optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """The :meth:`latest` snapshot, its state given to ``load_state`` and its optimizer state
        loaded; None (nothing restored) when there is none."""
        snapshot = self.latest()
        if snapshot is not None:
            load_state(snapshot["state"])
            optimizer.load_state_dict(snapshot["optimizer"])
        return snapshot

    def _check_identity(self, path: Path, saved: dict[str, Any] | None) -> None:
        if self.identity is not None and saved != self.identity:
            differs = fingerprint.differing_keys(saved, self.identity)
            raise StaleCheckpointError(f"{path} was written by another training (differs: {', '.join(differs)}); "
                                       f"delete {path.parent} to start over, or resume with the options it was written with")
