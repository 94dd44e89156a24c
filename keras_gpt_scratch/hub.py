"""Share models on the Hugging Face Hub: push presets, pull them back.

A preset directory (what `save_to_preset()` writes) is exactly what a Hub model
repo holds, so sharing a model is an upload and loading one is a download:

- `push_preset_to_hub(preset_dir, "user/repo")`, `lm.push_to_hub("user/repo")`
  or `keras-gpt push` upload a copy of the preset with a model card.
- `GPTCausalLM.from_preset("hf://user/repo")` loads it back, and
  `pull("user/repo", revision=...)` or `keras-gpt pull` download one revision
  (branch, tag or commit sha) and return its local preset path.

Everything goes through the `huggingface_hub` client, so tokens come from the
usual places (`token=`, `HF_TOKEN`, `hf auth login`), files land in the
Hugging Face cache, and `HF_HUB_OFFLINE=1` loads what was pulled before. This
module adds a quick reachability check (a Hub that is down fails in seconds,
not after ~24 s of retries), errors that say what to do, and a preset format
version that an older package refuses instead of misreading the files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub import utils as hf_utils

from keras_gpt_scratch.io_utils import atomic_directory
from keras_gpt_scratch.models import gpt_presets

if TYPE_CHECKING:
    from keras_gpt_scratch.models.gpt_causal_lm import GPTCausalLM

HF_PREFIX = "hf://"
METADATA_FILE = "metadata.json"
README_FILE = "README.md"
VERSION_KEY = "keras_gpt_scratch_version"
FORMAT_KEY = "keras_gpt_scratch_format_version"
# Bump when a preset written by this package can no longer be read correctly
# by older versions; they then refuse it with an "upgrade" error.
FORMAT_VERSION = 1
# Seconds for the reachability check: connect plus first response.
PROBE_TIMEOUT = 3.0
# Other frameworks' weights that a Hugging Face-format repo may also hold:
# never needed for a Keras model, and often gigabytes.
SKIPPED_REPO_FILES = [
    "*.bin",
    "*.msgpack",
    "*.ot",
    "*.onnx",
    "*.onnx_data",
    "*.tflite",
    "*.gguf",
    "*.mlmodel",
    "tf_model.h5",
    "onnx/*",
    "coreml/*",
]
# Files of an earlier push that the new preset may not overwrite (e.g. the
# shards of a sharded checkpoint): deleted unless uploaded again.
STALE_PRESET_FILES = ["*.weights.h5", "*.weights.json", "assets/*"]
# Marks a generated model card: a later push replaces it, but not a card
# without it (written or edited by someone on the Hub).
CARD_MARKER = (
    "<!-- Written by keras-gpt-scratch on every push; delete this line to keep "
    "your edits to this card. -->"
)
TAGS = ["keras", "keras-hub", "keras-gpt-scratch", "gpt2", "text-generation"]
CORPUS_NAMES = {"tinyshakespeare": "Tiny Shakespeare", "verdict": "The Verdict"}
SAMPLE_PROMPTS = {"tinyshakespeare": "ROMEO:", "verdict": "Every effort moves you"}
_SHA = re.compile(r"[0-9a-f]{40}")


# === Errors ===


class HubError(Exception):
    """Base class of the Hub errors raised here (also OSError subclasses)."""


class HubUnreachableError(HubError, ConnectionError):
    """The Hub endpoint did not answer."""


class HubAuthenticationError(HubError, PermissionError):
    """No token, a token the Hub rejects, or one without the needed access."""


class HubRepositoryNotFoundError(HubError, FileNotFoundError):
    """The repo does not exist, or is private and the token has no access."""


class HubRevisionNotFoundError(HubError, FileNotFoundError):
    """The repo has no such branch, tag or commit."""


class HubNotCachedError(HubError, FileNotFoundError):
    """Offline, and the revision is not (completely) in the local cache."""


class HubTransferError(HubError, OSError):
    """An upload or download failed part-way (nothing usable was installed)."""


class IncompatiblePresetError(ValueError):
    """The preset was saved by a newer, incompatible keras-gpt-scratch."""


# === Repo ids, tokens, the endpoint ===


def parse_repo_id(repo_id: str) -> tuple[str, str | None]:
    """Split a repo id or `hf://` handle into `(namespace/name, revision)`.

    Accepts `"user/repo"`, `"hf://user/repo"` and either with `@revision`
    (a branch, tag or commit sha), as `huggingface_hub`'s `hf://` paths do.

    Args:
        repo_id: the repo id or handle.

    Returns:
        `(repo_id, revision)`; `revision` is `None` when not given.

    Raises:
        ValueError: the id is not of the form `namespace/name`.

    Example:
    ```python
    parse_repo_id("hf://alice/gpt-tiny@v1")  # ("alice/gpt-tiny", "v1")
    ```
    """
    if not isinstance(repo_id, str):
        raise TypeError(
            f"A Hub repo id must be a string like 'user/repo'; got "
            f"{type(repo_id).__name__}."
        )
    text = repo_id.strip()
    if text.startswith(HF_PREFIX):
        text = text[len(HF_PREFIX) :]
    text, _, revision = text.partition("@")
    parts = text.split("/")
    why = None
    if len(parts) != 2 or not all(parts):
        why = "it must have exactly one '/' between a namespace and a name"
    else:
        try:
            hf_utils.validate_repo_id(text)
        except hf_errors.HFValidationError:
            why = (
                "names use letters, digits, '-', '_' and '.', do not start or "
                "end with '-' or '.', have no '--' or '..', and are at most 96 "
                "characters"
            )
    if why is not None:
        raise ValueError(
            f"Invalid Hugging Face repo id {repo_id!r}: {why}. Use 'namespace/name' "
            "(your user or organization, then the model), e.g. "
            "'alice/gpt-tiny-shakespeare' or 'hf://alice/gpt-tiny-shakespeare'."
        )
    if "@" in repo_id and not revision:
        raise ValueError(f"Empty revision after '@' in {repo_id!r}.")
    return text, revision or None


def endpoint() -> str:
    """The Hub endpoint the client talks to (`HF_ENDPOINT` at import)."""
    return hf_constants.ENDPOINT


def is_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` is set (no network, cache only)."""
    return hf_constants.is_offline_mode()


def _token_source(token: str | bool | None) -> str | None:
    """Where the token the client will send comes from; never the token."""
    if isinstance(token, str):
        return "the token you passed"
    if token is False:
        return None
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "the token in HF_TOKEN"
    if huggingface_hub.get_token():
        return "your saved login token (`hf auth login`)"
    return None


def _connection_errors() -> tuple[type[BaseException], ...]:
    # The client's HTTP library depends on its version (httpx2, httpx or
    # requests): failing to connect, timing out or losing the connection is
    # one of these, whichever it is.
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        types += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return tuple(types)


def _unreachable_message(reason: str) -> str:
    return (
        f"Cannot reach the Hugging Face Hub at {endpoint()} ({reason}). Check "
        "your network connection, proxy and HF_ENDPOINT. To load a model that "
        "is already in the local cache, set HF_HUB_OFFLINE=1."
    )


def check_hub_reachable(timeout: float = PROBE_TIMEOUT) -> None:
    """Fail fast, with a clear error, if the Hub endpoint does not answer.

    One request with a short timeout, through the client's own HTTP session
    (so proxies apply). Any HTTP answer counts as reachable. Skipped when
    `HF_HUB_OFFLINE` is set.

    Args:
        timeout: seconds to wait for the connection and the answer.

    Raises:
        HubUnreachableError: naming the endpoint and suggesting
            `HF_HUB_OFFLINE=1` for cached models.
    """
    if is_offline():
        return
    session = hf_utils.get_session()
    errors = _connection_errors()
    for attempt in range(2):
        try:
            session.head(f"{endpoint()}/", timeout=timeout)
            return
        except errors as e:
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            # A pooled keep-alive connection the server has since closed
            # fails once, at once; a refused or silent endpoint is final.
            stale = type(e).__name__ in ("RemoteProtocolError", "ReadError")
            if attempt or not stale:
                break
    raise HubUnreachableError(_unreachable_message(reason))


def _translate(
    error: BaseException, repo_id: str, revision: str | None, token, action: str
) -> BaseException | None:
    """A clear error for a client error, or None to re-raise it as it is.

    Messages never include the token, only where it came from.
    """
    where = repo_id + (f"@{revision}" if revision else "")
    source = _token_source(token)
    cause = error.__cause__ or error.__context__
    errors = _connection_errors()
    if (
        isinstance(error, hf_errors.LocalEntryNotFoundError)
        and not is_offline()
        and isinstance(cause, hf_errors.HfHubHTTPError)
    ):
        # The Hub answered with an error (e.g. a rejected token) and the
        # client fell back to a cache that could not serve: report the answer.
        return _translate(cause, repo_id, revision, token, action)
    if isinstance(error, hf_errors.IncompleteSnapshotError):
        return HubNotCachedError(
            f"The cached copy of {where} is incomplete: an earlier download was "
            f"interrupted, and the Hub at {endpoint()} cannot be used now "
            f"({'HF_HUB_OFFLINE is set' if is_offline() else 'unreachable'}). "
            f"Run `keras-gpt pull {where}` with the Hub reachable to finish it."
        )
    if is_offline() and isinstance(
        error, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)
    ):
        return HubNotCachedError(
            f"{where} is not in the local Hugging Face cache "
            f"({hf_constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set, "
            "so it cannot be downloaded. Pull it once with the Hub reachable "
            "(`keras-gpt pull " + where + "`), or unset HF_HUB_OFFLINE."
        )
    if isinstance(error, errors) or (
        isinstance(error, hf_errors.LocalEntryNotFoundError)
        and isinstance(cause, errors)
    ):
        return HubUnreachableError(
            _unreachable_message(f"while trying to {action} {where}")
        )
    if isinstance(error, hf_errors.RevisionNotFoundError):
        return HubRevisionNotFoundError(
            f"{repo_id} on {endpoint()} has no revision {revision or 'main'!r}. "
            "Name a branch, a tag or a commit sha (see the repo's history on the "
            "Hub, or `huggingface_hub.list_repo_refs`)."
        )
    if isinstance(error, hf_errors.RepositoryNotFoundError):
        why = (
            "or it is private and no token was sent: log in with `hf auth login`, "
            "set HF_TOKEN, or pass a token"
            if source is None
            else f"or it is private and {source} has no access to it"
        )
        return HubRepositoryNotFoundError(
            f"Repository {repo_id} was not found on {endpoint()}, {why}."
        )
    if isinstance(error, hf_errors.HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        server = getattr(error, "server_message", None) or ""
        if status == 401:
            if source is None:
                return HubAuthenticationError(
                    f"{endpoint()} needs a token to {action} {where}: log in with "
                    "`hf auth login`, set HF_TOKEN, or pass a token."
                )
            return HubAuthenticationError(
                f"{endpoint()} rejected {source} (invalid credentials) while "
                f"trying to {action} {where}. Create "
                "a new access token on the Hub, then set HF_TOKEN or run "
                "`hf auth login --force`."
            )
        if status == 403:
            namespace = repo_id.split("/")[0]
            who = source[0].upper() + source[1:] if source else "No token was sent: you"
            return HubAuthenticationError(
                f"{who} may not {action} {where} on {endpoint()}"
                + (f" ({server})" if server else "")
                + f". Use a token with write access to the {namespace!r} namespace."
            )
        return HubTransferError(
            f"Could not {action} {where}: {endpoint()} answered {status}"
            + (f" ({server})." if server else ".")
        )
    return None


def _raise_translated(error, repo_id, revision, token, action, suffix=""):
    translated = _translate(error, repo_id, revision, token, action)
    if translated is None:
        raise error
    if suffix and isinstance(translated, HubTransferError):
        translated = HubTransferError(f"{translated} {suffix}")
    raise translated from error


# === Preset format version ===


def _package_version() -> str:
    import keras_gpt_scratch

    return keras_gpt_scratch.__version__


def stamp_preset_metadata(preset_dir: str | os.PathLike) -> dict[str, Any]:
    """Record the package version and preset format in `metadata.json`.

    Call it on a preset being written (a temporary directory), never on a
    user's saved preset in place.

    Args:
        preset_dir: a preset directory.

    Returns:
        The new metadata.
    """
    path = Path(preset_dir) / METADATA_FILE
    metadata = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    metadata[VERSION_KEY] = _package_version()
    metadata[FORMAT_KEY] = FORMAT_VERSION
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(metadata, indent=4), encoding="utf-8")
    os.replace(tmp, path)
    return metadata


def check_preset_compatibility(preset_dir: str | os.PathLike, where: str = "") -> None:
    """Refuse a preset written in a newer preset format than this package reads.

    Presets without the version keys (older ones, or saved by keras_hub
    itself) are accepted.

    Args:
        preset_dir: a preset directory.
        where: how to name the preset in the error (default: the path).

    Raises:
        IncompatiblePresetError: the preset needs a newer keras-gpt-scratch.
    """
    path = Path(preset_dir) / METADATA_FILE
    if not path.is_file():
        return
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return  # check_preset_dir reports corrupt JSON, naming the file
    fmt = metadata.get(FORMAT_KEY) if isinstance(metadata, dict) else None
    if fmt is None:
        return
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt <= FORMAT_VERSION:
        return
    saved_by = metadata.get(VERSION_KEY, "an unknown version")
    raise IncompatiblePresetError(
        f"Preset {where or os.fspath(preset_dir)} was saved by keras-gpt-scratch "
        f"{saved_by} in preset format {fmt!r}, but this keras-gpt-scratch "
        f"({_package_version()}) reads preset format {FORMAT_VERSION} and older. "
        "Upgrade the package (`pip install -U keras-gpt-scratch`) to load it."
    )


def _check_local_preset(preset_dir: str) -> None:
    if not os.path.isdir(preset_dir):
        raise FileNotFoundError(
            f"{preset_dir} is not a directory. Pass a preset directory written by "
            "save_to_preset() (a training run writes <output-dir>/best and /last)."
        )
    if not os.path.isfile(os.path.join(preset_dir, "config.json")):
        runs = [
            os.path.join(preset_dir, n)
            for n in ("best", "last")
            if os.path.isfile(os.path.join(preset_dir, n, "config.json"))
        ]
        hint = (
            f" It looks like a training run: push {' or '.join(runs)}."
            if runs
            else " Point at a directory written by save_to_preset()."
        )
        raise FileNotFoundError(
            f"Preset directory {preset_dir} has no config.json, so it is not a "
            f"preset.{hint}"
        )
    gpt_presets.check_preset_dir(preset_dir)
    check_preset_compatibility(preset_dir)


# === Model card ===


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _run_dir(preset_dir: Path) -> Path | None:
    """The training run that wrote a preset, if any.

    The training recipe saves its `best` and `last` presets next to its
    `run.json` and `summary.json` (see `training.train`).
    """
    if (
        preset_dir.name in ("best", "last")
        and (preset_dir.parent / "run.json").is_file()
    ):
        return preset_dir.parent
    return None


def _base_model(init_from: str | None) -> str | None:
    """The Hub id of the model a run fine-tuned, when there is one."""
    if not init_from:
        return None
    if init_from.startswith(HF_PREFIX):
        try:
            return parse_repo_id(init_from)[0]
        except ValueError:
            return None
    spec = gpt_presets.builtin_presets().get(init_from) or {}
    return (spec.get("weights") or {}).get("hf_repo")


def model_card(
    preset_dir: str | os.PathLike,
    repo_id: str,
    metadata: dict[str, Any] | None = None,
    run_dir: str | os.PathLike | None = None,
) -> str:
    """The README.md pushed with a preset: Hub metadata YAML plus usage.

    The YAML names the library, tags and pipeline; when the preset was written
    by the training recipe (its folder holds `run.json`/`summary.json`), also
    the training corpus, the final validation loss and, for a fine-tuned
    model, `base_model`.

    Args:
        preset_dir: the preset being pushed.
        repo_id: the `namespace/name` it is pushed to.
        metadata: extra or overriding YAML keys, e.g. `{"license": "mit",
            "base_model": "openai-community/gpt2", "datasets": [...]}`.
        run_dir: the training run's output directory; defaults to the
            preset's parent when the preset is its `best` or `last`.

    Returns:
        The model card text.
    """
    preset_dir = Path(preset_dir)
    config = (_read_json(preset_dir / "config.json") or {}).get("config", {})
    saved = _read_json(preset_dir / METADATA_FILE) or {}
    run_dir = Path(run_dir) if run_dir is not None else _run_dir(preset_dir)
    run, summary, best_val = {}, {}, None
    if run_dir is not None:
        run = _read_json(run_dir / "run.json") or {}
        summary = _read_json(run_dir / "summary.json") or {}
        history = _read_json(run_dir / "history.json") or {}
        losses = [e["val_loss"] for e in history.get("epochs", []) if e.get("val_loss")]
        best_val = min(losses) if losses else None
    name = repo_id.split("/")[-1]

    corpus, corpus_name = None, None
    if run.get("text_files"):
        corpus = "text files"
        corpus_name = ", ".join(os.path.basename(f) for f in run["text_files"])
    elif run.get("corpus"):
        corpus = run["corpus"]
        corpus_name = CORPUS_NAMES.get(corpus, corpus)
    val_loss = summary.get("val_loss")

    card: dict[str, Any] = {
        "library_name": "keras-hub",
        "pipeline_tag": "text-generation",
        "tags": list(TAGS),
        "model_name": name,
    }
    base = _base_model(run.get("init_from"))
    if base:
        card["base_model"] = base
    if val_loss is not None and corpus_name:
        card["eval_results"] = [
            huggingface_hub.EvalResult(
                task_type="text-generation",
                dataset_type=corpus if corpus != "text files" else "text",
                dataset_name=corpus_name,
                dataset_split="validation",
                metric_type="loss",
                metric_value=round(float(val_loss), 4),
                metric_name="Validation loss (nats/token)",
            )
        ]
    for key, value in (metadata or {}).items():
        if key == "tags":
            card["tags"] = list(dict.fromkeys(card["tags"] + list(value)))
        else:
            card[key] = value
    yaml = huggingface_hub.ModelCardData(**card).to_yaml()

    arch = []
    for key, label in (
        ("num_layers", "layers"),
        ("num_heads", "heads"),
        ("hidden_dim", "hidden size"),
        ("intermediate_dim", "feed-forward size"),
        ("max_sequence_length", "context length"),
        ("vocabulary_size", "vocabulary"),
    ):
        if key in config:
            arch.append(f"{label} {config[key]:,}")
    params = saved.get("parameter_count")
    if params:
        arch.append(f"{params:,} parameters")
    prompt = SAMPLE_PROMPTS.get(run.get("corpus"), "Once upon a time")

    lines = [
        "---",
        yaml.strip(),
        "---",
        "",
        CARD_MARKER,
        "",
        f"# {name}",
        "",
        "A GPT-2-style language model written from scratch in Keras 3 with "
        "keras-gpt-scratch, saved as a KerasHub preset"
        + (f" ({', '.join(arch)})." if arch else "."),
        "",
        "## Usage",
        "",
        "```python",
        "import keras_gpt_scratch",
        "",
        f'lm = keras_gpt_scratch.GPTCausalLM.from_preset("hf://{repo_id}")',
        'lm.compile(sampler="greedy")',
        f'print(lm.generate("{prompt}", max_length=64))',
        "```",
        "",
        "From the command line, download it into the Hugging Face cache (and "
        "optionally copy it to a folder); `--revision` takes a branch, a tag "
        "or a commit sha:",
        "",
        "```bash",
        f"keras-gpt pull {repo_id}",
        f"keras-gpt pull {repo_id} --revision <commit-sha> --local-dir ./{name}",
        "```",
        "",
        "Once pulled, it loads without network with `HF_HUB_OFFLINE=1`.",
    ]
    if run or summary:
        lines += ["", "## Training", ""]
        if corpus_name:
            lines.append(f"- Corpus: {corpus_name}")
        if run.get("init_from"):
            lines.append(f"- Fine-tuned from: `{run['init_from']}`")
        elif run.get("preset"):
            lines.append(f"- Trained from scratch: `{run['preset']}` architecture")
        for key, label in (
            ("steps", "Steps"),
            ("epochs", "Epochs"),
            ("batch_size", "Batch size"),
            ("context_length", "Context length"),
            ("learning_rate", "Peak learning rate"),
        ):
            if run.get(key) is not None:
                lines.append(f"- {label}: {run[key]}")
        if val_loss is not None:
            lines.append(f"- Final validation loss: {val_loss:.4f} nats/token")
        if best_val is not None and best_val != val_loss:
            lines.append(f"- Best validation loss: {best_val:.4f} nats/token")
        if summary.get("val_nats_per_char") is not None:
            lines.append(
                f"- Validation nats per character: {summary['val_nats_per_char']:.4f}"
            )
        if summary.get("train_loss") is not None:
            lines.append(f"- Final training loss: {summary['train_loss']:.4f}")
    lines += [
        "",
        f"Saved with keras-gpt-scratch {saved.get(VERSION_KEY, _package_version())} "
        f"(preset format {saved.get(FORMAT_KEY, FORMAT_VERSION)}), Keras "
        f"{saved.get('keras_version', '?')}, KerasHub "
        f"{saved.get('keras_hub_version', '?')}.",
        "",
    ]
    return "\n".join(lines)


# === Push ===


def _preflight_push(repo_id, revision, token) -> tuple[str, str | None]:
    """Checks that need no upload: id, branch name, token, reachability."""
    repo_id, handle_revision = parse_repo_id(repo_id)
    revision = revision or handle_revision
    if revision is not None and _SHA.fullmatch(revision):
        raise ValueError(
            f"revision={revision!r} is a commit sha; pushing needs a branch name "
            "(created if it does not exist)."
        )
    if _token_source(token) is None:
        raise HubAuthenticationError(
            f"Pushing to {endpoint()} needs a Hugging Face token with write "
            "access: log in with `hf auth login`, set HF_TOKEN, or pass a token."
        )
    if is_offline():
        raise HubUnreachableError(
            "HF_HUB_OFFLINE is set, so nothing can be pushed. Unset it to push."
        )
    check_hub_reachable()
    return repo_id, revision


def _upload(
    folder: str,
    repo_id: str,
    private: bool,
    token,
    commit_message: str | None,
    revision: str | None,
    metadata: dict[str, Any] | None,
    card_source: str,
) -> huggingface_hub.CommitInfo:
    """Stamp, write the card into the staged `folder`, and upload it."""
    stamp_preset_metadata(folder)
    api = huggingface_hub.HfApi(token=token)
    try:
        api.whoami()  # a rejected token fails here, before anything is created
        api.create_repo(repo_id, private=private, exist_ok=True)
        if private and not api.model_info(repo_id).private:
            raise HubAuthenticationError(
                f"{repo_id} already exists on {endpoint()} and is public; refusing "
                "to push a model you asked to keep private. Make the repo private "
                "on the Hub first, or push with private=False."
            )
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        readme = Path(folder, README_FILE)
        if not readme.exists() and _may_write_card(api, repo_id, revision):
            run_dir = _run_dir(Path(card_source))
            readme.write_text(
                model_card(folder, repo_id, metadata, run_dir), encoding="utf-8"
            )
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message
            or f"Upload {repo_id.split('/')[-1]} with keras-gpt-scratch "
            f"{_package_version()}",
            delete_patterns=STALE_PRESET_FILES,
        )
    except HubError:
        raise
    except Exception as e:
        _raise_translated(
            e, repo_id, revision, token, "push to", "Your preset was not modified."
        )


def _may_write_card(api, repo_id: str, revision: str | None) -> bool:
    """False when the repo has a model card that we did not generate."""
    try:
        path = api.hf_hub_download(repo_id, README_FILE, revision=revision)
    except hf_errors.RemoteEntryNotFoundError:
        return True
    return CARD_MARKER in Path(path).read_text(encoding="utf-8", errors="replace")


def _stage_and_upload(
    write,
    repo_id,
    private,
    token,
    commit_message,
    revision,
    metadata,
    card_source=None,
):
    """Stage a preset with `write(folder)` in a temporary folder; upload it.

    The user's own preset directory is never modified (the stamp and the
    model card go into the staged copy).
    """
    with tempfile.TemporaryDirectory(prefix="keras-gpt-push-") as staging:
        folder = os.path.join(staging, "preset")
        write(folder)
        return _upload(
            folder,
            repo_id,
            private,
            token,
            commit_message,
            revision,
            metadata,
            card_source=card_source or folder,
        )


def push_preset_to_hub(
    preset_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> huggingface_hub.CommitInfo:
    """Upload a preset directory to a Hugging Face Hub model repo.

    A copy of the preset is uploaded, with the package version in its
    `metadata.json` and a model card `README.md` (unless the preset has one);
    the directory itself is never modified. The repo is created if needed.

    Args:
        preset_dir: a directory written by `save_to_preset()`, e.g. a training
            run's `runs/gpt_tiny/best`.
        repo_id: `"namespace/name"` (or `"hf://namespace/name"`).
        private: create the repo as private. An existing public repo is
            refused rather than silently published to.
        token: a Hub token with write access; defaults to `HF_TOKEN`, then the
            `hf auth login` cache.
        commit_message: defaults to "Upload <name> with keras-gpt-scratch X".
        revision: the branch to push to, created from `main` if missing.
        metadata: extra model card YAML keys (see `model_card`).

    Returns:
        The `huggingface_hub.CommitInfo`: `.oid` is the commit sha, `str()`
        its URL.

    Example:
    ```python
    from keras_gpt_scratch import hub

    info = hub.push_preset_to_hub("runs/gpt_tiny/best", "alice/gpt-tiny-shakespeare")
    lm = keras_gpt_scratch.GPTCausalLM.from_preset(
        "hf://alice/gpt-tiny-shakespeare"
    )
    ```
    """
    preset_dir = os.fspath(preset_dir)
    repo_id, _ = parse_repo_id(repo_id)  # bad ids fail before any file check
    _check_local_preset(preset_dir)
    repo_id, revision = _preflight_push(repo_id, revision, token)
    return _stage_and_upload(
        lambda folder: shutil.copytree(preset_dir, folder),
        repo_id,
        private,
        token,
        commit_message,
        revision,
        metadata,
        card_source=preset_dir,
    )


def push_to_hub(
    model: GPTCausalLM,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> huggingface_hub.CommitInfo:
    """Save a model as a preset and upload it; see `push_preset_to_hub`.

    This is `GPTCausalLM.push_to_hub`. The model is saved to a temporary
    directory only after the repo id, token and Hub have been checked.

    Example:
    ```python
    lm.push_to_hub("alice/gpt-tiny-shakespeare", private=True)
    ```
    """
    repo_id, revision = _preflight_push(repo_id, revision, token)
    return _stage_and_upload(
        model.save_to_preset,
        repo_id,
        private,
        token,
        commit_message,
        revision,
        metadata,
    )


# === Pull ===


def _cached_snapshot(repo_id: str, revision: str | None, token) -> str | None:
    try:
        return huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            local_files_only=True,
            ignore_patterns=SKIPPED_REPO_FILES,
        )
    except (hf_errors.LocalEntryNotFoundError, OSError, ValueError):
        return None


def _download(repo_id: str, revision: str | None, token) -> str:
    """The snapshot folder of `repo_id@revision` in the Hugging Face cache.

    The client downloads each file to a temporary name and renames it into
    the cache, and remembers the commit's file list: an interrupted download
    resumes on the next call, and an incomplete snapshot is refused offline.
    """
    where = repo_id + (f"@{revision}" if revision else "")
    if not is_offline():
        try:
            check_hub_reachable()
        except HubUnreachableError:
            cached = _cached_snapshot(repo_id, revision, token)
            if cached is None:
                raise
            warnings.warn(
                f"The Hugging Face Hub at {endpoint()} is unreachable; using the "
                f"cached copy of {where} (commit {os.path.basename(cached)[:12]}). "
                "Set HF_HUB_OFFLINE=1 to skip the check.",
                UserWarning,
                stacklevel=3,
            )
            return cached
    try:
        return huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            ignore_patterns=SKIPPED_REPO_FILES,
        )
    except Exception as e:
        again = "Nothing usable was installed; run the pull again to resume."
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if not is_offline() and isinstance(e, _connection_errors()):
            # The Hub answered the check above: the connection broke mid-way.
            raise HubTransferError(
                f"Downloading {where} from {endpoint()} was interrupted ({reason}). "
                f"{again}"
            ) from e
        translated = _translate(e, repo_id, revision, token, "download")
        if translated is None and isinstance(e, OSError):
            # E.g. the client's size check of a file cut short.
            translated = HubTransferError(
                f"Downloading {where} from {endpoint()} failed ({reason})."
            )
        if translated is None:
            raise
        if isinstance(translated, HubTransferError):
            translated = HubTransferError(f"{translated} {again}")
        raise translated from e


def _check_pulled(path: str, where: str) -> None:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        files = sorted(os.listdir(path))
        shown = ", ".join(files[:8]) + (", ..." if len(files) > 8 else "")
        raise FileNotFoundError(
            f"{where} has no config.json, so it is not a Keras preset (it holds: "
            f"{shown or 'nothing'}). Push a preset with `keras-gpt push` or "
            "push_preset_to_hub()."
        )
    if "registered_name" not in (_read_json(Path(config)) or {}):
        return  # e.g. a Hugging Face Transformers repo: keras_hub converts it
    check_preset_compatibility(path, where=where)
    gpt_presets.check_preset_dir(path)


def _install(snapshot: str, local_dir: str | os.PathLike) -> str:
    local_dir = os.path.abspath(os.fspath(local_dir))
    if os.path.exists(local_dir):
        if not os.path.isdir(local_dir):
            raise FileExistsError(f"{local_dir} exists and is not a directory.")
        if os.listdir(local_dir) and not os.path.isfile(
            os.path.join(local_dir, "config.json")
        ):
            raise FileExistsError(
                f"{local_dir} exists and is not a preset; pull into a new or empty "
                "folder (an existing preset there is replaced)."
            )
    # Built beside `local_dir` and renamed into place: an interrupted copy
    # never leaves a partial preset at `local_dir`.
    with atomic_directory(local_dir) as tmp:
        shutil.copytree(snapshot, tmp, dirs_exist_ok=True)  # copies, not links
    return local_dir


def pull(
    repo_id: str,
    revision: str | None = None,
    local_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> str:
    """Download a preset from the Hub; returns a path `from_preset` loads.

    Files go to the Hugging Face cache (`HF_HUB_CACHE`), one file at a time
    through a temporary name, so an interrupted pull resumes when run again
    and is never loaded half-done; afterwards `HF_HUB_OFFLINE=1` loads it
    without network.

    Args:
        repo_id: `"namespace/name"`, `"hf://namespace/name"`, optionally with
            `@revision`.
        revision: a branch, tag or commit sha; defaults to `main`.
        local_dir: also copy the preset to this folder, atomically (an
            existing preset there is replaced; any other non-empty folder is
            refused). Defaults to returning the cache folder.
        token: for private repos; defaults to `HF_TOKEN`, then the
            `hf auth login` cache.

    Returns:
        The local preset directory.

    Example:
    ```python
    from keras_gpt_scratch import hub

    path = hub.pull("alice/gpt-tiny", revision="3f2c1e0...")
    lm = keras_gpt_scratch.GPTCausalLM.from_preset(path)
    ```
    """
    repo_id, handle_revision = parse_repo_id(repo_id)
    revision = revision or handle_revision
    where = repo_id + (f"@{revision}" if revision else "")
    snapshot = _download(repo_id, revision, token)
    _check_pulled(snapshot, where)
    if local_dir is None:
        return snapshot
    return _install(snapshot, local_dir)


def resolve_hf_preset(
    handle: str, revision: str | None = None, token: str | None = None
) -> str:
    """The local preset directory for an `hf://` handle, downloaded if needed.

    What `from_preset("hf://user/repo")` calls before loading, so that a
    Hub that is down fails in seconds with a clear error, the revision can be
    named (`"hf://user/repo@<sha>"`), and a newer incompatible preset is
    refused. Keras presets are checked; a Hugging Face Transformers-format
    repo is returned as downloaded, for keras_hub to convert.

    Args:
        handle: `"hf://namespace/name"` or `"hf://namespace/name@revision"`.
        revision: overrides the handle's revision.
        token: for private repos; defaults to the usual places.

    Returns:
        A local directory to pass to keras_hub's loader.
    """
    if not isinstance(handle, str) or not handle.startswith(HF_PREFIX):
        raise ValueError(f"Expected an 'hf://namespace/name' handle; got {handle!r}.")
    return pull(handle, revision=revision, token=token)


# === Command line ===


def run_cli(args) -> int:
    """`keras-gpt push` and `keras-gpt pull` (see `cli.py` for the flags)."""
    import sys

    try:
        if args.command == "push":
            info = push_preset_to_hub(
                args.preset,
                args.repo_id,
                private=args.private,
                token=args.token,
                commit_message=args.commit_message,
                revision=args.revision,
            )
            print(
                f"Pushed {args.preset} to {args.repo_id} (commit {info.oid}).",
                file=sys.stderr,
            )
            print(str(info))
        else:
            path = pull(
                args.repo_id,
                revision=args.revision,
                local_dir=args.local_dir,
                token=args.token,
            )
            print(f"Pulled {args.repo_id} into {path}.", file=sys.stderr)
            print(path)
    except HubError as e:
        print(f"keras-gpt {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
