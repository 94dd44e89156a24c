"""`from_preset` glue: built-in GPT-2 presets and GPT-2 checkpoints.

* `from_preset("gpt2_124m")` (and 355m, 774m, 1558m): on first use the
  preset's Hugging Face checkpoint is downloaded (huggingface_hub, with its
  progress bar), converted (with ours), and saved as a Keras preset under
  `paths.cache_dir()/presets/<name>`, atomically: built in a temporary
  folder and renamed into place, so an interrupted download or conversion
  never leaves a cache entry that looks good. Later loads read the cache,
  offline.
* `from_preset(folder)` with OpenAI's TF checkpoint folder or a Hugging Face
  GPT-2 folder, and `from_preset("hf://owner/name")` for a Hub repo whose
  `config.json` says `model_type: gpt2`: converted on the fly (keras_hub
  would map those to its own `GPT2Backbone`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from keras_gpt_scratch import paths
from keras_gpt_scratch.io_utils import atomic_directory
from keras_gpt_scratch.weights.config import CheckpointError
from keras_gpt_scratch.weights.convert import (
    backbone_from_checkpoint,
    from_gpt2_checkpoint,
)
from keras_gpt_scratch.weights.readers import is_gpt2_checkpoint, read_gpt2_checkpoint

__all__ = [
    "builtin_preset_dir",
    "ensure_builtin_preset",
    "from_builtin_preset",
    "from_gpt2_checkpoint",
    "is_gpt2_checkpoint",
]

# Written last into a converted preset: what it was converted from. A cache
# entry without it (or for another repo) is converted again.
SOURCE_FILE = "gpt2_source.json"
_GEOMETRY = (
    "vocabulary_size",
    "num_layers",
    "num_heads",
    "hidden_dim",
    "intermediate_dim",
    "max_sequence_length",
)


def builtin_preset_dir(name: str) -> Path:
    """Where a built-in preset's converted weights are cached."""
    return paths.cache_dir() / "presets" / name


def _is_cached(directory: Path, repo: str) -> bool:
    from keras_gpt_scratch.models.gpt_presets import check_preset_dir

    try:
        source = json.loads((directory / SOURCE_FILE).read_text(encoding="utf-8"))
        check_preset_dir(str(directory), load_weights=True)
    except (OSError, ValueError):
        return False
    return isinstance(source, dict) and source.get("hf_repo") == repo


def _check_geometry(name: str, spec: dict[str, Any], checkpoint) -> None:
    got = checkpoint.config.backbone_kwargs()
    want = spec["backbone"]
    diff = {k: (want[k], got[k]) for k in _GEOMETRY if k in want and want[k] != got[k]}
    if diff:
        shown = ", ".join(
            f"{k}: preset {w}, checkpoint {g}" for k, (w, g) in diff.items()
        )
        raise CheckpointError(
            f"Preset '{name}' expects another geometry than its checkpoint "
            f"{checkpoint.source} ({shown})."
        )


def ensure_builtin_preset(
    name: str, spec: dict[str, Any], progress: bool = True
) -> Path:
    """Returns the cached, converted preset folder of a built-in GPT-2 preset.

    Downloads and converts it first when the cache lacks it (or holds an
    incomplete or foreign copy).

    Args:
        name: the preset name, e.g. `"gpt2_124m"`.
        spec: its spec (`presets/<name>.json`), with `weights.hf_repo`.
        progress: show progress bars.

    Returns:
        The preset folder (a Keras preset: loads with `from_preset(folder)`).
    """
    from keras_gpt_scratch.models.gpt_causal_lm import GPTCausalLM
    from keras_gpt_scratch.models.gpt_causal_lm_preprocessor import (
        GPTCausalLMPreprocessor,
    )

    repo = (spec.get("weights") or {}).get("hf_repo")
    if not repo:
        raise ValueError(f"Preset '{name}' names no Hugging Face repo for its weights.")
    target = builtin_preset_dir(name)
    if _is_cached(target, repo):
        return target
    with read_gpt2_checkpoint(f"hf://{repo}") as checkpoint:
        _check_geometry(name, spec, checkpoint)
        dropout = spec["backbone"].get("dropout", checkpoint.config.dropout)
        backbone = backbone_from_checkpoint(
            checkpoint, progress=progress, dropout=dropout
        )
    lm = GPTCausalLM(backbone, GPTCausalLMPreprocessor.from_preset(name))
    # Everything is written into a temporary sibling and renamed into place
    # only when complete; a failure leaves no (or the previous) entry.
    with atomic_directory(target) as tmp:
        lm.save_to_preset(tmp)
        paths.write_atomic(
            Path(tmp) / SOURCE_FILE,
            json.dumps({"hf_repo": repo, "preset": name}, indent=2).encode(),
        )
    return target


def from_builtin_preset(cls: type, name: str, spec: dict[str, Any], **kwargs):
    """`cls.from_preset(name)` for a built-in preset with pretrained weights."""
    # keras_hub's task loader decides this itself for a preset folder.
    kwargs.pop("load_task_weights", None)
    folder = ensure_builtin_preset(name, spec)
    return cls._keras_hub_from_preset(os.fspath(folder), load_weights=True, **kwargs)
