"""The built-in presets (`presets/*.json`) and preset loading/saving glue.

A built-in preset is a named architecture plus where its weights come from.
`from_preset(name)` builds it directly; a preset *directory* (written by
`save_to_preset`) goes through keras_hub's loader, after a check that names
any missing or corrupt file.
"""

import functools
import importlib.resources
import json
import os
import warnings

import keras
import keras_hub
from keras_hub.src.utils.preset_utils import CONFIG_FILE, load_json
from keras_hub.src.utils.python_utils import classproperty

from keras_gpt_scratch.io_utils import atomic_directory

CONFIG_FILES = ("config.json", "tokenizer.json", "preprocessor.json", "task.json")


@functools.cache
def builtin_presets() -> dict[str, dict]:
    """Name -> spec for every JSON file shipped in `presets/`."""
    root = importlib.resources.files("keras_gpt_scratch.presets")
    specs = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            spec = json.loads(entry.read_text(encoding="utf-8"))
            specs[entry.name[: -len(".json")]] = spec
    return specs


def unknown_preset_error(preset) -> ValueError:
    known = ", ".join(sorted(builtin_presets()))
    return ValueError(
        f"Unknown preset {preset!r}. Known presets: {known}. A preset can also "
        "be a directory written by save_to_preset(), or a Hugging Face handle "
        "like 'hf://user/repo'."
    )


def check_known_preset(preset) -> None:
    """Refuse a local name that is neither built in nor a directory.

    Call after the built-in names are handled; `hf://` and other handles
    pass through to keras_hub.
    """
    if isinstance(preset, str) and "://" not in preset and not os.path.isdir(preset):
        raise unknown_preset_error(preset)


def preprocessor_from_builtin(cls, name: str, **kwargs):
    """A preprocessor (`cls`) with a built-in preset's settings and tokenizer."""
    config = dict(builtin_presets()[name].get("preprocessor") or {})
    config.update(kwargs)
    if "tokenizer" not in config:
        config["tokenizer"] = cls.tokenizer_cls.from_preset(name)
    return cls(**config)


def check_preset_dir(path: str, load_weights: bool = True) -> None:
    """Raise an error naming the file if a preset directory is incomplete."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"Preset directory {path} has no config.json, so it is not a "
            "preset. Point at a directory written by save_to_preset()."
        )
    for name in CONFIG_FILES + ("metadata.json",):
        file = os.path.join(path, name)
        if os.path.exists(file):
            try:
                with open(file, encoding="utf-8") as f:
                    json.load(f)
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(
                    f"Preset file {file} is corrupt (not valid JSON: {e}). "
                    "Save the preset again or re-download it."
                ) from e
    from keras_gpt_scratch import hub

    hub.check_preset_compatibility(path)
    if not load_weights:
        return
    weights = os.path.join(path, "model.weights.h5")
    sharded = os.path.join(path, "model.weights.json")
    if not os.path.exists(weights) and not os.path.exists(sharded):
        raise FileNotFoundError(
            f"Preset directory {path} has no model.weights.h5. Save the preset "
            "again, or pass load_weights=False for fresh weights."
        )
    if os.path.exists(weights):
        import h5py

        try:
            with h5py.File(weights, "r"):
                pass
        except OSError as e:
            raise ValueError(
                f"Preset file {weights} is corrupt or truncated ({e}). Save the "
                "preset again or re-download it."
            ) from e


def warn_fresh_weights(name: str, spec: dict) -> None:
    """Warn that a preset without pretrained weights starts from random ones.

    Presets with weights (`"weights": {"hf_repo": ...}`) load them instead,
    through `keras_gpt_scratch.weights`; `load_weights=False` skips both.
    """
    warnings.warn(
        f"Preset '{name}': this preset has no pretrained weights, so the model "
        "is freshly initialised (random weights, no download).",
        UserWarning,
        stacklevel=3,
    )


class PresetMixin:
    """`from_preset` with built-in names and checked directories; atomic saves.

    Mixed into our keras_hub subclasses ahead of the keras_hub base class.
    Subclasses implement `_from_builtin(name, spec, load_weights, **kwargs)`.
    """

    @classproperty
    def presets(cls) -> dict[str, dict]:
        """The built-in presets: name -> spec (metadata, config, weights)."""
        return dict(builtin_presets())

    @classmethod
    def from_preset(cls, preset, load_weights: bool = True, **kwargs):
        if isinstance(preset, os.PathLike):
            preset = os.fspath(preset)
        if not isinstance(preset, str):
            raise TypeError(
                f"A preset must be a name, a directory or an hf:// handle; got "
                f"{type(preset).__name__}."
            )
        specs = builtin_presets()
        if preset in specs:
            return cls._from_builtin(preset, specs[preset], load_weights, **kwargs)
        if preset.startswith("hf://"):  # fast, clear errors; a local snapshot
            from keras_gpt_scratch import hub

            preset = hub.resolve_hf_preset(preset)
        # GPT-2 checkpoints (OpenAI's TF folder, or a Hugging Face folder,
        # which includes an hf:// snapshot resolved above) are converted by
        # us; keras_hub would map model_type gpt2 to its own GPT2Backbone.
        from keras_gpt_scratch import weights

        if weights.is_gpt2_checkpoint(preset):
            return weights.from_gpt2_checkpoint(
                cls, preset, load_weights=load_weights, **kwargs
            )
        check_known_preset(preset)
        if "://" not in preset:
            check_preset_dir(preset, load_weights)
        return cls._keras_hub_from_preset(preset, load_weights=load_weights, **kwargs)

    @classmethod
    def _task_from_builtin(cls, name, spec, load_weights, **kwargs):
        """A task (`cls`) for a built-in preset: its backbone and preprocessor."""
        if load_weights and spec.get("weights") and "backbone" not in kwargs:
            # GPT-2's real weights: downloaded, converted and cached once.
            from keras_gpt_scratch.weights import from_builtin_preset

            return from_builtin_preset(cls, name, spec, **kwargs)
        kwargs.pop("load_task_weights", None)
        backbone = kwargs.pop("backbone", None)
        if backbone is None:
            backbone = cls.backbone_cls._from_builtin(
                name, spec, load_weights, dtype=kwargs.pop("dtype", None)
            )
        if "preprocessor" not in kwargs:
            kwargs["preprocessor"] = cls.preprocessor_cls.from_preset(name)
        return cls(backbone=backbone, **kwargs)

    @classmethod
    def _keras_hub_from_preset(cls, preset, **kwargs):
        if kwargs.get("dtype") is None and issubclass(
            cls, (keras_hub.models.Backbone, keras_hub.models.Task)
        ):
            if _saved_policy(preset) is not None:
                # Float and mixed policies are how a model computes, not what
                # it is: load in the current policy. keras_hub does so only
                # for a task with its own task.json, and there fails on
                # mixed_* names ("Invalid dtype: mixed_bfloat16").
                kwargs["dtype"] = keras.config.dtype_policy()
        return super().from_preset(preset, **kwargs)

    def save_to_preset(self, preset_dir, *args, **kwargs):
        """Save a preset directory; an existing one is replaced only on success."""
        from keras_gpt_scratch import hub

        with atomic_directory(preset_dir) as tmp:
            super().save_to_preset(tmp, *args, **kwargs)
            # Record the package and format version, so that an older
            # release refuses the preset clearly instead of misreading it.
            hub.stamp_preset_metadata(tmp)


def _saved_policy(preset: str) -> str | None:
    """The plain dtype policy a preset's config.json names, if it names one.

    None when there is none, or when it is a quantized policy (a
    `DTypePolicyMap`), which must load as saved.
    """
    try:
        config = load_json(preset, CONFIG_FILE)
    except FileNotFoundError:
        return None  # keras_hub's loader names the missing file
    dtype = config.get("config", {}).get("dtype")
    if isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicy":
        dtype = dtype.get("config", {}).get("name")
    return dtype if isinstance(dtype, str) else None
