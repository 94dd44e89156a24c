"""`tools/verify_gpt2.py`: passes on good checkpoints, fails on bad ones."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from keras_gpt_scratch import weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "verify_gpt2.py"
PROMPTS = ["Every effort moves you", "Hello, world"]


def load_tool():
    spec = importlib.util.spec_from_file_location("verify_gpt2", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return load_tool()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny random GPT-2 in both formats: (HF folder, OpenAI folder)."""
    torch.manual_seed(1)
    config = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=64,
        vocab_size=50257,
        initializer_range=0.1,  # varied greedy tokens (0.02 repeats one)
    )
    root = tmp_path_factory.mktemp("verify")
    hf_dir = root / "hf"
    transformers.GPT2LMHeadModel(config).save_pretrained(hf_dir)
    with weights.read_gpt2_checkpoint(hf_dir) as ckpt:
        tensors = {name: ckpt.tensor(name) for name in ckpt.names}
        weights.write_openai_checkpoint(tensors, ckpt.config, root / "openai")
    return hf_dir, root / "openai"


@pytest.mark.parametrize("fmt", [0, 1], ids=["transformers", "openai"])
def test_verify_passes_on_tiny_checkpoints(tool, checkpoints, fmt):
    lines = []
    report = tool.verify(str(checkpoints[fmt]), PROMPTS, tokens=8, log=lines.append)
    assert report["passed"], "\n".join(lines)
    for row in report["prompts"]:
        assert row["logits_max_abs_diff"] < 1e-5
        assert row["hidden_max_abs_diff"] < 1e-5
        assert row["greedy_agree"] == 8
        # keras_hub's GPT2Backbone loaded the same folder and agrees too.
        assert row["keras_hub_logits_max_abs_diff"] < 1e-4
    assert lines[-1] == "RESULT: PASS"
    # The command line's verdict: exit status 0.
    argv = [str(checkpoints[fmt]), "--tokens", "4", "--prompts", "Hello, world"]
    assert tool.main([*argv, "--no-keras-hub"]) == 0


def test_verify_cli_exit_codes(checkpoints, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    hf_dir, _ = checkpoints
    good = subprocess.run(
        [sys.executable, str(TOOL), str(hf_dir), "--tokens", "4", "--prompts", "Hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "RESULT: PASS" in good.stdout
    assert "4/4 tokens agree" in good.stdout

    # A truncated checkpoint: unreadable, exit 2 with the reason.
    cut = shutil.copytree(hf_dir, tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 3])
    bad = subprocess.run(
        [sys.executable, str(TOOL), str(cut), "--tokens", "4", "--no-keras-hub"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "truncated" in bad.stderr


def test_verify_fails_on_nan_weights(tool, checkpoints, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = shutil.copytree(checkpoints[0], tmp_path / "nan")
    tensors = load_file(folder / "model.safetensors")
    key = next(k for k in tensors if k.endswith("h.1.mlp.c_fc.weight"))
    tensors[key][0, 0] = np.nan
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert (
        tool.main(
            [
                str(folder),
                "--tokens",
                "2",
                "--prompts",
                "Hello, world",
                "--no-keras-hub",
            ]
        )
        == 1
    )


def test_verify_fails_when_our_conversion_is_wrong(tool, checkpoints, monkeypatch):
    # Corrupt only our side, the classic c_attn bug: key and value thirds
    # swapped. The reference still reads the file, so the tool must see it.
    original = weights.convert.load_checkpoint_weights

    def broken(backbone, checkpoint, progress=True):
        original(backbone, checkpoint, progress)
        attention = backbone.get_layer("transformer_layer_0").attention
        key, value = (
            np.asarray(attention.key.kernel),
            np.asarray(attention.value.kernel),
        )
        attention.key.kernel.assign(value)
        attention.value.kernel.assign(key)

    monkeypatch.setattr(weights.convert, "load_checkpoint_weights", broken)
    lines = []
    report = tool.verify(
        str(checkpoints[1]),
        PROMPTS[:1],
        tokens=4,
        keras_hub_check=False,
        log=lines.append,
    )
    assert not report["passed"]
    assert report["prompts"][0]["logits_max_abs_diff"] > 1e-3
    assert "TOO LARGE" in "\n".join(lines)
    assert lines[-1] == "RESULT: FAIL"
