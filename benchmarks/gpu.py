"""GPU speed of every method at its paper settings with random weights, beside SOWA's Fig. 9 claims.

    make benchmarks DEVICE=cuda        # or: python benchmarks/gpu.py [--max-batch 32] [--out FILE]

Per method, in the smoke profile (the paper's architecture, resolution and options, random weights,
fabricated data): images per second and peak GPU memory at batch 1, measured by
:func:`sowa_lib.evaluate.speed_run` on the first fabricated MVTec-AD category (references and text
features set first, warm-up excluded, best of 3) and **stored as an efficiency run** in the smoke
profile's results store (``results/smoke/runs``, with device and GPU in its provenance; a stored
measurement with the same fingerprint is reused, as every run is), then at the largest power-of-two
batch up to ``--max-batch`` that fits in GPU memory. April-GAN runs in its reference precision (CUDA
fp16 autocast, its default) and in fp32; the other references run fp32. SOWA's Fig. 9 (images per
second on one RTX 3070) is printed beside, with the ratios SOWA / April-GAN and SOWA / WinCLIP, which
transfer between GPUs better than the absolute numbers. Unattended, under 5 minutes on one recent
GPU. Every row is also written as JSON to ``--out`` (default ``results/benchmarks/gpu.json``).

Without a CUDA GPU it prints that no GPU is present and exits with status 3, measuring nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sowa_lib import speed  # noqa: E402
from sowa_lib.claims import load_claims  # noqa: E402
from sowa_lib.evaluate import Plan, speed_run  # noqa: E402
from sowa_lib.methods import build, configuration, method_class  # noqa: E402
from sowa_lib.preflight import prepare  # noqa: E402
from sowa_lib.profiles import REPO_ROOT, Profile, get_profile  # noqa: E402

NO_GPU_STATUS = 3
#: The fabricated dataset whose first category's test images are timed.
DATASET = "mvtec"
#: (label, plan without datasets): the settings Fig. 9 times (zero-shot) and each few-shot method at
#: K = 4; April-GAN's default precision is its reference's fp16 autocast.
ENTRIES: tuple[tuple[str, Plan], ...] = (
    ("winclip", Plan("winclip", "zero_shot", ())),
    ("winclip+ K=4", Plan("winclip", "few_shot", (), shots=(4,))),
    ("april_gan fp16_autocast", Plan("april_gan", "zero_shot", ())),
    ("april_gan fp32", Plan("april_gan", "zero_shot", (), variant="precision=fp32", overrides={"precision": "fp32"})),
    ("april_gan K=4 fp16_autocast", Plan("april_gan", "few_shot", (), shots=(4,))),
    ("sowa", Plan("sowa", "zero_shot", ())),
    ("sowa K=4", Plan("sowa", "few_shot", (), shots=(4,))),
    ("agpnet multi_class", Plan("agpnet", "multi_class", ())),
    ("spade K=4", Plan("spade", "few_shot", (), shots=(4,))),
    ("padim K=4", Plan("padim", "few_shot", (), shots=(4,))),
    ("patchcore K=4", Plan("patchcore", "few_shot", (), shots=(4,))),
)


def largest_batch(method: Any, max_batch: int) -> tuple[int, float, float]:
    """(largest power-of-two batch ≤ ``max_batch`` whose ``predict`` fits, its images per second
    (best of 2 timed calls after a warm-up), peak GPU GB at that batch)."""
    size, best = method.image_size, (0, float("nan"), float("nan"))
    batch = 1
    while batch <= max_batch:
        images = torch.randn(batch, 3, size, size, device="cuda")
        try:
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                method.predict(images, "object")
                seconds = min(speed.timed_call(lambda: method.predict(images, "object"))[0] for _ in range(2))
            best = (batch, batch / seconds, torch.cuda.max_memory_allocated() / 2**30)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            del images
            torch.cuda.empty_cache()
        batch *= 2
    return best


def build_options(plan: Plan) -> dict[str, Any]:
    """The plan's overrides, and its setting for a method configured by it (AGPNet)."""
    return {**plan.overrides, **({"setting": plan.setting} if method_class(plan.method).configured_by_setting else {})}


def measure(plan: Plan, profile: Profile, dataset: str, category: str, max_batch: int, n_images: int = 4, repeats: int = 3) -> dict[str, Any]:
    """One entry: batch 1 by :func:`speed_run` (stored as an efficiency run of ``profile``), then, on a
    GPU and with ``max_batch`` ≥ 1, the largest batch that fits (:func:`largest_batch`)."""
    plan = replace(plan, datasets=(dataset,))
    values = speed_run(plan, profile, dataset, category, n_images=n_images, repeats=repeats).set_index("metric")["value"]
    row = {"px": configuration(plan.method, profile.name, **build_options(plan))["image_size"], "variant": plan.variant,
           "shots": plan.shots[0], "fps_batch1": float(values["fps"]), "peak_gb_batch1": float(values["peak_memory_gb"]),
           "largest_batch": 0, "fps_largest_batch": float("nan"), "peak_gb_largest_batch": float("nan")}
    if torch.device(profile.device).type == "cuda" and max_batch >= 1:
        method = build(plan.method, profile=profile.name, **build_options(plan)).to(profile.device).eval()
        row["largest_batch"], row["fps_largest_batch"], row["peak_gb_largest_batch"] = largest_batch(method, max_batch)
        del method
        torch.cuda.empty_cache()
    return row


def run_entries(
    profile: Profile, max_batch: int, only: list[str] | None = None, entries: tuple[tuple[str, Plan], ...] = ENTRIES,
    dataset: str = DATASET, n_images: int = 4, repeats: int = 3,
) -> dict[str, dict[str, Any]]:
    """:func:`measure` of each entry (of the methods ``only``) on ``dataset``'s first category, printed
    as it completes."""
    category = prepare(profile, [dataset])[dataset][0]
    rows = {}
    for label, plan in entries:
        if only and plan.method not in only:
            continue
        rows[label] = r = measure(plan, profile, dataset, category, max_batch, n_images, repeats)
        print(f"  {label:<28} {r['px']:>4}px  {r['fps_batch1']:8.2f} img/s at batch 1 (peak {r['peak_gb_batch1']:.2f} GB)  "
              f"{r['fps_largest_batch']:8.2f} img/s at batch {r['largest_batch']} (peak {r['peak_gb_largest_batch']:.2f} GB)", flush=True)
    return rows


def fig9_claims() -> dict[str, float]:
    """SOWA Fig. 9: images per second per method, averaged over its datasets (RTX 3070)."""
    claims = load_claims("sowa").query("metric == 'fps'")
    return claims.groupby("method")["value"].mean().to_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "gpu.json"))
    parser.add_argument("--only", nargs="*", help="registry names to run")
    parser.add_argument("--results-dir", default=None, help="results store folder (default: the smoke profile's, results/)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU is present on this machine (torch.cuda.is_available() is False); "
              "nothing was measured. Run `make benchmarks DEVICE=cuda` on a machine with a GPU; "
              "`make benchmarks` gives the CPU benchmarks.", file=sys.stderr)
        return NO_GPU_STATUS
    start = time.perf_counter()
    device = torch.cuda.get_device_name(0)
    print(f"GPU benchmark on {device}: paper settings, random weights (not paper numbers), batch 1 and the largest "
          f"power-of-two batch ≤ {args.max_batch} that fits", flush=True)
    profile = get_profile("smoke", results_dir=args.results_dir, device="cuda")
    rows = run_entries(profile, args.max_batch, args.only)
    claims = fig9_claims()
    print("\nSOWA Fig. 9 (RTX 3070, img/s, mean over its datasets) beside batch 1 here:")
    measured = {"winclip": rows.get("winclip"), "april_gan": rows.get("april_gan fp16_autocast"), "sowa": rows.get("sowa")}
    for method, claimed in sorted(claims.items()):
        here = measured.get(method)
        print(f"  {method:<10} claimed {claimed:6.2f}   here {here['fps_batch1'] if here else float('nan'):8.2f}")
    if all(measured.values()):
        for other in ("april_gan", "winclip"):
            print(f"  sowa / {other}: claimed {claims['sowa'] / claims[other]:.2f}, here "
                  f"{measured['sowa']['fps_batch1'] / measured[other]['fps_batch1']:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "torch": torch.__version__, "max_batch": args.max_batch, "weights": "random",
                               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows, "fig9_claims": claims}, indent=1))
    print(f"\nstored as efficiency runs in {profile.run_dir / 'runs'} and written to {out}; "
          f"{time.perf_counter() - start:.0f} s (measured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
