"""The classification + CRM stage: a callable class that loads the model once per actor.

For each batch it moves the decoded pixels of the ``ok`` rows to the model's device, runs the
backbone once, and from the same feature map computes the logits (GAP + head) and the CRM maps
(:func:`xai_pipeline.model.crm.crm`), all batched; one host transfer returns the results.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import numpy as np
import torch

from xai_pipeline.model import crm as crm_math
from xai_pipeline.job import decode, device_decode, faults
from xai_pipeline import schema
from xai_pipeline.model.inference import Predictions, predict, resolve_device
from xai_pipeline.model.net import load_model
from xai_pipeline.model.labels import figure_summary, image_labels
from xai_pipeline.job.panel_rows import PanelRows
from xai_pipeline.schema import Status

log = logging.getLogger(__name__)

# Test hook for fault-injection tests, not a production switch: when this variable names a file
# that does not exist yet, the first batch creates it and kills its actor process mid-batch.
KILL_ONCE_ENV = "XAI_PIPELINE_TEST_KILL_ACTOR_ONCE"


def _maybe_die_for_test() -> None:
    marker = os.environ.get(KILL_ONCE_ENV)
    if marker:
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            return
        log.warning("test hook %s: killing this classifier actor mid-batch", KILL_ONCE_ENV)
        os._exit(1)


class FigureClassifier:
    """Ray Data callable class: ``decoded batch -> batch + modality, confidence, probabilities, crm_map``.

    Args:
        model_path: a ``.safetensors`` model file; ``None`` for the bundled default.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        crm_score: ``"logit"`` (paper) or ``"softmax"``.
        torch_threads: intra-op threads on the CPU.
        precision: ``"auto"`` (bfloat16 autocast on a GPU, float32 on the CPU), ``"fp32"`` or ``"bf16"``.
        compile_model: ``torch.compile`` the backbone (pays off on long GPU runs).
        limits: decode limits for JPEGs the device decoder rejects (``--jpeg-decoder classifier``).
        memory_share: the share of the GPU's free memory this actor may size its batches to
            (``--num-gpus`` when actors share a GPU).
        exit_on_device_fault: end the process on a device fault (in a Ray actor, which Ray then
            replaces) instead of raising it.

    On a GPU the actor sizes its device batches to the card: a probe batch measures the memory
    one figure takes, and batches are cut to fit in ``0.7 × memory_share`` of the free memory
    (``device_batch``); should a chunk still run out of memory, it is halved and run again.
    """

    PROBE_BATCH = 16
    MAX_DEVICE_BATCH = 4096

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "auto",
        crm_score: crm_math.Score = "logit",
        torch_threads: int = 1,
        precision: str = "auto",
        compile_model: bool = False,
        limits: decode.DecodeLimits | None = None,
        memory_share: float = 1.0,
        exit_on_device_fault: bool = False,
    ) -> None:
        self.exit_on_device_fault = exit_on_device_fault
        self.actor_id = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self.limits = limits or decode.DecodeLimits()
        torch.set_num_threads(max(1, torch_threads))
        self.device = resolve_device(device)
        self.model = load_model(Path(model_path) if model_path else None, self.device).to(memory_format=torch.channels_last)
        if compile_model:
            self.model.features = torch.compile(self.model.features)  # type: ignore[assignment]
        self.autocast = torch.bfloat16 if precision == "bf16" or (precision == "auto" and self.device.type == "cuda") else None
        self.spec = self.model.spec
        self.crm_score = crm_score
        size = self.spec.input_size
        probe = torch.zeros((1, 3, size, size), dtype=torch.uint8, device=self.device)
        self.map_shape = tuple(predict(self.model, probe, crm_score, self.autocast).relevance.shape[1:])
        self.device_batch: int | None = self._fit_batch(memory_share) if self.device.type == "cuda" else None
        log.info("loaded model %s v%s on %s (autocast %s, device batch %s)", self.spec.name, self.spec.version, self.device,
                 self.autocast, self.device_batch or "whole")

    def _fit_batch(self, memory_share: float) -> int:
        """The largest batch whose activations fit in ``0.7 × memory_share`` of the free GPU
        memory, from the peak memory of a probe batch."""
        size = self.spec.input_size
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        probe = torch.zeros((self.PROBE_BATCH, 3, size, size), dtype=torch.uint8, device=self.device)
        predict(self.model, probe.contiguous(memory_format=torch.channels_last), self.crm_score, self.autocast)
        torch.cuda.synchronize(self.device)
        per_figure = max(1.0, (torch.cuda.max_memory_allocated(self.device) - before) / self.PROBE_BATCH)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(self.MAX_DEVICE_BATCH, 0.7 * min(1.0, memory_share) * free // per_figure)))

    def _predict(self, pixels: torch.Tensor) -> Predictions:
        """:func:`predict` in chunks of ``device_batch`` (all at once when ``None``); a chunk
        that runs out of device memory is halved and run again."""
        parts: list[Predictions] = []
        start = 0
        while start < len(pixels):
            size = self.device_batch or len(pixels)
            try:
                parts.append(predict(self.model, pixels[start:start + size], self.crm_score, self.autocast))
            except torch.OutOfMemoryError:
                if size <= 1:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.device_batch = max(1, min(size, len(pixels) - start) // 2)
                log.warning("out of device memory at a batch of %d figures: now %d", size, self.device_batch)
                continue
            start += size
        if len(parts) == 1:
            return parts[0]
        return Predictions(*(torch.cat([getattr(p, name) for p in parts]) for name in ("logits", "probabilities", "relevance")),
                           types=torch.cat([p.types for p in parts]) if parts[0].types is not None else None)

    def _decode_deferred(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, torch.Tensor | None]:
        """Decode the rows' ``jpeg_bytes`` on this actor's device. Rejected ones are decoded with
        PIL, which sets their status (and pixels when PIL can read what the device could not).
        Returns the row indices decoded on the device and their pixels there."""
        if schema.JPEG_BYTES not in batch:
            return np.zeros(0, dtype=np.int64), None
        rows = np.flatnonzero([len(b) > 0 for b in batch[schema.JPEG_BYTES]])
        if not len(rows):
            return rows, None
        datas = [bytes(batch[schema.JPEG_BYTES][i]) for i in rows]
        try:
            out = device_decode.decode_resize(datas, self.spec.input_size, self.device)
        except Exception as exc:  # noqa: BLE001 - fall back to PIL for the whole batch
            if _device_fault(exc):
                self._on_device_fault(exc)
            log.warning("the %s JPEG decoder failed on a batch (%s: %s); decoding it with PIL", self.device.type, type(exc).__name__, exc)
            size = self.spec.input_size
            out = device_decode.DeviceDecoded(torch.zeros((len(rows), 3, size, size), dtype=torch.uint8, device=self.device), list(range(len(rows))))
        if out.failed:  # writable copies: the rejected JPEGs' rows get PIL's status, error and pixels
            log.warning("%d JPEGs rejected by the %s decoder are decoded with PIL", len(out.failed), self.device.type)
            for column in (schema.STATUS, schema.ERROR, schema.PIXELS):
                batch[column] = np.array(batch[column], dtype=object if column != schema.PIXELS else None)
            for j in out.failed:
                again = _decode_or_error(datas[j], self.spec.input_size, self.limits)
                row = rows[j]
                batch[schema.STATUS][row], batch[schema.ERROR][row] = again.status.value, again.error
                if again.pixels is not None:
                    batch[schema.PIXELS][row] = again.pixels
        keep = np.setdiff1d(np.arange(len(rows)), out.failed)
        if not len(keep):
            return keep, None
        return rows[keep], out.pixels[torch.from_numpy(keep).to(self.device)]

    def _pixels(self, batch: dict[str, np.ndarray], ok: np.ndarray, on_device: np.ndarray, decoded: torch.Tensor | None) -> torch.Tensor:
        """The ``ok`` rows' pixels on the device, channels_last: host pixels in one pinned,
        non-blocking copy, device-decoded rows written in place."""
        pixels = torch.from_numpy(np.ascontiguousarray(batch[schema.PIXELS][ok]))
        if self.device.type == "cuda":
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        if decoded is not None and len(on_device):
            position = np.cumsum(ok) - 1  # row index → index among the ok rows
            pixels[torch.from_numpy(position[on_device]).to(self.device)] = decoded
        return pixels.contiguous(memory_format=torch.channels_last)

    def _on_device_fault(self, exc: BaseException) -> None:
        """A device context that has failed stays failed: end the actor (Ray starts a fresh one and
        retries the batch), or raise outside Ray."""
        if not self.exit_on_device_fault:
            raise exc
        log.error("device fault in the classifier (%s: %s); ending this actor so that Ray starts a fresh one", type(exc).__name__, exc)
        logging.shutdown()
        os._exit(1)

    def _host(self, out: Predictions) -> np.ndarray:
        """One device-to-host copy per batch: probabilities, figure-type probabilities (when the
        model has them) and flattened maps side by side."""
        parts = [out.probabilities] + ([out.types] if out.types is not None else []) + [out.relevance.flatten(1)]
        return torch.cat(parts, dim=1).float().cpu().numpy()

    def _run(self, pixels: torch.Tensor, uris: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        """Probabilities + maps of a batch of ``ok`` figures, and the figures that failed.

        The batch runs whole; if that raises, each figure runs alone, so one figure's failure is
        that figure's ``model_error`` and the rest of the batch goes on. Device faults (CUDA
        errors, out of memory at one figure) end the actor's process instead: a device context
        that has failed stays failed, so Ray Data starts a fresh actor and retries the batch."""
        try:
            for uri in uris:
                faults.maybe_raise("classify", uri)
            return self._host(self._predict(pixels)), {}
        except Exception as exc:  # noqa: BLE001 - narrowed to one figure below
            if _device_fault(exc):
                self._on_device_fault(exc)
            log.warning("classifier failed on a batch of %d (%s: %s); running its figures one at a time", len(uris), type(exc).__name__, exc)
        host = np.full((len(uris), self.spec.num_classes + len(self.spec.figure_types) + int(np.prod(self.map_shape))), np.nan, dtype=np.float32)
        failed: dict[int, str] = {}
        for j, uri in enumerate(uris):
            try:
                faults.maybe_raise("classify", uri)
                host[j] = self._host(self._predict(pixels[j:j + 1]))[0]
            except Exception as exc:  # noqa: BLE001 - errors are data: one figure's failure is its row
                if _device_fault(exc):
                    self._on_device_fault(exc)
                failed[j] = f"{type(exc).__name__}: {exc}"[:1000]
        return host, failed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[schema.STATUS])
        batch = dict(batch)
        uris = [str(u) for u in batch.get(schema.SOURCE_URI, [""] * n)]
        faults.maybe_raise_task("classify", uris)
        on_device, decoded = self._decode_deferred(batch)
        status = np.array(batch[schema.STATUS], dtype=object)
        error = np.array(batch.get(schema.ERROR, [""] * n), dtype=object)
        ok = status == Status.OK.value
        num_classes, num_types = self.spec.num_classes, len(self.spec.figure_types)
        probabilities = np.full((n, num_classes), np.nan, dtype=np.float32)
        confidence = np.full(n, np.nan, dtype=np.float32)
        modality = np.full(n, "", dtype=object)
        figure_type = np.full(n, "", dtype=object)
        relevance = np.zeros((n, *self.map_shape), dtype=np.float32)
        panels = PanelRows(batch, n, self.map_shape)
        if ok.any():
            rows = np.flatnonzero(ok)
            pixels, owners = panels.with_crops(self._pixels(batch, ok, on_device, decoded), rows, self.device)
            host, failed = self._run(pixels, [uris[i] for i in owners])
            _maybe_die_for_test()
            for j in np.flatnonzero(~np.isfinite(host).all(axis=1)):
                failed.setdefault(int(j), "the model gave non-finite values (NaN or infinity)")
            good = np.ones(len(rows), dtype=bool)
            for j, message in failed.items():
                figure = int(np.searchsorted(rows, owners[j]))  # a panel's failure is its figure's
                good[figure] = False
                status[rows[figure]], error[rows[figure]] = Status.MODEL_ERROR.value, message
                log.warning("classify %s: %s", uris[owners[j]], message)
            probs, types = host[:, :num_classes], host[:, num_classes:num_classes + num_types] if num_types else None
            labels, kinds = image_labels(probs, types, self.spec.class_names, self.spec.figure_types, self.spec.decision_thresholds)
            maps = host[:, num_classes + num_types:].reshape(-1, *self.map_shape)
            for j in np.flatnonzero(good):
                i = rows[j]
                relevance[i], probabilities[i], confidence[i] = maps[j], probs[j], probs[j].max()
                crops = panels.rows_of(j)
                modality[i], figure_type[i], found = figure_summary(labels[j], kinds[j], [labels[k] for k in crops], [kinds[k] for k in crops])
                panels.record(i, maps[crops], [(labels[k], kinds[k], float(probs[k].max())) for k in crops], found)
        result = {k: v for k, v in batch.items() if k not in (schema.PIXELS, schema.JPEG_BYTES, schema.PANEL_PIXELS)}
        result.update(
            {
                schema.STATUS: status,
                schema.ERROR: error,
                schema.MODALITY: modality,
                schema.FIGURE_TYPE: figure_type,
                schema.CONFIDENCE: confidence,
                schema.PROBABILITIES: probabilities,
                schema.CRM_MAP: relevance,
                schema.MODEL_NAME: np.full(n, self.spec.name, dtype=object),
                schema.MODEL_VERSION: np.full(n, self.spec.version, dtype=object),
                schema.CRM_SCORE: np.full(n, self.crm_score, dtype=object),
                schema.ACTOR: np.full(n, self.actor_id, dtype=object),
                **panels.columns(),
            }
        )
        return result


def _device_fault(exc: BaseException) -> bool:
    """Faults of the device rather than of a figure: every figure after them would fail too."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return "CUDA error" in str(exc) or "CUDNN_STATUS" in str(exc)


def _decode_or_error(data: bytes, size: int, limits: decode.DecodeLimits) -> decode.Decoded:
    """:func:`decode.decode_image`, with any exception as a ``decode_error``."""
    try:
        return decode.decode_image(data, size, limits)
    except Exception as exc:  # noqa: BLE001 - errors are data
        return decode.Decoded(Status.DECODE_ERROR, f"{type(exc).__name__}: {exc}"[:1000])
