import dataclasses
import http.server
import importlib.machinery
import shutil
import sys
import threading
import types
import urllib.error

import pytest

from keras_gpt_scratch import paths
from keras_gpt_scratch.data import corpora
from keras_gpt_scratch.data.corpora import (
    load_text_files,
    load_the_verdict,
    load_tiny_shakespeare,
)

# Captured before any test patches it.
REAL_TFDS_LOADER = corpora._tiny_shakespeare_from_tfds
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


class _Handler(http.server.BaseHTTPRequestHandler):
    # path -> (body, declared length); a declared length above len(body)
    # makes the client see a connection cut mid-download.
    routes: dict = {}
    requests: list = []

    def do_GET(self):
        self.requests.append(self.path)
        if self.path not in self.routes:
            self.send_error(404)
            return
        body, length = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A file server on 127.0.0.1: `serve(path, body)` returns its URL."""
    handler = type("Handler", (_Handler,), {"routes": {}, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def serve(path, body, length=None):
        handler.routes[path] = (body, len(body) if length is None else length)
        return f"http://127.0.0.1:{server.server_port}{path}"

    serve.requests = handler.requests
    yield serve
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def no_sources(monkeypatch, tmp_path):
    """No data dir, an empty cache dir and no TFDS; downloads still work."""
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(paths.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(corpora, "_tiny_shakespeare_from_tfds", lambda: None)
    return tmp_path / "cache"


@pytest.fixture
def isolated(no_sources, monkeypatch):
    """`no_sources`, offline."""

    def offline(url, destination, expected_sha256, timeout=60.0):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(paths, "download_file", offline)
    return no_sources


def use_url(monkeypatch, url):
    corpus = dataclasses.replace(corpora.TINY_SHAKESPEARE, url=url)
    monkeypatch.setattr(corpora, "TINY_SHAKESPEARE", corpus)


# === The corpora's facts (from the shared data) ===


def test_tiny_shakespeare_splits(data_dir, shakespeare_text):
    whole = load_tiny_shakespeare("all")
    assert whole == shakespeare_text
    assert len(whole) == 1_115_394
    assert whole.count("\n") == 40_000
    train = load_tiny_shakespeare("train")
    validation = load_tiny_shakespeare("validation")
    test = load_tiny_shakespeare()  # Defaults to train.
    assert test == train
    test = load_tiny_shakespeare("test")
    assert (len(train), len(validation), len(test)) == (1_003_854, 55_770, 55_770)
    assert train + validation + test == whole
    assert not train.endswith("\n")  # TFDS's cut falls mid-line.


def test_tiny_shakespeare_token_counts(gpt_tokenizer):
    counts = [
        len(gpt_tokenizer(load_tiny_shakespeare(split)))
        for split in ("train", "validation", "test")
    ]
    assert counts == [301_966, 18_066, 17_995]


def test_the_verdict(verdict_text):
    text = load_the_verdict()
    assert text == verdict_text
    assert len(text) == 20_479
    assert text.startswith("I HAD always thought Jack Gisburn")


def test_unknown_split():
    with pytest.raises(ValueError, match="'train', 'validation', 'test', 'all'"):
        load_tiny_shakespeare("dev")


# === Where the files come from ===


def test_explicit_path(data_dir, isolated, tmp_path):
    text = load_tiny_shakespeare("test", path=data_dir / "tinyshakespeare/input.txt")
    assert len(text) == 55_770
    assert (
        load_the_verdict(path=str(data_dir / "verdict/the-verdict.txt"))[:5] == "I HAD"
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_the_verdict(path=tmp_path / "missing.txt")
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not the verdict")
    with pytest.raises(paths.ChecksumError, match="wrong.txt"):
        load_the_verdict(path=wrong)
    assert wrong.exists()  # A user's file is never deleted.


def test_data_dir_copy_with_a_bad_checksum_is_an_error(monkeypatch, isolated, tmp_path):
    root = tmp_path / "data"
    (root / "verdict").mkdir(parents=True)
    (root / "verdict/the-verdict.txt").write_text("tampered")
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(root))
    with pytest.raises(paths.ChecksumError, match="the-verdict.txt"):
        load_the_verdict()
    assert (root / "verdict/the-verdict.txt").read_text() == "tampered"


def test_offline_without_a_copy_names_the_remedies(isolated):
    with pytest.raises(FileNotFoundError) as error:
        load_tiny_shakespeare()
    message = str(error.value)
    for expected in (
        "KERAS_GPT_SCRATCH_DATA: not set",
        str(isolated / "tinyshakespeare/input.txt"),
        "TensorFlow Datasets: not installed",
        "URLError",
        "set KERAS_GPT_SCRATCH_DATA",
        "`path=`",
    ):
        assert expected in message
    with pytest.raises(FileNotFoundError, match="The Verdict"):
        load_the_verdict()


def test_valid_cache_is_used(data_dir, isolated):
    cached = isolated / "tinyshakespeare/input.txt"
    cached.parent.mkdir(parents=True)
    shutil.copy(data_dir / "tinyshakespeare/input.txt", cached)
    assert len(load_tiny_shakespeare("validation")) == 55_770  # No download.
    other = isolated.parent / "other-cache"
    (other / "verdict").mkdir(parents=True)
    shutil.copy(data_dir / "verdict/the-verdict.txt", other / "verdict")
    assert len(load_the_verdict(cache_dir=other)) == 20_479


def test_download_into_the_cache(data_dir, no_sources, monkeypatch, http_server):
    body = (data_dir / "tinyshakespeare/input.txt").read_bytes()
    use_url(monkeypatch, http_server("/input.txt", body))
    text = load_tiny_shakespeare("all", cache_dir=no_sources)
    assert len(text) == 1_115_394
    cached = no_sources / "tinyshakespeare/input.txt"
    assert paths.sha256_file(cached) == SHAKESPEARE_SHA256
    assert sorted(p.name for p in cached.parent.iterdir()) == ["input.txt"]
    assert http_server.requests == ["/input.txt"]
    load_tiny_shakespeare("all", cache_dir=no_sources)
    assert http_server.requests == ["/input.txt"]  # The cache is reused.


def test_bad_cache_is_deleted_and_fetched_again(
    data_dir, no_sources, monkeypatch, http_server
):
    cached = no_sources / "tinyshakespeare/input.txt"
    cached.parent.mkdir(parents=True)
    body = (data_dir / "tinyshakespeare/input.txt").read_bytes()
    cached.write_bytes(body[:1000])  # A truncated earlier download.
    use_url(monkeypatch, http_server("/input.txt", body))
    assert load_tiny_shakespeare("all", cache_dir=no_sources) == body.decode()
    assert paths.sha256_file(cached) == SHAKESPEARE_SHA256


def test_bad_download_is_never_used_nor_kept(
    data_dir, no_sources, monkeypatch, http_server
):
    cached = no_sources / "tinyshakespeare/input.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stale")
    use_url(monkeypatch, http_server("/input.txt", b"a different text"))
    with pytest.raises(FileNotFoundError) as error:
        load_tiny_shakespeare(cache_dir=no_sources)
    assert "bad checksum, deleted" in str(error.value)
    assert "ChecksumError" in str(error.value)
    assert list(cached.parent.iterdir()) == []  # Neither the bad file nor a temp.


def test_download_file_is_atomic(tmp_path, http_server):
    body = b"x" * 100_000
    destination = tmp_path / "sub/file.txt"
    url = http_server("/cut", body[:50_000], length=len(body))
    with pytest.raises(ConnectionError, match="cut after 50000 of 100000"):
        paths.download_file(url, destination, paths.sha256_bytes(body), timeout=10)
    assert list((tmp_path / "sub").iterdir()) == []
    destination.write_bytes(b"old good file")
    url = http_server("/wrong", b"y" * 10)
    with pytest.raises(paths.ChecksumError, match="discarded"):
        paths.download_file(url, destination, paths.sha256_bytes(body), timeout=10)
    assert destination.read_bytes() == b"old good file"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["file.txt"]
    url = http_server("/good", body)
    paths.download_file(url, destination, paths.sha256_bytes(body), timeout=10)
    assert destination.read_bytes() == body


def test_write_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "a/b.bin"
    paths.write_atomic(target, b"one")
    paths.write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]


def test_tensorflow_datasets_source(data_dir, isolated, monkeypatch):
    body = (data_dir / "tinyshakespeare/input.txt").read_bytes()
    start, end = corpora.TINY_SHAKESPEARE_SPLITS["validation"]
    splits = {
        "train": body[: corpora.TINY_SHAKESPEARE_SPLITS["train"][1]],
        "validation": body[start:end],
        "test": body[end:],
    }

    class FakeDataset:
        def __init__(self, text):
            self.text = text

        def as_numpy_iterator(self):
            return iter([{"text": self.text}])

    fake_tfds = types.ModuleType("tensorflow_datasets")
    fake_tfds.__spec__ = importlib.machinery.ModuleSpec("tensorflow_datasets", None)
    fake_tfds.load = lambda name, split, download: FakeDataset(splits[split])
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds)
    monkeypatch.setattr(corpora, "_tiny_shakespeare_from_tfds", REAL_TFDS_LOADER)
    assert len(load_tiny_shakespeare("test")) == 55_770
    cached = isolated / "tinyshakespeare/input.txt"
    assert paths.sha256_file(cached) == SHAKESPEARE_SHA256
    # A TFDS text that differs is not used.
    cached.unlink()
    splits["test"] = b"something else"
    with pytest.raises(FileNotFoundError, match="TensorFlow Datasets: text differs"):
        load_tiny_shakespeare("test")


# === User text files ===


def test_load_text_files(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("First document.\n", encoding="utf-8")
    second.write_bytes("\ufeffSecond — with a BOM.".encode())
    assert load_text_files([first, str(second)]) == (
        "First document.\n<|endoftext|>Second — with a BOM."
    )
    assert load_text_files(first) == "First document.\n"
    assert load_text_files([first, second], separator="\n\n").count("\n\n") == 1


def test_load_text_files_errors(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not valid UTF-8"):
        load_text_files([latin1])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text_files([tmp_path / "missing.txt"])
    with pytest.raises(FileNotFoundError, match="folder"):
        load_text_files(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        load_text_files([])
