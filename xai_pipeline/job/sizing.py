"""How many classifier actors a run starts and how many CPUs each reserves: pure arithmetic on
the cluster's resources (:mod:`xai_pipeline.job.pipeline` passes the result to Ray)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def actor_pool(concurrency: int | None, batches: int, num_gpus: float, resources: dict[str, float], torch_threads: int = 1) -> tuple[int, float]:
    """Classifier actors and the CPUs each reserves.

    A fixed pool (no slow autoscaling ramp), no larger than the work. ``concurrency=None``: one
    actor per GPU when actors take GPUs, else one per ``torch_threads`` CPUs (on 2 cores, two
    one-thread actors outrun one two-thread actor: ``bench/pipeline_vs_script.py``). An explicit
    count is not capped by the GPUs up now: an autoscaling cluster adds GPU nodes for the pending
    actors, and on a fixed cluster they stay pending while the others work.

    Actors must leave at least one CPU free, or fetch and decode tasks never get scheduled and
    the job hangs (seen with two actors on a 2-CPU machine): past that, each actor reserves less
    than a CPU (it still runs its torch threads).
    """
    cpus = resources.get("CPU", 1.0)
    if concurrency is None:
        if num_gpus > 0:
            concurrency = max(1, int(resources.get("GPU", 0) // num_gpus))
        else:
            concurrency = max(1, int(cpus // torch_threads))
    elif num_gpus > 0 and concurrency * num_gpus > resources.get("GPU", 0):
        log.warning("%d classifier actors × %g GPUs, %g GPUs up now: the rest start when the cluster scales up",
                    concurrency, num_gpus, resources.get("GPU", 0))
    pool = max(1, min(concurrency, batches))
    actor_cpus = 1.0
    if pool * actor_cpus > cpus - 1:
        actor_cpus = max(0.0, (cpus - 1) / pool)
        log.info("%d classifier actors on %g CPUs: each reserves %.2f CPU so that fetch and decode can run", pool, cpus, actor_cpus)
    return pool, actor_cpus
