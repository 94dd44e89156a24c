import io
import types

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import keras_gpt_scratch as kgs
from keras_gpt_scratch import generation
from keras_gpt_scratch.cli import run_generate

MICRO = dict(
    vocabulary_size=50257,
    num_layers=2,
    num_heads=2,
    hidden_dim=32,
    max_sequence_length=64,
    dropout=0.0,
)


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(3)
    tokenizer = kgs.GPTTokenizer()
    pre = kgs.GPTCausalLMPreprocessor(tokenizer, sequence_length=64)
    model = kgs.GPTCausalLM(kgs.GPTBackbone(**MICRO), pre)
    # Larger weights than the 0.02 init make the argmax decisive (no ties).
    for w in model.backbone.weights:
        if len(w.shape) == 2:
            w.assign(w.numpy() * 20)
    model.compile(sampler="greedy")
    return model


def padded(rows, length):
    ids = np.zeros((len(rows), length), "int32")
    mask = np.zeros((len(rows), length), bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = True
    return {"token_ids": ids, "padding_mask": mask}


def uncached_greedy(lm, row, length):
    out = generation.generate(lm, np.array([row]), length - len(row), context_size=64)
    return out[0]


def test_cached_equals_uncached_greedy_for_unequal_prompts(lm):
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 50257, n).tolist() for n in (3, 11, 40, 61)]
    out = lm.generate(padded(rows, 64), stop_token_ids=None)
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(out["token_ids"][i], uncached_greedy(lm, row, 64))
    assert out["padding_mask"].all()


def test_cached_equals_uncached_greedy_for_long_prompts(lm):
    """Prompts longer than one prefill chunk, the last chunk overlapping."""
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, 50257, n).tolist() for n in (45, 47)]
    lm.compile(sampler="greedy")  # a fresh trace, with static shapes
    out = lm.generate(padded(rows, 50), stop_token_ids=None)
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(out["token_ids"][i], uncached_greedy(lm, row, 50))


def test_batch_of_one_decodes_through_transposed_kernels(lm, monkeypatch):
    """Batch 1 multiplies by `Linear.one_row_kernel`s inside the compiled
    loop; the tokens are still the uncached ones, and no layer keeps them."""
    one_row_calls = []
    one_row_call = kgs.Linear._one_row_call

    def counted(self, inputs):
        one_row_calls.append(self.name)
        return one_row_call(self, inputs)

    monkeypatch.setattr(kgs.Linear, "_one_row_call", counted)
    lm.generate_function = None  # a fresh trace, which counts the calls
    rng = np.random.default_rng(2)
    for n in (1, 9, 60):
        row = rng.integers(0, 50257, n).tolist()
        out = lm.generate(padded([row], 64), stop_token_ids=None)
        np.testing.assert_array_equal(out["token_ids"][0], uncached_greedy(lm, row, 64))
    linears = [
        layer
        for layer in lm.backbone._flatten_layers()
        if isinstance(layer, kgs.Linear)
    ]
    assert len(linears) == 6 * MICRO["num_layers"]
    assert sorted(set(one_row_calls)) == sorted({layer.name for layer in linears})
    assert all(layer._one_row_kernel is None for layer in linears)


@pytest.mark.parametrize("end", [1, 32, 33, 50])
def test_chunked_prefill_equals_one_pass(lm, end):
    assert kgs.models.gpt_causal_lm.PREFILL_CHUNK == 32
    ids = np.random.default_rng(2).integers(0, 50257, (2, 50)).astype("int32")
    full_hidden, full_cache = lm._build_cache(ids)
    hidden, cache = lm._build_cache(ids, end=end)
    np.testing.assert_allclose(hidden[:, :end], full_hidden[:, :end], atol=1e-4)
    for (k, v), (fk, fv) in zip(cache, full_cache, strict=True):
        np.testing.assert_allclose(k[:, :, :end], fk[:, :, :end], atol=1e-4)
        np.testing.assert_allclose(v[:, :, :end], fv[:, :, :end], atol=1e-4)
    # Work stops at the chunk holding position end - 1.
    filled = min(50, -(-end // 32) * 32)
    assert not np.asarray(hidden[:, filled:]).any()


def test_stop_tokens_end_each_row_independently(lm):
    rows = [[464, 3290, 318], [40, 1101, 257, 922]]
    full = [uncached_greedy(lm, r, 30) for r in rows]
    new0 = full[0][len(rows[0]) :].tolist()
    new1 = full[1][len(rows[1]) :].tolist()
    candidates = [t for t in new0 if t not in new1]
    assert candidates, "row 0 must generate some id that row 1 never does"
    stop = candidates[0]
    end0 = len(rows[0]) + new0.index(stop) + 1
    out = lm.generate(padded(rows, 30), stop_token_ids=[stop])
    mask = out["padding_mask"]
    assert mask[0, :end0].all() and not mask[0, end0:].any()  # stop kept, rest cut
    assert mask[1].all()  # the other row ran to max_length
    np.testing.assert_array_equal(out["token_ids"][1], full[1])


def test_strings_in_strings_out_and_strip_prompt(lm):
    texts = lm.generate(
        ["Hello, world", "The verdict"], max_length=20, stop_token_ids=None
    )
    assert texts[0].startswith("Hello, world") and texts[1].startswith("The verdict")
    stripped = lm.generate(
        ["Hello, world", "The verdict"],
        max_length=20,
        stop_token_ids=None,
        strip_prompt=True,
    )
    assert texts[0] == "Hello, world" + stripped[0]
    assert texts[1] == "The verdict" + stripped[1]
    one = lm.generate("Hello, world", max_length=20, stop_token_ids=None)
    assert one == texts[0]


def test_second_call_reuses_compiled_function(lm):
    lm.generate("Once upon a time", max_length=24, stop_token_ids=None)
    fn = lm.generate_function
    traces = fn.experimental_get_tracing_count()
    lm.generate("A different, longer prompt here", max_length=24, stop_token_ids=None)
    assert lm.generate_function is fn
    assert fn.experimental_get_tracing_count() == traces


def test_seeded_sampling_reproduces(lm):
    def sample(seed):
        lm.compile(sampler=keras_hub.samplers.TopKSampler(k=50, seed=seed))
        return lm.generate("The cat", max_length=30, stop_token_ids=None)

    try:
        a, b, c = sample(7), sample(7), sample(8)
    finally:
        lm.compile(sampler="greedy")
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    "sampler",
    [
        "greedy",
        "top_k",
        "random",
        keras_hub.samplers.TopPSampler(p=0.9, seed=1),
        keras_hub.samplers.BeamSampler(num_beams=2),
        keras_hub.samplers.ContrastiveSampler(k=3, alpha=0.6),
        keras_hub.samplers.RandomSampler(temperature=0.7, seed=1),
    ],
)
def test_keras_hub_samplers(lm, sampler):
    lm.compile(sampler=sampler)
    try:
        ids = lm.generate(padded([[464, 3290]], 12), stop_token_ids=None)["token_ids"]
    finally:
        lm.compile(sampler="greedy")
    assert ids.shape == (1, 12)
    np.testing.assert_array_equal(ids[0, :2], [464, 3290])
    assert ((ids >= 0) & (ids < 50257)).all()


def test_contrastive_search_same_with_chunked_prefill(lm, monkeypatch):
    """Contrastive search reads the prefilled hidden states of the prompt."""
    rng = np.random.default_rng(4)
    x = padded([rng.integers(0, 50257, n).tolist() for n in (40, 35)], 48)
    results = []
    try:
        for chunk in (32, 1000):  # chunked, then one pass over all 48
            monkeypatch.setattr(kgs.models.gpt_causal_lm, "PREFILL_CHUNK", chunk)
            lm.compile(sampler=keras_hub.samplers.ContrastiveSampler(k=3, alpha=0.6))
            results.append(lm.generate(x, stop_token_ids=None)["token_ids"])
    finally:
        lm.compile(sampler="greedy")
    np.testing.assert_array_equal(results[0], results[1])


def test_generation_past_the_context_is_a_clear_error(lm):
    with pytest.raises(ValueError, match="exceeds the model's context length of 64"):
        lm.generate("Hello", max_length=65)
    with pytest.raises(ValueError, match="context length of 64"):
        lm.generate(padded([[1, 2]], 70), stop_token_ids=None)


def test_book_generate_slides_past_the_context(lm):
    idx = np.array([[464, 3290, 318]])
    out = generation.generate(lm, idx, max_new_tokens=70, context_size=64)
    assert out.shape == (1, 73)
    # While the text fits the context it is the same as cached greedy.
    cached = lm.generate(padded([[464, 3290, 318]], 64), stop_token_ids=None)
    np.testing.assert_array_equal(out[0, :64], cached["token_ids"][0])


def test_book_generate_temperature_top_k_eos_and_seed(lm):
    idx = np.array([[464, 3290, 318]])
    a = generation.generate(lm, idx, 10, 64, temperature=1.5, top_k=5, seed=1)
    b = generation.generate(lm, idx, 10, 64, temperature=1.5, top_k=5, seed=1)
    np.testing.assert_array_equal(a, b)
    # top_k=1 at any temperature is greedy.
    g = generation.generate(lm, idx, 10, 64, temperature=2.0, top_k=1, seed=3)
    np.testing.assert_array_equal(g, generation.generate(lm, idx, 10, 64))
    eos = int(g[0, 5])
    first = 3 + g[0, 3:].tolist().index(eos)  # where greedy first emits it
    stopped = generation.generate(lm, idx, 10, 64, eos_id=eos)
    assert stopped.shape[1] == first + 1 and stopped[0, -1] == eos
    with pytest.raises(ValueError, match="temperature"):
        generation.generate(lm, idx, 1, 64, temperature=-1)


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    probs = generation._filter_logits(logits, 1.0, None, 0.75)
    np.testing.assert_allclose(probs, [[0.5 / 0.8, 0.3 / 0.8, 0, 0]])
    probs = generation._filter_logits(logits, 1.0, 2, None)
    np.testing.assert_allclose(probs, [[0.5 / 0.8, 0.3 / 0.8, 0, 0]])


def test_stream_matches_cached_generate(lm):
    prompt = [464, 3290, 318, 257]
    streamed = list(generation.stream(lm, prompt, 12, stop_token_ids=None))
    full = lm.generate(padded([prompt], 16), stop_token_ids=None)["token_ids"][0]
    np.testing.assert_array_equal(streamed, full[4:])


def assert_steps_match_the_eager_model(q, prompt):
    prompt_step, token_step = generation._step_functions(q)
    cache = q.empty_cache(1, 8)
    ids = tf.constant([prompt], "int32")
    logits, cache = prompt_step(ids, cache, tf.constant(0))
    eager, _, _ = q.call_with_cache(ids, q.empty_cache(1, 8), 0)
    np.testing.assert_allclose(logits, eager[:, -1], rtol=1e-5, atol=1e-5)
    token = tf.constant([[11]], "int32")
    logits, _ = token_step(token, cache, tf.constant(4), q._make_one_row_kernels())
    eager, _, _ = q.call_with_cache(token, cache, 4)
    np.testing.assert_allclose(logits, eager[:, -1], rtol=1e-5, atol=1e-5)
    return logits


def traced_then_changed(lm, change):
    """A model whose generate and stream functions were traced, then
    `change`d; returns it with its logits from before."""
    q = kgs.GPTCausalLM(kgs.GPTBackbone(**MICRO), preprocessor=None)
    q.set_weights(lm.get_weights())
    prompt = [464, 3290, 318, 257]
    list(generation.stream(q, prompt, 4, stop_token_ids=None))
    q.compile(sampler="greedy")
    q.generate(padded([prompt], 8), stop_token_ids=None)
    traced = q.make_generate_function()
    before = assert_steps_match_the_eager_model(q, prompt)
    change(q)
    assert q.make_generate_function() is not traced
    return q, prompt, before


def test_stream_after_quantizing_uses_the_int8_weights(lm):
    """Functions traced before `quantize` kept multiplying by the float
    kernels; they are traced again."""
    q, prompt, before = traced_then_changed(lm, lambda q: q.quantize("int8"))
    after = assert_steps_match_the_eager_model(q, prompt)
    assert np.abs(after - before).max() > 1e-3  # int8 moved the logits


def test_stream_after_enabling_lora_uses_the_adapters(lm):
    """Keras decides at trace time whether a layer adds its LoRA update, so
    `enable_lora` on the backbone also makes the functions trace again."""

    def enable(q):
        q.backbone.enable_lora(rank=2)
        for w in q.backbone.weights:
            if "lora_kernel_b" in w.path:
                w.assign(np.full(w.shape, 0.5, "float32"))

    q, prompt, before = traced_then_changed(lm, enable)
    after = assert_steps_match_the_eager_model(q, prompt)
    assert np.abs(after - before).max() > 1e-3  # the adapters moved the logits


def test_switching_xla_off_traces_generate_and_stream_again(lm):
    q, prompt, before = traced_then_changed(
        lm, lambda q: setattr(q, "generate_jit_compile", False)
    )
    assert q.make_generate_function()._jit_compile is False
    assert generation._step_functions(q)[1]._jit_compile is False
    np.testing.assert_allclose(
        assert_steps_match_the_eager_model(q, prompt), before, rtol=1e-5, atol=1e-5
    )


def test_stream_token_step_multiplies_by_the_kernels_it_is_given(lm):
    """In float32 with XLA the one-token step reads the transposed kernels
    passed in (made once per stream), not the layers' own."""
    prompt_step, token_step = generation._step_functions(lm)
    layers = lm._one_row_layers()
    assert len(layers) == 6 * MICRO["num_layers"]  # q, k, v, out and the MLP's two
    ids = tf.constant([[464, 3290, 318]], "int32")
    _, cache = prompt_step(ids, lm.empty_cache(1, 8), tf.constant(0))
    token = tf.constant([[11]], "int32")
    kernels = list(lm._make_one_row_kernels())
    right, _ = token_step(token, cache, tf.constant(3), tuple(kernels))
    kernels[0] = tf.zeros_like(kernels[0])  # one layer's
    wrong, _ = token_step(token, cache, tf.constant(3), tuple(kernels))
    eager, _, _ = lm.call_with_cache(token, cache, 3)
    np.testing.assert_allclose(right, eager[:, -1], rtol=1e-5, atol=1e-5)
    assert np.abs(wrong - eager[:, -1]).max() > 1e-3
    assert all(layer._one_row_kernel is None for layer in layers)  # reset
    with pytest.raises(ValueError, match=r"lm\._make_one_row_kernels\(\)"):
        with lm._one_row_kernels(tuple(kernels[:-1])):  # one short
            pass
    assert all(layer._one_row_kernel is None for layer in layers)


def test_stream_cache_sizes_are_few(lm, monkeypatch):
    """Streams of different lengths share a cache size, and so one XLA
    compilation of the token step."""
    assert [
        generation.cache_length(n, 1024) for n in (1, 64, 65, 200, 256, 257, 600, 1000)
    ] == [64, 64, 128, 256, 256, 512, 768, 1024]
    assert generation.cache_length(100, 80) == 80
    assert generation.cache_length(20, 32) == 32
    q = kgs.GPTCausalLM(
        kgs.GPTBackbone(**{**MICRO, "max_sequence_length": 256}), preprocessor=None
    )
    sizes = []
    empty_cache = q.empty_cache
    monkeypatch.setattr(
        q, "empty_cache", lambda b, n: sizes.append(n) or empty_cache(b, n)
    )
    prompt = [464, 3290, 318, 257]
    for new in (3, 9, 20):
        greedy = list(generation.stream(q, prompt, new, stop_token_ids=None))
        assert len(greedy) == new
    assert sizes == [64, 64, 64]
    assert generation._step_functions(q)[1].experimental_get_tracing_count() == 1
    assert len(list(generation.stream(q, prompt, 70, stop_token_ids=None))) == 70
    assert sizes[-1] == 128  # 74 positions


def test_stream_stops_at_the_context_and_rejects_long_prompts(lm):
    got = list(generation.stream(lm, list(range(1, 61)), 50, stop_token_ids=None))
    assert len(got) == 4  # 60 prompt tokens + 4 = the context of 64
    with pytest.raises(ValueError, match="context length is 64"):
        list(generation.stream(lm, list(range(64)), 5))
    with pytest.raises(ValueError, match="max_new_tokens must be 0 or more"):
        list(generation.stream(lm, [1, 2], -1))
    assert list(generation.stream(lm, [1, 2], 0)) == []


def test_cli_generate_streams_text(lm, tmp_path):
    lm.save_to_preset(tmp_path / "p")
    args = types.SimpleNamespace(
        preset=str(tmp_path / "p"),
        prompt="Hello, world",
        max_new_tokens=8,
        temperature=0.0,
        top_k=0,
        top_p=None,
        seed=None,
    )
    out = io.StringIO()
    run_generate(args, out)
    expected = generation.generate_text(lm, "Hello, world", 8, eos_id=50256)
    assert out.getvalue() == expected + "\n"


def test_score_logits_and_loss(lm):
    ids = np.array([[464, 3290, 318, 257, 922]])
    logits = lm.score(ids)
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    np.testing.assert_allclose(logits, lm(x), atol=1e-4)
    targets = np.roll(ids, -1, axis=1)
    loss = np.asarray(lm.score(ids, scoring_mode="loss", target_ids=targets))
    lp = np.asarray(logits, "float64")
    lp = (
        lp
        - np.log(np.exp(lp - lp.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - lp.max(-1, keepdims=True)
    )
    expected = -np.take_along_axis(lp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    seen = []
    lm.score(ids, layer_intercept_fn=lambda x, i: seen.append(i) or x)
    assert seen == [-1, 0, 1]
    with pytest.raises(ValueError, match="target_ids"):
        lm.score(ids, scoring_mode="loss")


def test_int8_quantized_logits_stay_close(lm, tmp_path):
    lm.save_to_preset(tmp_path / "f32")
    q = kgs.GPTCausalLM.from_preset(str(tmp_path / "f32"))
    q.quantize("int8")
    x = {
        "token_ids": np.array([[464, 3290, 318, 257]]),
        "padding_mask": np.ones((1, 4), "int32"),
    }
    ref, got = np.asarray(lm(x)), np.asarray(q(x))
    gap = np.abs(got - ref).max() / np.abs(ref).max()
    assert gap < 0.05
    q.compile(sampler="greedy")
    out = q.generate(padded([[464, 3290]], 10), stop_token_ids=None)
    assert out["token_ids"].shape == (1, 10)


def test_call_with_cache_accepts_keras_hub_stacked_cache(lm):
    ids = np.array([[464, 3290, 318]], "int32")
    b = lm.backbone
    stacked = np.zeros(
        (1, b.num_layers, 2, 8, b.num_heads, b.hidden_dim // b.num_heads), "float32"
    )
    per_layer = tuple(stacked[:, i] for i in range(b.num_layers))
    l1, _, c1 = lm.call_with_cache(ids, stacked, 0)
    l2, _, c2 = lm.call_with_cache(ids, per_layer, 0)
    assert c1.shape == stacked.shape and isinstance(c2, tuple)
    np.testing.assert_allclose(l1, l2, atol=1e-5)
    np.testing.assert_allclose(l1, lm(padded([[464, 3290, 318]], 3)), atol=1e-4)
