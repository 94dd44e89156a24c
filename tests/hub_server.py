"""A loopback Hugging Face Hub for tests: the `hub_server` fixture.

`HubServer` speaks the part of the Hub's HTTP API that the real
`huggingface_hub` client uses to create repos, commit files, and list and
download them (the routes of `shared/docs/hub-protocol.md`), from a thread on
127.0.0.1. Repos live in memory with real history: every commit has its own
sha, branches and tags point at commits, and any revision can be downloaded.
Access is enforced like on the Hub: a private repo answers 401/404
`RepoNotFound` to anyone without access, an unknown token gets 401 "Invalid
credentials in Authorization header", and writing needs a write token for
the repo's namespace.

The client reads `HF_ENDPOINT` once, when it is first imported, and keras_hub
imports it as soon as `keras_gpt_scratch` is imported: importing this module
runs `configure_environment()`, and `tests/conftest.py` imports it before
anything else. It imports only the standard library and pytest for that
reason.

Fixtures (imported into `tests/conftest.py`, so every test file has them):

- `hub_server`: a fresh, running `HubServer` for one test, at `HF_ENDPOINT`,
  with an empty Hub, the user `test` (org `test-org`), and its write token
  in `hub_server.token`. The test also gets its own, empty Hugging Face home
  and cache, online, and no token in the environment.
- `hf_home`: just the isolated Hugging Face home and cache.

`use_hf_home(monkeypatch, path)` switches to another empty cache mid-test
("another machine"); `set_offline(monkeypatch)` sets `HF_HUB_OFFLINE`.

Example:

```python
def test_loads_a_transformers_repo(hub_server, tmp_path):
    # Directly, without HTTP (bytes, text or local file paths):
    hub_server.upload_files(
        "test/tiny-gpt2",
        {"config.json": '{"model_type": "gpt2"}', "model.safetensors": tmp_path / "m"},
    )
    # Or a whole folder; or with the real client, as user "test":
    hub_server.upload_folder("test/tiny-gpt2", tmp_path / "hf")
    huggingface_hub.upload_folder(
        repo_id="test/tiny-gpt2", folder_path=tmp_path / "hf", token=hub_server.token
    )
    lm = keras_gpt_scratch.GPTCausalLM.from_preset("hf://test/tiny-gpt2")
```

Failures: `fail(method, path_regex, status=..., times=..., truncate=...)`
answers errors or cuts downloads off; `stop()` refuses connections (a Hub
that is down), `hang()` accepts them and never answers (a black hole).
`requests` lists every `(method, path, status)` answered; `files(repo_id,
revision)`, `commits(...)`, `head(...)` and `repos` show the Hub's state.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import datetime
import hashlib
import http.server
import itertools
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

DEFAULT_USER = "test"
DEFAULT_ORG = "test-org"
# Looks like a real token (they start with "hf_") so that no client-side
# check treats it specially.
DEFAULT_TOKEN = "hf_loopbackTestWriteToken0123456789abcdef"
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
GITATTRIBUTES = b"*.h5 filter=lfs diff=lfs merge=lfs -text\n"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}")
_SHA = re.compile(r"[0-9a-f]{40}")
_counter = itertools.count()


# === Environment ===


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure_environment() -> str:
    """Point the Hugging Face client at a loopback Hub; returns the endpoint.

    Must run before `huggingface_hub` is imported. Also gives the test session
    its own Hugging Face home (so no real token or cache is ever used) and
    clears the variables that would change what the client does.
    """
    endpoint = f"http://127.0.0.1:{_free_port()}"
    if "huggingface_hub" in sys.modules:
        # Too late to redirect the client; `hub_server` fails with an
        # explanation instead of letting a test reach another Hub.
        return os.environ.get("HF_ENDPOINT", "")
    os.environ["HF_ENDPOINT"] = endpoint
    home = tempfile.mkdtemp(prefix="keras-gpt-hf-home-")
    atexit.register(shutil.rmtree, home, True)
    os.environ["HF_HOME"] = home
    for name in (
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ASSETS_CACHE",
        "HF_XET_CACHE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_OIDC_RESOURCE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HUGGINGFACE_CO_STAGING",
        "HF_HUB_ETAG_TIMEOUT",
        "HF_HUB_DOWNLOAD_TIMEOUT",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    ):
        os.environ.pop(name, None)
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_DISABLE_UPDATE_CHECK"] = "1"
    return endpoint


def use_hf_home(monkeypatch: pytest.MonkeyPatch, home: str | os.PathLike) -> Path:
    """Make `home` the Hugging Face home and cache for the rest of the test.

    The client reads these paths at import, so its constants are patched too.
    Calling it again in a test gives a fresh, empty cache ("another machine").
    """
    import huggingface_hub.constants as constants

    home = Path(home)
    cache = home / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    paths = {
        "HF_HOME": home,
        "HF_HUB_CACHE": cache,
        "HUGGINGFACE_HUB_CACHE": cache,
        "HF_ASSETS_CACHE": home / "assets",
        "HF_XET_CACHE": home / "xet",
        "HF_TOKEN_PATH": home / "token",
        "HF_STORED_TOKENS_PATH": home / "stored_tokens",
    }
    for name, value in paths.items():
        monkeypatch.setattr(constants, name, str(value))
    return home


def set_offline(monkeypatch: pytest.MonkeyPatch, offline: bool = True) -> None:
    """Set `HF_HUB_OFFLINE` (the client reads it at import, so patch it too)."""
    import huggingface_hub.constants as constants

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


# Importing this module configures the environment (see `tests/conftest.py`).
ENDPOINT = configure_environment()


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """A fresh Hugging Face home and cache for one test, online, no token."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    set_offline(monkeypatch, False)
    return use_hf_home(monkeypatch, tmp_path / "hf-home")


@pytest.fixture
def hub_server(hf_home) -> Iterator[HubServer]:
    """A running loopback Hub at `HF_ENDPOINT`, empty, for one test."""
    import huggingface_hub
    from huggingface_hub.utils import close_session

    endpoint = os.environ.get("HF_ENDPOINT", "")
    if huggingface_hub.constants.ENDPOINT != endpoint or not endpoint.startswith(
        "http://127.0.0.1:"
    ):
        pytest.fail(
            "huggingface_hub was imported before tests/conftest.py set HF_ENDPOINT "
            f"(client endpoint {huggingface_hub.constants.ENDPOINT!r}). Call "
            "hub_server.configure_environment() first thing in conftest.py."
        )
    server = HubServer(endpoint)
    server.start()
    close_session()  # no pooled connection to an earlier test's server
    try:
        yield server
    finally:
        server.stop()
        close_session()


# === Repos ===


def git_blob_oid(data: bytes) -> str:
    """The git object id of a file (what the Hub reports for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclasses.dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, bytes]
    title: str
    message: str
    author: str
    date: str


class Repo:
    """One model repo: commits, branches and tags."""

    def __init__(self, repo_id: str, private: bool, author: str):
        self.repo_id = repo_id
        self.private = private
        self.author = author
        self.created_at = _now()
        self.commits: dict[str, Commit] = {}
        self.branches: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def resolve(self, revision: str) -> str | None:
        """The commit sha a branch, tag, sha or unique sha prefix names."""
        for prefix, refs in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if revision.startswith(prefix):
                return refs.get(revision[len(prefix) :])
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if revision in self.commits:
            return revision
        if re.fullmatch(r"[0-9a-f]{7,39}", revision):
            found = [sha for sha in self.commits if sha.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None

    def commit(
        self,
        branch: str,
        added: Mapping[str, bytes],
        deleted: tuple[str, ...] = (),
        title: str = "Upload files",
        message: str = "",
        author: str = DEFAULT_USER,
    ) -> str:
        parent = self.branches.get(branch)
        files = dict(self.commits[parent].files) if parent else {}
        for path in deleted:
            folder = path.rstrip("/") + "/"
            files = {
                p: d for p, d in files.items() if p != path and not p.startswith(folder)
            }
        for path, data in added.items():
            files[_check_path(path)] = bytes(data)
        date = _now()
        seed = json.dumps(
            [parent, sorted((p, git_blob_oid(d)) for p, d in files.items())]
            + [title, message, author, date, next(_counter)]
        )
        sha = hashlib.sha1(seed.encode()).hexdigest()
        self.commits[sha] = Commit(sha, parent, files, title, message, author, date)
        self.branches[branch] = sha
        return sha

    def history(self, sha: str) -> list[Commit]:
        out = []
        while sha is not None:
            commit = self.commits[sha]
            out.append(commit)
            sha = commit.parent
        return out


def _check_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise _HttpError(400, f"Invalid path in repo: {path!r}")
    return path


def _front_matter(readme: bytes | None) -> dict | None:
    if not readme:
        return None
    text = readme.decode("utf-8", "replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return None
    import yaml

    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else None


# === HTTP ===


class _HttpError(Exception):
    def __init__(self, status, message, code=None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def _repo_not_found(user) -> _HttpError:
    # The Hub answers 401 to anonymous callers and 404 to signed-in ones,
    # both with RepoNotFound, so a private repo's existence never leaks.
    return _HttpError(
        401 if user is None else 404, "Repository not found", "RepoNotFound"
    )


@dataclasses.dataclass
class _Fault:
    method: str
    pattern: re.Pattern
    status: int
    message: str
    remaining: int | None
    truncate: float | None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: HubServer

    def handle_error(self, request, client_address):
        # Clients that hang up (interrupted downloads, a stopped server) are
        # part of the tests; anything else is worth a traceback.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1.0"
    server: _Server

    def log_message(self, format, *args):
        pass

    def setup(self):
        super().setup()
        self.server.hub._connections.add(self.connection)

    def finish(self):
        self.server.hub._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    # --- plumbing ---

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status, body=b"", content_type="application/json", headers=None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.hub._record(self.command, self._path, status)

    def _json(self, data, status=200, headers=None):
        self._send(status, json.dumps(data).encode(), headers=headers)

    def _error(self, e: _HttpError):
        headers = {"X-Error-Message": e.message, **e.headers}
        if e.code:
            headers["X-Error-Code"] = e.code
        self._json({"error": e.message}, e.status, headers)

    def _user(self):
        """(user, role) of the bearer token; (None, None) when anonymous."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None, None
        scheme, _, token = auth.partition(" ")
        found = self.server.hub._tokens.get(token.strip())
        if scheme.lower() != "bearer" or found is None:
            raise _HttpError(401, INVALID_CREDENTIALS)
        return found

    def _dispatch(self):
        hub = self.server.hub
        body = self._read_body()
        split = urlsplit(self.path)
        self._path = unquote(split.path)
        self._query = parse_qs(split.query)
        try:
            fault = hub._take_fault(self.command, self._path)
            if fault is not None and fault.truncate is None:
                raise _HttpError(fault.status, fault.message)
            with hub._lock:
                self._route(split.path, body, fault)
        except _HttpError as e:
            self._error(e)

    def _route(self, raw_path, body, fault):
        parts = raw_path.strip("/").split("/") if raw_path.strip("/") else []
        method = self.command
        if not parts:
            return self._send(200, b"", "text/plain")
        if parts[0] == "api":
            rest = parts[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami()
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(body)
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo(body)
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo(body)
            if len(rest) >= 3 and rest[0] in ("models", "datasets", "spaces"):
                if rest[0] != "models":
                    raise _repo_not_found(self._user()[0])
                repo_id = f"{unquote(rest[1])}/{unquote(rest[2])}"
                return self._repo_api(repo_id, [unquote(p) for p in rest[3:]], body)
        elif len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
            path = "/".join(unquote(p) for p in parts[4:])
            return self._resolve(repo_id, unquote(parts[3]), path, fault)
        raise _HttpError(404, f"Not found: {method} {self._path}")

    # --- access ---

    def _readable(self, repo_id):
        user, role = self._user()
        repo = self.server.hub.repos.get(repo_id)
        if repo is None or (
            repo.private and not self.server.hub._member(user, repo_id)
        ):
            raise _repo_not_found(user)
        return repo, user, role

    def _writable(self, repo_id):
        repo, user, role = self._readable(repo_id)
        if user is None:
            raise _HttpError(401, "You must be authenticated to write to a repo")
        if role != "write" or not self.server.hub._member(user, repo_id):
            raise _HttpError(403, f"You don't have write access to {repo_id}")
        return repo, user

    def _revision(self, repo, revision):
        sha = repo.resolve(revision)
        if sha is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    # --- routes ---

    def _whoami(self):
        user, role = self._user()
        if user is None:
            raise _HttpError(401, "You must be authenticated")
        orgs = self.server.hub._users[user]
        self._json(
            {
                "type": "user",
                "name": user,
                "fullname": user,
                "orgs": [{"type": "org", "name": org} for org in orgs],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "loopback", "role": role},
                },
            }
        )

    def _validate_yaml(self, body):
        content = json.loads(body or b"{}").get("content", "")
        try:
            _front_matter(content.encode())
        except Exception as e:  # yaml.YAMLError and friends
            return self._json({"errors": [{"message": f"Invalid YAML: {e}"}]}, 400)
        self._json({"errors": [], "warnings": []})

    def _create_repo(self, body):
        hub = self.server.hub
        user, role = self._user()
        if user is None:
            raise _HttpError(401, "You must be authenticated to create a repo")
        data = json.loads(body or b"{}")
        if data.get("type", "model") != "model":
            raise _HttpError(400, "The loopback Hub only hosts model repos")
        namespace = data.get("organization") or user
        name = data.get("name", "")
        repo_id = f"{namespace}/{name}"
        if not _NAME.fullmatch(name) or "--" in name or ".." in name:
            raise _HttpError(400, f"Invalid repo name: {name!r}")
        if role != "write" or not hub._member(user, repo_id):
            raise _HttpError(
                403,
                f'You don\'t have the rights to create a model under the namespace "{namespace}"',
            )
        url = f"{hub.endpoint}/{repo_id}"
        if repo_id in hub.repos:
            return self._json(
                {"error": "You already created this model repo", "url": url}, 409
            )
        private = data.get("visibility") == "private" or bool(data.get("private"))
        hub._create(repo_id, private, user)
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, body):
        data = json.loads(body or b"{}")
        repo_id = f"{data.get('organization') or self._user()[0]}/{data.get('name')}"
        self._writable(repo_id)
        del self.server.hub.repos[repo_id]
        self._send(200, b"", "text/plain")

    def _repo_api(self, repo_id, rest, body):
        method = self.command
        if not rest and method == "GET":
            repo, _, _ = self._readable(repo_id)
            return self._model_info(repo, self._revision(repo, "main"))
        action, args = rest[0] if rest else "", rest[1:]
        if action == "revision" and args and method == "GET":
            repo, _, _ = self._readable(repo_id)
            return self._model_info(repo, self._revision(repo, args[0]))
        if action == "tree" and args and method == "GET":
            repo, _, _ = self._readable(repo_id)
            return self._tree(repo, self._revision(repo, args[0]), "/".join(args[1:]))
        if action == "commits" and args and method == "GET":
            repo, _, _ = self._readable(repo_id)
            return self._commits(repo, self._revision(repo, args[0]))
        if action == "refs" and method == "GET":
            repo, _, _ = self._readable(repo_id)
            return self._refs(repo)
        if action == "preupload" and args and method == "POST":
            repo, _ = self._writable(repo_id)
            return self._preupload(repo, args[0], body)
        if action == "commit" and args and method == "POST":
            repo, user = self._writable(repo_id)
            return self._commit(repo, args[0], body, user)
        if action == "branch" and args and method in ("POST", "DELETE"):
            repo, _ = self._writable(repo_id)
            return self._branch(repo, args[0], body)
        if action == "tag" and args and method in ("POST", "DELETE"):
            repo, _ = self._writable(repo_id)
            return self._tag(repo, args[0], body)
        if action == "settings" and method == "PUT":
            repo, _ = self._writable(repo_id)
            data = json.loads(body or b"{}")
            if "private" in data or "visibility" in data:
                repo.private = (
                    bool(data.get("private")) or data.get("visibility") == "private"
                )
            return self._json({})
        raise _HttpError(404, f"Not found: {method} {self._path}")

    def _model_info(self, repo: Repo, sha: str):
        commit = repo.commits[sha]
        card = _front_matter(commit.files.get("README.md")) or {}
        blobs = self._query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path, data in sorted(commit.files.items()):
            entry = {"rfilename": path}
            if blobs:
                entry.update(size=len(data), blobId=git_blob_oid(data))
            siblings.append(entry)
        self._json(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "createdAt": repo.created_at,
                "lastModified": commit.date,
                "library_name": card.get("library_name"),
                "pipeline_tag": card.get("pipeline_tag"),
                "tags": card.get("tags") or [],
                "cardData": card or None,
                "siblings": siblings,
            }
        )

    def _tree(self, repo: Repo, sha: str, path: str):
        files = repo.commits[sha].files
        recursive = self._query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        under = {p: d for p, d in files.items() if p.startswith(prefix)}
        if prefix and not under:
            raise _HttpError(
                404, f"{path} does not exist", "EntryNotFound", {"X-Repo-Commit": sha}
            )
        entries, folders = [], set()
        for p, data in sorted(under.items()):
            rel = p[len(prefix) :].split("/")
            for depth in range(1, len(rel)):
                folders.add(prefix + "/".join(rel[:depth]))
            if recursive or len(rel) == 1:
                entries.append(
                    {
                        "type": "file",
                        "oid": git_blob_oid(data),
                        "size": len(data),
                        "path": p,
                    }
                )
        for folder in sorted(folders):
            if recursive or "/" not in folder[len(prefix) :]:
                oid = hashlib.sha1(f"{sha}:{folder}".encode()).hexdigest()
                entries.append(
                    {"type": "directory", "oid": oid, "size": 0, "path": folder}
                )
        self._json(entries)

    def _commits(self, repo: Repo, sha: str):
        self._json(
            [
                {
                    "id": c.sha,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": c.author, "avatar": None}],
                    "date": c.date,
                }
                for c in repo.history(sha)
            ]
        )

    def _refs(self, repo: Repo):
        def refs(kind, names):
            return [
                {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s}
                for n, s in sorted(names.items())
            ]

        self._json(
            {
                "branches": refs("heads", repo.branches),
                "tags": refs("tags", repo.tags),
                "converts": [],
            }
        )

    def _branch_for_write(self, repo: Repo, revision: str) -> str:
        if self._query.get("create_pr"):
            raise _HttpError(400, "Pull requests are not supported by the loopback Hub")
        if revision in repo.branches:
            return revision
        if repo.resolve(revision) is not None:
            raise _HttpError(400, f"Invalid rev id: {revision} is not a branch")
        raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _preupload(self, repo: Repo, revision: str, body):
        branch = self._branch_for_write(repo, revision)
        current = repo.commits[repo.branches[branch]].files
        files = json.loads(body or b"{}").get("files", [])
        out = []
        for f in files:
            data = current.get(f["path"])
            out.append(
                {
                    "path": f["path"],
                    # "regular": the client sends the bytes inside the commit,
                    # base64; no LFS or Xet storage is involved.
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": None if data is None else git_blob_oid(data),
                }
            )
        self._json({"files": out})

    def _commit(self, repo: Repo, revision: str, body, user):
        branch = self._branch_for_write(repo, revision)
        header, added, deleted = {}, {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HttpError(400, "Only base64 file content is supported")
                added[_check_path(value["path"])] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            elif key == "lfsFile":
                raise _HttpError(400, "LFS files are not supported by the loopback Hub")
            else:
                raise _HttpError(400, f"Unknown commit operation {key!r}")
        if not header.get("summary"):
            raise _HttpError(400, "A commit needs a summary (commit message)")
        parent = header.get("parentCommit")
        if parent and parent != repo.branches[branch]:
            raise _HttpError(
                412, "A commit has happened since. Please refresh and try again."
            )
        files = repo.commits[repo.branches[branch]].files
        for path in deleted:
            if path not in files and not any(
                p.startswith(path.rstrip("/") + "/") for p in files
            ):
                raise _HttpError(
                    404, f"A file with this name doesn't exist: {path}", "EntryNotFound"
                )
        sha = repo.commit(
            branch,
            added,
            tuple(deleted),
            header["summary"],
            header.get("description", ""),
            user,
        )
        self._json(
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.server.hub.endpoint}/{repo.repo_id}/commit/{sha}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    def _branch(self, repo: Repo, branch: str, body):
        if self.command == "DELETE":
            if branch not in repo.branches:
                raise _HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            del repo.branches[branch]
            return self._json({})
        if branch in repo.branches:
            raise _HttpError(409, "Reference already exists")
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        repo.branches[branch] = self._revision(repo, start)
        self._json({})

    def _tag(self, repo: Repo, revision: str, body):
        if self.command == "DELETE":
            if revision not in repo.tags:
                raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            del repo.tags[revision]
            return self._json({})
        tag = json.loads(body or b"{}").get("tag")
        if not tag:
            raise _HttpError(400, "A tag name is required")
        if tag in repo.tags:
            raise _HttpError(409, "Tag already exists")
        repo.tags[tag] = self._revision(repo, revision)
        self._json({})

    def _resolve(self, repo_id, revision, path, fault):
        repo, _, _ = self._readable(repo_id)
        sha = self._revision(repo, revision)
        data = repo.commits[sha].files.get(path)
        if data is None:
            raise _HttpError(
                404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha}
            )
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{git_blob_oid(data)}"',
            "Accept-Ranges": "bytes",
        }
        full, status, start, end = data, 200, 0, len(data) - 1
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and self.command == "GET":
            start = int(match.group(1))
            end = min(int(match.group(2) or len(full) - 1), len(full) - 1)
            if start >= len(full):
                raise _HttpError(416, "Requested range not satisfiable")
            headers["Content-Range"] = f"bytes {start}-{end}/{len(full)}"
            data, status = full[start : end + 1], 206
        if fault is not None and fault.truncate is not None:
            # The connection always drops at the same point of the file, so
            # a resumed download gets no further than the first one.
            cut = max(int(len(full) * fault.truncate) - start, 0)
            return self._send_truncated(status, data, data[:cut], headers)
        self._send(status, data, "application/octet-stream", headers)

    def _send_truncated(self, status, data, sent, headers):
        # Promise the whole body, send part of it, then hang up.
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(sent)
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.server.hub._record(self.command, self._path, status)


class HubServer:
    """An in-memory Hugging Face Hub served on 127.0.0.1 (see the module doc).

    Args:
        endpoint: `http://127.0.0.1:PORT` to listen at; defaults to
            `HF_ENDPOINT`, where the client sends its requests.
    """

    def __init__(self, endpoint: str | None = None):
        self.endpoint = (endpoint or os.environ["HF_ENDPOINT"]).rstrip("/")
        split = urlsplit(self.endpoint)
        self.host, self.port = split.hostname, split.port
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, int]] = []
        self._users: dict[str, tuple[str, ...]] = {}
        self._tokens: dict[str, tuple[str, str]] = {}
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._connections: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.token = self.add_user(
            DEFAULT_USER, orgs=(DEFAULT_ORG,), token=DEFAULT_TOKEN
        )

    # --- users and tokens ---

    def add_user(
        self, name: str, orgs: tuple[str, ...] = (), token: str | None = None
    ) -> str:
        """Create a user; returns a new write token for it."""
        with self._lock:
            self._users[name] = tuple(orgs)
        return self.add_token(name, "write", token)

    def add_token(self, user: str, role: str = "read", token: str | None = None) -> str:
        """Return a new token (`"read"` or `"write"`) for an existing user."""
        token = token or f"hf_{role}{hashlib.sha1(os.urandom(8)).hexdigest()}"
        with self._lock:
            self._tokens[token] = (user, role)
        return token

    def _member(self, user: str | None, repo_id: str) -> bool:
        namespace = repo_id.split("/")[0]
        return user is not None and (
            namespace == user or namespace in self._users[user]
        )

    # --- repos, without HTTP ---

    def _create(self, repo_id: str, private: bool, author: str) -> Repo:
        repo = Repo(repo_id, private, author)
        # Like the Hub: a new repo starts with one commit holding .gitattributes.
        repo.commit(
            "main",
            {".gitattributes": GITATTRIBUTES},
            title="initial commit",
            author=author,
        )
        self.repos[repo_id] = repo
        return repo

    def create_repo(
        self, repo_id: str, private: bool = False, exist_ok: bool = False
    ) -> None:
        """Create `namespace/name` (owned by its namespace) with an initial commit."""
        with self._lock:
            if repo_id in self.repos:
                if not exist_ok:
                    raise ValueError(f"{repo_id} exists")
                return
            self._create(repo_id, private, repo_id.split("/")[0])

    def upload_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | os.PathLike],
        message: str = "Upload files",
        branch: str = "main",
        delete: tuple[str, ...] = (),
    ) -> str:
        """Commit files (bytes, text, or paths of local files); returns the sha.

        The repo is created (public) if it does not exist.
        """
        added = {}
        for path, content in files.items():
            if isinstance(content, os.PathLike):
                content = Path(content).read_bytes()
            elif isinstance(content, str):
                content = content.encode("utf-8")
            added[path] = content
        with self._lock:
            self.create_repo(repo_id, exist_ok=True)
            repo = self.repos[repo_id]
            if branch not in repo.branches:
                repo.branches[branch] = repo.branches["main"]
            return repo.commit(
                branch, added, tuple(delete), message, author=repo.author
            )

    def upload_folder(
        self,
        repo_id: str,
        folder: str | os.PathLike,
        message: str = "Upload folder",
        branch: str = "main",
    ) -> str:
        """Commit every file under `folder` (paths relative to it); returns the sha."""
        folder = Path(folder)
        files = {
            p.relative_to(folder).as_posix(): p
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        return self.upload_files(repo_id, files, message, branch)

    def create_branch(self, repo_id: str, branch: str, revision: str = "main") -> None:
        with self._lock:
            repo = self.repos[repo_id]
            repo.branches[branch] = repo.resolve(revision)

    def create_tag(self, repo_id: str, tag: str, revision: str = "main") -> None:
        with self._lock:
            repo = self.repos[repo_id]
            repo.tags[tag] = repo.resolve(revision)

    def head(self, repo_id: str, revision: str = "main") -> str:
        """The commit sha `revision` points at."""
        with self._lock:
            return self.repos[repo_id].resolve(revision)

    def commits(self, repo_id: str, revision: str = "main") -> list[str]:
        """Commit shas from `revision` back to the first commit."""
        with self._lock:
            repo = self.repos[repo_id]
            return [c.sha for c in repo.history(repo.resolve(revision))]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Path -> content of every file at `revision`."""
        with self._lock:
            repo = self.repos[repo_id]
            return dict(repo.commits[repo.resolve(revision)].files)

    # --- faults ---

    def fail(
        self,
        method: str,
        path: str,
        status: int = 500,
        message: str = "Injected failure",
        times: int | None = 1,
        truncate: float | None = None,
    ) -> None:
        """Make matching requests fail.

        Args:
            method: HTTP method, e.g. `"GET"`, or `"*"` for any.
            path: regex searched in the request's (unquoted) URL path.
            status, message: the error answer.
            times: how many requests fail; `None` for all of them.
            truncate: for a file download, instead of an error, drop the
                connection at this fraction of the file (a resumed, ranged
                download of it gets no further).
        """
        with self._lock:
            self._faults.append(
                _Fault(
                    method.upper(), re.compile(path), status, message, times, truncate
                )
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method in ("*", method) and fault.pattern.search(path):
                    if fault.remaining is not None:
                        if fault.remaining <= 0:
                            continue
                        fault.remaining -= 1
                    return fault
        return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    # --- lifecycle ---

    def start(self) -> None:
        try:
            self._httpd = _Server((self.host, self.port), _Handler)
        except OSError as e:
            raise RuntimeError(
                f"The loopback Hub cannot listen at {self.endpoint} ({e})."
            ) from e
        self._httpd.hub = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop answering: connections are refused until `start()`."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        # Keep-alive connections would otherwise go on being served.
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._httpd = self._thread = None

    @contextlib.contextmanager
    def hang(self) -> Iterator[None]:
        """A black hole: connections are accepted by the kernel, never answered."""
        self.stop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(64)
        try:
            yield
        finally:
            sock.close()
            self.start()

    @property
    def running(self) -> bool:
        return self._httpd is not None
