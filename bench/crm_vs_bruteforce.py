"""Fast CRM against the literal definition (zero each position, re-run the head): speedup.

    python -m bench.crm_vs_bruteforce [--smoke]

On resnet50-sized feature maps (2048×7×7), batch 32, six classes; both on the same features.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from bench.common import print_table, timed, write_results
from tests.oracles import crm_bruteforce
from xai_pipeline.model.crm import crm


def measure(batch: int, channels: int, side: int, head_kind: str, repeats: int) -> dict[str, object]:
    torch.manual_seed(0)
    feats = torch.rand(batch, channels, side, side)
    head = nn.Linear(channels, 6) if head_kind == "linear" else nn.Sequential(nn.Linear(channels, 256), nn.ReLU(), nn.Linear(256, 6))
    with torch.inference_mode():
        fast = timed(lambda: crm(feats, head), repeats)
        brute = timed(lambda: crm_bruteforce(feats, head), max(1, repeats // 3))
        a, b = crm(feats.double(), head.double()), crm_bruteforce(feats.double(), head.double())
    return {"head": head_kind, "batch": batch, "features": f"{channels}x{side}x{side}", "fast_s": fast, "bruteforce_s": brute,
            "speedup": brute / fast, "max_rel_diff_float64": float(((a - b).abs().max() / b.abs().max()).item())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    runs = [(4, 64, 7, "linear", 2)] if args.smoke else [(32, 2048, 7, "linear", 9), (32, 2048, 7, "mlp", 9), (32, 512, 14, "linear", 9)]
    results = [measure(*r) for r in runs]
    print_table(["head", "batch", "features", "fast s", "brute s", "speedup", "rel diff"],
                [[r["head"], r["batch"], r["features"], r["fast_s"], r["bruteforce_s"], r["speedup"], f"{r['max_rel_diff_float64']:.1e}"] for r in results])
    write_results("crm_vs_bruteforce", args.smoke, {"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
