"""GPU speed of every method at its paper settings with random weights, beside SOWA's Fig. 9 claims.

    make benchmarks DEVICE=cuda        # or: python benchmarks/gpu.py [--max-batch 32] [--out FILE]

Per method (built as the smoke profile builds it: the paper's architecture, resolution and options,
random weights): images per second at batch 1 (:func:`sowa_lib.speed.measure`: references and text
features set first, warm-up excluded, best of 3) and at the largest power-of-two batch up to
``--max-batch`` that fits in GPU memory, and the peak GPU memory of each. Every method runs in fp32,
and April-GAN also in its reference precision (CUDA fp16 autocast, ``precision="fp16_autocast"``; the
other references run fp32). SOWA's Fig. 9 (images per second on one RTX 3070) is printed beside,
with the ratios SOWA / April-GAN and SOWA / WinCLIP, which transfer between GPUs better than the
absolute numbers. Unattended, under 5 minutes on one recent GPU. The measurements are written as
JSON to ``--out`` (default ``results/benchmarks/gpu.json``).

Without a CUDA GPU it prints that no GPU is present and exits with status 3, measuring nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sowa_lib import speed  # noqa: E402
from sowa_lib.claims import load_claims  # noqa: E402
from sowa_lib.methods import build  # noqa: E402
from sowa_lib.profiles import REPO_ROOT  # noqa: E402

NO_GPU_STATUS = 3
#: (label, registry name, overrides on the smoke build, shots): the settings Fig. 9 times (zero-shot)
#: and each few-shot method at K = 4.
ENTRIES: tuple[tuple[str, str, dict[str, Any], int], ...] = (
    ("winclip", "winclip", {}, 0),
    ("winclip+ K=4", "winclip", {}, 4),
    ("april_gan fp16_autocast", "april_gan", {"precision": "fp16_autocast"}, 0),
    ("april_gan fp32", "april_gan", {"precision": "fp32"}, 0),
    ("april_gan K=4 fp16_autocast", "april_gan", {"precision": "fp16_autocast"}, 4),
    ("sowa", "sowa", {}, 0),
    ("sowa K=4", "sowa", {}, 4),
    ("agpnet multi_class", "agpnet", {"setting": "multi_class"}, 0),
    ("spade K=4", "spade", {}, 4),
    ("padim K=4", "padim", {}, 4),
    ("patchcore K=4", "patchcore", {}, 4),
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


def measure(name: str, overrides: dict[str, Any], shots: int, max_batch: int) -> dict[str, Any]:
    """One entry: built with random weights at paper settings, on the GPU."""
    method = build(name, profile="smoke", **overrides).to("cuda").eval()
    size = method.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, size, size, generator=generator)
    references = torch.randn(shots, 3, size, size, generator=generator)
    torch.cuda.reset_peak_memory_stats()
    timing = speed.measure(method, images, references, "object", repeats=3)
    peak_batch1 = torch.cuda.max_memory_allocated() / 2**30
    batch, batch_fps, peak_batch = largest_batch(method, max_batch)
    del method
    torch.cuda.empty_cache()
    return {"px": size, "fps_batch1": timing["images_per_second"], "peak_gb_batch1": peak_batch1,
            "largest_batch": batch, "fps_largest_batch": batch_fps, "peak_gb_largest_batch": peak_batch}


def fig9_claims() -> dict[str, float]:
    """SOWA Fig. 9: images per second per method, averaged over its datasets (RTX 3070)."""
    claims = load_claims("sowa").query("metric == 'fps'")
    return claims.groupby("method")["value"].mean().to_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "gpu.json"))
    parser.add_argument("--only", nargs="*", help="registry names to run")
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
    rows = {}
    for label, name, overrides, shots in ENTRIES:
        if args.only and name not in args.only:
            continue
        rows[label] = measure(name, overrides, shots, args.max_batch)
        r = rows[label]
        print(f"  {label:<28} {r['px']:>4}px  {r['fps_batch1']:8.2f} img/s at batch 1 (peak {r['peak_gb_batch1']:.2f} GB)  "
              f"{r['fps_largest_batch']:8.2f} img/s at batch {r['largest_batch']} (peak {r['peak_gb_largest_batch']:.2f} GB)", flush=True)
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
    print(f"\nwritten to {out}; {time.perf_counter() - start:.0f} s (measured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
