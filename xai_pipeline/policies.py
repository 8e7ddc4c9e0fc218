"""Small frozen values that configurations hand to stages: limits, retry policy, write mode and the
names of choices. Standard library only, so that :mod:`xai_pipeline.config` (and with it every
command's ``--help``) loads without numpy, pyarrow, torch or Ray."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from enum import Enum

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""A run id: letters, digits, ``.``, ``_`` or ``-``, at most 128 (it names folders and files)."""

CRM_SCORES: tuple[str, ...] = ("logit", "softmax")
"""Scores that CRM may perturb (:mod:`xai_pipeline.model.crm`); the paper uses logits."""

ARCHITECTURES: tuple[str, ...] = (
    "tiny_cnn", "resnet18", "resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_lite0",
    "efficientnet_lite1", "efficientnet_lite2",
)
"""Backbones :func:`xai_pipeline.model.backbones.build_backbone` can build."""


@dataclass(frozen=True)
class DecodeLimits:
    """Safety limits. ``max_bytes``: largest object read; ``max_pixels``: largest width×height."""

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 100_000_000

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError("max_bytes and max_pixels must be positive")


@dataclass(frozen=True)
class ReadPolicy:
    """How hard one object's read is tried before it becomes a ``read_error`` row.

    ``retries``: further attempts after the first (``--read-retries``); ``timeout``: seconds a
    socket read may wait for data (``--read-timeout``), so a stalled body is cut and read again;
    ``deadline``: seconds for all attempts together (``--read-deadline``). Attempt ``k`` waits a
    random time in ``[0, min(cap, base · 2^k)]`` first (exponential backoff with full jitter).
    """

    retries: int = 5
    timeout: float = 60.0
    deadline: float = 300.0
    backoff_base: float = 0.2
    backoff_cap: float = 10.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.timeout <= 0 or self.deadline <= 0:
            raise ValueError("read retries must be >= 0, timeout and deadline positive")

    def backoff(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.backoff_cap, self.backoff_base * 2 ** attempt))


class WriteMode(str, Enum):
    """``append`` adds this run's rows in a new version; ``overwrite`` replaces the table's rows
    in a new version (older versions stay readable until vacuumed)."""

    APPEND = "append"
    OVERWRITE = "overwrite"
