"""Atomic file writes: a file is either the old version or the complete new one, never torn."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import torch


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "w",
    validate: Callable[[Path], None] | None = None,
    **kwargs: Any,
) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    If the block raises (or the process dies) ``path`` keeps its previous content. With
    ``validate``, it is called on the complete temporary file before the rename; if it
    raises, the file is removed and ``path`` is left as it was (e.g. a download that is not
    a loadable checkpoint never enters the cache).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if validate is not None:
            validate(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, empty temporary file beside ``path``: ``(descriptor, name)``.

    Created with mode 0666 so that the process umask (and a folder's default ACL) decides its
    permissions, as for any file ``open`` creates: 0644 under umask 022. (``tempfile.mkstemp``
    creates 0600 files, and the rename kept that mode: results on shared storage were unreadable
    to colleagues.) The writer's pid in the name lets :func:`remove_stale_temps` tell a dead
    writer's leftover (kill -9 between create and rename) from a live writer's file.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # another writer drew the same name: draw again
            continue
    raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name}")


def current_umask() -> int:
    """The process umask, read without changing it where the system tells it (Linux
    ``/proc/self/status``); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask_mode(*paths: str | os.PathLike) -> None:
    """Set each file's mode to what the umask gives a new file (0644 under umask 022), for files
    another library wrote through its own 0600 temporary file (safetensors, via transformers)."""
    mode = 0o666 & ~current_umask()
    for path in paths:
        os.chmod(path, mode)


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_open` left in ``directory`` when its writer
    died (kill -9, power loss) before the rename; a live writer's temp file is kept.

    Only this module's names (``.<file>.<pid>.<random>.tmp``) are touched, and only for
    writers of this host that are no longer running. Returns the removed paths.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match and entry.is_file() and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_open`."""
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
