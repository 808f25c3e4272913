"""Declared artifacts: Make-like inputs and outputs from which runcue derives both checks.

A task may declare ``inputs=`` and ``outputs=``: each a params key (its value a path, an
artifact, or a list of them) or a callable ``work -> iterable of artifacts``. A plain string or
``os.PathLike`` means a :class:`File`; anything else must follow the :class:`Artifact`
protocol (``exists()``, ``mtime()``, and optionally ``key`` and ``delete()``), so S3 objects,
database rows or Redis keys plug in the same way.

The rules (Make's):

- **ready** when every input exists and no other pending or running work is about to
  (re)build it -- so after an upstream input changes, resubmitting the whole graph rebuilds
  every step downstream, in order;
- **stale** when any output is missing, or older than the newest input, or (with
  ``max_age=``) older than ``max_age`` seconds.

A user ``is_ready`` / ``is_stale`` still applies on top: a declared task runs only when both the
declarations and the callback agree (the callback can hold work back or skip it, not force it).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._work import WorkUnit

__all__ = [
    "Artifact",
    "ArtifactSpec",
    "File",
    "Snapshot",
    "artifact_key",
    "atomic_write",
    "freshness",
    "resolve",
]


@runtime_checkable
class Artifact(Protocol):
    """What runcue needs to know about an artifact: is it there, and since when."""

    def exists(self) -> bool:
        """True when the artifact is there."""
        ...

    def mtime(self) -> float | None:
        """When it last changed (seconds since the epoch), or None when unknown."""
        ...


class File:
    """A file on disk as an artifact (what a plain path in ``inputs``/``outputs`` means)."""

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def key(self) -> str:
        """Identity in the dependency graph: the absolute path."""
        return os.path.abspath(self.path)

    def exists(self) -> bool:
        """True when the file exists."""
        return self.path.exists()

    def mtime(self) -> float | None:
        """The file's modification time, or None when it does not exist."""
        try:
            return self.path.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return None

    def delete(self) -> None:
        """Remove the file (a half-written output)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, File) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"File({str(self.path)!r})"


ArtifactSpec = str | Callable[["WorkUnit"], Iterable[Any]]


def _as_artifact(item: Any) -> Artifact:
    if isinstance(item, (str, os.PathLike)):
        return File(item)
    if callable(getattr(item, "exists", None)) and callable(getattr(item, "mtime", None)):
        return item  # type: ignore[no-any-return]
    msg = (
        f"{item!r} is not an artifact: use a path, runcue.File, or an object with exists() and"
        " mtime() methods"
    )
    raise TypeError(msg)


def resolve(spec: ArtifactSpec | None, work: WorkUnit) -> list[Artifact]:
    """The artifacts a declaration names for this work."""
    if spec is None:
        return []
    if isinstance(spec, str):
        value = work.params.get(spec)
        if value is None:
            return []
        items: Iterable[Any] = (
            [value] if isinstance(value, (str, os.PathLike)) or not _iterable(value) else value
        )
    else:
        produced = spec(work)
        items = [produced] if isinstance(produced, (str, os.PathLike)) else produced
    return [_as_artifact(item) for item in items]


def _iterable(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset))


def artifact_key(artifact: Artifact) -> Hashable:
    """The identity used to link producers and consumers."""
    key = getattr(artifact, "key", None)
    return key if key is not None else artifact  # type: ignore[return-value]


def describe(artifact: Artifact) -> str:
    """A short name for messages."""
    path = getattr(artifact, "path", None)
    return str(path) if path is not None else repr(artifact)


class Snapshot:
    """The outputs' state before an attempt, to find what a failed attempt touched."""

    __slots__ = ("_before",)

    def __init__(self, outputs: list[Artifact]) -> None:
        self._before = [(output, output.mtime() if output.exists() else None) for output in outputs]

    def touched(self) -> list[Artifact]:
        """Outputs created or changed since the snapshot."""
        changed = []
        for output, before in self._before:
            if output.exists() and output.mtime() != before:
                changed.append(output)
        return changed


def declared_stale(
    inputs: list[Artifact], outputs: list[Artifact], max_age: float | None
) -> str | None:
    """Why the outputs need building (None: they are up to date)."""
    stale, why = freshness(inputs, outputs, max_age)
    return why if stale else None


def freshness(
    inputs: list[Artifact], outputs: list[Artifact], max_age: float | None
) -> tuple[bool, str]:
    """Make's rule, with its reason in words either way: ``(True, "out.txt is older than
    in.txt")`` when the outputs need building, ``(False, "out.txt is newer than in.txt")``
    when they are up to date. The oldest output stands for them all."""
    if not outputs:
        return True, "it declares no outputs, so it always runs"
    oldest: float | None = None
    oldest_output = outputs[0]
    for output in outputs:
        if not output.exists():
            return True, f"{describe(output)} does not exist"
        stamp = output.mtime()
        if stamp is not None and (oldest is None or stamp < oldest):
            oldest, oldest_output = stamp, output
    if oldest is None:
        return False, f"{describe(oldest_output)} exists (its time is unknown)"
    newest_input: Artifact | None = None
    newest = -math.inf
    for item in inputs:
        stamp = item.mtime()
        if stamp is not None and stamp > oldest:
            return True, f"{describe(oldest_output)} is older than {describe(item)}"
        if stamp is not None and stamp > newest:
            newest, newest_input = stamp, item
    if max_age is not None and time.time() - oldest > max_age:
        return True, f"{describe(oldest_output)} is older than max_age={max_age:g}s"
    if newest_input is None:
        reads = "its inputs' times are unknown" if inputs else "it reads no inputs"
        return False, f"{describe(oldest_output)} exists ({reads})"
    return False, f"{describe(oldest_output)} is newer than {describe(newest_input)}"


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", **open_options: Any
) -> Iterator[IO[Any]]:
    """Write a file all at once: into a temporary file beside it, renamed over it on success.

    Readers (and ``is_ready`` checks) never see a half-written file; on an exception the
    temporary file is removed and the old file, if any, stays as it was::

        with runcue.atomic_write(out_path) as handle:
            handle.write(text)
    """
    if "w" not in mode and "x" not in mode:
        msg = f"atomic_write() opens files for writing ('w' or 'wb'), got mode={mode!r}"
        raise ValueError(msg)
    target = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(descriptor)
    try:
        with open(temporary, mode.replace("x", "w"), **open_options) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
