"""Real GPT-2 weights: both readers, conversion, presets, export, bad input.

Every checkpoint is built here (no network): a tiny random GPT-2 saved by
`transformers`, the same weights as OpenAI's original TF checkpoint (exact
variable names, written with `tf.raw_ops.SaveV2`), and a random one with the
full 124M geometry in the layout of `openai-community/gpt2` on the Hub.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import keras_gpt_scratch as kgs  # noqa: E402
from keras_gpt_scratch import paths, weights  # noqa: E402
from keras_gpt_scratch.models import gpt_presets  # noqa: E402
from keras_gpt_scratch.weights import names, readers  # noqa: E402

TINY = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
# GPT-2's own init (0.02) makes a 2-layer random model repeat one token
# forever under greedy decoding; 0.1 gives varied tokens to compare.
INIT_RANGE = 0.1
TINY_BACKBONE = dict(
    vocabulary_size=50257,
    num_layers=2,
    num_heads=2,
    hidden_dim=32,
    intermediate_dim=128,
    max_sequence_length=64,
)


# === Checkpoint builders ===


def save_openai_style(state_dict: dict, n_layer: int, hparams: dict, folder: Path):
    """Writes transformers' GPT-2 tensors under OpenAI's exact variable names.

    Independent of the package's own name table on purpose: the OpenAI
    reader is checked against names spelled out here.
    """
    import tensorflow as tf

    sd = {
        k.removeprefix("transformer."): v.detach().numpy()
        for k, v in state_dict.items()
    }
    variables = {"model/wte": sd["wte.weight"], "model/wpe": sd["wpe.weight"]}
    for i in range(n_layer):
        for ours, theirs in (
            ("ln_1/g", "ln_1.weight"),
            ("ln_1/b", "ln_1.bias"),
            ("attn/c_attn/w", "attn.c_attn.weight"),
            ("attn/c_attn/b", "attn.c_attn.bias"),
            ("attn/c_proj/w", "attn.c_proj.weight"),
            ("attn/c_proj/b", "attn.c_proj.bias"),
            ("ln_2/g", "ln_2.weight"),
            ("ln_2/b", "ln_2.bias"),
            ("mlp/c_fc/w", "mlp.c_fc.weight"),
            ("mlp/c_fc/b", "mlp.c_fc.bias"),
            ("mlp/c_proj/w", "mlp.c_proj.weight"),
            ("mlp/c_proj/b", "mlp.c_proj.bias"),
        ):
            value = sd[f"h.{i}.{theirs}"]
            if ours.endswith("/w"):
                value = value[None]  # OpenAI's conv1d weights: (1, in, out)
            variables[f"model/h{i}/{ours}"] = value
    variables["model/ln_f/g"] = sd["ln_f.weight"]
    variables["model/ln_f/b"] = sd["ln_f.bias"]
    folder.mkdir(parents=True, exist_ok=True)
    tf.raw_ops.SaveV2(
        prefix=str(folder / "model.ckpt"),
        tensor_names=list(variables),
        shape_and_slices=[""] * len(variables),
        tensors=[tf.constant(v) for v in variables.values()],
    )
    (folder / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'
    )
    (folder / "hparams.json").write_text(json.dumps(hparams))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir):
    """A tiny random GPT-2: (HF folder, OpenAI folder, transformers model)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(**TINY, initializer_range=INIT_RANGE)
    model = transformers.GPT2LMHeadModel(config).eval()
    root = tmp_path_factory.mktemp("tiny")
    hf_dir = root / "hf"
    model.save_pretrained(hf_dir)
    openai_dir = save_openai_style(
        model.state_dict(),
        TINY["n_layer"],
        {"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 2, "n_layer": 2},
        root / "openai",
    )
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(data_dir / "gpt2" / name, openai_dir / name)
    return hf_dir, openai_dir, model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def token_batch(seed=1, batch=2, length=12):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 50257, (batch, length)).astype("int32")


def reference_logits(model, ids):
    with torch.no_grad():
        out = model(torch.tensor(ids, dtype=torch.long), output_hidden_states=True)
    return out.hidden_states[-1].numpy(), out.logits.numpy()


def our_outputs(lm, ids):
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    return np.asarray(lm.backbone(x)), np.asarray(lm(x))


# === The name table ===


def test_name_table_round_trips_every_tensor():
    canonical = names.canonical_names(3, tied=False)
    assert len(canonical) == 4 + 3 * 12 + 1
    for name in canonical:
        for prefix in ("", "transformer."):
            assert names.from_hf_name(names.hf_name(name, prefix)) == name
        if name != names.LM_HEAD:
            assert names.from_openai_name(names.openai_name(name)) == name
    assert names.hf_name("h1/attn/c_attn/w", "transformer.") == (
        "transformer.h.1.attn.c_attn.weight"
    )
    assert names.hf_name("h0/ln_2/g") == "h.0.ln_2.weight"
    assert names.from_hf_name("h.0.attn.bias") is None
    assert names.is_hf_buffer("transformer.h.11.attn.masked_bias")
    assert names.keras_paths("h3/attn/c_attn/b") == (
        "transformer_layer_3/attention/query/bias",
        "transformer_layer_3/attention/key/bias",
        "transformer_layer_3/attention/value/bias",
    )


# === Both readers against transformers ===


@pytest.mark.parametrize("fmt", ["transformers", "openai"])
def test_tiny_checkpoint_matches_transformers(tiny, fmt):
    hf_dir, openai_dir, model = tiny
    folder = hf_dir if fmt == "transformers" else openai_dir
    assert weights.checkpoint_format(folder) == fmt
    lm = kgs.GPTCausalLM.from_preset(str(folder))
    assert isinstance(lm, kgs.GPTCausalLM)
    backbone = lm.backbone
    assert (backbone.num_layers, backbone.num_heads, backbone.hidden_dim) == (2, 2, 32)
    assert backbone.max_sequence_length == 64
    assert lm.preprocessor.sequence_length == 64

    ids = token_batch()
    ref_hidden, ref_logits = reference_logits(model, ids)
    hidden, logits = our_outputs(lm, ids)
    np.testing.assert_allclose(hidden, ref_hidden, atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)
    # Not vacuous: the logits are far from constant.
    assert np.ptp(ref_logits) > 0.1


def test_both_readers_give_identical_tensors(tiny):
    hf_dir, openai_dir, model = tiny
    with (
        weights.read_gpt2_checkpoint(hf_dir) as hf,
        weights.read_gpt2_checkpoint(openai_dir) as oa,
    ):
        assert hf.format == "transformers" and oa.format == "openai"
        assert hf.config == oa.config
        assert hf.names == oa.names
        for name in hf.names:
            np.testing.assert_array_equal(hf.tensor(name), oa.tensor(name))
        assert oa.file_name("h1/attn/c_attn/w") == "model/h1/attn/c_attn/w"
        assert oa.shape("h1/attn/c_attn/w") == (32, 96)
    c_attn = model.transformer.h[1].attn.c_attn.weight.detach().numpy()
    backbone = kgs.GPTBackbone.from_preset(str(openai_dir))
    attention = backbone.get_layer("transformer_layer_1").attention
    np.testing.assert_array_equal(np.asarray(attention.key.kernel), c_attn[:, 32:64])


@pytest.mark.parametrize("fmt", ["transformers", "openai"])
def test_greedy_generation_matches_transformers(tiny, fmt):
    hf_dir, openai_dir, model = tiny
    lm = kgs.GPTCausalLM.from_preset(
        str(hf_dir if fmt == "transformers" else openai_dir)
    )
    lm.compile(sampler="greedy")
    prompt = [15496, 11, 995, 13, 383]
    new = 20
    token_ids = np.zeros((1, len(prompt) + new), "int32")
    token_ids[0, : len(prompt)] = prompt
    mask = np.zeros_like(token_ids)
    mask[0, : len(prompt)] = 1
    ours = lm.generate(
        {"token_ids": token_ids, "padding_mask": mask}, stop_token_ids=None
    )
    with torch.no_grad():
        theirs = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=50256,
        )
    theirs = theirs[0].tolist()
    assert len(theirs) == len(prompt) + new  # transformers did not stop early
    assert np.asarray(ours["token_ids"])[0].tolist() == theirs
    assert len(set(theirs[len(prompt) :])) > 1  # not one token repeated


# === Built-in presets: download, convert, cache ===


def hf_repo_layout(folder: Path, tensors: dict, config: weights.GPT2Config):
    """`openai-community/gpt2`'s layout: unprefixed names, mask buffers."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    hf = {names.hf_name(k): v for k, v in tensors.items()}
    n = config.n_positions
    mask = np.tril(np.ones((n, n), "float32"))[None, None]
    for i in range(config.n_layer):
        hf[f"h.{i}.attn.bias"] = mask
    save_file(hf, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hf_config = config.to_transformers()
    del hf_config["tie_word_embeddings"]  # absent on the Hub: defaults to tied
    (folder / "config.json").write_text(json.dumps(hf_config))


def serve_from(monkeypatch, repos: dict[str, Path], fail_on: str | None = None):
    """Replaces the Hub download with files from local folders."""
    calls = []

    def fake_download(repo_id, filename):
        calls.append((repo_id, filename))
        if filename == fail_on:
            raise ConnectionError(f"connection reset while downloading {filename}")
        path = repos[repo_id] / filename
        assert path.is_file(), f"the test serves no {filename}"
        return str(path)

    monkeypatch.setattr(readers, "_hf_download", fake_download)
    return calls


def test_gpt2_124m_preset_converts_caches_and_loads_offline(
    tmp_path, cache, monkeypatch
):
    config = weights.GPT2Config(
        vocab_size=50257, n_positions=1024, n_embd=768, n_head=12, n_layer=12
    )
    rng = np.random.default_rng(0)
    tensors = {
        name: rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        for name, shape in names.expected_shapes(config).items()
    }
    hf_repo_layout(tmp_path / "gpt2", tensors, config)
    calls = serve_from(monkeypatch, {"openai-community/gpt2": tmp_path / "gpt2"})

    lm = kgs.GPTCausalLM.from_preset("gpt2_124m")
    assert lm.backbone.count_params() == 124_439_808
    assert [f for _, f in calls] == ["config.json", "model.safetensors"]
    cached = weights.builtin_preset_dir("gpt2_124m")
    assert cached == cache / "presets" / "gpt2_124m"
    assert (cached / "model.weights.h5").is_file()
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".")]
    key = lm.backbone.get_layer("transformer_layer_11").attention.key.kernel
    np.testing.assert_array_equal(
        np.asarray(key), tensors["h11/attn/c_attn/w"][:, 768:1536]
    )

    # The second load reads the cache: no download at all.
    serve_from(monkeypatch, {}, fail_on="config.json")
    backbone = kgs.GPTBackbone.from_preset("gpt2_124m")
    assert backbone.count_params() == 124_439_808
    np.testing.assert_array_equal(
        np.asarray(backbone.token_embedding.embeddings), tensors["wte"]
    )


@pytest.fixture
def tiny_preset(monkeypatch, tiny):
    """A built-in preset 'gpt2_tiny_test' whose weights are 'test/tiny-gpt2'."""
    spec = {
        "metadata": {"description": "test", "params": 0, "path": "gpt2_tiny_test"},
        "backbone": {
            **TINY_BACKBONE,
            "dropout": 0.0,
            "qkv_bias": True,
            "tie_weights": True,
        },
        "preprocessor": {"sequence_length": 64},
        "weights": {"hf_repo": "test/tiny-gpt2"},
    }
    specs = {**gpt_presets.builtin_presets(), "gpt2_tiny_test": spec}
    monkeypatch.setattr(gpt_presets, "builtin_presets", lambda: specs)
    return "gpt2_tiny_test"


def test_download_failing_midway_leaves_no_cache_entry(
    tiny, tiny_preset, cache, monkeypatch
):
    hf_dir, _, model = tiny
    partial = cache.parent / "partial"

    def dies_midway(repo_id, filename):
        if filename == "config.json":
            return str(hf_dir / filename)
        # Half the bytes arrive, then the connection drops.
        partial.mkdir(exist_ok=True)
        data = (hf_dir / filename).read_bytes()
        (partial / filename).write_bytes(data[: len(data) // 2])
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(readers, "_hf_download", dies_midway)
    with pytest.raises(weights.DownloadError, match="connection reset by peer"):
        kgs.GPTCausalLM.from_preset(tiny_preset)
    presets_dir = cache / "presets"
    assert not presets_dir.exists() or not list(presets_dir.iterdir())

    # The next call starts clean and succeeds.
    serve_from(monkeypatch, {"test/tiny-gpt2": hf_dir})
    lm = kgs.GPTCausalLM.from_preset(tiny_preset)
    ids = token_batch(seed=2)
    np.testing.assert_allclose(
        our_outputs(lm, ids)[1], reference_logits(model, ids)[1], atol=1e-5
    )
    assert sorted(p.name for p in presets_dir.iterdir()) == [tiny_preset]

    # A cache entry damaged later is rebuilt, not trusted.
    (presets_dir / tiny_preset / "model.weights.h5").write_bytes(b"garbage")
    calls = serve_from(monkeypatch, {"test/tiny-gpt2": hf_dir})
    kgs.GPTBackbone.from_preset(tiny_preset)
    assert ("test/tiny-gpt2", "model.safetensors") in calls


def test_preset_geometry_must_match_checkpoint(tiny, tiny_preset, cache, monkeypatch):
    hf_dir, _, _ = tiny
    spec = gpt_presets.builtin_presets()[tiny_preset]
    spec["backbone"]["num_layers"] = 3
    serve_from(monkeypatch, {"test/tiny-gpt2": hf_dir})
    with pytest.raises(
        weights.CheckpointError, match="num_layers: preset 3, checkpoint 2"
    ):
        kgs.GPTBackbone.from_preset(tiny_preset)


def test_load_weights_false_needs_no_download(monkeypatch):
    serve_from(monkeypatch, {}, fail_on="config.json")
    backbone = kgs.GPTBackbone.from_preset("gpt2_124m", load_weights=False)
    assert backbone.num_layers == 12


def test_keras_presets_still_go_to_keras_hub(tmp_path):
    lm = kgs.GPTCausalLM(kgs.GPTBackbone(**TINY_BACKBONE), preprocessor=None)
    lm.save_to_preset(tmp_path / "keras_preset")
    assert weights.checkpoint_format(tmp_path / "keras_preset") is None
    assert not weights.is_gpt2_checkpoint(tmp_path / "keras_preset")
    again = kgs.GPTCausalLM.from_preset(str(tmp_path / "keras_preset"))
    ids = token_batch(seed=7)
    np.testing.assert_array_equal(our_outputs(again, ids)[1], our_outputs(lm, ids)[1])
    with pytest.warns(UserWarning, match="no pretrained weights"):
        kgs.GPTBackbone.from_preset("gpt_tiny")


# === Export back to transformers ===


def test_export_to_transformers_round_trip(tiny, tmp_path, data_dir):
    hf_dir, _, model = tiny
    lm = kgs.GPTCausalLM.from_preset(str(hf_dir))
    out = tmp_path / "exported"
    lm.export_to_transformers(out)

    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = token_batch(seed=3)
    _, ours = our_outputs(lm, ids)
    np.testing.assert_allclose(reference_logits(reloaded, ids)[1], ours, atol=1e-5)
    for name, value in model.state_dict().items():
        if not name.endswith(".attn.bias"):
            np.testing.assert_array_equal(
                reloaded.state_dict()[name].numpy(), value.numpy()
            )

    # The tokenizer files are OpenAI's, byte for byte, regenerated from ranks.
    def sha(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    assert sha(out / "vocab.json") == sha(data_dir / "gpt2/encoder.json")
    assert sha(out / "merges.txt") == sha(data_dir / "gpt2/vocab.bpe")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("Hello, world")["input_ids"] == [15496, 11, 995]
    assert tokenizer.eos_token_id == 50256

    # And it reads back as a GPT-2 checkpoint of ours.
    again = kgs.GPTCausalLM.from_preset(str(out))
    np.testing.assert_array_equal(our_outputs(again, ids)[1], ours)


def test_backbone_tokenizer_and_preprocessor_export_like_keras_hub(tiny, tmp_path):
    # keras_hub splits the export: the backbone writes the model files, the
    # tokenizer (or preprocessor) its files; together, in either order, they
    # are the CausalLM's folder.
    hf_dir, _, _ = tiny
    lm = kgs.GPTCausalLM.from_preset(str(hf_dir))
    whole = tmp_path / "whole"
    lm.export_to_transformers(whole)
    model_first, tokenizer_first = tmp_path / "model_first", tmp_path / "tok_first"
    lm.backbone.export_to_transformers(model_first)
    model_files = {"config.json", "model.safetensors", "generation_config.json"}
    assert {p.name for p in model_first.iterdir()} == model_files
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(model_first).eval()
    ids = token_batch(seed=5)
    np.testing.assert_allclose(
        reference_logits(reloaded, ids)[1], our_outputs(lm, ids)[1], atol=1e-5
    )
    lm.preprocessor.export_to_transformers(model_first)
    lm.preprocessor.tokenizer.export_to_transformers(tokenizer_first)
    lm.backbone.export_to_transformers(tokenizer_first)
    for folder in (model_first, tokenizer_first):
        assert {p.name for p in folder.iterdir()} == {p.name for p in whole.iterdir()}
        for path in whole.iterdir():
            assert path.read_bytes() == (folder / path.name).read_bytes(), path.name
    # The context length recorded for the tokenizer is the model's (64).
    config = json.loads((whole / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == lm.backbone.max_sequence_length == 64
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_first)
    text = "Hello, world. It's 2026!"
    assert tokenizer(text)["input_ids"] == list(lm.preprocessor.tokenizer(text))

    # Alone, the tokenizer records GPT-2's context length.
    alone = tmp_path / "tokenizer"
    kgs.GPTTokenizer().export_to_transformers(alone)
    assert {p.name for p in alone.iterdir()} == {
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    assert (
        json.loads((alone / "tokenizer_config.json").read_text())["model_max_length"]
        == 1024
    )
    assert (alone / "merges.txt").read_bytes() == (whole / "merges.txt").read_bytes()


def one_layer_backbone(vocabulary_size):
    return kgs.GPTBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=16,
    )


def test_export_merges_lora_and_refuses_int8(tmp_path):
    lm = kgs.GPTCausalLM(one_layer_backbone(50257), preprocessor=None)
    ids = token_batch(seed=6, length=8)
    lm.backbone.enable_lora(2)
    query = lm.backbone.get_layer("transformer_layer_0").attention.query
    rng = np.random.default_rng(0)
    query.lora_kernel_b.assign(rng.normal(0, 0.5, query.lora_kernel_b.shape))
    ours = our_outputs(lm, ids)[1]
    lm.backbone.export_to_transformers(tmp_path / "lora")
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "lora").eval()
    np.testing.assert_allclose(reference_logits(reloaded, ids)[1], ours, atol=1e-5)

    lm.quantize("int8")
    with pytest.raises(ValueError, match="quantized.*Export the float model"):
        lm.export_to_transformers(tmp_path / "int8")
    assert not (tmp_path / "int8").exists()


def test_export_small_vocabulary_has_no_end_of_text_id(tmp_path):
    backbone = one_layer_backbone(100)
    backbone.export_to_transformers(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert config["vocab_size"] == 100
    assert config["eos_token_id"] is None and generation["eos_token_id"] is None
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = np.arange(8, dtype="int32")[None]
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    ours = np.asarray(backbone.token_embedding(backbone(x), reverse=True))
    np.testing.assert_allclose(reference_logits(reloaded, ids)[1], ours, atol=1e-5)


def test_export_refuses_a_keras_hub_preset_folder(tiny, tmp_path):
    hf_dir, _, _ = tiny
    lm = kgs.GPTCausalLM.from_preset(str(hf_dir))
    preset = tmp_path / "preset"
    lm.save_to_preset(preset)
    before = {p.name: p.read_bytes() for p in preset.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="keras_hub preset.*another folder"):
        lm.export_to_transformers(preset)
    with pytest.raises(ValueError, match="keras_hub preset"):
        lm.backbone.export_to_transformers(preset)
    after = {p.name: p.read_bytes() for p in preset.iterdir() if p.is_file()}
    assert after == before
    kgs.GPTCausalLM.from_preset(str(preset))  # still loads


def test_export_tokenizer_needs_gpt2_bpe(tmp_path):
    simple = kgs.SimpleTokenizer.from_text("the cat sat")
    with pytest.raises(ValueError, match="Only a GPTTokenizer.*SimpleTokenizer"):
        weights.export_tokenizer(simple, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_untied_head_without_qkv_bias(tmp_path):
    # The book's model: separate output head, no query/key/value biases.
    lm = kgs.GPTCausalLM.from_book_config(
        {
            "vocab_size": 50257,
            "context_length": 32,
            "emb_dim": 16,
            "n_heads": 2,
            "n_layers": 2,
            "drop_rate": 0.0,
            "qkv_bias": False,
        }
    )
    assert not lm.backbone.tie_weights
    out = tmp_path / "book"
    lm.export_to_transformers(out)
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    head = np.asarray(lm.backbone.token_embedding.reverse_embeddings)
    np.testing.assert_array_equal(reloaded.lm_head.weight.detach().numpy(), head.T)
    assert not np.array_equal(
        head.T, np.asarray(lm.backbone.token_embedding.embeddings)
    )
    ids = token_batch(seed=4, length=8)
    np.testing.assert_allclose(
        reference_logits(reloaded, ids)[1], our_outputs(lm, ids)[1], atol=1e-5
    )
    # Our reader loads the untied head back.
    again = kgs.GPTCausalLM.from_preset(str(out))
    assert not again.backbone.tie_weights
    np.testing.assert_allclose(
        our_outputs(again, ids)[1], our_outputs(lm, ids)[1], atol=1e-6
    )


def test_write_openai_checkpoint_round_trip(tiny, tmp_path):
    hf_dir, _, _ = tiny
    with weights.read_gpt2_checkpoint(hf_dir) as ckpt:
        tensors = {name: ckpt.tensor(name) for name in ckpt.names}
        config = ckpt.config
    weights.write_openai_checkpoint(tensors, config, tmp_path / "oa")
    with weights.read_gpt2_checkpoint(tmp_path / "oa") as back:
        assert back.format == "openai"
        assert back.config.n_layer == 2
        for name, value in tensors.items():
            np.testing.assert_array_equal(back.tensor(name), value)


# === Bad input ===


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_hf_config_disagreeing_with_tensors_names_both_shapes(tiny, tmp_path):
    folder = copy_folder(tiny[0], tmp_path / "bad")
    config = json.loads((folder / "config.json").read_text())
    config["n_positions"] = 128
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(weights.CheckpointError) as info:
        weights.read_gpt2_checkpoint(folder)
    message = str(info.value)
    assert "transformer.wpe.weight" in message
    assert "(64, 32)" in message and "(128, 32)" in message
    with pytest.raises(weights.CheckpointError, match="wpe"):
        kgs.GPTCausalLM.from_preset(str(folder))


def test_openai_hparams_disagreeing_with_tensors_names_both_shapes(tiny, tmp_path):
    folder = copy_folder(tiny[1], tmp_path / "bad")
    hparams = json.loads((folder / "hparams.json").read_text())
    hparams["n_embd"] = 48
    (folder / "hparams.json").write_text(json.dumps(hparams))
    with pytest.raises(weights.CheckpointError) as info:
        weights.read_gpt2_checkpoint(folder)
    message = str(info.value)
    assert "model/wte" in message
    assert "(50257, 32)" in message and "(50257, 48)" in message

    hparams.update(n_embd=32, n_layer=1)
    (folder / "hparams.json").write_text(json.dumps(hparams))
    with pytest.raises(weights.CheckpointError, match="model/h1/"):
        weights.read_gpt2_checkpoint(folder)


def test_lm_head_equal_to_wte_is_ignored_and_a_different_one_refused(tiny, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = copy_folder(tiny[0], tmp_path / "with_head")
    tensors = load_file(folder / "model.safetensors")
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].copy()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with weights.read_gpt2_checkpoint(folder) as ckpt:
        assert names.LM_HEAD not in ckpt.names

    tensors["lm_head.weight"][0, 0] += 1.0
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(weights.CheckpointError, match="tie_word_embeddings"):
        weights.read_gpt2_checkpoint(folder)


def test_folder_in_neither_format_lists_what_was_expected(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    with pytest.raises(weights.CheckpointError) as info:
        weights.read_gpt2_checkpoint(tmp_path)
    message = str(info.value)
    for expected in (
        "hparams.json",
        "model.ckpt.index",
        "config.json",
        "model.safetensors",
    ):
        assert expected in message
    assert "weights.bin" in message
    with pytest.raises(weights.CheckpointError, match="is not a folder"):
        weights.read_gpt2_checkpoint(tmp_path / "missing")


def test_other_model_types_are_refused(tiny, tmp_path):
    folder = copy_folder(tiny[0], tmp_path / "relu")
    config = json.loads((folder / "config.json").read_text())
    config["activation_function"] = "relu"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(weights.CheckpointError, match="activation_function='relu'"):
        weights.read_gpt2_checkpoint(folder)


def test_truncated_safetensors_is_a_clear_error(tiny, tmp_path):
    folder = copy_folder(tiny[0], tmp_path / "cut")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(weights.CheckpointError, match="truncated or corrupt"):
        weights.read_gpt2_checkpoint(folder)
    with pytest.raises(weights.CheckpointError, match="model.safetensors"):
        kgs.GPTBackbone.from_preset(str(folder))


def test_truncated_openai_checkpoint_is_a_clear_error(tiny, tmp_path):
    folder = copy_folder(tiny[1], tmp_path / "cut")
    data_file = next(folder.glob("model.ckpt.data-*"))
    data = data_file.read_bytes()
    data_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(weights.CheckpointError, match="truncated or corrupt"):
        weights.backbone_from_checkpoint(folder, progress=False)


def test_safetensors_missing_is_named(tiny, tmp_path):
    folder = tmp_path / "nocheckpoint"
    folder.mkdir()
    shutil.copy(tiny[0] / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(
        weights.CheckpointError, match="pytorch_model.bin, which is not read"
    ):
        weights.read_gpt2_checkpoint(folder)


# === Through the loopback Hub (tests/hub_server.py) ===


def test_from_preset_hf_handle_through_loopback_hub(hub_server, tiny):
    hf_dir, _, model = tiny
    hub_server.upload_folder("test/tiny-gpt2", hf_dir)
    lm = kgs.GPTCausalLM.from_preset("hf://test/tiny-gpt2")
    ids = token_batch(seed=5)
    np.testing.assert_allclose(
        our_outputs(lm, ids)[1], reference_logits(model, ids)[1], atol=1e-5
    )
    fetched = [path for _, path, _ in hub_server.requests if "/resolve/" in path]
    assert any(path.endswith("/model.safetensors") for path in fetched)
    backbone = kgs.GPTBackbone.from_preset("hf://test/tiny-gpt2")
    assert (backbone.num_layers, backbone.hidden_dim) == (2, 32)


def test_builtin_preset_download_cut_by_the_hub(hub_server, tiny, tiny_preset, cache):
    hf_dir, _, model = tiny
    hub_server.upload_folder("test/tiny-gpt2", hf_dir)
    # Every download of the weights sends half the bytes, then hangs up.
    hub_server.fail("GET", r"model\.safetensors$", truncate=0.5, times=None)
    with pytest.raises(
        weights.DownloadError, match="model.safetensors.*test/tiny-gpt2"
    ):
        kgs.GPTCausalLM.from_preset(tiny_preset)
    presets_dir = cache / "presets"
    assert not presets_dir.exists() or not list(presets_dir.iterdir())

    hub_server.clear_faults()
    lm = kgs.GPTCausalLM.from_preset(tiny_preset)
    ids = token_batch(seed=6)
    np.testing.assert_allclose(
        our_outputs(lm, ids)[1], reference_logits(model, ids)[1], atol=1e-5
    )
    assert (presets_dir / tiny_preset / "model.weights.h5").is_file()
