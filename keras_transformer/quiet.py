"""Keep TensorFlow's C++ log lines off the console where they are noise.

TensorFlow prints CUDA probing ("Could not find cuda drivers"), CPU feature notes and an
absl banner to the process's stderr before Python logging exists, and the TFLite
converter logs graph-import notes as errors ("NodeDef mentions attribute Truncate ...")
on a conversion that succeeds. They come from C++, so the only way to keep them off a
console is to point file descriptor 2 elsewhere while that code runs.
"""

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def captured_stderr():
    """Capture file descriptor 2 for the block and drop it, unless the block raises:
    then what was captured is written back to stderr before the error propagates."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr (a closed descriptor): nothing to hide
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            os.write(2, capture.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow_quietly():
    """Import TensorFlow (once) with its start-up log lines dropped.

    A failed import still raises its Python error, with TensorFlow's log lines shown;
    TF_CPP_MIN_LOG_LEVEL set by the user wins; nothing is hidden if TensorFlow was
    imported before.
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with captured_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # probes CUDA now, while stderr is captured
