"""tools/book_ch5_torch.py: the book's PyTorch model, and its export to ours."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keras_gpt_scratch as kgs  # noqa: E402

TOOL = Path(__file__).parent.parent / "tools" / "book_ch5_torch.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("book_ch5_torch", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_config(qkv_bias):
    return {
        "vocab_size": 50257,
        "context_length": 16,
        "emb_dim": 32,
        "n_heads": 4,
        "n_layers": 2,
        "drop_rate": 0.0,
        "qkv_bias": qkv_bias,
    }


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_exported_weights_give_the_book_models_logits(tool, data_dir, qkv_bias):
    cfg = small_config(qkv_bias)
    torch.manual_seed(0)
    book = tool.GPTModel(cfg).eval()
    ours = tool.to_causal_lm(book, cfg)
    ids = np.random.default_rng(0).integers(0, 50257, (2, 16))
    with torch.no_grad():
        expected = book(torch.tensor(ids)).numpy()
    got = ours({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-4)


def test_reference_run_trains_and_exports_its_initial_weights(tool, data_dir, tmp_path):
    out = tmp_path / "run.json"
    init = tmp_path / "init"
    code = tool.main(
        [
            "--layers",
            "1",
            "--epochs",
            "2",
            "--export-init",
            str(init),
            "--json",
            str(out),
        ]
    )
    assert code == 0
    history = json.loads(out.read_text())["epochs"]
    assert [e["epoch"] for e in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"] < 10.0
    lm = kgs.GPTCausalLM.from_preset(str(init))
    assert lm.backbone.num_layers == 1 and not lm.backbone.tie_weights
    # Initial weights: the untrained model scores about ln(50257) or worse.
    ids = np.random.default_rng(1).integers(0, 50257, (1, 33))
    logits = np.asarray(
        lm({"token_ids": ids[:, :-1], "padding_mask": np.ones((1, 32), "int32")})
    )[0].astype("float64")
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
    log_p = logits[np.arange(32), ids[0, 1:]] - logits.max(-1) - log_z
    assert -log_p.mean() > 10.0
