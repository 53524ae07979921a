"""Every use of Ray's private modules, in one place. Each works around something Ray's public API does
not offer; each was checked on Ray 2.60.0, the release pyproject.toml pins (`ray[data]>=2.60,<2.61`).
A newer Ray may move or change these names: this module is what to check first, and
tests/unit/test_lint.py keeps private names from appearing anywhere else in pipeline/."""

from __future__ import annotations

import contextlib
import subprocess


def in_blocks_of(ds, rows: int, num_cpus: float, resources: dict | None):
    """`ds.repartition(target_num_rows_per_block=rows)` fused into the map before it, whose Ray
    `num_cpus` and `resources` are given: a block that map yields whole (a shard's reader output, one
    block under Ray Data's 128 MiB buffer) goes on in blocks of `rows`, so the stages after it stream.

    Works around: Ray Data 2.60 fuses the cut only into a map with the same remote args, and the public
    `repartition` gives it none (one CPU a task): alone it waited for a CPU that the actor pools held,
    and a run on 2 CPUs stalled. So Ray Data's own logical operator (`StreamingRepartition`,
    `LogicalPlan`, `Dataset._from_parent`) is built here with the map's args."""
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators import StreamingRepartition
    from ray.data.dataset import Dataset

    args = {"num_cpus": num_cpus, **({"resources": resources} if resources else {})}
    op = StreamingRepartition(target_num_rows_per_block=rows, input_dependencies=[ds._logical_plan.dag],
                              ray_remote_args=args)
    return Dataset._from_parent(ds, LogicalPlan(op, ds.context))


def recorded_address() -> str | None:
    """The address `ray start` recorded on this node (a cluster head), None when there is none.

    Works around: `ray.init(address="auto")` finds it too, but only by connecting; the job must know
    before it decides whether to start a Ray of its own (pipeline.placement.cluster_address)."""
    from ray._private.utils import read_ray_address

    return read_ray_address()


def shutdown() -> None:
    """ray.shutdown(), a second sooner when this process started the Ray.

    Works around: the autoscaler monitor of a Ray this process started (of no use to a one-node run)
    answers SIGTERM by reporting to the GCS, which ray.shutdown stops before it, and so took its whole
    second of grace before being killed. It is killed first, through Ray's internal node object
    (`ray._private.worker._global_node`); where that is not found, plain ray.shutdown()."""
    import ray

    try:
        monitors = ray._private.worker._global_node.all_processes.get("monitor", [])
    except AttributeError:  # attached to a cluster (no node of ours), or another Ray's internals
        monitors = []
    for info in monitors:
        info.process.kill()  # a Popen: one already gone is no error
        with contextlib.suppress(subprocess.TimeoutExpired):
            info.process.wait(timeout=1)
    ray.shutdown()
