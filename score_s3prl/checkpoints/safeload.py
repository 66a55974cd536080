"""Reading checkpoint files without letting the file choose any code to run.

A PyTorch checkpoint is a pickle, and a pickle can name any importable callable (``os.system``,
``torch._utils._import_dotted_name``) and call it while it loads. Every checkpoint this project
reads goes through this module:

* :func:`load_checkpoint` uses ``torch.load(weights_only=True)``: torch's own unpickler, which
  builds only tensors, plain containers and the exact globals allowed by
  ``torch.serialization.add_safe_globals`` (``argparse.Namespace`` for s3prl's ``states-*.ckpt``,
  see :mod:`score_s3prl.compat`);
* :func:`load_fairseq_checkpoint` reads fairseq checkpoints, which pickle fairseq and omegaconf
  objects. Its unpickler resolves an exact list of (module, name) pairs, none of which can
  import or look up a name given by the file, and turns every ``fairseq.*`` and
  ``omegaconf.*`` class into an inert stand-in that only stores what the pickle gives it;
  :func:`plain` then makes plain dicts and lists of the omegaconf stand-ins. Neither fairseq
  nor omegaconf code runs while loading;
* :func:`load_safetensors` reads a ``.safetensors`` weights file (a format without pickle).

Failures become one :class:`~score_s3prl.errors.ScoreError` line naming the file and the problem.
"""

from __future__ import annotations

import _compat_pickle
import collections
import contextlib
import io
import os
import pickle
import re
import types
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import ScoreError

# The first bytes of the two formats torch.save writes: a zip archive (torch >= 1.6), or a
# pickle stream (protocol 2+ starts with 0x80; torch's legacy format pickles a magic number).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80


class CheckpointError(ScoreError):
    """A checkpoint file that cannot be read safely: not a torch file, or it names code."""


def _refusal(exc: BaseException) -> str:
    """One line saying why torch or our unpickler refused a file.

    torch's weights_only message is a paragraph suggesting ``weights_only=False``, which is
    exactly what must not be done with an untrusted file: keep only the global it refused.
    """
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+(?: [\w.]+)?)", text) or re.search(r"refusing to load ([\w.]+)", text)
    if found:
        name = found.group(1).replace(" ", ".")
        return f"it names {name}, and a checkpoint may name only data types: refused, nothing was run"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {first}"


def sniff(path: str | os.PathLike) -> None:
    """Raise a CheckpointError unless ``path`` starts like a file torch.save wrote.

    Without this a text file reaches the unpickler and fails with a bare "(101)" (the byte 'e').
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not head:
        raise CheckpointError(f"{path}: empty file, not a PyTorch checkpoint")
    if head != _ZIP_MAGIC and head[0] != _PICKLE_PROTO:
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (it starts with {head!r}, neither a zip archive nor a pickle)"
        )
    if head == _ZIP_MAGIC and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (a damaged zip archive)")


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` (on CPU by default), with one-line errors.

    Raises:
        CheckpointError: naming ``path``: missing, not a torch file, truncated, or it refers to
            a global that is not on torch's allow-list (e.g. ``os.system``).
    """
    sniff(path)
    try:
        return _torch_load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(f"{path}: not a loadable {what}: {_refusal(exc)}") from exc


_torch_load = torch.load  # the real one, also while :func:`weights_only_torch_load` is active


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` weights file (data only by design: no pickle), with one-line errors.

    Raises:
        CheckpointError: naming ``path``: safetensors missing, or the file unreadable.
    """
    try:
        from safetensors.torch import load_file

        return load_file(os.fspath(path))
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        raise CheckpointError(f"{path}: cannot read the weights ({exc})") from exc


def default_load_refuses(value: Any) -> bool:
    """True when a bare ``torch.load`` (torch's default ``weights_only``, as s3prl calls it)
    refuses ``value`` written by ``torch.save``: an in-memory probe, no file is opened."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    try:
        _torch_load(buffer, map_location="cpu")
    except Exception:
        return True
    return False


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Within the block, every ``torch.load`` of a file path is :func:`load_checkpoint`.

    For s3prl's own loads in the launcher (``-e``/``-i`` states, ``hubert_local -k`` ...):
    ``weights_only=False`` from the caller is overridden (a file must not choose code to run)
    and a refused or unreadable file is one error line naming it, not a traceback.
    """

    def guarded(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(f, (str, os.PathLike)):
            return load_checkpoint(f, map_location=map_location)
        kwargs["weights_only"] = True
        return _torch_load(f, map_location, *args, **kwargs)

    torch.load = guarded
    try:
        yield
    finally:
        torch.load = _torch_load


# ----------------------------------------------------------------------------- fairseq pickles


class Inert:
    """Stands in for a fairseq or omegaconf class: keeps what the pickle gives, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state, slots = state  # (dict state, slot state) as pickle writes for __slots__ classes
            self.__dict__.update(slots)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._state = state

    def __repr__(self) -> str:
        return f"<stand-in for {type(self).__module__}.{type(self).__qualname__}>"


_STAND_INS: dict[tuple[str, str], type] = {}


def _stand_in(module: str, name: str) -> type:
    """One stand-in class per pickled (module, name), so stand-ins can be told apart by name."""
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = type(name, (Inert,), {"__module__": module, "__qualname__": name})
    return _STAND_INS[key]


def _exact(*pairs: tuple[str, str, Any]) -> dict[tuple[str, str], Any]:
    return {(module, name): obj for module, name, obj in pairs}


# Exactly these globals resolve to real objects. Each is a type or a function that builds
# data from data; none imports, looks up a name, or calls something the file chose (the
# tensor rebuilders call only what this list or torch's storage loader produced).
_ALLOWED: dict[tuple[str, str], Any] = _exact(
    ("builtins", "dict", dict), ("builtins", "list", list), ("builtins", "tuple", tuple),
    ("builtins", "set", set), ("builtins", "frozenset", frozenset), ("builtins", "int", int),
    ("builtins", "float", float), ("builtins", "complex", complex), ("builtins", "bool", bool),
    ("builtins", "str", str), ("builtins", "bytes", bytes), ("builtins", "bytearray", bytearray),
    ("builtins", "slice", slice),
    ("collections", "OrderedDict", collections.OrderedDict),
    ("collections", "defaultdict", collections.defaultdict),
    ("typing", "Any", Any),
    ("torch", "Size", torch.Size),
    ("torch", "device", torch.device),
    ("torch._utils", "_rebuild_tensor", torch._utils._rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2", torch._utils._rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter", torch._utils._rebuild_parameter),
    ("torch._tensor", "_rebuild_from_type_v2", torch._tensor._rebuild_from_type_v2),
    ("torch.nn.parameter", "Parameter", torch.nn.Parameter),
)
# torch dtypes are pickled by name (torch.float32, ...)
_ALLOWED.update({("torch", str(dtype).split(".")[1]): dtype for dtype in vars(torch).values()
                 if isinstance(dtype, torch.dtype)})


def _numpy_globals() -> dict[tuple[str, str], Any]:
    import numpy as np

    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray

    allowed = {("numpy", "dtype"): np.dtype, ("numpy", "ndarray"): np.ndarray}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = multiarray.scalar
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
    return allowed


# Classes of these packages become stand-ins (never imported, whatever the name).
_STAND_IN_PACKAGES = ("fairseq", "omegaconf", "argparse")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for fairseq checkpoints: exact allow-list, inert stand-ins, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles name Python 2 globals (__builtin__.long): check their Python 3 names
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module.startswith("numpy") and (module, name) in _numpy_globals():
            return _numpy_globals()[(module, name)]
        # a dotted name would be looked up attribute by attribute: never for a stand-in either
        if module.split(".")[0] in _STAND_IN_PACKAGES and name.isidentifier():
            return _stand_in(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load's pickle_module: torch subclasses our Unpickler (storages are its own loader), and
# its legacy format calls ``load`` directly, so both must be the restricted ones.
_restricted_pickle = types.ModuleType("score_s3prl_restricted_pickle")
_restricted_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
_restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]
_restricted_pickle.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


def load_fairseq_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint that pickles fairseq / omegaconf / argparse objects, as stand-ins.

    Raises:
        CheckpointError: naming ``path`` and the refused global, or what else went wrong.
    """
    sniff(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a loadable checkpoint: {_refusal(exc)}") from exc


def plain(value: Any) -> Any:
    """Plain dicts and lists from omegaconf stand-ins (DictConfig, ListConfig, value nodes).

    An omegaconf container keeps its items in ``_content`` (a dict or list of nodes, or None,
    or a ``???``/interpolation string); a value node keeps its value in ``_val``.
    """
    if isinstance(value, Inert):
        state = vars(value)
        if "_content" in state:
            return plain(state["_content"])
        if "_val" in state:
            return plain(state["_val"])
        return value
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def resolve_interpolations(value: dict[str, Any], source: str) -> dict[str, Any]:
    """``${a.b}`` interpolations of plain data resolved by OmegaConf (data in, data out)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.create(value), resolve=True)  # type: ignore[return-value]
    except Exception as exc:  # omegaconf raises its own error types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScoreError(f"{source}: unreadable config in the checkpoint ({first})") from exc


