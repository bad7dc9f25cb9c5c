"""Import TensorFlow without its C++ start-up chatter.

TensorFlow prints CUDA probing ("Could not find cuda drivers"), CPU feature notes and an
absl banner to the process's stderr before Python logging exists, so the only way to keep
them off a console is to point file descriptor 2 elsewhere while it imports.
"""

import os
import sys


def import_tensorflow_quietly():
    """Import TensorFlow (once) with its start-up log lines dropped.

    Only TensorFlow's own log lines are dropped: a failed import still raises its Python
    error after stderr is restored, TF_CPP_MIN_LOG_LEVEL set by the user wins, and nothing
    is hidden if TensorFlow was imported before.
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):  # no usable stderr (a closed descriptor): nothing to hide
        import tensorflow  # noqa: F401

        return
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # probes CUDA now, while stderr is muted
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
