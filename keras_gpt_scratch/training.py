"""The training recipe: `keras-gpt train` and `keras-gpt evaluate` in Python.

`train(TrainConfig(...))` pretrains (or fine-tunes) a `GPTCausalLM` with plain
`model.fit` on the sliding-window `tf.data` pipeline: AdamW with linear warmup
and cosine decay, gradient clipping, validation every epoch, best/last
checkpoints saved atomically as presets and `.keras` files, a `RunBackup`
so that a killed run resumes where its last completed epoch ended, a CSV log,
optional TensorBoard, a text sample after every epoch and a loss plot.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from keras_gpt_scratch import distribute, lora
from keras_gpt_scratch.backup import RunBackup, agree_on_epoch, backed_up_epochs
from keras_gpt_scratch.data import corpora
from keras_gpt_scratch.data.sliding_window import create_dataset, num_windows
from keras_gpt_scratch.io_utils import atomic_file
from keras_gpt_scratch.losses import CrossEntropy
from keras_gpt_scratch.models import gpt_presets
from keras_gpt_scratch.models.gpt_backbone import BOOK_CONFIG_KEYS, GPTBackbone
from keras_gpt_scratch.models.gpt_causal_lm import NO_WEIGHT_DECAY, GPTCausalLM
from keras_gpt_scratch.models.gpt_causal_lm_preprocessor import (
    GPTCausalLMPreprocessor,
)
from keras_gpt_scratch.optimizers import TorchAdamW
from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer

CORPORA = ("tinyshakespeare", "verdict")
# Settings added after runs were first recorded, with the value those runs
# had, so that such a run still resumes (and only under that value).
ADDED_SETTINGS = {"dtype_policy": "float32"}
# Mixed policies keep the variables in float32, so checkpoints and presets
# are the same either way; pure bfloat16/float16 variables would not be.
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
SAMPLE_PROMPTS = {"tinyshakespeare": "ROMEO:", "verdict": "Every effort moves you"}
# Settings that change what a run computes: a rerun with other values in the
# same output directory is another run, not a resumption.
RUN_IDENTITY_EXCLUDES = {
    "resume",
    "overwrite",
    "verbose",
    "tensorboard",
    "strategy",
    "collective_timeout",
}


@dataclasses.dataclass
class TrainConfig:
    """Everything `train()` needs; the CLI flags map one-to-one onto fields.

    Args:
        preset: architecture preset to train from scratch (fresh weights).
        init_from: a preset to fine-tune from instead (built-in name, preset
            directory or `hf://` handle); its weights are loaded.
        model_config: a dict of `GPTBackbone` arguments, or the book's
            `GPT_CONFIG` keys, overriding `preset`.
        corpus: `"tinyshakespeare"` or `"verdict"`; ignored with `text_files`.
        text_files: user text files, joined with `<|endoftext|>`; the last
            `validation_fraction` of the text is held out.
        context_length: window length; defaults to the model's context length.
        stride: distance between window starts; defaults to `context_length`.
        batch_size, epochs: as in `fit`.
        steps: optional total number of training steps (overrides `epochs`).
        learning_rate, min_learning_rate, warmup_steps: peak learning rate,
            the floor the cosine decays to, and linear warmup steps (default:
            5% of training).
        lr_schedule: `"cosine"` (warmup, then cosine decay) or `"constant"`
            (the book's chapter-5 setting).
        weight_decay: AdamW decay (never on LayerNorm, biases, embeddings).
        adam_epsilon: AdamW's epsilon, placed as PyTorch places it (the
            optimizer is `TorchAdamW`, the book's `torch.optim.AdamW`).
        clipnorm: global gradient-norm clip; 0 or None turns it off.
        dropout: overrides the preset's dropout when set.
        seed: seeds weights, shuffling and sampling.
        output_dir: where checkpoints, logs and the plot go.
        resume, overwrite: what to do with an output directory that holds a
            run (see `train`).
        strategy: a `tf.distribute` strategy or its name (`"mirrored"`,
            `"multi-worker"` with `TF_CONFIG`, `"tpu"`); `batch_size` is the
            global batch, split across replicas.
        gradient_accumulation_steps: apply the averaged gradients of this
            many steps at once, for a larger effective batch.
        collective_timeout: seconds a multi-worker collective may wait for a
            peer before the run fails (instead of hanging on a dead worker).
        lora_rank: fine-tune only LoRA adapters of this rank (on the query
            and value projections), usually with `init_from`; they are saved
            as `adapter.lora.h5` in `output_dir` after every epoch.
        dtype_policy: `"float32"`, `"mixed_bfloat16"` or `"mixed_float16"`
            (with loss scaling), set as Keras' global policy while the run
            builds and trains the model; `None` keeps the current global
            policy. Weights stay float32, and the saved presets load in the
            loading process's policy (float32 by default); a run resumes
            only under the policy it started with.
    """

    preset: str = "gpt_tiny"
    init_from: str | None = None
    model_config: dict[str, Any] | None = None
    corpus: str = "tinyshakespeare"
    text_files: list[str] | None = None
    validation_fraction: float = 0.1
    context_length: int | None = None
    stride: int | None = None
    batch_size: int = 16
    epochs: int = 6
    steps: int | None = None
    learning_rate: float = 2e-3
    min_learning_rate: float = 2e-4
    lr_schedule: str = "cosine"
    warmup_steps: int | None = None
    weight_decay: float = 0.1
    adam_epsilon: float = 1e-8
    clipnorm: float = 1.0
    dropout: float | None = None
    seed: int = 123
    output_dir: str = "runs/gpt_tiny"
    resume: bool = False
    overwrite: bool = False
    tensorboard: bool = False
    sample_prompt: str | None = None
    sample_tokens: int = 40
    jit_compile: bool | str = "auto"
    verbose: int | str = "auto"
    strategy: Any = None
    gradient_accumulation_steps: int | None = None
    collective_timeout: float | None = 300.0
    lora_rank: int | None = None
    dtype_policy: str | None = None

    def identity(self) -> dict[str, Any]:
        identity = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in RUN_IDENTITY_EXCLUDES
        }
        # The policy the run computes in, however it was chosen.
        identity["dtype_policy"] = self.dtype_policy or keras.config.dtype_policy().name
        return identity


# === Corpora and data ===


def load_corpus_splits(config: TrainConfig) -> tuple[str, str]:
    """(train text, validation text) for the configured corpus."""
    if config.text_files:
        text = corpora.load_text_files(config.text_files)
        return _fraction_split(text, config.validation_fraction)
    if config.corpus == "tinyshakespeare":
        return (
            corpora.load_tiny_shakespeare("train"),
            corpora.load_tiny_shakespeare("validation"),
        )
    if config.corpus == "verdict":
        # The book's 90/10 character split.
        return _fraction_split(corpora.load_the_verdict(), 0.1)
    raise ValueError(
        f"Unknown corpus {config.corpus!r}. Known corpora: {', '.join(CORPORA)}; "
        "or pass text files (--text-files a.txt b.txt)."
    )


def _fraction_split(text: str, validation_fraction: float) -> tuple[str, str]:
    if not 0 < validation_fraction < 1:
        raise ValueError(
            f"validation_fraction must be in (0, 1), got {validation_fraction}."
        )
    cut = int(len(text) * (1 - validation_fraction))
    return text[:cut], text[cut:]


def encode(tokenizer: GPTTokenizer, text: str) -> np.ndarray:
    # "all": the <|endoftext|> that load_text_files puts between documents
    # must become id 50256, not seven plain-text tokens.
    return np.asarray(tokenizer.encode(text, allowed_special="all"), dtype="int32")


# === Model ===


def build_model(config: TrainConfig) -> GPTCausalLM:
    """The model to train: fresh from a preset/config, or loaded for fine-tuning."""
    overrides = {} if config.dropout is None else {"dropout": config.dropout}
    if config.init_from:
        lm = GPTCausalLM.from_preset(config.init_from)
        if overrides:
            # Rebuild with the new dropout, keeping the loaded weights.
            backbone = GPTBackbone.from_config(
                {**lm.backbone.get_config(), **overrides}
            )
            backbone.set_weights(lm.backbone.get_weights())
            lm = GPTCausalLM(backbone, lm.preprocessor)
        return lm
    if config.model_config:
        cfg = dict(config.model_config)
        if set(cfg) & (set(BOOK_CONFIG_KEYS) - {"qkv_bias"}):
            backbone = GPTBackbone.from_book_config(cfg, **overrides)
        else:
            backbone = GPTBackbone(**{**cfg, **overrides})
    else:
        spec = gpt_presets.builtin_presets().get(config.preset)
        if spec is None:
            raise gpt_presets.unknown_preset_error(config.preset)
        backbone = GPTBackbone(**{**spec["backbone"], **overrides})
    preprocessor = GPTCausalLMPreprocessor(
        GPTTokenizer(), sequence_length=backbone.max_sequence_length
    )
    return GPTCausalLM(backbone, preprocessor)


def make_schedule(
    config: TrainConfig, total_steps: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup from 0 to the peak, then cosine decay to the floor."""
    warmup = config.warmup_steps
    if warmup is None:
        warmup = max(1, int(0.05 * total_steps))
    warmup = min(warmup, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup, 1),
        alpha=config.min_learning_rate / config.learning_rate,
        warmup_target=config.learning_rate,
        warmup_steps=warmup,
    )


def make_optimizer(config: TrainConfig, total_steps: int) -> keras.Optimizer:
    accumulate = config.gradient_accumulation_steps
    if accumulate is not None and accumulate < 2:
        raise ValueError(
            f"gradient_accumulation_steps must be 2 or more (or unset); got {accumulate}."
        )
    # With accumulation the schedule advances once per applied update.
    updates = total_steps // accumulate if accumulate else total_steps
    if config.lr_schedule == "constant":
        learning_rate = config.learning_rate
    elif config.lr_schedule == "cosine":
        learning_rate = make_schedule(config, max(updates, 1))
    else:
        raise ValueError(
            f"Unknown lr_schedule {config.lr_schedule!r}; use 'cosine' or 'constant'."
        )
    optimizer = TorchAdamW(
        learning_rate=learning_rate,
        weight_decay=config.weight_decay,
        epsilon=config.adam_epsilon,
        global_clipnorm=config.clipnorm or None,
        gradient_accumulation_steps=accumulate,
    )
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer


# === Callbacks ===


class PresetCheckpoint(keras.callbacks.Callback):
    """Save `last` every epoch and `best` on a new best validation loss.

    Each is a preset directory (for `from_preset`) plus a `.keras` file; both
    are written to a temporary name and renamed, so a kill mid-save never
    leaves a half-written checkpoint in place of a good one.
    """

    def __init__(self, output_dir: Path, best: float = math.inf):
        super().__init__()
        self.output_dir = output_dir
        self.best = best

    def _save(self, name):
        self.model.save_to_preset(self.output_dir / name)
        self.model.save(self.output_dir / f"{name}.keras")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._save("last")
        val = logs.get("val_loss")
        if val is not None and val < self.best:
            self.best = val
            self._save("best")


class LossHistory(keras.callbacks.Callback):
    """Per-step training loss against tokens seen, and validation per epoch.

    Keras reports the running mean of the epoch's loss; the loss of step k is
    recovered exactly as `k * mean_k - (k - 1) * mean_{k-1}`. The history is
    saved every epoch so that a resumed run continues the curve.
    """

    def __init__(self, path: Path, tokens_per_step: int, log_every: int = 10):
        super().__init__()
        self.path = path
        self.tokens_per_step = tokens_per_step
        self.log_every = log_every
        self.state = {"train": [], "validation": [], "epochs": [], "step": 0}
        if path.exists():
            self.state = json.loads(path.read_text())
        self._prev_mean = 0.0
        self._window: list[float] = []

    def truncate(self, epochs: int) -> None:
        """Forget everything after the first `epochs` epochs (for a resume)."""
        kept = self.state["epochs"][:epochs]
        tokens = kept[-1]["tokens"] if kept else 0
        self.state = {
            "train": [p for p in self.state["train"] if p[0] <= tokens],
            "validation": [p for p in self.state["validation"] if p[0] <= tokens],
            "epochs": kept,
            "step": tokens // self.tokens_per_step,
        }

    def on_epoch_begin(self, epoch, logs=None):
        self._prev_mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float((logs or {}).get("loss", math.nan))
        loss = (batch + 1) * mean - batch * self._prev_mean
        self._prev_mean = mean
        self.state["step"] += 1
        self._window.append(loss)
        if len(self._window) == self.log_every:
            tokens = self.state["step"] * self.tokens_per_step
            self.state["train"].append([tokens, float(np.mean(self._window))])
            self._window = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        tokens = self.state["step"] * self.tokens_per_step
        entry = {"epoch": epoch + 1, "tokens": tokens, "loss": logs.get("loss")}
        if "val_loss" in logs:
            entry["val_loss"] = logs["val_loss"]
            self.state["validation"].append([tokens, logs["val_loss"]])
        self.state["epochs"].append(entry)
        with atomic_file(self.path) as tmp:
            Path(tmp).write_text(json.dumps(self.state))


def truncate_csv_log(path: Path, epochs: int) -> None:
    """Keep the header and the rows of the first `epochs` epochs of a CSV log."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) < epochs]
    if kept != rows:
        with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)


class TextSample(keras.callbacks.Callback):
    """Print a sampled continuation of a fixed prompt after every epoch."""

    def __init__(self, prompt: str, max_new_tokens: int, print_fn=print):
        super().__init__()
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.print_fn = print_fn

    def on_epoch_end(self, epoch, logs=None):
        text = sample_text(self.model, self.prompt, self.max_new_tokens)
        self.print_fn(f"\n--- sample after epoch {epoch + 1} ---\n{text}\n---")


def sample_text(lm: GPTCausalLM, prompt: str, max_new_tokens: int) -> str:
    tokenizer = lm.preprocessor.tokenizer
    n_prompt = len(tokenizer.encode(prompt)) + 1  # + the start token
    max_length = min(n_prompt + max_new_tokens, lm.backbone.max_sequence_length)
    # No stop token: an early model often predicts <|endoftext|> at once.
    return str(lm.generate(prompt, max_length=max_length, stop_token_ids=None))


def plot_losses(history: dict, path: Path) -> None:
    """The book's `plot_losses`: train and validation loss against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if history["train"]:
        tokens, loss = zip(*history["train"], strict=True)
        ax.plot(tokens, loss, label="Training loss", linewidth=1)
    if history["validation"]:
        tokens, loss = zip(*history["validation"], strict=True)
        ax.plot(tokens, loss, "o-", label="Validation loss")
    ax.set_xlabel("Tokens seen")
    ax.set_ylabel("Loss (nats per token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# === The run ===


@dataclasses.dataclass
class TrainResult:
    train_loss: float
    val_loss: float | None
    val_nats_per_char: float | None
    tokens_per_second: float
    wall_seconds: float
    epochs_run: int
    output_dir: str
    model: GPTCausalLM | None = None

    def summary_line(self) -> str:
        val = (
            f"val loss {self.val_loss:.4f} ({self.val_nats_per_char:.4f} nats/char)"
            if self.val_loss is not None
            else "no validation"
        )
        return (
            f"done: train loss {self.train_loss:.4f}, {val}, "
            f"{self.tokens_per_second:,.0f} tokens/s, {self.wall_seconds:,.0f} s, "
            f"checkpoints in {self.output_dir}"
        )


def check_output_dir(config: TrainConfig, out: Path) -> bool:
    """Return True when this call resumes an interrupted run in `out`.

    A directory holding another run (different settings) or a finished run is
    refused unless `overwrite`; an interrupted run with the same settings is
    resumed (the same command continues it).
    """
    run_file = out / "run.json"
    if not run_file.exists():
        if out.exists() and any(out.iterdir()) and not config.overwrite:
            raise FileExistsError(
                f"Output directory {out} is not empty and holds no run. Choose "
                "another --output-dir, or pass --overwrite."
            )
        return False
    if config.overwrite:
        shutil.rmtree(out)
        return False
    previous = {**ADDED_SETTINGS, **json.loads(run_file.read_text())}
    if previous != json.loads(json.dumps(config.identity())):
        diff = sorted(
            k
            for k in set(previous) | set(config.identity())
            if previous.get(k) != config.identity().get(k)
        )
        raise FileExistsError(
            f"Output directory {out} holds another run (settings differ: "
            f"{', '.join(diff)}). Choose another --output-dir, or pass "
            "--overwrite to replace it."
        )
    if (out / "summary.json").exists() and not config.resume:
        raise FileExistsError(
            f"Output directory {out} holds a finished run. Choose another "
            "--output-dir, or pass --overwrite to train again."
        )
    return True


@contextlib.contextmanager
def dtype_policy_scope(name: str | None) -> Iterator[None]:
    """Make `name` Keras' global dtype policy inside the block, then restore it.

    Everything built inside (the model, LoRA adapters, `compile`'s loss
    scaling for mixed_float16) takes the policy; `None` changes nothing.
    """
    if name is None:
        yield
        return
    if name not in DTYPE_POLICIES:
        raise ValueError(
            f"Unknown dtype policy {name!r} for training. Known policies: "
            f"{', '.join(DTYPE_POLICIES)} (mixed_bfloat16 is fastest on GPUs "
            "and on CPUs with AVX512-BF16 or AMX)."
        )
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def train(config: TrainConfig, print_fn=print) -> TrainResult:
    """Train a GPT with `model.fit`; see `TrainConfig` for the settings.

    Bad settings (unknown preset, corpus or dtype policy, a context longer
    than the model's, more windows per batch than the data has, an output
    directory holding another run) fail here, before any training step.
    """
    with dtype_policy_scope(config.dtype_policy):
        return _train(config, print_fn)


def _train(config: TrainConfig, print_fn) -> TrainResult:
    for name in ("batch_size", "epochs"):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}.")
    if config.steps is not None and config.steps <= 0:
        raise ValueError(f"steps must be positive, got {config.steps}.")
    if config.corpus not in CORPORA and not config.text_files:
        raise ValueError(
            f"Unknown corpus {config.corpus!r}. Known corpora: "
            f"{', '.join(CORPORA)}; or pass text files."
        )
    if (
        not config.init_from
        and not config.model_config
        and config.preset not in gpt_presets.builtin_presets()
    ):
        raise gpt_presets.unknown_preset_error(config.preset)

    strategy = distribute.make_strategy(config.strategy, config.collective_timeout)
    distribute.check_global_batch(config.batch_size, strategy)
    chief, task = distribute.worker_id(strategy)
    out = Path(config.output_dir)
    # Only the chief writes the run's files; other workers keep their own
    # backup (to resume in step) and write the rest to a scratch directory.
    backup = out / ("backup" if chief else f"backup-worker{task}")
    resuming = check_output_dir(config, out) if chief else False
    if not chief:
        out = Path(tempfile.mkdtemp(prefix=f"keras-gpt-worker{task}-"))
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        lm = build_model(config)
        if config.lora_rank is not None:
            # LoRA: the model is frozen; only rank-r adapters train.
            lm.backbone.enable_lora(config.lora_rank)
    backbone = lm.backbone
    context = config.context_length or backbone.max_sequence_length
    if context > backbone.max_sequence_length:
        raise ValueError(
            f"context_length {context} is longer than the model's context length "
            f"({backbone.max_sequence_length}). Use --context-length "
            f"{backbone.max_sequence_length} or less."
        )
    stride = config.stride or context

    train_text, val_text = load_corpus_splits(config)
    tokenizer = lm.preprocessor.tokenizer
    train_ids, val_ids = encode(tokenizer, train_text), encode(tokenizer, val_text)
    windows = num_windows(len(train_ids), context, stride)
    if config.batch_size > windows:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the {windows} "
            f"training windows (context {context}, stride {stride}, "
            f"{len(train_ids)} tokens). Use a smaller --batch-size or --stride."
        )
    steps_per_epoch = windows // config.batch_size
    epochs = config.epochs
    if config.steps:
        steps_per_epoch = min(steps_per_epoch, config.steps)
        epochs = math.ceil(config.steps / steps_per_epoch)
    total_steps = steps_per_epoch * epochs

    train_ds = create_dataset(
        train_ids,
        context_length=context,
        stride=stride,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        drop_remainder=True,
    ).repeat()
    val_ds = None
    if len(val_ids) > context:
        val_batch = min(config.batch_size, num_windows(len(val_ids), context, context))
        val_ds = create_dataset(
            val_ids,
            context_length=context,
            stride=context,
            batch_size=val_batch,
            shuffle=False,
            drop_remainder=False,
        )

    with strategy.scope():
        lm.compile(
            optimizer=make_optimizer(config, total_steps),
            loss=CrossEntropy(),
            weighted_metrics=[],
            sampler=keras_hub.samplers.TopKSampler(k=40, seed=config.seed),
            jit_compile=config.jit_compile,
        )

    # Every worker must restore the same epoch (one collective decides).
    restore_epoch = agree_on_epoch(backed_up_epochs(backup), epochs, strategy)
    resuming = resuming or restore_epoch > 0
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        with atomic_file(out / "run.json") as tmp:
            Path(tmp).write_text(json.dumps(config.identity(), indent=2))
    history = LossHistory(out / "history.json", config.batch_size * context)
    if resuming:
        # Logs written after the restored backup (a kill between the two,
        # or a peer that lags an epoch) would otherwise repeat epochs.
        history.truncate(restore_epoch)
        truncate_csv_log(out / "log.csv", restore_epoch)
    best = min(
        (e["val_loss"] for e in history.state["epochs"] if "val_loss" in e),
        default=math.inf,
    )
    callbacks = [
        history,
        keras.callbacks.CSVLogger(str(out / "log.csv"), append=resuming),
        keras.callbacks.TerminateOnNaN(),
        # After the logs, so that a backup never runs ahead of them.
        RunBackup(backup, restore_epoch),
        PresetCheckpoint(out, best=best),
    ]
    if config.lora_rank is not None:
        # After RunBackup: on resume it puts the adapters back.
        callbacks.append(lora.AdapterCheckpoint(backbone, out / lora.ADAPTER_FILENAME))
    prompt = config.sample_prompt or SAMPLE_PROMPTS.get(config.corpus, "The")
    if config.sample_tokens > 0 and chief:
        callbacks.append(TextSample(prompt, config.sample_tokens, print_fn))
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "tensorboard")))
    if resuming:
        print_fn(f"Resuming the interrupted run in {out}.")

    start = time.perf_counter()
    steps_before = history.state["step"]
    try:
        fit = lm.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            shuffle=False,  # create_dataset already shuffles, with the seed
            verbose=config.verbose if chief else 0,
        )
    except (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.CancelledError,
        tf.errors.AbortedError,
    ) as e:
        if strategy.num_replicas_in_sync == 1 and not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            raise
        raise RuntimeError(
            "A worker of the distributed run stopped or stopped answering "
            f"({type(e).__name__}). Completed epochs are backed up in {backup}: "
            "restart every worker with the same command to resume."
        ) from e
    wall = time.perf_counter() - start
    if config.lora_rank is not None:
        lora.save_adapters(backbone, out / lora.ADAPTER_FILENAME)
    steps_run = history.state["step"] - steps_before
    plot_losses(history.state, out / "loss.png")

    last = history.state["epochs"][-1] if history.state["epochs"] else {}
    val_loss = last.get("val_loss")
    chars_per_token = len(val_text) / max(len(val_ids), 1)
    result = TrainResult(
        train_loss=float(last.get("loss") or fit.history.get("loss", [math.nan])[-1]),
        val_loss=None if val_loss is None else float(val_loss),
        val_nats_per_char=None
        if val_loss is None
        else float(val_loss) / chars_per_token,
        tokens_per_second=steps_run * config.batch_size * context / max(wall, 1e-9),
        wall_seconds=wall,
        epochs_run=len(history.state["epochs"]),
        output_dir=str(out),
        model=lm,
    )
    summary = {
        f.name: getattr(result, f.name)
        for f in dataclasses.fields(result)
        if f.name != "model"
    }
    if chief:
        with atomic_file(out / "summary.json") as tmp:
            Path(tmp).write_text(json.dumps(summary, indent=2))
        print_fn(result.summary_line())
    else:
        # A non-chief's files were scratch; its backup stays in output_dir.
        shutil.rmtree(out, ignore_errors=True)
        result.output_dir = config.output_dir
    return result


# === Evaluation ===


@dataclasses.dataclass
class EvalResult:
    loss: float
    perplexity: float
    nats_per_char: float
    tokens: int

    def summary_line(self) -> str:
        return (
            f"loss {self.loss:.4f} nats/token, perplexity {self.perplexity:.2f}, "
            f"{self.nats_per_char:.4f} nats/char over {self.tokens:,} tokens"
        )


def evaluate(
    preset: str | GPTCausalLM,
    corpus: str = "tinyshakespeare",
    split: str = "validation",
    text_files: list[str] | None = None,
    context_length: int | None = None,
    batch_size: int = 8,
) -> EvalResult:
    """Loss, perplexity and nats per character of a model on a corpus split.

    The text is cut into non-overlapping windows of `context_length` tokens
    (the last, shorter one included), so every token after the first is
    predicted exactly once.
    """
    lm = preset if isinstance(preset, GPTCausalLM) else GPTCausalLM.from_preset(preset)
    if text_files:
        text = corpora.load_text_files(text_files)
    elif corpus == "tinyshakespeare":
        text = corpora.load_tiny_shakespeare(split)
    elif corpus == "verdict":
        train_text, val_text = _fraction_split(corpora.load_the_verdict(), 0.1)
        text = {
            "train": train_text,
            "validation": val_text,
            "all": train_text + val_text,
        }.get(split)
        if text is None:
            raise ValueError(
                f"The Verdict has splits train, validation and all; got {split!r}."
            )
    else:
        raise ValueError(
            f"Unknown corpus {corpus!r}. Known corpora: {', '.join(CORPORA)}."
        )
    tokenizer = lm.preprocessor.tokenizer if lm.preprocessor else GPTTokenizer()
    ids = encode(tokenizer, text)
    context = context_length or lm.backbone.max_sequence_length
    if context > lm.backbone.max_sequence_length:
        raise ValueError(
            f"context_length {context} is longer than the model's context length "
            f"({lm.backbone.max_sequence_length})."
        )
    total_nats, total_tokens = 0.0, 0
    for start in range(0, len(ids) - 1, context * batch_size):
        chunk = [
            ids[s : s + context + 1]
            for s in range(
                start, min(start + context * batch_size, len(ids) - 1), context
            )
        ]
        longest = max(len(c) for c in chunk)
        x = np.zeros((len(chunk), longest - 1), "int32")
        y = np.zeros_like(x)
        w = np.zeros(x.shape, "float32")
        for i, c in enumerate(chunk):
            x[i, : len(c) - 1], y[i, : len(c) - 1] = c[:-1], c[1:]
            w[i, : len(c) - 1] = 1
        logits = lm({"token_ids": x, "padding_mask": w.astype("int32")})
        nats = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        total_nats += float(tf.reduce_sum(nats * w))
        total_tokens += int(w.sum())
    loss = total_nats / total_tokens
    return EvalResult(
        loss=loss,
        perplexity=math.exp(loss),
        nats_per_char=total_nats / len(text),
        tokens=total_tokens,
    )
