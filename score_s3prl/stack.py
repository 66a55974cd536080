"""The guard at first use: stop with one line when torch's compiled companions cannot load.

A wheel of torchaudio is built against one torch ABI; pip only checks the version range in its
metadata, so an environment can hold a torchaudio that dies on import (measured: torchaudio
2.11.1 beside torch 2.11.0 fails with ``undefined symbol:
torch_exception_get_what_without_backtrace``). Every entry point (the ``score-s3prl`` CLI and so
``run_superb.sh``, the downstream launcher, the hub entries) calls :func:`require_loadable`
before it imports anything that imports torchaudio, and a user sees one line naming both
installed versions and the pip command that fixes it, instead of a traceback.

This module imports nothing heavy itself: it must run before the imports it guards.
"""

from __future__ import annotations

import importlib
import importlib.metadata

from .errors import ScoreError

# Pairs whose whole test suite passed (README "Installing"); the lock holds the first.
TESTED_PAIRS: dict[str, str] = {  # torch release -> torchaudio release built for it
    "2.11.0": "2.11.0",
    "2.13.0": "2.11.1",
    "2.14.1": "2.11.1",
}
LOCKED_TORCH, LOCKED_TORCHAUDIO = "2.11.0", "2.11.0"

# Compiled modules built against torch's ABI, in the order they depend on each other.
COMPILED = ("torch", "torchaudio")

_checked = False

# What the dynamic loader says when mmap is refused for lack of address space (ulimit -v, a job's
# memory limit): the libraries are fine, the process may not map them.
_OUT_OF_MEMORY = ("failed to map segment", "cannot allocate memory", "out of memory")
# Address space the import of torch 2.11 + torchaudio took (measured with ulimit -v: 3.0 GB failed, 3.5 GB loaded)
IMPORT_ADDRESS_SPACE_GB = 3.5


class StackError(ScoreError):
    """An installed compiled dependency cannot be loaded in this environment."""


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution`` ("not installed" when absent)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def fix_command(torch_version: str) -> str:
    """The pip command that pairs a loadable torchaudio with ``torch_version``."""
    release = torch_version.split("+")[0]
    if release in TESTED_PAIRS:
        return f"pip install 'torchaudio=={TESTED_PAIRS[release]}'"
    return f"pip install 'torch=={LOCKED_TORCH}' 'torchaudio=={LOCKED_TORCHAUDIO}'"


def _root_cause(exc: BaseException) -> str:
    """First line of the innermost chained error: torchaudio wraps the loader's
    ``undefined symbol: ...`` in ``Could not load this library``, which names no reason."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _address_space_limit() -> str:
    """This process's address-space limit in words (``ulimit -v``), or "a memory limit"."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return "a memory limit (cgroup or job)"
    return f"an address-space limit of {soft / 1e9:.1f} GB (ulimit -v)"


def require_loadable() -> None:
    """Import torch and torchaudio; on failure raise one :class:`StackError` line.

    Cheap after the first successful call in a process.

    Raises:
        StackError: naming the module that failed, why (the loader's first line), the installed
            torch and torchaudio versions, and the pip command that fixes the pair; or, when the
            loader ran out of address space (a memory limit), that limit instead of the versions.
    """
    global _checked
    if _checked:
        return
    for module in COMPILED:
        try:
            importlib.import_module(module)
        except (ImportError, OSError, RuntimeError, MemoryError) as exc:  # what a broken shared library raises
            cause = _root_cause(exc)
            if isinstance(exc, MemoryError) or any(text in cause.lower() for text in _OUT_OF_MEMORY):
                raise StackError(
                    f"{module} cannot be loaded: out of memory while mapping its libraries ({cause}); this "
                    f"process runs under {_address_space_limit()}: allow more (importing torch and "
                    f"torchaudio took about {IMPORT_ADDRESS_SPACE_GB:g} GB of address space when measured)"
                ) from None
            torch_version = installed_version("torch")
            raise StackError(
                f"{module} cannot be loaded ({cause}); installed: torch {torch_version}, "
                f"torchaudio {installed_version('torchaudio')}; fix: {fix_command(torch_version)}"
            ) from None
    _checked = True
