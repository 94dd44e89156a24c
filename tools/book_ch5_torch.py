#!/usr/bin/env python
"""The book's chapter-5 pretraining run in PyTorch: the reference for ours.

Usage:

    python tools/book_ch5_torch.py [--epochs 10] [--seed 123] [--layers 12]
        [--export-init DIR] [--json FILE]

It writes out the book's chapter-4 `GPTModel` (PyTorch defaults for every
initialisation) and chapter-5 `train_model_simple` loop: The Verdict, 90/10
character split, 256-token windows with stride 256, batch 2, shuffled,
AdamW(lr=4e-4, weight_decay=0.1), `torch.manual_seed(seed)` before the
model is built. After each epoch it prints the mean training loss (dropout
on) and, in eval mode, the loss on all training and validation windows.

`--export-init DIR` saves the model's initial weights, before any step, as
a preset of ours. Then

    keras-gpt train --from DIR --corpus verdict --context-length 256 \\
        --batch-size 2 --epochs 10 --learning-rate 4e-4 \\
        --lr-schedule constant --clipnorm 0

trains our model from exactly the weights the PyTorch run starts from,
which separates the effect of the random initial draw from everything else.

The GPT-2 BPE ranks and the text come from `KERAS_GPT_SCRATCH_DATA` (or
our usual search order). Needs torch (`pip install torch==2.13.0`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from torch import nn

# === The book's chapter-4 model (PyTorch) ===


class MultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias):
        super().__init__()
        self.d_out, self.num_heads = d_out, num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        mask = torch.triu(torch.ones(context_length, context_length), diagonal=1)
        self.register_buffer("mask", mask)

    def forward(self, x):
        b, t, _ = x.shape  # (B, T, C)

        def heads(y):  # (B, H, T, D)
            return y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.W_query(x)), heads(self.W_key(x)), heads(self.W_value(x))
        scores = q @ k.transpose(2, 3)  # (B, H, T, T)
        scores.masked_fill_(self.mask.bool()[:t, :t], -torch.inf)
        weights = self.dropout(torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1))
        context = (weights @ v).transpose(1, 2).contiguous().view(b, t, self.d_out)
        return self.out_proj(context)


class LayerNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class GELU(nn.Module):
    def forward(self, x):
        c = torch.sqrt(torch.tensor(2.0 / torch.pi))
        return 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * x**3)))


class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        dim = cfg["emb_dim"]
        self.att = MultiHeadAttention(
            dim,
            dim,
            cfg["context_length"],
            cfg["drop_rate"],
            cfg["n_heads"],
            cfg["qkv_bias"],
        )
        self.ff = nn.Sequential(
            nn.Linear(dim, 4 * dim), GELU(), nn.Linear(4 * dim, dim)
        )
        self.norm1, self.norm2 = LayerNorm(dim), LayerNorm(dim)
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(
            *[TransformerBlock(cfg) for _ in range(cfg["n_layers"])]
        )
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, idx):
        positions = self.pos_emb(torch.arange(idx.shape[1]))
        x = self.drop_emb(self.tok_emb(idx) + positions)  # (B, T, C)
        return self.out_head(self.final_norm(self.trf_blocks(x)))  # (B, T, V)


# === Export to our preset format ===

# (our weight path, book state-dict key, transpose): nn.Linear is (out, in),
# Keras Dense kernels are (in, out).
GLOBAL_NAMES = [
    ("token_embedding/embeddings", "tok_emb.weight", False),
    ("token_embedding/reverse_embeddings", "out_head.weight", True),
    ("position_embedding/embeddings", "pos_emb.weight", False),
    ("layer_norm/scale", "final_norm.scale", False),
    ("layer_norm/shift", "final_norm.shift", False),
]
BLOCK_NAMES = [
    ("attention_norm/scale", "norm1.scale", False),
    ("attention_norm/shift", "norm1.shift", False),
    ("attention/query/kernel", "att.W_query.weight", True),
    ("attention/query/bias", "att.W_query.bias", False),
    ("attention/key/kernel", "att.W_key.weight", True),
    ("attention/key/bias", "att.W_key.bias", False),
    ("attention/value/kernel", "att.W_value.weight", True),
    ("attention/value/bias", "att.W_value.bias", False),
    ("attention/output_dense/kernel", "att.out_proj.weight", True),
    ("attention/output_dense/bias", "att.out_proj.bias", False),
    ("feed_forward_norm/scale", "norm2.scale", False),
    ("feed_forward_norm/shift", "norm2.shift", False),
    ("feed_forward/intermediate_dense/kernel", "ff.0.weight", True),
    ("feed_forward/intermediate_dense/bias", "ff.0.bias", False),
    ("feed_forward/output_dense/kernel", "ff.2.weight", True),
    ("feed_forward/output_dense/bias", "ff.2.bias", False),
]


def to_causal_lm(model: GPTModel, cfg: dict):
    """Our `GPTCausalLM` (with tokenizer) holding the PyTorch model's weights."""
    import keras_gpt_scratch as kgs

    backbone = kgs.GPTBackbone.from_book_config(cfg)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    names = list(GLOBAL_NAMES)
    for i in range(cfg["n_layers"]):
        names += [
            (f"transformer_layer_{i}/{ours}", f"trf_blocks.{i}.{book}", t)
            for ours, book, t in BLOCK_NAMES
        ]
    variables = {w.path: w for w in backbone.weights}
    for ours, book, transpose in names:
        if book not in state:  # qkv biases only with qkv_bias=True
            continue
        value = state[book].T if transpose else state[book]
        variables.pop(ours).assign(value)
    if variables:
        raise RuntimeError(
            f"Weights not set from the PyTorch model: {sorted(variables)}"
        )
    preprocessor = kgs.GPTCausalLMPreprocessor(
        kgs.GPTTokenizer(), sequence_length=cfg["context_length"]
    )
    return kgs.GPTCausalLM(backbone, preprocessor)


# === The book's chapter-5 run ===


def windows(ids, length):
    starts = range(0, len(ids) - length, length)  # the book's GPTDatasetV1
    x = torch.tensor([ids[i : i + length] for i in starts])
    y = torch.tensor([ids[i + 1 : i + length + 1] for i in starts])
    return x, y


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--layers", type=int, default=12, help="n_layers (12: 124M)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--export-init", help="save the initial weights as our preset")
    p.add_argument("--json", help="write the per-epoch losses here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from keras_gpt_scratch.data import corpora
    from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer

    cfg = {
        "vocab_size": 50257,
        "context_length": 256,
        "emb_dim": 768,
        "n_heads": 12,
        "n_layers": args.layers,
        "drop_rate": 0.1,
        "qkv_bias": False,
    }
    text = corpora.load_the_verdict()
    split = int(0.9 * len(text))
    encoding = GPTTokenizer().encoding  # tiktoken's GPT-2 BPE
    train_x, train_y = windows(encoding.encode_ordinary(text[:split]), 256)
    val_x, val_y = windows(encoding.encode_ordinary(text[split:]), 256)

    torch.manual_seed(args.seed)
    model = GPTModel(cfg)
    if args.export_init:
        to_causal_lm(model, cfg).save_to_preset(args.export_init)
        print(f"initial weights saved as a preset in {args.export_init}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    loss_fn = nn.functional.cross_entropy

    def evaluate(x, y):
        model.eval()
        with torch.no_grad():
            losses = [
                loss_fn(model(x[i : i + 2]).flatten(0, 1), y[i : i + 2].flatten())
                for i in range(0, len(x), 2)
            ]
        model.train()
        return float(torch.stack(losses).mean())

    history, start = [], time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_x))
        losses = []
        for i in range(0, len(order) - 1, 2):  # batch 2, drop_last
            batch = order[i : i + 2]
            optimizer.zero_grad()
            logits = model(train_x[batch])
            loss = loss_fn(logits.flatten(0, 1), train_y[batch].flatten())
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        row = {
            "epoch": epoch + 1,
            "train_loss_dropout": float(np.mean(losses)),
            "train_loss": evaluate(train_x, train_y),
            "val_loss": evaluate(val_x, val_y),
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": cfg, "seed": args.seed, "epochs": history}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
