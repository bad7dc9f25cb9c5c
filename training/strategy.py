"""Choosing a `tf.distribute` strategy by name.

- "default": one device.
- "mirrored": MirroredStrategy over the local GPUs, or over `devices` logical CPU devices
  (useful to exercise the multi-replica code path on a CPU).
- "multi_worker": MultiWorkerMirroredStrategy configured by the TF_CONFIG environment
  variable (each worker runs the same command with its own `task.index`).
- "tpu": TPUStrategy on the TPU named by TPU_NAME (or the local one).
"""

import json
import socket

import tensorflow as tf

from keras_transformer.training.config import STRATEGIES  # one list, also checked in configs


def local_tf_configs(workers=2):
    """TF_CONFIG values (JSON) for `workers` processes on this machine, one per
    `task.index` (0 is the chief), on ports of 127.0.0.1 free right now: a
    multi-worker run tried on one host.

    >>> configs = local_tf_configs(2)
    >>> [json.loads(c)["task"]["index"] for c in configs]
    [0, 1]
    """
    sockets = [socket.socket() for _ in range(workers)]
    try:
        for s in sockets:  # bound together: distinct ports
            s.bind(("127.0.0.1", 0))
        cluster = {"worker": [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]}
    finally:
        for s in sockets:
            s.close()
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            for index in range(workers)]


def split_cpu(devices):
    """Expose the CPU as `devices` logical devices; must run before TensorFlow starts."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) == devices:
        return
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
    )


def make_strategy(name="default", devices=None):
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        if devices:
            split_cpu(devices)
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "multi_worker":
        from keras_transformer.training.multi_worker import patch_keras_for_multi_worker

        patch_keras_for_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    import os

    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(os.environ.get("TPU_NAME", ""))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
