"""EfficientNet-Lite0 on the CPU: timm's ``tf_efficientnet_lite0`` (what the model uses) against the
hand-written definition it replaced (kept in ``tests/oracles.py`` as the reference).

    python -m bench.backbone [--smoke]

Both get the same weights (random, converted by ``convert_lite0_state``); the table gives the
median seconds of one forward pass of a batch of 224×224 images in eval mode under
``torch.inference_mode`` on one thread, the largest difference of their outputs, and the time
``import timm`` adds once per process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch

from bench.common import print_table, timed, write_results
from tests.oracles import EfficientNetLite0Features
from xai_pipeline.model.backbones import convert_lite0_state, efficientnet_lite0_features


def _import_seconds(module: str) -> float:
    code = f"import time, torch; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch, repeats = (2, 1) if args.smoke else (8, 7)
    reference = EfficientNetLite0Features().eval()
    timm_net = efficientnet_lite0_features().eval()
    timm_net.load_state_dict(convert_lite0_state(reference.state_dict()), strict=True)
    x = torch.rand(batch, 3, 224, 224)
    with torch.inference_mode():
        diff = float((timm_net(x) - reference(x)).abs().max())
        hand = timed(lambda: reference(x), repeats)
        timm_s = timed(lambda: timm_net(x), repeats)
    results = {"batch": batch, "threads": 1, "hand_written_s": hand, "timm_s": timm_s, "speedup": hand / timm_s, "max_abs_diff": diff,
               "import_timm_after_torch_s": _import_seconds("timm")}
    print_table(["batch", "hand-written s", "timm s", "speed-up", "max |diff|", "import timm s"],
                [[batch, hand, timm_s, results["speedup"], diff, results["import_timm_after_torch_s"]]])
    write_results("backbone", args.smoke, {"results": results})
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
