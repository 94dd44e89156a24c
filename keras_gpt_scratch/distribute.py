"""`tf.distribute` strategies for training: names, validation, chief checks.

`keras-gpt train --strategy mirrored|multi-worker|tpu` (or
`TrainConfig(strategy=...)`, which also takes a `tf.distribute.Strategy`)
picks one here. The model, optimizer and metrics are then created in the
strategy's scope, and Keras' `fit` distributes the `tf.data` pipeline: each
replica gets its own shard and the global batch is split across replicas.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi-worker", "tpu")


def parse_tf_config(raw: str | None = None) -> dict | None:
    """Validate `TF_CONFIG` (the multi-worker cluster description).

    Returns the parsed dict, or None when it is unset. Raises ValueError for
    malformed JSON, a missing cluster or task, a task not in the cluster, or
    an address listed twice (two tasks would try to bind the same port).
    """
    raw = os.environ.get("TF_CONFIG") if raw is None else raw
    if not raw:
        return None
    example = (
        '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({e}). Expected e.g. {example}"
        ) from e
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise ValueError(
            f"TF_CONFIG needs 'cluster' and 'task' keys. Expected e.g. {example}"
        )
    cluster, task = config["cluster"], config["task"]
    if not isinstance(cluster, dict) or not all(
        isinstance(v, list) and all(isinstance(a, str) for a in v)
        for v in cluster.values()
    ):
        raise ValueError(
            "TF_CONFIG's 'cluster' must map task types to lists of 'host:port' "
            f"strings; got {cluster!r}."
        )
    seen: dict[str, str] = {}
    for kind, addresses in cluster.items():
        for i, address in enumerate(addresses):
            if address in seen:
                raise ValueError(
                    f"TF_CONFIG names {address} twice ({seen[address]} and "
                    f"{kind}[{i}]); every task needs its own host:port."
                )
            seen[address] = f"{kind}[{i}]"
    kind, index = task.get("type"), task.get("index")
    if (
        kind not in cluster
        or not isinstance(index, int)
        or not 0 <= index < len(cluster[kind])
    ):
        raise ValueError(
            f"TF_CONFIG's task {task!r} is not in its cluster "
            f"({ {k: len(v) for k, v in cluster.items()} })."
        )
    return config


def make_strategy(
    strategy: str | tf.distribute.Strategy | None,
    collective_timeout: float | None = None,
) -> tf.distribute.Strategy:
    """A `tf.distribute.Strategy` from a name (or the strategy itself)."""
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if strategy in (None, "default"):
        return tf.distribute.get_strategy()
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if strategy == "multi-worker":
        if parse_tf_config() is None:
            raise ValueError(
                "--strategy multi-worker needs TF_CONFIG describing the cluster "
                "and this worker's task; see the README's multi-host section."
            )
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=collective_timeout
        )
        _patch_keras_multi_worker_reduce()
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        f"Unknown strategy {strategy!r}. Known strategies: {', '.join(STRATEGIES)}."
    )


def _patch_keras_multi_worker_reduce() -> None:
    """Work around Keras 3.15 averaging scalar step outputs with axis=0.

    Under MultiWorkerMirroredStrategy Keras' `reduce_per_replica` calls
    `strategy.reduce("MEAN", v, axis=0)` on every log value, which fails for
    the scalar loss ("Invalid reduction dimension 0 for input with 0
    dimensions"). Scalars are averaged with `axis=None` instead; everything
    else goes to Keras unchanged.
    """
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "_keras_gpt_scratch_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in (
            "mean",
            "auto",
        ) and trainer._collective_all_reduce_multi_worker(strategy):

            def reduce(v):
                local = strategy.experimental_local_results(v)[0]
                if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return original(v, strategy, reduction)

            return tf.nest.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica._keras_gpt_scratch_patch = True
    trainer.reduce_per_replica = reduce_per_replica


def worker_id(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is this the chief, task index) for the strategy's cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    kind = getattr(resolver, "task_type", None)
    index = getattr(resolver, "task_id", None) or 0
    if kind is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return True, 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return (kind == "chief") or (
        kind == "worker" and index == 0 and not has_chief
    ), index


def check_global_batch(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(
            f"The global batch size {batch_size} is not divisible by the "
            f"{replicas} replicas in sync; use a multiple of {replicas}, e.g. "
            f"{replicas * max(1, batch_size // replicas)}."
        )
