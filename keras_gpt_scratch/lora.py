"""LoRA fine-tuning helpers around keras_hub's `Backbone.enable_lora`.

keras_hub's `enable_lora(rank)` freezes the backbone and adds low-rank
adapters (`lora_kernel_a`, `lora_kernel_b`) to every layer named in
`target_layer_names` (default: `"query"` and `"value"`, the names of our
attention projections). This module adds what it leaves out:

* `check_lora_targets`: a clear error for a rank below 1, for target names
  that match no layer (naming the layers that exist), and for calling
  `enable_lora` twice. `GPTBackbone.enable_lora` calls it first.
* `freeze_adapted_biases`: keras_hub leaves the biases of the adapted `Dense`
  layers trainable; we freeze them so that exactly the adapters train and the
  saved adapter file holds everything that changed.
* `save_adapters` and `AdapterCheckpoint`: atomic adapter saving for the
  training recipe, and a callback that keeps the adapters correct when a
  backed-up run (`keras_gpt_scratch.backup.RunBackup`) resumes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import keras
import numpy as np

from keras_gpt_scratch.io_utils import atomic_file

ADAPTER_FILENAME = "adapter.lora.h5"


def _adaptable_layers(backbone) -> list:
    # The same list, in the same order, that keras_hub indexes adapters by.
    layers = backbone._flatten_layers(include_self=False)
    return [layer for layer in layers if layer.weights]


def lora_layers(backbone) -> list:
    """The layers of `backbone` that carry LoRA adapters, in model order."""
    return [
        layer
        for layer in _adaptable_layers(backbone)
        if getattr(layer, "lora_enabled", False)
    ]


def check_lora_targets(
    backbone, rank: int, target_layer_names: Sequence[str] | None = None
) -> list[str]:
    """Validates the arguments of `enable_lora`; returns the target names.

    Args:
        backbone: a keras_hub `Backbone`, e.g. a `GPTBackbone`.
        rank: the LoRA rank; an int >= 1.
        target_layer_names: names of the layers to adapt, or `None` for the
            backbone's `default_lora_layer_names()`.

    Returns:
        The target names to pass to keras_hub's `enable_lora`.

    Raises:
        ValueError: `rank` is not an int >= 1; LoRA is already enabled; or
            no layer (with `target_layer_names` given: some name) matches, in
            which case the message lists the layer names that can be adapted.
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(
            f"The LoRA rank must be an int >= 1; got {rank!r}. Typical ranks "
            "are 4 to 16."
        )
    if getattr(backbone, "_lora_enabled_layers", None):
        raise ValueError(
            f"LoRA is already enabled on this backbone (rank "
            f"{backbone._lora_rank}); enable_lora can be called once. Build a "
            "fresh backbone to use another rank or other target layers."
        )
    explicit = target_layer_names is not None
    if isinstance(target_layer_names, str):
        target_layer_names = [target_layer_names]
    targets = list(
        backbone.default_lora_layer_names() if not explicit else target_layer_names
    )
    # keras_hub saves `lora_kernel_a/b`, which only Dense and EinsumDense
    # have (Embedding's adapters are named differently).
    available = sorted(
        {
            layer.name
            for layer in _adaptable_layers(backbone)
            if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
        }
    )
    missing = [name for name in targets if name not in available]
    if len(missing) == len(targets) or (explicit and missing):
        raise ValueError(
            f"LoRA target layers {missing} are not in {backbone.name} (targets "
            f"asked for: {targets}). The layers that can take LoRA adapters "
            f"are: {', '.join(available) or 'none'}. Pass target_layer_names "
            'with some of these, e.g. ["query", "value"].'
        )
    return targets


def freeze_adapted_biases(backbone) -> None:
    """Make the adapters the only trainable weights of an adapted backbone.

    keras_hub marks each adapted layer trainable before adding its adapters,
    which leaves the layer's bias trainable too.
    """
    for layer in lora_layers(backbone):
        if getattr(layer, "bias", None) is not None:
            layer.bias.trainable = False


def _frozen_variable(layer):
    # The un-merged weight: `layer.kernel` of an adapted layer already
    # includes the adapters.
    return layer._kernel


def adapters_are_finite(backbone) -> bool:
    return all(
        np.isfinite(keras.ops.convert_to_numpy(w)).all()
        for layer in lora_layers(backbone)
        for w in (layer.lora_kernel_a, layer.lora_kernel_b)
    )


def save_adapters(backbone, path: str | os.PathLike) -> bool:
    """`backbone.save_lora_weights(path)`, written atomically.

    Adapters holding NaN or inf (a diverged run) are not saved, so they
    never replace a good file; returns whether the file was written.
    """
    if not adapters_are_finite(backbone):
        warnings.warn(
            f"The LoRA adapters hold NaN or inf; {path} was not written.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    with atomic_file(path) as tmp:
        backbone.save_lora_weights(tmp)
    return True


class AdapterCheckpoint(keras.callbacks.Callback):
    """Save the LoRA adapters after every epoch; restore them on resume.

    `RunBackup` saves the model weights with each adapted kernel
    merged (`kernel + A @ B`) and, when it restores them, zeroes the
    adapters. Trained on from there, the adapters would hold only the epochs
    after the resume. So when `path` already exists at the start of
    training (an interrupted run), this callback, placed after
    `RunBackup`, puts the original frozen kernels back and loads the
    adapters from `path`.

    Args:
        backbone: the adapted backbone.
        path: the adapter file, ending in `.lora.h5`.
    """

    def __init__(self, backbone, path: str | os.PathLike):
        super().__init__()
        self.backbone = backbone
        self.path = os.fspath(path)
        self._frozen_kernels = None
        if os.path.exists(self.path):
            # Taken before fit(), while the kernels are still the base ones.
            self._frozen_kernels = [
                keras.ops.convert_to_numpy(_frozen_variable(layer))
                for layer in lora_layers(backbone)
            ]

    def on_train_begin(self, logs=None):
        if self._frozen_kernels is None:
            return
        for layer, kernel in zip(
            lora_layers(self.backbone), self._frozen_kernels, strict=True
        ):
            _frozen_variable(layer).assign(kernel)
        self.backbone.load_lora_weights(self.path)
        self._frozen_kernels = None

    def on_epoch_end(self, epoch, logs=None):
        save_adapters(self.backbone, self.path)
