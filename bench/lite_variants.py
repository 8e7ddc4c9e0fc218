"""EfficientNet-Lite0/1/2 as the modality model's backbone: do the converted ImageNet weights give
the package's own ImageNet logits, how fast is each on one CPU thread, and how big is its model file.

    python -m bench.lite_variants [--smoke]

Per variant, at its native input size (224/240/260 px):

* ``max |Δlogit|`` and top-1 agreement between the package's model
  (``efficientnet_lite_pytorch.EfficientNet.from_name``, its state dict loaded strictly) and
  timm's definition with the weights renamed by ``convert_lite_state`` plus the package's
  ``_fc`` applied to the pooled features, on the bundled sample figures;
* figures per second of the whole model (backbone + GAP + six-class linear head) for a batch of
  8 in eval mode under ``torch.inference_mode`` on one thread (median of repeats);
* the size of the six-class model file written by ``save_model`` (float32, as shipped).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import print_table, timed, write_results
from xai_pipeline.job.decode import to_pixels
from xai_pipeline.model.efficientnet_lite import LITE_VARIANTS, convert_lite_state, imagenet_state, load_lite_imagenet
from xai_pipeline.model.net import ModalityNet, ModelSpec, save_model

SAMPLES = Path(__file__).resolve().parents[1] / "xai_pipeline" / "samples" / "figures"
CLASSES = ("chest_xray", "ct", "fundus", "histology", "mri", "ultrasound")


def _sample_batch(size: int) -> torch.Tensor:
    from PIL import Image

    pixels = [to_pixels(Image.open(p).convert("RGB"), size) for p in sorted(SAMPLES.iterdir())]
    x = torch.from_numpy(np.stack(pixels)).float() / 255.0
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def _check_logits(architecture: str) -> tuple[float, float]:
    """(max |Δlogit|, top-1 agreement) of the package model vs the converted timm features + ``_fc``."""
    from efficientnet_lite_pytorch import EfficientNet

    v = LITE_VARIANTS[architecture]
    state = imagenet_state(architecture)
    reference = EfficientNet.from_name(architecture.replace("_", "-")).eval()
    reference.load_state_dict(state, strict=True)
    model = ModalityNet(ModelSpec(name=architecture, architecture=architecture, class_names=CLASSES, input_size=v.input_size)).eval()
    model.features.load_state_dict(convert_lite_state(state, architecture), strict=True)
    x = _sample_batch(v.input_size)
    ours = model.features(x).mean(dim=(2, 3)) @ state["_fc.weight"].T + state["_fc.bias"]
    theirs = reference(x)
    return float((ours - theirs).abs().max()), float((ours.argmax(1) == theirs.argmax(1)).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batch, repeats = (2, 1) if args.smoke else (8, 7)
    rows, results = [], {}
    for architecture, v in LITE_VARIANTS.items():
        diff, agree = _check_logits(architecture)
        model = ModalityNet(ModelSpec(name=architecture, architecture=architecture, class_names=CLASSES, input_size=v.input_size)).eval()
        load_lite_imagenet(model.features, architecture)
        x = torch.rand(batch, 3, v.input_size, v.input_size)
        with torch.inference_mode():
            seconds = timed(lambda: model(x), repeats)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            save_model(model, path)
            size_mb = path.stat().st_size / 1e6
        params = sum(p.numel() for p in model.parameters()) / 1e6
        results[architecture] = {"input_size": v.input_size, "batch": batch, "threads": 1, "batch_s": seconds,
                                 "figures_per_s": batch / seconds, "model_file_mb": size_mb, "params_m": params,
                                 "imagenet_max_abs_logit_diff": diff, "imagenet_top1_agreement": agree}
        rows.append([architecture, v.input_size, batch / seconds, size_mb, params, diff, agree])
    print_table(["backbone", "px", "figures/s", "file MB", "params M", "max |Δlogit|", "top-1 agree"], rows)
    write_results("lite_variants", args.smoke, {"results": results})
    return 0 if all(r["imagenet_max_abs_logit_diff"] < 1e-3 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
