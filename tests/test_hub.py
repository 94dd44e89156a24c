"""Push to and pull from the Hugging Face Hub, against the loopback Hub.

The client is the real, unpatched `huggingface_hub`; only `HF_ENDPOINT`
points at `tests/hub_server.py`. Every test gets an empty Hub, its own
Hugging Face home and cache, and no token unless it sets one.
"""

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import huggingface_hub
import keras
import keras_hub
import numpy as np
import pytest
import yaml
from hub_server import set_offline, use_hf_home

import keras_gpt_scratch
from keras_gpt_scratch import cli, hub
from keras_gpt_scratch.models.gpt_backbone import GPTBackbone
from keras_gpt_scratch.models.gpt_causal_lm import GPTCausalLM
from keras_gpt_scratch.models.gpt_causal_lm_preprocessor import (
    GPTCausalLMPreprocessor,
)
from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer

TINY = dict(
    vocabulary_size=50257,
    num_layers=1,
    num_heads=2,
    hidden_dim=32,
    intermediate_dim=64,
    dropout=0.0,
    max_sequence_length=64,
)
PROMPT = "ROMEO:"
REPO = "test/gpt-tiny"
TEXT = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "JULIET: O Romeo, Romeo, wherefore art thou Romeo?",
    "ROMEO: It is the east, and Juliet is the sun.",
    "JULIET: Deny thy father and refuse thy name.",
]
RUN = {"preset": "gpt_tiny", "init_from": None, "corpus": "tinyshakespeare"}
RUN.update(steps=2, batch_size=2, context_length=64, learning_rate=0.002)
SUMMARY = {"train_loss": 10.5, "val_loss": 10.81234, "val_nats_per_char": 2.75}


@dataclasses.dataclass
class Trained:
    preset: Path  # <run>/best, beside the run's run.json and summary.json
    weights: list
    generation: str
    other: GPTCausalLM  # a second model with other weights
    other_weights: list


def make_lm(seed):
    keras.utils.set_random_seed(seed)
    preprocessor = GPTCausalLMPreprocessor(GPTTokenizer(), sequence_length=64)
    return GPTCausalLM(GPTBackbone(**TINY), preprocessor)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    """A preset written by a (two-step) training run, as the recipe lays it out."""
    lm = make_lm(1)
    lm.fit(TEXT, batch_size=2, epochs=1, verbose=0, shuffle=False)  # two steps
    run = tmp_path_factory.mktemp("run")
    lm.save_to_preset(run / "best")
    (run / "run.json").write_text(json.dumps(RUN))
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    lm.compile(sampler="greedy")
    other = make_lm(2)
    return Trained(
        preset=run / "best",
        weights=lm.backbone.get_weights(),
        generation=lm.generate(PROMPT, max_length=16),
        other=other,
        other_weights=other.backbone.get_weights(),
    )


def assert_same_weights(lm, expected):
    got = lm.backbone.get_weights()
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def tree_digest(path: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `path` (hidden ones too)."""
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def card_metadata(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def full_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def test_push_then_pull_elsewhere_gives_identical_generations(
    hub_server, trained, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    before = tree_digest(trained.preset)

    info = hub.push_preset_to_hub(trained.preset, REPO)

    assert info.oid == hub_server.head(REPO)
    assert str(info) == f"{hub_server.endpoint}/{REPO}/commit/{info.oid}"
    assert tree_digest(trained.preset) == before  # never written to
    files = hub_server.files(REPO)
    local = {p: (trained.preset / p).read_bytes() for p in before}
    for name in ("config.json", "task.json", "model.weights.h5", "tokenizer.json"):
        assert files[name] == local[name]
    assert "assets/tokenizer/gpt2.tiktoken" in files
    metadata = json.loads(files["metadata.json"])
    assert metadata[hub.FORMAT_KEY] == hub.FORMAT_VERSION
    assert metadata[hub.VERSION_KEY] == keras_gpt_scratch.__version__

    card = files["README.md"].decode()
    meta = card_metadata(card)
    assert meta["library_name"] == "keras-hub"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"keras", "keras-gpt-scratch", "gpt2", "text-generation"} <= set(
        meta["tags"]
    )
    assert "base_model" not in meta  # trained from scratch
    [result] = meta["model-index"][0]["results"]
    assert result["dataset"]["name"] == "Tiny Shakespeare"
    assert result["metrics"][0]["type"] == "loss"
    assert result["metrics"][0]["value"] == pytest.approx(10.8123)
    assert f'GPTCausalLM.from_preset("hf://{REPO}")' in card
    assert f"keras-gpt pull {REPO}" in card
    assert "Final validation loss: 10.8123" in card
    assert hub_server.token not in card

    # Another machine: an empty cache.
    use_hf_home(monkeypatch, tmp_path / "elsewhere")
    lm = GPTCausalLM.from_preset(f"hf://{REPO}")
    lm.compile(sampler="greedy")
    assert lm.generate(PROMPT, max_length=16) == trained.generation
    # keras_hub's own hf:// route, one hf_hub_download per file, works too.
    lm = keras_hub.models.CausalLM.from_preset(f"hf://{REPO}")
    assert isinstance(lm, GPTCausalLM)
    assert_same_weights(lm, trained.weights)


def test_pull_names_a_revision_by_commit_sha_tag_or_branch(
    hub_server, trained, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    first = hub.push_preset_to_hub(trained.preset, REPO, commit_message="first")
    # Someone edits the card on the Hub: a later push keeps their card.
    hub_server.upload_files(REPO, {"README.md": "---\nlicense: mit\n---\nOurs.\n"})
    second = trained.other.push_to_hub(REPO, commit_message="second")
    hub_server.create_tag(REPO, "v1", first.oid)

    assert hub_server.commits(REPO)[0] == second.oid
    assert first.oid in hub_server.commits(REPO)
    assert hub_server.files(REPO)["README.md"] == b"---\nlicense: mit\n---\nOurs.\n"

    use_hf_home(monkeypatch, tmp_path / "elsewhere")
    path = hub.pull(REPO, revision=first.oid)
    assert Path(path).name == first.oid  # the cache's snapshot of that commit
    assert_same_weights(GPTCausalLM.from_preset(path), trained.weights)
    assert_same_weights(GPTCausalLM.from_preset(hub.pull(REPO)), trained.other_weights)
    assert_same_weights(GPTCausalLM.from_preset(f"hf://{REPO}@v1"), trained.weights)

    # The command line, in a fresh process as a user runs it; a short sha.
    local = tmp_path / "first"
    argv = ["pull", REPO, "--revision", first.oid[:12], "--local-dir", str(local)]
    done = subprocess.run(
        [sys.executable, "-m", "keras_gpt_scratch.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(local)
    assert_same_weights(GPTCausalLM.from_preset(local), trained.weights)
    # The copy was built beside `local` and renamed: nothing else is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "elsewhere",
        "first",
        "hf-home",
    ]

    with pytest.raises(hub.HubRevisionNotFoundError, match="no revision 'v2'"):
        hub.pull(REPO, revision="v2")


def test_push_on_the_command_line_to_a_branch(hub_server, trained, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    argv = ["push", str(trained.preset), REPO, "--revision", "dev", "-m", "Try it"]
    assert cli.main(argv) == 0
    sha = hub_server.head(REPO, "dev")
    assert capsys.readouterr().out.strip().endswith(f"/commit/{sha}")
    assert hub_server.commits(REPO, "main") != hub_server.commits(REPO, "dev")
    assert "model.weights.h5" not in hub_server.files(REPO, "main")
    assert "model.weights.h5" in hub_server.files(REPO, "dev")
    assert hub_server.repos[REPO].commits[sha].title == "Try it"


def test_private_repo_needs_a_valid_token(hub_server, trained, monkeypatch, capfd):
    token = hub_server.token
    hub.push_preset_to_hub(trained.preset, "test/secret", private=True, token=token)
    assert hub_server.repos["test/secret"].private

    with pytest.raises(hub.HubRepositoryNotFoundError) as error:
        hub.pull("test/secret")
    assert "private and no token was sent" in str(error.value)
    assert "HF_TOKEN" in str(error.value)
    with pytest.raises(hub.HubRepositoryNotFoundError):
        GPTCausalLM.from_preset("hf://test/secret")

    wrong = "hf_" + "Wrong" * 7
    with pytest.raises(hub.HubAuthenticationError, match="rejected") as error:
        hub.pull("test/secret", token=wrong)
    assert wrong not in full_text(error.value)
    monkeypatch.setenv("HF_TOKEN", wrong)
    with pytest.raises(
        hub.HubAuthenticationError, match="rejected the token in HF_TOKEN"
    ):
        GPTCausalLM.from_preset("hf://test/secret")
    assert cli.main(["pull", "test/secret"]) == 2
    # Pushing with it fails before anything is created.
    with pytest.raises(hub.HubAuthenticationError, match="rejected") as error:
        hub.push_preset_to_hub(trained.preset, "test/other")
    assert wrong not in full_text(error.value)
    assert "test/other" not in hub_server.repos

    # Another user's token: no access to the repo, no right to push there.
    monkeypatch.delenv("HF_TOKEN")
    mallory = hub_server.add_user("mallory")
    with pytest.raises(hub.HubRepositoryNotFoundError, match="has no access"):
        hub.pull("test/secret", token=mallory)
    with pytest.raises(hub.HubAuthenticationError, match="write access to the 'test'"):
        hub.push_preset_to_hub(trained.preset, "test/public-one", token=mallory)

    # The right token, from the login cache (`hf auth login`), works.
    huggingface_hub.login(token=token, add_to_git_credential=False)
    assert_same_weights(
        GPTCausalLM.from_preset(hub.pull("test/secret")), trained.weights
    )

    out = capfd.readouterr()
    assert "rejected" in out.err  # the CLI's error
    for secret in (token, wrong, mallory):
        assert secret not in out.out + out.err


def test_pushing_without_a_token_fails_before_any_request(hub_server, trained):
    with pytest.raises(hub.HubAuthenticationError, match="needs a Hugging Face token"):
        hub.push_preset_to_hub(trained.preset, REPO)
    with pytest.raises(hub.HubAuthenticationError, match="needs a Hugging Face token"):
        trained.other.push_to_hub(REPO)
    assert hub_server.requests == []


def test_a_hub_that_is_down_fails_fast_naming_the_endpoint(
    hub_server, trained, monkeypatch, capsys
):
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    hub_server.stop()
    calls = {
        "pull": lambda: hub.pull(REPO),
        "from_preset": lambda: GPTCausalLM.from_preset(f"hf://{REPO}"),
        "push": lambda: hub.push_preset_to_hub(trained.preset, REPO),
        "push_to_hub": lambda: trained.other.push_to_hub(REPO),
    }
    for name, call in calls.items():
        start = time.monotonic()
        with pytest.raises(hub.HubUnreachableError) as error:
            call()
        assert time.monotonic() - start < 5, name
        assert hub_server.endpoint in str(error.value), name
        assert "HF_HUB_OFFLINE=1" in str(error.value), name
    assert cli.main(["pull", REPO]) == 2
    assert hub_server.endpoint in capsys.readouterr().err

    with hub_server.hang():  # connections accepted, never answered
        start = time.monotonic()
        with pytest.raises(hub.HubUnreachableError, match="HF_HUB_OFFLINE=1"):
            hub.pull(REPO)
        assert time.monotonic() - start < 5


def test_a_failed_push_leaves_the_local_preset_untouched(
    hub_server, trained, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    before = tree_digest(trained.preset)
    hub_server.fail("POST", r"/commit/", status=422, message="Injected", times=None)

    with pytest.raises(hub.HubTransferError, match="422") as error:
        hub.push_preset_to_hub(trained.preset, REPO)
    assert "preset was not modified" in str(error.value)
    with pytest.raises(hub.HubTransferError, match="422"):
        trained.other.push_to_hub(REPO)

    assert tree_digest(trained.preset) == before
    assert len(hub_server.commits(REPO)) == 1  # the repo's initial commit only
    assert list(staging.iterdir()) == []  # the staged copies are gone


def test_an_interrupted_pull_leaves_nothing_a_later_load_accepts(
    hub_server, trained, tmp_path, monkeypatch
):
    hub.push_preset_to_hub(trained.preset, REPO, token=hub_server.token)
    weights = r"/resolve/.*/model\.weights\.h5$"
    # Half the file, then the connection drops; the resumed request fails.
    hub_server.fail("GET", weights, truncate=0.5)
    hub_server.fail("GET", weights, status=503, message="Injected", times=None)
    local = tmp_path / "pulled"

    with pytest.raises(hub.HubTransferError, match="run the pull again"):
        hub.pull(REPO, local_dir=local)
    assert not local.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf-home"]
    got = [(m, s) for m, p, s in hub_server.requests if p.endswith("weights.h5")]
    assert ("GET", 503) in got  # cut off, then the resumed download failed

    # Offline, the half-downloaded snapshot is refused, not loaded.
    set_offline(monkeypatch)
    with pytest.raises(hub.HubNotCachedError, match="incomplete"):
        hub.pull(REPO)
    with pytest.raises(hub.HubNotCachedError, match="incomplete"):
        GPTCausalLM.from_preset(f"hf://{REPO}")

    # Online again, pulling resumes and completes.
    set_offline(monkeypatch, False)
    hub_server.clear_faults()
    assert hub.pull(REPO, local_dir=local) == str(local)
    assert_same_weights(GPTCausalLM.from_preset(local), trained.weights)


def test_offline_loads_what_was_pulled(hub_server, trained, monkeypatch):
    sha = hub.push_preset_to_hub(trained.preset, REPO, token=hub_server.token).oid
    path = hub.pull(REPO)
    answered = len(hub_server.requests)

    set_offline(monkeypatch)
    assert_same_weights(GPTCausalLM.from_preset(f"hf://{REPO}"), trained.weights)
    assert hub.pull(REPO, revision=sha) == path
    assert len(hub_server.requests) == answered  # not a single request
    with pytest.raises(hub.HubNotCachedError, match="HF_HUB_OFFLINE"):
        hub.pull("test/never-pulled")

    # Online but unreachable: the cached copy is used, with a warning.
    set_offline(monkeypatch, False)
    hub_server.stop()
    with pytest.warns(UserWarning, match="unreachable; using the cached copy"):
        assert hub.pull(REPO) == path


@pytest.mark.parametrize(
    "repo_id",
    ["gpt-tiny", "a/b/c", "hf://", "", "user/", "/name", "user/bad name", "user/-x"],
)
def test_bad_repo_ids_are_refused_before_any_request(hub_server, trained, repo_id):
    with pytest.raises(ValueError, match="namespace/name"):
        hub.pull(repo_id)
    with pytest.raises(ValueError, match="namespace/name"):
        hub.push_preset_to_hub(trained.preset, repo_id, token=hub_server.token)
    assert hub_server.requests == []


def test_parse_repo_id():
    assert hub.parse_repo_id("alice/gpt") == ("alice/gpt", None)
    assert hub.parse_repo_id("hf://alice/gpt@v1") == ("alice/gpt", "v1")
    with pytest.raises(ValueError, match="Empty revision"):
        hub.parse_repo_id("alice/gpt@")
    with pytest.raises(ValueError, match="namespace/name"):
        GPTCausalLM.from_preset("hf://gpt-tiny")


def test_a_folder_that_is_not_a_preset_is_refused_naming_the_file(
    hub_server, trained, tmp_path, capsys
):
    token = hub_server.token
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hub.push_preset_to_hub(notes, REPO, token=token)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(trained.preset, no_weights)
    (no_weights / "model.weights.h5").unlink()
    with pytest.raises(FileNotFoundError, match="model.weights.h5"):
        hub.push_preset_to_hub(no_weights, REPO, token=token)
    # A training run's folder: the error names its presets.
    with pytest.raises(FileNotFoundError, match="push .*best"):
        hub.push_preset_to_hub(trained.preset.parent, REPO, token=token)
    assert cli.main(["push", str(notes), REPO, "--token", token]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert hub_server.requests == []

    hub_server.upload_files("test/notes", {"notes.txt": "not a model"})
    with pytest.raises(FileNotFoundError, match="no config.json.*notes.txt"):
        hub.pull("test/notes")


def test_a_preset_from_a_newer_incompatible_version_is_refused(
    hub_server, trained, tmp_path
):
    newer = tmp_path / "newer"
    shutil.copytree(trained.preset, newer)
    meta = json.loads((newer / "metadata.json").read_text())
    meta.update({hub.FORMAT_KEY: hub.FORMAT_VERSION + 1, hub.VERSION_KEY: "99.0"})
    (newer / "metadata.json").write_text(json.dumps(meta))

    with pytest.raises(hub.IncompatiblePresetError, match="99.0.*pip install -U"):
        hub.check_preset_compatibility(newer)
    with pytest.raises(hub.IncompatiblePresetError, match="99.0"):
        hub.push_preset_to_hub(newer, REPO, token=hub_server.token)
    assert hub_server.requests == []

    hub_server.upload_folder("test/newer", newer)
    with pytest.raises(hub.IncompatiblePresetError, match="test/newer.*99.0"):
        hub.pull("test/newer")
    with pytest.raises(hub.IncompatiblePresetError, match="upgrade|Upgrade"):
        GPTCausalLM.from_preset("hf://test/newer")


def test_model_card_of_a_fine_tuned_model(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained.preset, run / "last")
    (run / "run.json").write_text(
        json.dumps({"init_from": "hf://base/gpt@main", "corpus": "verdict", "steps": 9})
    )
    (run / "summary.json").write_text(json.dumps({"val_loss": 3.25, "train_loss": 2.5}))

    card = hub.model_card(run / "last", "alice/ft", {"license": "mit", "tags": ["x"]})

    meta = card_metadata(card)
    assert meta["base_model"] == "base/gpt"
    assert meta["license"] == "mit"
    assert {"x", "keras-gpt-scratch", "gpt2"} <= set(meta["tags"])
    [result] = meta["model-index"][0]["results"]
    assert result["dataset"]["name"] == "The Verdict"
    assert result["metrics"][0]["value"] == pytest.approx(3.25)
    assert "Fine-tuned from: `hf://base/gpt@main`" in card
    assert "- Steps: 9" in card

    (run / "run.json").write_text(json.dumps({"init_from": "gpt2_124m"}))
    meta = card_metadata(hub.model_card(run / "last", "alice/ft"))
    assert meta["base_model"] == "openai-community/gpt2"
    # Without a training run: no training claims.
    shutil.copytree(trained.preset, tmp_path / "plain")
    card = hub.model_card(tmp_path / "plain", "alice/ft")
    assert "model-index" not in card_metadata(card)
    assert "## Training" not in card


def test_a_transformers_format_repo_loads_through_the_same_route(
    hub_server, trained, tmp_path
):
    """hf:// repos that are not Keras presets still reach the GPT-2 converter."""
    lm = GPTCausalLM.from_preset(trained.preset)
    lm.export_to_transformers(tmp_path / "hf")
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"not downloaded")
    hub_server.upload_folder("test/tiny-gpt2", tmp_path / "hf")

    loaded = GPTCausalLM.from_preset("hf://test/tiny-gpt2")

    x = {"token_ids": np.array([[464, 3290, 318]]), "padding_mask": np.ones((1, 3))}
    np.testing.assert_allclose(loaded(x), lm(x), atol=1e-5)
    fetched = [p for _, p, _ in hub_server.requests if "/resolve/" in p]
    assert any(p.endswith("/model.safetensors") for p in fetched)
    assert not any(p.endswith("/pytorch_model.bin") for p in fetched)


def test_loopback_hub_speaks_the_real_clients_protocol(hub_server, tmp_path):
    """What other tests rely on: repos, commits, revisions, files, privacy."""
    api = huggingface_hub.HfApi(token=hub_server.token)
    api.create_repo("test/tiny-gpt2", private=True)
    folder = tmp_path / "files"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "sub" / "data.bin").write_bytes(bytes(range(256)) * 100)
    first = api.upload_folder(repo_id="test/tiny-gpt2", folder_path=folder).oid
    second = hub_server.upload_files("test/tiny-gpt2", {"config.json": "{}"})

    assert [c.commit_id for c in api.list_repo_commits("test/tiny-gpt2")][:2] == [
        second,
        first,
    ]
    assert sorted(api.list_repo_files("test/tiny-gpt2")) == [
        ".gitattributes",
        "config.json",
        "sub/data.bin",
    ]
    # Private: the client falls back to its cache on errors, so check first.
    with pytest.raises(huggingface_hub.errors.RepositoryNotFoundError):
        huggingface_hub.hf_hub_download("test/tiny-gpt2", "config.json", token=False)
    with pytest.raises(huggingface_hub.errors.RevisionNotFoundError):
        api.model_info("test/tiny-gpt2", revision="nope")
    with pytest.raises(huggingface_hub.errors.RemoteEntryNotFoundError):
        huggingface_hub.hf_hub_download(
            "test/tiny-gpt2", "missing.json", token=hub_server.token
        )
    path = huggingface_hub.hf_hub_download(
        "test/tiny-gpt2", "config.json", revision=first, token=hub_server.token
    )
    assert Path(path).read_text() == '{"model_type": "gpt2"}'
    snapshot = huggingface_hub.snapshot_download(
        "test/tiny-gpt2", token=hub_server.token
    )
    assert Path(snapshot, "sub/data.bin").read_bytes() == bytes(range(256)) * 100
    assert Path(snapshot, "config.json").read_text() == "{}"
