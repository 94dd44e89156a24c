"""The classification recipe: `keras-gpt train --task classify` in Python.

`train_classifier(ClassifyConfig(...))` fine-tunes a `GPTClassifier` (the
book's chapter 6) on a CSV file with a text column and an integer label
column: the rows are shuffled and split into training and validation sets,
texts are padded to the longest training text (capped at the model's
context), and the model trains with `fit` and AdamW. Optionally only the
last transformer block, the final LayerNorm and the head train (the book's
setting), or only LoRA adapters and the head. The result is saved as a
preset directory and a `.keras` file, with a CSV log, a `summary.json`
and, with LoRA, the adapters (`adapter.lora.h5`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_gpt_scratch import lora
from keras_gpt_scratch.io_utils import atomic_file
from keras_gpt_scratch.models import gpt_presets
from keras_gpt_scratch.models.gpt_backbone import BOOK_CONFIG_KEYS, GPTBackbone
from keras_gpt_scratch.models.gpt_causal_lm import NO_WEIGHT_DECAY
from keras_gpt_scratch.models.gpt_classifier import GPTClassifier
from keras_gpt_scratch.models.gpt_classifier_preprocessor import (
    GPTClassifierPreprocessor,
)
from keras_gpt_scratch.optimizers import TorchAdamW
from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer
from keras_gpt_scratch.training import dtype_policy_scope

DEFAULT_LEARNING_RATE = 5e-5  # the book's fine-tuning rate (section 6.7)


@dataclasses.dataclass
class ClassifyConfig:
    """Everything `train_classifier()` needs; the CLI flags map onto fields.

    Args:
        csv: path of a CSV file with a header row.
        text_column, label_column: the columns holding the text and the
            integer label.
        num_classes: number of classes; labels must be in `[0,
            num_classes)`. Defaults to the largest label plus one.
        preset: architecture preset to train from scratch (fresh weights).
        init_from: a preset to fine-tune from instead (built-in name, preset
            directory, GPT-2 folder or `hf://` handle); its weights load.
        model_config: a dict of `GPTBackbone` arguments or the book's
            `GPT_CONFIG` keys, overriding `preset`.
        sequence_length: padded length of the texts. Defaults to the longest
            training text, capped at the model's context length.
        validation_fraction: share of the rows held out for validation.
        batch_size, epochs: as in `fit`.
        learning_rate, weight_decay: AdamW settings (the book: 5e-5, 0.1).
        train_last_block_only: train only the last transformer block, the
            final LayerNorm and the head.
        lora_rank: train LoRA adapters of this rank (and the head) instead.
        seed: seeds the split, the shuffling, the head and the adapters.
        output_dir: where the model, log and summary go.
        overwrite: write into an output directory that is not empty.
        dtype_policy: Keras' global dtype policy while the classifier is
            built and trained, as in `TrainConfig`; `None` keeps the current.
    """

    csv: str
    text_column: str = "text"
    label_column: str = "label"
    num_classes: int | None = None
    preset: str = "gpt_tiny"
    init_from: str | None = None
    model_config: dict[str, Any] | None = None
    sequence_length: int | None = None
    validation_fraction: float = 0.1
    batch_size: int = 8
    epochs: int = 5
    learning_rate: float = DEFAULT_LEARNING_RATE
    weight_decay: float = 0.1
    train_last_block_only: bool = False
    lora_rank: int | None = None
    seed: int = 123
    output_dir: str = "runs/classifier"
    overwrite: bool = False
    jit_compile: bool | str = "auto"
    verbose: int | str = "auto"
    dtype_policy: str | None = None


@dataclasses.dataclass
class ClassifyResult:
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    num_classes: int
    sequence_length: int
    trainable_params: int
    wall_seconds: float
    output_dir: str
    model: GPTClassifier | None = None

    def summary_line(self) -> str:
        val = (
            f"val loss {self.val_loss:.4f}, val accuracy {self.val_accuracy:.3f}"
            if self.val_loss is not None
            else "no validation"
        )
        return (
            f"done: train loss {self.train_loss:.4f}, train accuracy "
            f"{self.train_accuracy:.3f}, {val}, {self.trainable_params:,} "
            f"trainable parameters, {self.wall_seconds:,.0f} s, model in "
            f"{self.output_dir}"
        )


# === Data ===


def load_csv(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str = "label",
    num_classes: int | None = None,
) -> tuple[list[str], np.ndarray, int]:
    """Reads `(texts, labels, num_classes)` from a CSV file with a header.

    Args:
        path: the CSV file (UTF-8, a byte-order mark is fine).
        text_column: the column holding the texts.
        label_column: the column holding integer labels.
        num_classes: the number of classes; defaults to the largest label
            plus one.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a named column is missing (the message lists the columns
            present), the file has no rows, or a label is not an integer in
            `[0, num_classes)` (the message names its line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {path} does not exist.")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in (text_column, label_column) if c not in columns]
        if missing:
            raise ValueError(
                f"CSV file {path} has no column {' or '.join(map(repr, missing))}. "
                f"Its columns are: {', '.join(map(repr, columns)) or 'none'}. "
                "Pick them with --text-column and --label-column."
            )
        texts, labels = [], []
        for row in reader:
            line = reader.line_num
            raw = (row[label_column] or "").strip()
            try:
                label = int(raw)
            except ValueError:
                raise ValueError(
                    f"{path}, line {line}: label {raw!r} in column "
                    f"{label_column!r} is not an integer. Labels must be class "
                    "indices 0, 1, ..., num_classes - 1; map names like "
                    "'spam'/'ham' to integers first."
                ) from None
            texts.append(row[text_column] or "")
            labels.append((label, line))
    if not texts:
        raise ValueError(f"CSV file {path} has a header but no rows.")
    bad = [(label, line) for label, line in labels if label < 0]
    if num_classes is None:
        num_classes = max(label for label, _ in labels) + 1
        if not bad and num_classes < 2:
            raise ValueError(
                f"Every label in {path} is 0: a classifier needs at least two classes."
            )
    else:
        bad = [(label, line) for label, line in labels if not 0 <= label < num_classes]
    if bad:
        label, line = bad[0]
        raise ValueError(
            f"{path}, line {line}: label {label} is outside [0, {num_classes}) "
            f"({len(bad)} bad label(s) in all). Labels must be class indices "
            f"0 to {num_classes - 1}"
            + ("; or pass a larger --num-classes." if label >= 0 else ".")
        )
    return texts, np.array([label for label, _ in labels], "int32"), num_classes


def split_rows(
    n: int, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled `(train, validation)` row indices; validation may be empty."""
    if not 0 <= validation_fraction < 1:
        raise ValueError(
            f"validation_fraction must be in [0, 1), got {validation_fraction}."
        )
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * validation_fraction))
    if n - n_val < 1:
        n_val = 0
    return order[n_val:], order[:n_val]


# === Model ===


def build_classifier(config: ClassifyConfig, num_classes: int) -> GPTClassifier:
    """A classifier on a pretrained backbone (`init_from`) or a fresh one."""
    args = {
        "num_classes": num_classes,
        "train_last_block_only": config.train_last_block_only,
    }
    if config.init_from:
        return GPTClassifier.from_preset(config.init_from, **args)
    if config.model_config:
        cfg = dict(config.model_config)
        if set(cfg) & (set(BOOK_CONFIG_KEYS) - {"qkv_bias"}):
            backbone = GPTBackbone.from_book_config(cfg)
        else:
            backbone = GPTBackbone(**cfg)
    else:
        spec = gpt_presets.builtin_presets().get(config.preset)
        if spec is None:
            raise gpt_presets.unknown_preset_error(config.preset)
        backbone = GPTBackbone(**spec["backbone"])
    preprocessor = GPTClassifierPreprocessor(
        GPTTokenizer(), sequence_length=backbone.max_sequence_length
    )
    return GPTClassifier(backbone, preprocessor=preprocessor, **args)


def _sequence_length(config, classifier, texts) -> int:
    context = classifier.backbone.max_sequence_length
    if config.sequence_length is not None:
        if not 0 < config.sequence_length <= context:
            raise ValueError(
                f"sequence_length {config.sequence_length} must be in [1, "
                f"{context}], the model's context length."
            )
        return config.sequence_length
    # The book pads to the longest training text, not to the full context:
    # far less compute for short texts such as SMS messages.
    tokenizer = classifier.preprocessor.tokenizer
    longest = max(len(ids) for ids in tokenizer(list(texts)))
    extra = int(classifier.preprocessor.add_start_token) + int(
        classifier.preprocessor.add_end_token
    )
    return max(1, min(longest + extra, context))


def _count_params(variables) -> int:
    return int(sum(np.prod(v.shape) for v in variables))


# === The run ===


def train_classifier(config: ClassifyConfig, print_fn=print) -> ClassifyResult:
    """Fine-tune a `GPTClassifier` on a CSV file; see `ClassifyConfig`.

    Bad settings (a CSV without the named columns, labels outside
    `[0, num_classes)`, LoRA together with `train_last_block_only`, a
    non-empty output directory without `overwrite`, an unknown dtype policy)
    fail before training.
    """
    with dtype_policy_scope(config.dtype_policy):
        return _train_classifier(config, print_fn)


def _train_classifier(config: ClassifyConfig, print_fn) -> ClassifyResult:
    for name in ("batch_size", "epochs"):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}.")
    if config.lora_rank is not None and config.train_last_block_only:
        raise ValueError(
            "Choose one of lora_rank (train adapters and the head) and "
            "train_last_block_only (train the last block, the final LayerNorm "
            "and the head), not both."
        )
    texts, labels, num_classes = load_csv(
        config.csv, config.text_column, config.label_column, config.num_classes
    )
    train_idx, val_idx = split_rows(len(texts), config.validation_fraction, config.seed)
    out = Path(config.output_dir)
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        raise FileExistsError(
            f"Output directory {out} is not empty. Choose another --output-dir, "
            "or pass --overwrite."
        )

    keras.utils.set_random_seed(config.seed)
    classifier = build_classifier(config, num_classes)
    if config.lora_rank is not None:
        classifier.backbone.enable_lora(config.lora_rank)
    classifier.preprocessor.sequence_length = _sequence_length(
        config, classifier, [texts[i] for i in train_idx]
    )

    def dataset(indices, shuffle):
        ds = tf.data.Dataset.from_tensor_slices(
            ([texts[i] for i in indices], labels[indices])
        )
        if shuffle:
            ds = ds.shuffle(len(indices), seed=config.seed)
        return ds.batch(config.batch_size)

    train_ds = dataset(train_idx, shuffle=True)
    val_ds = dataset(val_idx, shuffle=False) if len(val_idx) else None

    # PyTorch's AdamW update, as in the book's chapter 6.
    optimizer = TorchAdamW(
        learning_rate=config.learning_rate, weight_decay=config.weight_decay
    )
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    classifier.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    trainable = _count_params(classifier.trainable_weights)
    print_fn(
        f"{len(train_idx)} training and {len(val_idx)} validation rows, "
        f"{num_classes} classes, sequence length "
        f"{classifier.preprocessor.sequence_length}, {trainable:,} of "
        f"{_count_params(classifier.weights):,} parameters trainable."
    )

    out.mkdir(parents=True, exist_ok=True)
    adapter_path = out / lora.ADAPTER_FILENAME
    callbacks = [
        keras.callbacks.CSVLogger(str(out / "log.csv")),
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.lora_rank is not None:
        if adapter_path.exists():
            adapter_path.unlink()  # an older run's; this run does not resume
        callbacks.append(lora.AdapterCheckpoint(classifier.backbone, adapter_path))

    start = time.perf_counter()
    fit = classifier.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=config.verbose,
    )
    wall = time.perf_counter() - start

    classifier.save_to_preset(out / "classifier")
    classifier.save(out / "classifier.keras")
    if config.lora_rank is not None:
        lora.save_adapters(classifier.backbone, adapter_path)

    history = fit.history
    result = ClassifyResult(
        train_loss=float(history["loss"][-1]),
        train_accuracy=float(history["sparse_categorical_accuracy"][-1]),
        val_loss=float(history["val_loss"][-1]) if val_ds is not None else None,
        val_accuracy=(
            float(history["val_sparse_categorical_accuracy"][-1])
            if val_ds is not None
            else None
        ),
        num_classes=num_classes,
        sequence_length=int(classifier.preprocessor.sequence_length),
        trainable_params=trainable,
        wall_seconds=wall,
        output_dir=str(out),
        model=classifier,
    )
    summary = {
        f.name: getattr(result, f.name)
        for f in dataclasses.fields(result)
        if f.name != "model"
    }
    with atomic_file(out / "summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2))
    print_fn(result.summary_line())
    return result


def config_from_args(args, model_config: dict[str, Any] | None) -> ClassifyConfig:
    """`ClassifyConfig` from the parsed `keras-gpt train --task classify` flags."""
    if not args.csv:
        raise ValueError("--task classify needs --csv FILE (with a header row).")
    return ClassifyConfig(
        csv=args.csv,
        text_column=args.text_column,
        label_column=args.label_column,
        num_classes=args.num_classes,
        preset=args.preset,
        init_from=args.init_from,
        model_config=model_config,
        sequence_length=args.context_length,
        batch_size=args.batch_size,
        epochs=args.epochs,
        learning_rate=(
            DEFAULT_LEARNING_RATE if args.learning_rate is None else args.learning_rate
        ),
        weight_decay=args.weight_decay,
        train_last_block_only=args.train_last_block_only,
        lora_rank=args.lora_rank,
        seed=args.seed,
        output_dir=args.output_dir or ClassifyConfig.output_dir,
        overwrite=args.overwrite,
        jit_compile={"auto": "auto", "true": True, "false": False}[args.jit_compile],
        dtype_policy=args.dtype_policy,
    )
