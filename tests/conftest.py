"""Shared fixtures: the test data directory, corpora, and a network guard.

The data lives outside the repository (read-only, e.g. `../shared/data`) and
is found through `KERAS_GPT_SCRATCH_DATA`, which CI sets. A test that needs it
fails (never skips) when it is missing, so a misconfigured run cannot pass by
testing nothing.
"""

# First: the Hugging Face client reads HF_ENDPOINT once, when first imported
# (keras_hub imports it with keras_gpt_scratch), and importing hub_server
# points it at the loopback test Hub and a throwaway Hugging Face home. Its
# `hub_server` and `hf_home` fixtures are shared by all tests.
from hub_server import hf_home, hub_server  # noqa: F401  # isort: skip

import os
import socket
from pathlib import Path

import pytest

DATA_ENV = "KERAS_GPT_SCRATCH_DATA"
DATA_FILES = (
    "gpt2/gpt2.tiktoken",
    "gpt2/encoder.json",
    "gpt2/vocab.bpe",
    "tinyshakespeare/input.txt",
    "verdict/the-verdict.txt",
)
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Tests never reach the network: only loopback connections are allowed.

    A test that would download fails at once with a clear error instead of
    hanging or silently depending on the internet.
    """
    original_connect = socket.socket.connect
    original_getaddrinfo = socket.getaddrinfo

    def is_loopback(host) -> bool:
        host = host.decode() if isinstance(host, bytes) else str(host)
        return host in LOOPBACK_HOSTS or host.startswith("127.")

    def guarded_connect(sock, address, *args, **kwargs):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(
            address[0]
        ):
            raise OSError(f"Tests may not use the network (connect to {address}).")
        return original_connect(sock, address, *args, **kwargs)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not is_loopback(host):
            raise OSError(f"Tests may not use the network (lookup of {host!r}).")
        return original_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded_connect)
        patch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
        yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The test data directory from `KERAS_GPT_SCRATCH_DATA`; fails if absent."""
    value = os.environ.get(DATA_ENV, "").strip()
    if not value:
        pytest.fail(
            f"{DATA_ENV} is not set. Point it at the test data folder, e.g. "
            f"`export {DATA_ENV}=$PWD/../shared/data` from the project root."
        )
    root = Path(value)
    missing = [name for name in DATA_FILES if not (root / name).is_file()]
    if missing:
        pytest.fail(
            f"{DATA_ENV}={value} lacks {', '.join(missing)}. Point it at the "
            "shared test data folder (it holds SHA256SUMS and README.md)."
        )
    return root


@pytest.fixture(scope="session")
def verdict_text(data_dir) -> str:
    return (data_dir / "verdict/the-verdict.txt").read_bytes().decode("utf-8")


@pytest.fixture(scope="session")
def shakespeare_text(data_dir) -> str:
    return (data_dir / "tinyshakespeare/input.txt").read_bytes().decode("utf-8")


@pytest.fixture(scope="session")
def gpt_tokenizer(data_dir):
    from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer

    return GPTTokenizer(ranks_path=data_dir / "gpt2")


@pytest.fixture(scope="session")
def shakespeare_ids(gpt_tokenizer, shakespeare_text):
    """Tiny Shakespeare as GPT-2 ids, tokenized once per session."""
    return gpt_tokenizer(shakespeare_text)
