"""One-call GPU check (≤ 5 minutes on an H100/H200): the numbers the CPU cannot give.

    python -m bench.gpu_check [--smoke]          # writes bench/results/gpu_check.json (and $OUT/ if set)

1. resnet50 at 224 px, batch 256: classification alone vs classification + CRM, bf16 autocast and
   channels_last, figures/s and ratio (CRM on the GPU, one host transfer per batch).
2. The pipeline's own classifier stage (FigureClassifier, the bundled EfficientNet-Lite0) on
   uint8 batches from pinned memory (with the device batch it fits to the card), and on JPEG bytes it decodes itself (``--jpeg-decoder
   classifier``: nvjpeg + resize on the GPU) at 384 and 1024 px: figures/s of the stage.
3. Decode: PIL on one CPU core vs nvjpeg (batched ``decode_jpeg(device="cuda")``), on generated
   JPEGs at 384 and 1024 px (the shared data set does not travel to the GPU machine).

Without CUDA it runs the same code on the CPU at toy sizes (``--smoke`` is implied), so CI keeps it
working; the numbers are then meaningless.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import machine, print_table, timed, write_results
from xai_pipeline.job.classify import FigureClassifier
from xai_pipeline.model.crm import crm
from xai_pipeline.model.net import ModalityNet, ModelSpec
from xai_pipeline.schema import PIXELS, STATUS

CLASSES = ("chest_xray", "ct", "fundus", "histology", "mri", "ultrasound")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_vs_crm(device: torch.device, batch: int, size: int, repeats: int, compile_model: bool) -> dict[str, float]:
    model = ModalityNet(ModelSpec(name="r50", architecture="resnet50", class_names=CLASSES, input_size=size)).eval().to(device)
    model = model.to(memory_format=torch.channels_last)
    features = torch.compile(model.features) if compile_model else model.features
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    @torch.inference_mode()
    def alone() -> torch.Tensor:
        with autocast:
            feats = features(x)
        return model.head(feats.float().mean(dim=(2, 3))).softmax(-1)

    @torch.inference_mode()
    def with_crm() -> tuple[torch.Tensor, torch.Tensor]:
        with autocast:
            feats = features(x)
        feats = feats.float()
        logits = model.head(feats.mean(dim=(2, 3)))
        return logits.softmax(-1), crm(feats, model.head, base_logits=logits)

    t_alone = timed(alone, repeats, warmup=3, sync=lambda: _sync(device))
    t_crm = timed(with_crm, repeats, warmup=3, sync=lambda: _sync(device))
    return {"batch": batch, "size": size, "compiled": compile_model, "model_fig_s": batch / t_alone, "model_crm_fig_s": batch / t_crm,
            "ratio": t_crm / t_alone}


def classifier_stage(device: torch.device, batch: int, repeats: int) -> dict[str, float]:
    stage = FigureClassifier(device=device.type, torch_threads=max(1, os.cpu_count() or 1))
    size = stage.spec.input_size
    rng = np.random.default_rng(0)
    data = {PIXELS: rng.integers(0, 255, (batch, 3, size, size), dtype=np.uint8), STATUS: np.array(["ok"] * batch, dtype=object)}
    seconds = timed(lambda: stage(data), repeats, warmup=2)
    return {"model": stage.spec.name, "batch": batch, "fitted_device_batch": stage.device_batch, "fig_s": batch / seconds}


def classifier_stage_jpeg(device: torch.device, batch: int, repeats: int, side: int) -> dict[str, object]:
    """The same stage fed JPEG bytes (``--jpeg-decoder classifier``): decode + resize on its device."""
    from xai_pipeline.job.decode import decode_batch

    stage = FigureClassifier(device=device.type, torch_threads=max(1, os.cpu_count() or 1))
    datas = _jpegs(batch, side)
    fetched = {"uri": np.array([f"s3://b/{i}.jpg" for i in range(batch)], dtype=object), "size": np.array([len(d) for d in datas]),
               "etag": np.array(["e"] * batch, dtype=object), "bytes": np.array([*datas, b""], dtype=object)[:batch]}
    data = decode_batch(fetched, stage.spec.input_size, defer_jpeg=True)
    out = stage(data)
    assert list(out[STATUS]) == ["ok"] * batch, set(out[STATUS])
    seconds = timed(lambda: stage(data), repeats, warmup=2)
    return {"model": stage.spec.name, "batch": batch, "side": side, "fig_s": batch / seconds}


def _jpegs(count: int, side: int) -> list[bytes]:
    rng = np.random.default_rng(side)
    y, x = np.mgrid[0:side, 0:side]
    base = np.stack([x * 255 / side, y * 255 / side, (x + y) % 256], axis=2)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray((base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode_rates(count: int) -> list[dict[str, object]]:
    from bench.decode import nvjpeg, pil, rate

    rows = []
    for side in (384, 1024):
        datas = _jpegs(count, side)
        rows.append({"side": side, "figures": count, "pil_1_core_fig_s": rate(pil, datas),
                     "nvjpeg_fig_s": rate(nvjpeg, datas) if torch.cuda.is_available() else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd features")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    smoke = args.smoke or not cuda
    device = torch.device("cuda" if cuda else "cpu")
    started = time.perf_counter()
    results: dict[str, object] = {"device": str(device), "machine": machine()}
    runs = [model_vs_crm(device, 4 if smoke else 256, 64 if smoke else 224, 2 if smoke else 20, False)]
    if args.compile and not smoke:
        runs.append(model_vs_crm(device, 256, 224, 20, True))
    results["resnet50_model_vs_crm"] = runs
    results["classifier_stage"] = classifier_stage(device, 4 if smoke else 256, 2 if smoke else 10)
    results["classifier_stage_jpeg"] = [classifier_stage_jpeg(device, 4 if smoke else 256, 2 if smoke else 10, side) for side in (384, 1024)]
    results["decode"] = decode_rates(8 if smoke else 512)
    results["seconds"] = time.perf_counter() - started
    print_table(["batch", "px", "compiled", "model fig/s", "+CRM fig/s", "ratio"],
                [[r["batch"], r["size"], r["compiled"], r["model_fig_s"], r["model_crm_fig_s"], r["ratio"]] for r in runs])
    stage = results["classifier_stage"]
    print(f"classifier stage ({stage['model']}, batch {stage['batch']}, fitted device batch {stage['fitted_device_batch']}): "  # type: ignore[index]
          f"{stage['fig_s']:.1f} fig/s from pixels")  # type: ignore[index]
    for row in results["classifier_stage_jpeg"]:  # type: ignore[attr-defined]
        print(f"classifier stage decoding {row['side']} px JPEGs on {device.type}: {row['fig_s']:.1f} fig/s")
    print_table(["side", "PIL 1 core fig/s", "nvjpeg fig/s"],
                [[r["side"], r["pil_1_core_fig_s"], r["nvjpeg_fig_s"] or "n/a"] for r in results["decode"]])  # type: ignore[union-attr]
    path = write_results("gpu_check", smoke, results)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], path.name).write_text(path.read_text())
    print(json.dumps({"written": str(path), "seconds": round(float(results["seconds"]), 1)}))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
