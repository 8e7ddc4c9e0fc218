"""Training on a Ray cluster with Ray Train's ``TorchTrainer``: one worker per GPU (or CPU
workers), DDP gradients, each worker drawing its own class-balanced batches.

Workers read the training figures themselves (local path visible to every node, or S3). Rank 0
reports the final weights as a Ray Train checkpoint; the driver loads them for evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from xai_pipeline.config import TrainConfig

_STATE_FILE = "model.safetensors"
_LOSSES_FILE = "losses.json"


def _train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    from safetensors.torch import save_file

    from xai_pipeline.train.fit import build_model, fit
    from xai_pipeline.train.split import load_split

    cfg = TrainConfig(**loop_config["cfg"])
    torch.set_num_threads(cfg.torch_threads)
    data, train_idx = load_split(cfg)
    model = build_model(cfg, data.class_names)
    model = ray.train.torch.prepare_model(model)
    context = ray.train.get_context()
    device = ray.train.torch.get_device()

    def report(epoch: int, loss: float) -> None:
        ray.train.report({"epoch": epoch, "loss": loss})  # every rank reports: report is collective

    losses = fit(model, data, train_idx, cfg, device=device, rank=context.get_world_rank(), world_size=context.get_world_size(), on_epoch=report)
    net = model.module if hasattr(model, "module") else model
    final = {"steps": len(losses), "losses": losses}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if context.get_world_rank() == 0:
            state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            save_file(state, str(Path(tmp) / _STATE_FILE))
            (Path(tmp) / _LOSSES_FILE).write_text(json.dumps(final))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"steps": len(losses)}, checkpoint=checkpoint)


def fit_on_ray(cfg: TrainConfig, storage_path: str) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Run the training loop in ``cfg.num_workers`` Ray Train workers; returns rank 0's weights
    and its per-step losses."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, include_dashboard=False)
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"cfg": dataclasses.asdict(cfg)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=storage_path, name="train"),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as folder:
        state = load_file(str(Path(folder) / _STATE_FILE))
        losses = json.loads((Path(folder) / _LOSSES_FILE).read_text())["losses"]
    return state, losses
