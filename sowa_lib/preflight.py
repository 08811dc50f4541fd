"""A profile's preflight: its datasets in place (generated for the demo, fabricated for the smoke,
checked for the paper) and the pretrained weights its methods load, so that a study stops before it
starts with every missing dataset or file listed in one :class:`~sowa_lib.errors.ProfileNotReadyError`
that says what to fetch. The profiles themselves are data (:mod:`sowa_lib.profiles`).
"""
from __future__ import annotations

from typing import Any, Iterable

from sowa_lib import data, methods
from sowa_lib.data import demo
from sowa_lib.data.fabricate import fabricate_benchmarks
from sowa_lib.errors import ProfileNotReadyError, WeightsNotFoundError
from sowa_lib.profiles import Profile


def prepare(profile: Profile, datasets: list[str] | None = None) -> dict[str, list[str]]:
    """Make sure the profile's datasets are there and return their categories.

    The demo benchmark is generated on demand (deterministic, seconds), the smoke profile's
    fabricated benchmarks and official-format checkpoints likewise. For the paper profile a missing
    dataset raises :class:`ProfileNotReadyError` listing every missing one and the command that
    fetches it.
    """
    wanted = datasets or list(profile.datasets)
    if profile.name == "demo":
        demo.generate(profile.datasets[wanted[0]].root.parent)
    if profile.name == "smoke":
        fabricate_benchmarks(profile.datasets[wanted[0]].root.parent)
    found, problems = {}, []
    for name in wanted:
        ref = profile.datasets[name]
        try:
            found[name] = data.categories(ref.loader, ref.root)
        except Exception as err:  # every loader error carries the fix in its message
            problems.append(f"- {name}: {err}")
    if problems:
        raise ProfileNotReadyError(f"profile {profile.name!r} cannot start; missing or malformed datasets:\n" + "\n".join(problems))
    return found


#: Constructor options that change which pretrained weights a method loads.
WEIGHT_OPTIONS = ("backbone", "pretrained", "checkpoint")


def check_weights(profile: Profile, method_names: list[str], variants: Iterable[tuple[str, dict[str, Any]]] = ()) -> None:
    """Build each method once with ``profile``'s settings, and each ``(method, overrides)`` variant
    whose overrides change its weights (:data:`WEIGHT_OPTIONS`, e.g. AGPNet's backbone ablation),
    so that missing pretrained weights stop the study before it starts, with every missing file
    listed in one message. The demo profile uses randomly initialised models and needs no weights;
    the smoke profile's builds are the paper's (random weights), so they are checked too."""
    if profile.name == "demo":
        return
    builds: dict[str, tuple[str, dict[str, Any]]] = {name: (name, {}) for name in method_names}
    for name, overrides in variants:
        weights = {k: v for k, v in overrides.items() if k in WEIGHT_OPTIONS}
        if weights:
            builds.setdefault(f"{name} {weights}", (name, overrides))
    problems = []
    for label, (name, overrides) in builds.items():
        try:
            methods.build(name, profile=profile.name, **overrides)
        except WeightsNotFoundError as err:
            problems.append(f"- {label}: {err}")
    if problems:
        raise ProfileNotReadyError(f"profile {profile.name!r} cannot start; missing pretrained weights:\n" + "\n".join(problems))
