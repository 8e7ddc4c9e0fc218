"""What the faithfulness metrics cost per figure on the CPU, for the bundled model.

    python -m bench.faithfulness [--smoke]

One batch of figures from the shared data set (224 px, one torch thread); for one map (CRM) the
seconds per figure of: the four maps, a deletion curve and an insertion curve (10 steps: 11
forward passes of the batch each), ROAD (9 fractions; the CPU's imputation: pytorch-grad-cam's)
and the randomisation check (a second model's maps). The last rows time the imputation alone at
half the cells removed: our batched conjugate gradients (used on a GPU, where the batch stays on
the device) against pytorch-grad-cam's ``NoisyLinearImputer`` (a sparse direct solve, one figure
at a time), which is why the CPU uses the latter.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import bench_parser, print_table, write_results
from xai_pipeline.job.decode import to_pixels
from xai_pipeline.model.net import load_model
from xai_pipeline.train import faithfulness as fa


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, dataset=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batch = 2 if args.smoke else 8
    rows = [json.loads(line) for line in (Path(args.dataset) / "manifest.jsonl").read_text().splitlines()]
    picks = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:batch]]
    model = load_model()
    pixels = torch.from_numpy(np.stack([to_pixels(Image.open(Path(args.dataset) / r["file"]).convert("RGB"), 224) for r in picks]))
    x = model.normalize(pixels)
    timings = {}

    def timed(name: str, fn) -> object:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = fn()
        timings[name] = (time.perf_counter() - started) / batch
        return out

    maps, predicted = timed("maps (4 methods)", lambda: fa.relevance_maps(model, x))  # type: ignore[misc]
    timed("deletion (11 passes)", lambda: fa.perturbation_curve(model, x, maps["crm"], predicted, "deletion", 10))
    timed("insertion (11 passes)", lambda: fa.perturbation_curve(model, x, maps["crm"], predicted, "insertion", 10))
    timed("ROAD (9 fractions)", lambda: fa.road_curve(model, x, maps["crm"], predicted))
    timed("randomisation", lambda: fa.rank_correlations(maps["crm"], fa.relevance_maps(fa.randomised(model), x)[0]["crm"]))
    timings["evaluate --faithfulness (4 maps, all metrics)"] = (
        timings["maps (4 methods)"] + timings["randomisation"]
        + len(fa.METHODS) * (timings["deletion (11 passes)"] + timings["insertion (11 passes)"] + timings["ROAD (9 fractions)"]))
    missing = fa._pixel_mask(fa._ranks(maps["crm"]), maps["crm"][0].numel() // 2, x.shape[-2:])
    timed("imputation, ours (batched CG)", lambda: fa.impute(x, missing, solver="cg"))
    timed("imputation, pytorch-grad-cam (per figure)", lambda: fa.impute(x, missing, solver="sparse"))
    print_table(["metric (one map)", "seconds per figure"], [[k, v] for k, v in timings.items()])
    write_results("faithfulness", args.smoke, {"batch": batch, "threads": 1, "seconds_per_figure": timings})
    return 0


if __name__ == "__main__":
    sys.exit(main())
