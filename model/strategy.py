"""`--strategy=default|one_device|mirrored|multi_worker|tpu` -> a strategy."""

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")


def create_strategy(name="default", tpu=""):
    """Returns the `tf.distribute.Strategy` called `name`.

    Args:
        name: `default` (no distribution), `one_device` (first GPU, else
            the CPU), `mirrored` (all local GPUs; all logical CPUs when
            there is no GPU, which is how tests simulate replicas),
            `multi_worker` (MultiWorkerMirroredStrategy from `TF_CONFIG`),
            `tpu` (TPUStrategy).
        tpu: TPU name or `grpc://` address for `tpu`; empty = the local or
            environment-configured TPU.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r} ({'|'.join(STRATEGIES)})")


def is_chief(strategy):
    """True on the one worker that writes logs, configs and final files."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def device_kind():
    """ "tpu", "gpu" or "cpu": what the train step will run on."""
    if tf.config.list_logical_devices("TPU"):
        return "tpu"
    if tf.config.list_logical_devices("GPU"):
        return "gpu"
    return "cpu"
