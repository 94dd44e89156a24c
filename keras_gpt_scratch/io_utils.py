"""Saving that never leaves a half-written file where a good one was."""

import contextlib
import os
import shutil
import threading
import uuid

_active = threading.local()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary sibling directory, then move it into place at `path`.

    If the block fails, `path` is untouched and the temporary directory is
    removed. An existing `path` is moved aside, replaced, then deleted, so at
    no moment does `path` hold a mix of old and new files. Nested use on the
    directory already being written (keras_hub's task saver calls the
    backbone's saver) writes straight into the outer temporary directory.
    """
    path = os.path.abspath(os.fspath(path))
    active = getattr(_active, "dirs", set())
    if path in active:
        yield path
        return
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(
            f"{path} exists and is not a directory; choose another preset path."
        )
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    os.makedirs(tmp)
    _active.dirs = active | {tmp}
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _active.dirs = active
    old = None
    if os.path.exists(path):
        old = os.path.join(parent, f".{os.path.basename(path)}.old-{uuid.uuid4().hex}")
        os.rename(path, old)
    os.rename(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path beside `path` (same suffix); rename it into place."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex}-{name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
