"""Reading the pickles other captioning code saves, without running any code from them.

Three kinds of file:

- state dicts (``torch.save(module.state_dict())``): ``torch.load(weights_only=True)``;
- a plain pickle of one small object (the seed's ``vocab.pkl``): a ``pickle.Unpickler`` whose
  ``find_class`` answers only the names it is given, with stand-ins;
- ``torch.save`` of whole modules and optimizers (the Show, Attend and Tell tutorial's
  checkpoint): ``torch.load(weights_only=True)`` with the stand-ins allowlisted under the
  names the pickle uses.

A stand-in (``PickledObject``) is an inert class of ours: unpickling makes one with
``object.__new__`` and fills its ``__dict__`` — no method of the class it stands for runs, and
that class is never imported. Tensors are rebuilt by torch's weights-only loader. Any other
global in the file is refused with one ``CheckpointImportError`` naming it, before anything it
names can run.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..device import available_memory
from ..errors import MissingDependencyError
from .base import CheckpointImportError

MAX_SMALL_PICKLE_BYTES = 64 * 2**20  # a vocabulary pickle: COCO's (10k words) is ~300 KB


class PickledObject:
    """An object restored from a pickle as its attributes only: the stand-in for a class the
    importer admits by name and never imports. ``pickled_name`` is that class's full name."""

    pickled_name = "object"

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_name}>"


def stand_ins(*names: str) -> dict[str, type]:
    """One inert ``PickledObject`` subclass per full class name (``"models.Encoder"``)."""
    return {name: type(name.rsplit(".", 1)[-1], (PickledObject,), {"pickled_name": name}) for name in names}


def pickled_name(obj: object) -> str:
    """The full class name a stand-in stands for (from its class: a pickle can set attributes
    of the instance, not of the class); the type's name for anything else."""
    return type(obj).pickled_name if isinstance(obj, PickledObject) else type(obj).__name__


def short_name(obj: object) -> str:
    """``Linear`` for a pickled ``torch.nn.modules.linear.Linear``; the type name otherwise."""
    return pickled_name(obj).rsplit(".", 1)[-1]


def _check_size(path: Path, what: str, limit: int | None = None) -> None:
    """The file exists and its size fits ``limit``, or (no limit) the memory that loading it takes."""
    if not path.is_file():
        raise CheckpointImportError(f"{path}: no such file (the {what})")
    size = path.stat().st_size
    if limit is not None and size > limit:
        raise CheckpointImportError(
            f"{path}: {size / 2**20:.0f} MiB is more than a {what} can be ({limit / 2**20:.0f} MiB); is it the right file?"
        )
    if limit is None and size > available_memory():
        raise CheckpointImportError(
            f"{path}: {size / 2**20:.0f} MiB is more than the memory available to load it "
            f"({available_memory() / 2**20:.0f} MiB)"
        )


def _torch_reason(error: pickle.UnpicklingError) -> str:
    """The reason in torch's weights-only refusal, without its advice on loading the file unsafely."""
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    if reason:
        return reason.group(1).strip()[:200]
    lines = [line for line in str(error).splitlines() if line.strip() and "weights_only" not in line]
    return (lines or [type(error).__name__])[0].strip()[:200]


def _admits_stand_ins() -> bool:
    # torch 2.6 is the first whose weights-only loader takes (stand-in, "module.Class") pairs.
    major, minor = (int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    return (major, minor) >= (2, 6)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _weights_only_load(path: Path, what: str, admitted: dict[str, Any], allowed: str):
    if admitted and not _admits_stand_ins():
        raise MissingDependencyError(
            f"reading {path} needs torch >= 2.6 (its weights-only loader admits stand-in classes by name); "
            f"this is torch {torch.__version__}: pip install -U torch"
        )
    try:
        if admitted:
            with torch.serialization.safe_globals([(obj, name) for name, obj in admitted.items()]):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL (\S+)", str(e))  # "Unsupported global: GLOBAL x" or "unsupported GLOBAL x whose"
        if refused:
            name = refused.group(1)
            name = name if "." in name else f"builtins.{name}"  # torch names builtins without their module
            raise CheckpointImportError(
                f"{path}: refused to load {name} from the pickle (only {allowed} are allowed); nothing in the file ran"
            ) from None
        raise CheckpointImportError(f"{path}: not a {what} this importer can read ({_torch_reason(e)})") from None
    except Exception as e:  # noqa: BLE001  a malformed file fails in many ways (EOF, zip, storage sizes)
        raise CheckpointImportError(f"{path}: not a readable {what} ({_first_line(e)})") from None


def load_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save(module.state_dict())``: parameter names → tensors."""
    path = Path(path)
    _check_size(path, what)
    state = _weights_only_load(path, what, {}, "tensors and the containers of a state dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointImportError(f"{path}: not a {what} (a mapping of parameter names to tensors)")
    return dict(state)


def load_torch_pickle(path: str | Path, what: str, admitted: dict[str, Any], allowed: str) -> Any:
    """What ``torch.save`` pickled into ``path`` (modules, optimizers), each global named in
    ``admitted`` (full name → stand-in) replaced by its stand-in; ``allowed`` says in words
    what is admitted, for the refusal of anything else."""
    path = Path(path)
    _check_size(path, what)
    return _weights_only_load(path, what, admitted, allowed)


class _Refused(Exception):
    """A global the restricted unpickler does not admit."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, admitted: dict[str, type]):
        super().__init__(file)
        self.admitted = admitted

    def find_class(self, module: str, name: str):
        full_name = f"{module}.{name}"
        if full_name not in self.admitted:
            raise _Refused(full_name)
        return self.admitted[full_name]

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent references (tensors saved by torch) do not belong in this file")


def load_small_pickle(path: str | Path, what: str, admitted: dict[str, type]) -> Any:
    """The one object ``pickle.dump`` wrote into ``path``, made of plain values and the
    stand-ins ``admitted`` (full class name → stand-in); any other class is refused."""
    path = Path(path)
    _check_size(path, what, MAX_SMALL_PICKLE_BYTES)
    try:
        with open(path, "rb") as file:
            return _RestrictedUnpickler(file, admitted).load()
    except _Refused as e:
        raise CheckpointImportError(
            f"{path}: refused to load {e} from the pickle (only {', '.join(admitted)} and plain values are "
            "allowed); nothing in the file ran"
        ) from None
    except Exception as e:  # noqa: BLE001  truncated or malformed pickles fail in many ways
        raise CheckpointImportError(f"{path}: not a readable {what} ({_first_line(e)})") from None


def attribute(obj: object, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``obj.name`` of a stand-in, checked to be a ``kind``; a ``CheckpointImportError`` naming
    ``where`` (the file and the object) otherwise."""
    value = getattr(obj, "__dict__", {}).get(name)
    if not isinstance(value, kind):
        raise CheckpointImportError(f"{where}: the pickled {short_name(obj)} has no valid {name!r}")
    return value


def submodule(module: PickledObject, name: str, expected: str, where: str) -> PickledObject:
    """The child ``name`` of a pickled ``nn.Module``, checked to be a pickled ``expected`` (a short class name)."""
    child = attribute(module, "_modules", dict, where).get(name)
    if not isinstance(child, PickledObject) or short_name(child) != expected:
        raise CheckpointImportError(
            f"{where}: the pickled {short_name(module)} has no {expected} {name!r} (found {short_name(child)}); "
            "it is not the architecture this importer knows"
        )
    return child


def module_tensors(module: PickledObject, where: str) -> dict[str, torch.Tensor]:
    """The parameters and persistent buffers of a pickled ``nn.Module`` and its children,
    named as its ``state_dict()`` names them."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def visit(node: PickledObject, prefix: str) -> None:
        if id(node) in seen:  # a pickle can make a module its own child
            raise CheckpointImportError(f"{where}: the pickled modules contain themselves ({prefix or 'top'})")
        seen.add(id(node))
        non_persistent = node.__dict__.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, value in attribute(node, group, dict, where).items():
                if value is None or (group == "_buffers" and name in non_persistent):
                    continue
                if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                    raise CheckpointImportError(f"{where}: {prefix}{name} of the pickled modules is not a tensor")
                tensors[prefix + name] = value
        for name, child in attribute(node, "_modules", dict, where).items():
            if child is None:
                continue
            if not isinstance(name, str) or not isinstance(child, PickledObject):
                raise CheckpointImportError(f"{where}: {prefix}{name} of the pickled modules is not a module")
            visit(child, f"{prefix}{name}.")

    visit(module, "")
    return tensors
