import contextlib
import warnings
from typing import Any

import keras
import keras_hub
import tensorflow as tf
from keras import ops
from keras.src.losses.loss import (
    scale_loss_for_distribution,
    unscale_loss_for_distribution,
)
from keras_hub.models import CausalLM
from keras_hub.src.utils.tensor_utils import any_equal

from keras_gpt_scratch.io_utils import atomic_file
from keras_gpt_scratch.layers.linear import Linear, SyncsInt8Kernels
from keras_gpt_scratch.losses import (
    HEAD_CHUNK_LOGITS,
    CrossEntropy,
    head_cross_entropy,
)
from keras_gpt_scratch.models import gpt_presets
from keras_gpt_scratch.models.gpt_backbone import GPTBackbone
from keras_gpt_scratch.models.gpt_causal_lm_preprocessor import (
    GPTCausalLMPreprocessor,
)
from keras_gpt_scratch.optimizers import TorchAdamW

# Never decay LayerNorm parameters, biases or embeddings (GPT-2 / nanoGPT).
NO_WEIGHT_DECAY = ["bias", "scale", "shift", "embeddings"]
# Prompt positions run per pass when `generate` fills the cache.
PREFILL_CHUNK = 32


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class GPTCausalLM(SyncsInt8Kernels, gpt_presets.PresetMixin, CausalLM):
    """GPT for causal language modeling: the book's `GPTModel` with its head.

    Wraps a `GPTBackbone` and maps its hidden states to next-token logits,
    through the token embedding (tied, GPT-2) or a separate head (the book).
    Like keras_hub's `GPT2CausalLM` it trains with `fit()` and samples with
    `generate()`, using a key/value cache so every new token costs one
    position. Attach a `GPTCausalLMPreprocessor` to work on raw strings.

    Args:
        backbone: a `GPTBackbone`.
        preprocessor: a `GPTCausalLMPreprocessor`, or `None` to feed token ids
            (`{"token_ids", "padding_mask"}`) directly.

    Example:
    ```python
    lm = keras_gpt_scratch.GPTCausalLM.from_preset("gpt_tiny")
    lm.fit(["To be, or not to be, that is the question."], epochs=1)
    lm.compile(sampler="greedy")
    lm.generate("To be", max_length=20)
    ```

    Without a preprocessor:
    ```python
    lm = keras_gpt_scratch.GPTCausalLM(backbone, preprocessor=None)
    x = {"token_ids": np.array([[15496, 11, 995]]),
         "padding_mask": np.array([[1, 1, 1]])}
    logits = lm.predict(x)  # (1, 3, 50257)
    ```
    """

    backbone_cls = GPTBackbone
    preprocessor_cls = GPTCausalLMPreprocessor

    def __init__(
        self,
        backbone: GPTBackbone,
        preprocessor: GPTCausalLMPreprocessor | None = None,
        **kwargs,
    ):
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor

        # === Functional Model ===
        inputs = backbone.input
        hidden_states = backbone(inputs)  # (B, T, C)
        outputs = backbone.token_embedding(hidden_states, reverse=True)  # (B, T, V)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        weighted_metrics="auto",
        sampler="top_k",
        **kwargs,
    ):
        """Configure training and generation, with defaults for pretraining.

        Unlike keras_hub's fine-tuning default (Adam at 2e-5), `"auto"` gives
        AdamW at 4e-4 (`TorchAdamW`: PyTorch's update, as in the book) with
        weight decay 0.1 (not on LayerNorm parameters, biases or
        embeddings) and global gradient clipping at 1.0: a setting
        that trains a GPT from scratch. `loss="auto"` is `CrossEntropy`, the
        same values as Keras' sparse categorical cross-entropy on logits,
        computed faster. Other arguments are keras_hub's
        `CausalLM.compile` arguments, including `sampler`.
        """
        if optimizer == "auto":
            optimizer = TorchAdamW(
                learning_rate=4e-4, weight_decay=0.1, global_clipnorm=1.0
            )
            optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
        if loss == "auto":
            loss = CrossEntropy()
        super().compile(
            optimizer=optimizer,
            loss=loss,
            weighted_metrics=weighted_metrics,
            sampler=sampler,
            **kwargs,
        )

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 averages the first distributed batch with
        # strategy.reduce("MEAN") to build the model symbolically; with
        # MultiWorkerMirroredStrategy and dict inputs that reduce fails. Shapes
        # are all the build needs, so take one replica's batch instead.
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is not None and data_batch is None and strategy is not None:
            for _, _, it in iterator:
                data_batch = keras.tree.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(it),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def preprocess_samples(self, x, y=None, sample_weight=None):
        # Token-id batches (e.g. from `create_dataset`) skip the string
        # preprocessor, so one model trains on both raw text and windows.
        if isinstance(x, dict) and "token_ids" in x:
            return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        return super().preprocess_samples(x, y, sample_weight)

    def get_compile_config(self):
        # keras.Model saves only fit()'s arguments: add the sampler, and the
        # weight-decay exclusions, which AdamW's own config leaves out.
        config = super().get_compile_config()
        if config:
            config["sampler"] = keras_hub.samplers.serialize(self.sampler)
            pattern = getattr(
                self.optimizer, "_exclude_from_weight_decay_pattern", None
            )
            if pattern is not None:
                config["exclude_from_weight_decay"] = sorted(pattern.pattern.split("|"))
        return config

    def compile_from_config(self, config):
        config = dict(config)
        sampler = config.pop("sampler", None)
        exclude = config.pop("exclude_from_weight_decay", None)
        config = keras.saving.deserialize_keras_object(config)
        if sampler is not None:
            config["sampler"] = keras_hub.samplers.deserialize(sampler)
        self.compile(**config)
        if exclude:
            self.optimizer.exclude_from_weight_decay(var_names=exclude)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @classmethod
    def from_book_config(
        cls, config: dict[str, Any], preprocessor=None, **kwargs
    ) -> "GPTCausalLM":
        """Build from the book's config dict (see `GPTBackbone.from_book_config`)."""
        return cls(GPTBackbone.from_book_config(config, **kwargs), preprocessor)

    @classmethod
    def _from_builtin(cls, name, spec, load_weights, **kwargs):
        return cls._task_from_builtin(name, spec, load_weights, **kwargs)

    def quantize(self, mode=None, **kwargs):
        """Keras' `Model.quantize`, e.g. `"int8"`: Dense layers and the
        token embedding (and so the tied head) get int8 weights; LayerNorm
        and the position embedding stay float, without one warning each."""

        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*does not have a `quantize` method implemented"
            )
            super().quantize(mode, **kwargs)

    def save(self, filepath, *args, **kwargs):
        """`keras.Model.save`, written to a temporary file then renamed."""
        with atomic_file(filepath) as tmp:
            super().save(tmp, *args, **kwargs)

    # === Training ===

    @property
    def fused_head_loss(self) -> bool:
        """Train the head and the loss together (default `True`).

        With the default loss (`CrossEntropy`, mean over tokens) and no
        compiled metrics other than `SparseCategoricalAccuracy`, `fit` and
        `evaluate` then run the vocabulary projection, the loss and (in
        training) the projection's gradients in chunks of rows
        (`losses.head_cross_entropy`), so the `(batch, sequence,
        vocabulary_size)` logits are never held whole: `gpt_tiny`'s peak RSS
        in training at batch 16 x 256 fell from 3.4 to 2.3 GB, and is 2.7
        GB with two chunks overlapping (`tools/bench.py`), at the same loss,
        gradients and accuracy. Otherwise, or with this `False`, they run
        the model and then the loss, as Keras does.
        """
        return getattr(self, "_fused_head_loss", True)

    @fused_head_loss.setter
    def fused_head_loss(self, value: bool):
        self._fused_head_loss = bool(value)
        self.train_function = self.test_function = None

    @property
    def interleaved_halves(self) -> bool:
        """Train each batch as two independent halves (default `True`).

        With the fused head + loss (`fused_head_loss`) and without whole-step
        XLA, `fit` runs the forward and backward passes of the batch's first
        and second halves as two independent chains in one step, and sums
        their gradients: the same loss and gradients up to float32 rounding.
        TensorFlow's executor then always has two independent operations to
        run on its inter-op threads, so one half's memory-bound work and
        matrix products overlap the other's. On 2 Intel Xeon cores GPT-2
        124M steps (batch 8) took a median of about 6% less time; `gpt_tiny`
        (batch 16) changed within the noise (README, Measured results). Each
        half's head runs its chunks one at a time, and the two share one
        budget of logits (`losses.HEAD_CHUNK_LOGITS`), so the halves cost no
        peak memory: `gpt_tiny`'s training RSS is 2.4 GB with them.
        Batches known to hold one row, and steps under whole-step XLA or
        with an activity regularizer in the backbone, run whole.
        """
        return getattr(self, "_interleaved_halves", True)

    @interleaved_halves.setter
    def interleaved_halves(self, value: bool):
        self._interleaved_halves = bool(value)
        self.train_function = None

    def _fused_step_metrics(self, y, sample_weight):
        """Accuracy metrics to update, as `[(metric, weighted)]`, when the
        fused train step computes the same thing as Keras'; else None."""
        embedding = self.backbone.token_embedding
        cls = type(self)
        if (
            not self.fused_head_loss
            # Exactly our loss: a subclass may compute something else.
            or type(self.loss) is not CrossEntropy
            or self.loss.reduction != "sum_over_batch_size"
            or getattr(self._compile_loss, "_user_loss_weights", 0) is not None
            # A subclass may change the forward pass, the loss or the metrics.
            or cls.__init__ is not GPTCausalLM.__init__
            or cls.call is not GPTCausalLM.call
            or cls.compute_loss is not CausalLM.compute_loss
            or cls.compute_metrics is not CausalLM.compute_metrics
            or getattr(embedding.dtype_policy, "quantization_mode", None)
            or getattr(embedding, "lora_enabled", False)
            # Keras' step would regularize the logits too; ours has none.
            or embedding.activity_regularizer is not None
            # float16 needs the loss scale inside the head's gradient.
            or embedding.compute_dtype == "float16"
            or not isinstance(y, tf.Tensor)
            or y.shape.rank != 2
            or (sample_weight is not None and sample_weight.shape.rank != 2)
        ):
            return None
        found = []
        compiled = self._compile_metrics
        if compiled is not None:
            if not getattr(compiled, "built", False):
                # Keras builds them in their first update, which the fused
                # step does not make; build them from the logits' shape.
                logits = keras.KerasTensor(
                    (*y.shape, embedding.input_dim), dtype="float32"
                )
                compiled.build(keras.KerasTensor(y.shape, y.dtype.name), logits)
            groups = (
                (getattr(compiled, "_flat_metrics", None), False),
                (getattr(compiled, "_flat_weighted_metrics", None), True),
            )
            for group, weighted in groups:
                if group is None:
                    return None
                for entry in group:
                    for metric in getattr(entry, "metrics", [entry] if entry else []):
                        if type(metric) is not keras.metrics.SparseCategoricalAccuracy:
                            return None
                        found.append((metric, weighted))
        return found

    def _fused_loss(self, x, y, sample_weight, metrics, training, halves=False):
        """Keras' loss (and accuracy hits) for a batch, through the fused head.

        With `halves`, the batch's two halves run as independent chains (see
        `interleaved_halves`) and their loss sums and hits are joined.
        """
        embedding = self.backbone.token_embedding
        if sample_weight is None:
            weights = tf.ones_like(y, "float32")
        else:
            # (B, T), or (B, 1) for whole sequences, as Keras broadcasts them.
            sample_weight = tf.cast(sample_weight, "float32")
            weights = tf.broadcast_to(sample_weight, tf.shape(y))
        if embedding.tie_weights:
            table = embedding.embeddings  # (V, C)
        else:
            table = embedding.reverse_embeddings  # (C, V)
        table = ops.cast(table, embedding.compute_dtype)
        rows = y.shape[0] if y.shape[0] is not None else tf.shape(y)[0]
        cuts = [0, rows // 2, rows] if halves else [0, rows]
        sums, hit_parts = [], []
        for start, end in zip(cuts[:-1], cuts[1:], strict=True):
            part = tf.nest.map_structure(
                lambda t, s=start, e=end: None if t is None else t[s:e], x
            )
            hidden_states = self.backbone(part, training=training)  # (b, T, C)
            hidden_states = ops.cast(hidden_states, embedding.compute_dtype)
            out = head_cross_entropy(
                ops.reshape(hidden_states, (-1, ops.shape(hidden_states)[-1])),
                table,
                ops.reshape(y[start:end], (-1,)),
                ops.reshape(weights[start:end], (-1,)),
                gradients=training,
                table_gradient=embedding.trainable,
                hits=bool(metrics),
                transposed_table=not embedding.tie_weights,
                # The halves run at once, so they share one budget of logits
                # and neither overlaps its own chunks: with a whole budget
                # each, gpt_tiny's peak RSS reached 2.8-3.2 GB (keras_hub's
                # 2.95), with half 2.4, at the same speed.
                chunk_logits=HEAD_CHUNK_LOGITS // (len(cuts) - 1),
                overlap_chunks=not halves,
            )
            part_sum, part_hits = out if metrics else (out, None)
            sums.append(part_sum)
            hit_parts.append(part_hits)
        loss_sum = tf.add_n(sums)
        hits = tf.concat(hit_parts, axis=0) if metrics else None
        # As Trainer.compute_loss, with the "sum_over_batch_size" reduction.
        loss = tf.math.divide_no_nan(loss_sum, ops.cast(ops.size(y), "float32"))
        loss = scale_loss_for_distribution(loss)
        for extra in self.losses:
            loss += self._aggregate_additional_loss(extra)
        self._loss_tracker.update_state(
            unscale_loss_for_distribution(loss),
            sample_weight=tf.shape(
                next(i for i in tf.nest.flatten(x) if i is not None)
            )[0],
        )
        if metrics:
            hits = ops.reshape(hits, ops.shape(y))  # (B, T)
            for metric, weighted in metrics:
                # What SparseCategoricalAccuracy.update_state does with logits.
                keras.metrics.Mean.update_state(
                    metric, hits, sample_weight=sample_weight if weighted else None
                )
        return loss

    def train_step(self, data):
        """Keras' TensorFlow `train_step`, with the head and loss fused.

        See `fused_head_loss`; where it does not apply this is Keras' own.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        metrics = self._fused_step_metrics(y, sample_weight)
        if metrics is None:
            return super().train_step(data)
        halves = (
            self.interleaved_halves
            and not self.jit_compile  # XLA schedules a compiled step itself
            and y.shape[0] != 1
            # Keras divides activity losses by each call's batch size.
            and not any(
                layer.activity_regularizer is not None
                for layer in self.backbone._flatten_layers()
            )
        )
        with tf.GradientTape() as tape:
            loss = self._fused_loss(
                x, y, sample_weight, metrics, training=True, halves=halves
            )
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)
        if self.trainable_weights:
            trainable_weights = self.trainable_weights
            gradients = tape.gradient(loss, trainable_weights)
            self._apply_gradients(gradients, trainable_weights)
        else:
            warnings.warn(
                "The model does not have any trainable weights.", stacklevel=2
            )
        return self.get_metrics_result()

    def test_step(self, data):
        """Keras' TensorFlow `test_step`, with the head and loss fused.

        See `fused_head_loss`; where it does not apply this is Keras' own.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        metrics = self._fused_step_metrics(y, sample_weight)
        if metrics is None:
            return super().test_step(data)
        self._fused_loss(x, y, sample_weight, metrics, training=False)
        return self.get_metrics_result()

    @property
    def optimizer_jit_compile(self) -> bool:
        """XLA for the optimizer's update in `fit` (see `_apply_gradients`).

        Read when `fit` traces its step: set it before the first `fit`, or
        call `compile()` again after changing it.
        """
        return getattr(self, "_optimizer_jit_compile", True)

    @optimizer_jit_compile.setter
    def optimizer_jit_compile(self, value: bool):
        self._optimizer_jit_compile = bool(value)

    def _apply_gradients(self, gradients, trainable_weights):
        """`optimizer.apply`, compiled as one XLA program where it can be.

        Keras runs an optimizer's update op by op: for AdamW about ten
        elementwise passes over every weight and its moments, 124M weights
        for GPT-2 small, running alongside the backward pass's products on
        the same cores. XLA fuses them into one pass per weight. On 2 Intel
        Xeon cores, GPT-2 124M `fit` steps with Keras AdamW took a median of
        14% less time with it (README, Measured results). Under a
        distribution strategy (the update all-reduces and merges across
        replicas) and for sparse gradients (an untied embedding's), Keras'
        own update runs.
        """
        optimizer = self.optimizer
        dense = all(g is None or isinstance(g, tf.Tensor) for g in gradients)
        if not self.optimizer_jit_compile or not dense or tf.distribute.has_strategy():
            optimizer.apply_gradients(zip(gradients, trainable_weights, strict=True))
            return
        if not optimizer.built:
            optimizer.build(trainable_weights)

        def optimizer_update(gradients):
            optimizer.apply(gradients, trainable_weights)
            return tf.constant(0)

        # Straight-line update code: AutoGraph has nothing to convert.
        tf.function(optimizer_update, jit_compile=True, autograph=False)(gradients)

    # === Generation ===

    def generate(
        self,
        inputs,
        max_length: int | None = None,
        stop_token_ids="auto",
        strip_prompt: bool = False,
    ):
        """Generate text, as keras_hub's `CausalLM.generate`.

        Args:
            inputs: a string, a list of strings or a `tf.data.Dataset` of
                strings (with a preprocessor), or a dict of `"token_ids"` and
                `"padding_mask"` (without one). Prompts of different lengths
                may share a batch.
            max_length: total length of prompt plus generated tokens.
                Defaults to the preprocessor's `sequence_length`. It may not
                exceed the model's context length (`max_sequence_length`);
                for longer texts use `keras_gpt_scratch.generate_text`, whose
                window slides over the context like the book's `generate`.
            stop_token_ids: `"auto"` (`<|endoftext|>`), `None` (always run to
                `max_length`) or a list of ids. Each row stops on its own.
                With a dict of token ids the result is token ids too, even
                when a preprocessor is attached.
            strip_prompt: return only the generated part.

        The sampler comes from `compile(sampler=...)`. The compiled function
        is reused by later calls with the same batch size and `max_length`;
        one more trace relaxes it to any shape.
        """
        limit = self.backbone.max_sequence_length
        length = max_length
        if length is None and self.preprocessor is not None:
            length = self.preprocessor.sequence_length
        if isinstance(inputs, dict) and "token_ids" in inputs:
            length = ops.shape(inputs["token_ids"])[-1]
        if length is not None and length > limit:
            raise ValueError(
                f"max_length {length} (prompt plus new tokens) exceeds the "
                f"model's context length of {limit} tokens. Ask for at most "
                f"{limit}, or use keras_gpt_scratch.generate_text(..., "
                "context_size=...) to slide a window over longer texts."
            )
        preprocessor = self.preprocessor
        if isinstance(inputs, dict) and "token_ids" in inputs and preprocessor:
            # Token ids in, token ids out, even with a preprocessor attached.
            if stop_token_ids == "auto":
                stop_token_ids = [preprocessor.tokenizer.end_token_id]
            self.preprocessor = None
        try:
            return super().generate(
                inputs,
                max_length=max_length,
                stop_token_ids=stop_token_ids,
                strip_prompt=strip_prompt,
            )
        finally:
            self.preprocessor = preprocessor

    def make_generate_function(self):
        """Compile `generate_step` once; `reduce_retracing` keeps it at one
        more trace when the batch size or `max_length` change. The loops are
        explicit `while_loop`s, so AutoGraph, which took about half of the
        first call's tracing, is off."""
        key = self._trace_key()
        if self.generate_function is None or self._generate_key != key:
            self.generate_function = tf.function(
                self.generate_step,
                jit_compile=self.generate_jit_compile,
                reduce_retracing=True,
                autograph=False,
            )
            self._generate_key = key
        return self.generate_function

    _generate_key = None

    def _trace_key(self) -> tuple:
        """What a traced generate or stream function depends on besides the
        weights' values: XLA, and each layer's int8 and LoRA state (set
        while tracing), which `quantize` or `enable_lora`, here or on the
        backbone, may change after a first trace."""
        layers = self.backbone._flatten_layers(include_self=False)
        return (self.generate_jit_compile,) + tuple(
            (layer.name, layer.quantization_mode, getattr(layer, "lora_enabled", False))
            for layer in layers
        )

    @property
    def generate_jit_compile(self) -> bool:
        """XLA for generation: measured faster on CPU (see tools/bench.py)."""
        return getattr(self, "_generate_jit_compile", True)

    @generate_jit_compile.setter
    def generate_jit_compile(self, value: bool):
        self._generate_jit_compile = bool(value)

    def score(
        self,
        token_ids,
        padding_mask=None,
        scoring_mode: str = "logits",
        layer_intercept_fn=None,
        target_ids=None,
    ):
        """Per-token scores of given ids, as keras_hub's `GPT2CausalLM.score`.

        Args:
            token_ids: int tensor `(batch, sequence)`.
            padding_mask: `(batch, sequence)` mask of real tokens; all ones
                when omitted.
            scoring_mode: `"logits"` for `(batch, sequence, vocabulary)`
                logits, or `"loss"` for the per-token cross-entropy against
                `target_ids`, `(batch, sequence)`.
            layer_intercept_fn: optional `fn(x, i)` applied to the embeddings
                (`i = -1`) and after every transformer block (`i = 0, 1, ...`);
                must return a tensor of the same shape.
            target_ids: int tensor `(batch, sequence)`, needed for `"loss"`.
        """
        if scoring_mode not in ("logits", "loss"):
            raise ValueError(
                f'scoring_mode must be "logits" or "loss"; got {scoring_mode!r}.'
            )
        if scoring_mode == "loss" and target_ids is None:
            raise ValueError(
                'scoring_mode="loss" needs target_ids, the ids to score the '
                "logits against (usually token_ids shifted by one)."
            )
        token_ids = ops.convert_to_tensor(token_ids)
        if padding_mask is None:
            padding_mask = ops.ones(ops.shape(token_ids), "int32")
        if layer_intercept_fn is None:

            def layer_intercept_fn(x, unused_i):
                return x

        b = self.backbone
        tokens = b.token_embedding(token_ids)
        x = layer_intercept_fn(tokens + b.position_embedding(tokens), -1)
        x = b.embeddings_dropout(x)
        for i, block in enumerate(b.transformer_layers):
            x = layer_intercept_fn(block(x, padding_mask=padding_mask), i)
        logits = b.token_embedding(b.layer_norm(x), reverse=True)
        if scoring_mode == "logits":
            return logits
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none"
        )
        return loss(target_ids, logits)

    def call_with_cache(self, token_ids, cache, cache_update_index):
        """Forward pass over new positions only, reading and writing `cache`.

        Args:
            token_ids: int tensor `(batch, new_positions)`.
            cache: the keys and values of earlier positions: a tuple with one
                `(keys, values)` pair of `(batch, num_heads, max_length,
                head_dim)` tensors per layer (what `empty_cache` makes), or
                keras_hub's single stacked `(batch, num_layers, 2, max_length,
                num_heads, head_dim)` tensor.
            cache_update_index: int or int tensor, position of `token_ids[:, 0]`.

        Returns:
            `(logits, hidden_states, cache)`, the cache in the form it came.
        """
        backbone = self.backbone
        stacked = not isinstance(cache, (tuple, list))
        layer_caches = ops.unstack(cache, axis=1) if stacked else cache
        tokens = backbone.token_embedding(token_ids)
        positions = backbone.position_embedding(tokens, start_index=cache_update_index)
        x = backbone.embeddings_dropout(tokens + positions)
        caches = []
        for block, layer_cache in zip(
            backbone.transformer_layers, layer_caches, strict=True
        ):
            x, layer_cache = block(
                x, cache=layer_cache, cache_update_index=cache_update_index
            )
            caches.append(layer_cache)
        hidden_states = backbone.layer_norm(x)
        logits = backbone.token_embedding(hidden_states, reverse=True)
        # Per-layer tensors avoid restacking the whole cache at every step.
        cache = ops.stack(caches, axis=1) if stacked else tuple(caches)
        return logits, hidden_states, cache

    def empty_cache(self, batch_size, length) -> tuple:
        """A zero key/value cache for `length` positions: one `(keys, values)`
        pair of `(batch, num_heads, length, head_dim)` tensors per layer."""
        b = self.backbone
        shape = [batch_size, b.num_heads, length, b.hidden_dim // b.num_heads]
        return tuple(
            (ops.zeros(shape, self.compute_dtype), ops.zeros(shape, self.compute_dtype))
            for _ in range(b.num_layers)
        )

    def _build_cache(self, token_ids, end=None):
        """Hidden states and cache of positions `[0, end)` (default: all).

        keras_hub's models run every position of the padded batch through the
        model here, `max_length` of them, though decoding recomputes all from
        the shortest prompt's end. With `end`, only `[0, end)` is run, in
        chunks of `PREFILL_CHUNK` positions (the last one may overlap the one
        before, to stay inside the cache); positions after the chunk that
        holds `end - 1` keep zeros. This needs a static length over
        `PREFILL_CHUNK`, as one padded length has; otherwise one pass.
        """
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        cache = self.empty_cache(batch, length)
        chunk = PREFILL_CHUNK

        def whole():
            _, hidden_states, new_cache = self.call_with_cache(token_ids, cache, 0)
            return hidden_states, new_cache

        def chunked():
            def body(start, hidden_states, cache):
                at = ops.minimum(start, length - chunk)
                ids = ops.slice(token_ids, [0, at], [batch, chunk])
                _, h, cache = self.call_with_cache(ids, cache, at)  # (B, chunk, C)
                hidden_states = ops.slice_update(hidden_states, [0, at, 0], h)
                return start + chunk, hidden_states, cache

            hidden_states = ops.zeros(
                (batch, length, self.backbone.hidden_dim), self.compute_dtype
            )
            _, hidden_states, new_cache = ops.while_loop(
                lambda start, *_: start < end, body, (0, hidden_states, cache)
            )
            return hidden_states, new_cache

        # A chunk needs a static length to slice; after `reduce_retracing`
        # relaxes the shapes (prompts of several lengths), one pass it is.
        if end is None or not isinstance(length, int) or length <= chunk:
            return whole()
        return chunked()

    def _one_row_layers(self) -> list:
        """The `Linear` layers that batch-1 decoding multiplies by their
        kernels transposed (`Linear.one_row_kernel`): the float ones without
        LoRA, and only with `generate_jit_compile` (without XLA the
        transposes would run on every call)."""
        if not self.generate_jit_compile:
            return []
        return [
            layer
            for layer in self.backbone._flatten_layers(include_self=False)
            if isinstance(layer, Linear)
            and layer.quantization_mode is None
            and not layer.lora_enabled
        ]

    def _make_one_row_kernels(self) -> tuple:
        """`Linear.one_row_kernel()` of each of `_one_row_layers()`."""
        return tuple(layer.one_row_kernel() for layer in self._one_row_layers())

    @contextlib.contextmanager
    def _one_row_kernels(self, kernels=None):
        """Float `Linear` layers multiply one row (batch-1 decoding) by their
        kernels transposed (`Linear.one_row_kernel`) while this traces.

        `kernels` (`_make_one_row_kernels()`) are made by the caller (the
        stream passes them to its compiled step); by default they are made
        here, once per `generate` call, before the loop: 60 to 110 ms and a
        second copy of the kernels (340 MB) for GPT-2 124M in float32,
        against about 4 ms saved per new token, so calls that make fewer
        than about 20 tokens are slower. With more rows XLA drops them
        unused.
        """
        layers = self._one_row_layers()
        if kernels is None:
            kernels = self._make_one_row_kernels()
        if len(kernels) != len(layers):
            raise ValueError(
                f"Got {len(kernels)} one-row kernels for {len(layers)} layers; "
                "make them with `lm._make_one_row_kernels()` after any "
                "quantize or enable_lora."
            )
        try:
            for layer, kernel in zip(layers, kernels, strict=True):
                layer._one_row_kernel = kernel
            yield
        finally:
            for layer in layers:
                layer._one_row_kernel = None

    def generate_step(self, inputs, stop_token_ids=None):
        """One compiled generation pass over a batch (keras_hub's contract)."""
        token_ids, padding_mask = inputs["token_ids"], inputs["padding_mask"]
        row_lengths = ops.sum(ops.cast(padding_mask, "int32"), axis=-1)
        index = ops.min(row_lengths)
        # Decoding starts by recomputing position index - 1; contrastive
        # search also reads the hidden states of [0, index).
        hidden_states, cache = self._build_cache(token_ids, end=index)

        def next(prompt, cache, index):
            cache_update_index = index - 1
            batch = ops.shape(prompt)[0]
            prompt = ops.slice(prompt, [0, cache_update_index], [batch, 1])
            logits, hidden_states, cache = self.call_with_cache(
                prompt, cache, cache_update_index
            )
            return (
                ops.squeeze(logits, axis=1),
                ops.squeeze(hidden_states, axis=1),
                cache,
            )

        with self._one_row_kernels():
            token_ids = self.sampler(
                next=next,
                prompt=token_ids,
                cache=cache,
                index=index,
                mask=padding_mask,
                stop_token_ids=stop_token_ids,
                hidden_states=hidden_states,
                model=self,
            )
        if stop_token_ids is not None:
            # Keep everything up to and including each row's first stop token.
            end = any_equal(token_ids, stop_token_ids, ops.logical_not(padding_mask))
            end = ops.cast(end, "int32")
            after = ops.cumsum(end, axis=-1) - end
            padding_mask = ops.logical_not(ops.cast(after, "bool"))
        else:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    # === Export ===

    def export_to_transformers(self, path) -> None:
        """Writes the model as a Hugging Face GPT-2 folder.

        The folder (`config.json`, `model.safetensors`,
        `generation_config.json`, `vocab.json`, `merges.txt`,
        `tokenizer_config.json`, `special_tokens_map.json`) loads with
        `transformers.GPT2LMHeadModel.from_pretrained(path)` and
        `AutoTokenizer.from_pretrained(path)`, and gives the same logits.
        Weights are written in float32. An untied head (`tie_weights=False`)
        is exported as `lm_head.weight` with `tie_word_embeddings: false`;
        `qkv_bias=False` becomes zero `c_attn` biases; LoRA adapters are
        merged into the kernels, and a quantized model is refused. Without
        a preprocessor, GPT-2's tokenizer files are written when the
        vocabulary is GPT-2's; `self.backbone.export_to_transformers(path)`
        writes the model's files alone. See
        `keras_gpt_scratch.weights.export_to_transformers`.

        Args:
            path: the output folder; created if needed. Files of the names
                above are replaced (each atomically), others left alone.

        Example:
        ```python
        lm = keras_gpt_scratch.GPTCausalLM.from_preset("gpt2_124m")
        lm.export_to_transformers("gpt2-hf")
        model = transformers.GPT2LMHeadModel.from_pretrained("gpt2-hf")
        ```
        """
        from keras_gpt_scratch.weights import export_to_transformers

        export_to_transformers(self, path)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool = False,
        token: str | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
        **kwargs,
    ):
        """Upload the model to the Hugging Face Hub as a preset with a model card.

        Loads back with `GPTCausalLM.from_preset("hf://namespace/name")`. See
        `keras_gpt_scratch.hub.push_to_hub` for the arguments (`metadata=`
        adds model card YAML keys); returns the `huggingface_hub.CommitInfo`.

        Example:
        ```python
        lm.push_to_hub("alice/gpt-tiny-shakespeare", private=True)
        ```
        """
        from keras_gpt_scratch import hub

        return hub.push_to_hub(
            self, repo_id, private, token, commit_message, revision, **kwargs
        )
