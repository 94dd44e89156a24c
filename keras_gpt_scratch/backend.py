"""Backend selection, run before Keras is first imported.

keras-gpt-scratch is written for the TensorFlow backend (tf.data pipelines,
`tf.distribute`, `tf.function` generation). Keras reads `KERAS_BACKEND` once,
at import, so the choice has to be made here, before anything imports Keras.
"""

import os
import sys


def select_tensorflow_backend() -> None:
    """Select the TensorFlow backend, or fail clearly if another is in use."""
    requested = os.environ.get("KERAS_BACKEND")
    if "keras" in sys.modules:
        import keras

        active = keras.config.backend()
        if active != "tensorflow":
            raise ImportError(
                f"keras_gpt_scratch needs the TensorFlow backend, but Keras was "
                f"already imported with the '{active}' backend. Import "
                "keras_gpt_scratch before keras, or set KERAS_BACKEND=tensorflow "
                "before starting Python."
            )
        return
    if requested and requested != "tensorflow":
        raise ImportError(
            f"keras_gpt_scratch needs the TensorFlow backend, but "
            f"KERAS_BACKEND={requested!r}. Unset it or set "
            "KERAS_BACKEND=tensorflow."
        )
    os.environ["KERAS_BACKEND"] = "tensorflow"
    # oneDNN roughly doubles float32 matmul throughput on x86 CPUs, but TF
    # reads the flag only once, when it is first imported; respect a user's
    # explicit choice.
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
