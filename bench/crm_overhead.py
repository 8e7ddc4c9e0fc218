"""CRM overhead: classification + CRM against classification alone, same model, same batch.

    python -m bench.crm_overhead [--smoke]

resnet18 and resnet50 at 224 px, batch 32, on the CPU (2 torch threads here). Goal: ratio ≤ 1.05.
Both arms run the backbone once; the CRM arm adds the closed form ‖W f(:,l,m)‖² / N².
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench.common import print_table, timed, write_results
from xai_pipeline.model.crm import crm
from xai_pipeline.model.net import ModalityNet, ModelSpec

CLASSES = ("chest_xray", "ct", "fundus", "histology", "mri", "ultrasound")


def measure(architecture: str, batch: int, size: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = ModalityNet(ModelSpec(name=architecture, architecture=architecture, class_names=CLASSES, input_size=size)).eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def classify() -> torch.Tensor:
        feats = model.forward_features(x)
        return model.head(feats.mean(dim=(2, 3))).softmax(-1)

    @torch.inference_mode()
    def classify_and_crm() -> tuple[torch.Tensor, torch.Tensor]:
        feats = model.forward_features(x)
        logits = model.head(feats.mean(dim=(2, 3)))
        return logits.softmax(-1), crm(feats, model.head, base_logits=logits)

    # Interleave the two arms so drift in machine load hits both alike.
    alone, both = [], []
    for _ in range(repeats):
        alone.append(timed(classify, 1, warmup=1))
        both.append(timed(classify_and_crm, 1, warmup=0))
    t_alone, t_both = sorted(alone)[len(alone) // 2], sorted(both)[len(both) // 2]
    return {"architecture": architecture, "batch": batch, "size": size, "classify_s": t_alone, "classify_crm_s": t_both,
            "ratio": t_both / t_alone, "figures_per_s_with_crm": batch / t_both}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="resnet18, batch 4, 96 px, 2 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    runs = [("resnet18", 4, 96, 2)] if args.smoke else [("resnet18", 32, 224, args.repeats), ("resnet50", 32, 224, args.repeats)]
    results = [measure(*r) for r in runs]
    print_table(["model", "batch", "px", "classify s", "+CRM s", "ratio", "fig/s"],
                [[r["architecture"], r["batch"], r["size"], r["classify_s"], r["classify_crm_s"], r["ratio"], r["figures_per_s_with_crm"]] for r in results])
    write_results("crm_overhead", args.smoke, {"goal": "ratio <= 1.05", "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
