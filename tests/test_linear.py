"""`Linear`: Keras' `Dense`, with an int8 mode laid out for decoding."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gpt_scratch as kgs
from keras_gpt_scratch.layers.linear import int8_matmul

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype("float32")


def twins(units=12, input_dim=16):
    """A quantized `Linear` and a quantized Keras `Dense` with equal weights."""
    ours = kgs.Linear(units, name="ours")
    ref = keras.layers.Dense(units, name="ref")
    ours.build((None, input_dim))
    ref.build((None, input_dim))
    ref.set_weights([rand(input_dim, units), rand(units)])
    ours.set_weights(ref.get_weights())
    ours.quantize("int8")
    ref.quantize("int8")
    return ours, ref


def dequantized(layer):
    """The kernel that a quantized layer stands for, `(input_dim, units)`."""
    kernel = keras.ops.convert_to_numpy(layer._kernel).astype("float32")
    return kernel / keras.ops.convert_to_numpy(layer.kernel_scale)


def test_float_linear_is_dense():
    layer = kgs.Linear(5)
    x = rand(2, 3, 8)
    y = layer(x)
    w, b = layer.get_weights()
    np.testing.assert_allclose(y, x @ w + b, atol=1e-5)
    assert [v.path.split("/")[-1] for v in layer.weights] == ["kernel", "bias"]


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("mode", ["eager", "graph", "xla", "xla_unknown_rows"])
def test_one_row_kernel_gives_dense_results(use_bias, mode):
    """With `_one_row_kernel` set (as while decoding), one row multiplies the
    transposed kernel and more rows the kernel; both are still `Dense`."""
    layer = kgs.Linear(6, use_bias=use_bias, activation="tanh")
    layer.build((None, None, 8))
    weights = [rand(8, 6)] + ([rand(6)] if use_bias else [])
    layer.set_weights(weights)
    np.testing.assert_array_equal(layer.one_row_kernel(), weights[0].T)
    bias = weights[1] if use_bias else 0.0

    def call(x, scale):
        # scale 2 tells which kernel a call multiplied.
        layer._one_row_kernel = layer.one_row_kernel() * scale
        try:
            return layer(x)
        finally:
            layer._one_row_kernel = None

    if mode == "xla_unknown_rows":
        spec = tf.TensorSpec((None, None, 8), tf.float32)
        call = tf.function(
            call,
            input_signature=[spec, tf.TensorSpec((), tf.float32)],
            jit_compile=True,
        )
    elif mode != "eager":
        call = tf.function(call, jit_compile=mode == "xla")
    for scale in (1.0, 2.0):
        one, many = rand(1, 1, 8), rand(2, 3, 8)
        want = np.tanh(one @ (scale * weights[0]) + bias)
        np.testing.assert_allclose(call(one, tf.constant(scale)), want, atol=1e-5)
        want = np.tanh(many @ weights[0] + bias)
        np.testing.assert_allclose(call(many, tf.constant(scale)), want, atol=1e-5)
    assert layer._one_row_kernel is None


def test_one_row_kernel_of_another_graph_is_ignored():
    """A kernel set for a trace is not used by calls outside that trace."""
    layer = kgs.Linear(6)
    x = rand(1, 1, 8)
    want = layer(x).numpy()
    with tf.Graph().as_default():
        layer._one_row_kernel = tf.zeros((6, 8))
    try:
        np.testing.assert_allclose(layer(x), want, atol=1e-6)
    finally:
        layer._one_row_kernel = None


def test_one_row_kernel_refuses_quantized_layers():
    ours, _ = twins()
    with pytest.raises(ValueError, match="quantized"):
        ours.one_row_kernel()


def test_int8_keeps_keras_weights_and_saves_no_copy():
    ours, ref = twins()
    assert [v.name for v in ours.weights] == [v.name for v in ref.weights]
    for a, b in zip(ours.get_weights(), ref.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # The transposed copy is the same int8 kernel.
    np.testing.assert_array_equal(ours._kernel_t.numpy().T, ours._kernel.numpy())


def test_int8_rows_match_keras_int8_dense():
    """Several rows: activations are quantized per row, as Keras does."""
    ours, ref = twins()
    x = rand(2, 5, 16)
    np.testing.assert_allclose(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_int8_single_row_uses_dequantized_weights(mode):
    """One row (batch-1 decoding) is multiplied by the dequantized weights,
    so its only error is the weights' rounding."""
    ours, ref = twins()
    x = rand(1, 1, 16)
    call = ours.__call__
    if mode != "eager":
        call = tf.function(ours.__call__, jit_compile=mode == "xla")
    want = x @ dequantized(ours) + ours.bias.numpy()
    np.testing.assert_allclose(call(x), want, rtol=1e-5, atol=1e-5)
    # Keras' int8 Dense also rounds the activations; it differs from both.
    assert np.abs(ref(x) - want).max() > 1e-4


def test_int8_matmul_picks_the_path_at_run_time_when_rows_are_unknown():
    ours, _ = twins()
    fn = tf.function(
        lambda x: int8_matmul(
            x, ours._kernel_t, ours.kernel_scale, ours.inputs_quantizer
        ),
        input_signature=[tf.TensorSpec((None, 16), tf.float32)],
        jit_compile=True,
    )
    one, many = rand(1, 16), rand(4, 16)
    np.testing.assert_allclose(fn(one), one @ dequantized(ours), rtol=1e-5, atol=1e-5)
    expected = ours(many) - ours.bias.numpy()
    np.testing.assert_allclose(fn(many), expected, rtol=1e-5, atol=1e-5)


def test_int8_weight_only_inside_a_compiled_loop():
    """XLA may not hoist the conversion out of a loop; whatever it does, the
    loop's result must be the same as the step's."""
    ours, _ = twins(16, 16)
    x = rand(1, 16) * 0.01

    @tf.function(jit_compile=True)
    def loop(x):
        return tf.while_loop(lambda i, x: i < 3, lambda i, x: (i + 1, ours(x)), (0, x))[
            1
        ]

    want = x
    for _ in range(3):
        want = want @ dequantized(ours) + ours.bias.numpy()
    np.testing.assert_allclose(loop(x), want, rtol=1e-4, atol=1e-5)


def fused_computations(hlo_text):
    """`{name: body}` of the fused computations in XLA's optimized HLO."""
    blocks = {}
    for block in hlo_text.split("\n}\n"):
        head, _, body = block.strip().partition("\n")
        if head.startswith("%fused_computation"):
            blocks[head.split()[0]] = body
    return blocks


def dot_row_source(body):
    """The op that makes the row of a fused computation's ROOT dot, looking
    through bitcasts: `parameter` when the row comes in computed."""
    ops = {}
    for line in body.splitlines():
        match = re.match(r"\s*(?:ROOT )?(%\S+) = \S+ ([\w-]+)\((%[^,)]*)?", line)
        if match:
            ops[match[1]] = (match[2], match[3])
    (op, operand) = next(v for k, v in ops.items() if v[0] == "dot")
    while True:
        op, next_operand = ops[operand]
        if op not in ("bitcast", "reshape", "copy"):
            return op
        operand = next_operand


def test_int8_one_row_product_leaves_its_input_outside_the_weight_loop():
    """XLA fuses the int8-to-float conversion and the product into one loop
    over the weights. The row's own producers (here a LayerNorm's centring
    and scaling) must stay outside it: inside, they would be recomputed for
    every weight, which halved batch-1 decoding speed."""
    ours, _ = twins(64, 32)
    gamma = tf.constant(rand(32))

    @tf.function(jit_compile=True)
    def norm_then_linear(x):
        centred = x - tf.reduce_mean(x, axis=-1, keepdims=True)
        scaled = centred * tf.math.rsqrt(tf.reduce_mean(centred**2, -1, keepdims=True))
        return ours(scaled * gamma)

    x = rand(1, 32)
    hlo = norm_then_linear.experimental_get_compiler_ir(x)(stage="optimized_hlo")
    loops = [
        body
        for body in fused_computations(hlo).values()
        if " dot(" in body and "s8[64,32]" in body
    ]
    assert loops, "expected XLA to fuse the int8 conversion into the product"
    for body in loops:
        source = dot_row_source(body)
        assert source == "parameter", f"the row is made in the weight loop, by {source}"
    centred = x - x.mean(-1, keepdims=True)
    scaled = centred / np.sqrt((centred**2).mean(-1, keepdims=True)) * gamma.numpy()
    want = scaled @ dequantized(ours) + ours.bias.numpy()
    np.testing.assert_allclose(norm_then_linear(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 3])
def test_int8_input_gradient_goes_through_the_dequantized_kernel(rows):
    """As Keras' int8 Dense: d/dx = upstream @ dequantized kernel^T."""
    ours, _ = twins()
    x = tf.constant(rand(rows, 16))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = ours(x)
        loss = tf.reduce_sum(y**2)
    want = (2 * y.numpy()) @ dequantized(ours).T
    np.testing.assert_allclose(tape.gradient(loss, x), want, rtol=1e-4, atol=1e-4)


def test_int8_save_and_load_rebuilds_the_copy(tmp_path):
    inputs = keras.Input((16,))
    model = keras.Model(inputs, kgs.Linear(12, name="proj")(inputs))
    model.layers[-1].set_weights([rand(16, 12), rand(12)])
    model.quantize("int8")
    x = rand(1, 16)
    want = model(x)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    layer = loaded.get_layer("proj")
    assert type(layer) is kgs.Linear and layer.quantization_mode == "int8"
    np.testing.assert_array_equal(layer._kernel_t.numpy().T, layer._kernel.numpy())
    np.testing.assert_allclose(loaded(x), want, rtol=1e-6, atol=1e-6)


def test_int8_lora_adds_its_update():
    ours, _ = twins()
    x = rand(2, 16)
    before = ours(x)
    ours.enable_lora(2)
    ours.lora_kernel_b.assign(np.ones((2, 12), "float32"))
    a = ours.lora_kernel_a.numpy()
    expected = before + (ours.lora_alpha / 2) * (x @ a @ np.ones((2, 12)))
    np.testing.assert_allclose(ours(x), expected, rtol=1e-4, atol=1e-4)


def test_int8_tied_head_single_row_and_rows():
    emb = kgs.TokenEmbedding(50, 16)
    emb.build((None, None))
    emb.quantize("int8")
    table = (
        emb._embeddings.numpy().astype("float32")
        / emb.embeddings_scale.numpy()[:, None]
    )
    one = rand(1, 1, 16)
    np.testing.assert_allclose(
        emb(one, reverse=True), one @ table.T, rtol=1e-5, atol=1e-5
    )
    many = rand(2, 3, 16)
    got = emb(many, reverse=True)
    assert got.shape == (2, 3, 50)
    # Several rows: activations quantized per row too, as Keras' int8 does.
    x_q, x_scale = keras.quantizers.abs_max_quantize(many.reshape(6, 16), axis=-1)
    q = np.asarray(x_q, "float32") @ emb._embeddings.numpy().astype("float32").T
    want = q / (np.asarray(x_scale) * emb.embeddings_scale.numpy()[None, :])
    np.testing.assert_allclose(got, want.reshape(2, 3, 50), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 4])
def test_int8_under_mixed_bfloat16(rows):
    """Keras hands the float32 scales over as bfloat16 under a mixed policy."""
    layer = kgs.Linear(12, dtype="mixed_bfloat16")
    layer.build((None, 16))
    layer.set_weights([rand(16, 12), rand(12)])
    layer.quantize("int8")
    emb = kgs.TokenEmbedding(50, 16, dtype="mixed_bfloat16")
    emb.build((None, None))
    emb.quantize("int8")
    x = rand(rows, 16)
    y = layer(x)
    assert y.dtype == "bfloat16"
    want = x @ dequantized(layer) + layer.bias.numpy()
    np.testing.assert_allclose(np.asarray(y, "float32"), want, rtol=0.05, atol=0.1)
    assert emb(x[None], reverse=True).shape == (1, rows, 50)


def test_set_weights_on_a_quantized_backbone_rebuilds_the_copies():
    config = dict(
        vocabulary_size=64,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        max_sequence_length=8,
    )
    keras.utils.set_random_seed(0)
    a, b = kgs.GPTBackbone(**config), kgs.GPTBackbone(**config)
    a.quantize("int8")
    b.quantize("int8")
    b.set_weights(a.get_weights())
    x = {"token_ids": np.array([[3]]), "padding_mask": np.ones((1, 1), "int32")}
    np.testing.assert_allclose(b(x), a(x), rtol=1e-6, atol=1e-6)
