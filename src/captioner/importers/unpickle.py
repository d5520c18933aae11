"""Reading the pickles other captioning code saves, without running any code from them.

- State dicts (``torch.save(module.state_dict())``): ``torch.load(weights_only=True)``.
- Anything else (the seed's pickled vocabulary; the Show, Attend and Tell tutorial's
  checkpoint, which pickles whole modules and optimizers): a ``pickle.Unpickler`` whose
  ``find_class`` answers only the full names it is given — inert stand-ins for the classes
  the format needs, and torch's own functions that rebuild tensors — and refuses any other
  global, before anything it names can run. ``torch.load`` reads checkpoints with it as its
  ``pickle_module``, so torch's code still lays out the storages of both its zip format and
  the legacy format older torch wrote (whose pickled modules its weights-only loader refuses).

A stand-in (``PickledObject``) is a class of ours with no behaviour: unpickling makes one with
``object.__new__`` and fills its ``__dict__``; the class it stands for is never imported.
"""
from __future__ import annotations

import _compat_pickle
import pickle
import re
import types
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..device import available_memory
from .base import CheckpointImportError

MAX_SMALL_PICKLE_BYTES = 64 * 2**20  # a vocabulary pickle: COCO's (10k words) is ~300 KB
# What torch.save's pickling of tensors, parameters and modules' containers refers to (torch's
# own code; storage classes are resolved by torch.load itself).
TORCH_GLOBALS = {
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
}


class PickledObject:
    """An object restored from a pickle as its attributes only: the stand-in for a class the
    importer admits by name and never imports. ``pickled_name`` is that class's full name."""

    pickled_name = "object"

    def __repr__(self) -> str:
        return f"<pickled {type(self).pickled_name}>"


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


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


class _Refused(Exception):
    """A global the restricted unpickler does not admit."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Answers ``find_class`` from ``admitted`` (full name → object) only. Persistent references
    (tensors' storages) fail unless torch.load gives the unpickler its own ``persistent_load``."""

    admitted: dict[str, Any] = {}

    def find_class(self, module: str, name: str):
        # Python 2 names (torch.save's protocol 2 writes __builtin__.set), mapped as pickle does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full_name = f"{module}.{name}"
        if full_name not in self.admitted:
            raise _Refused(full_name)
        return self.admitted[full_name]


def _restricted_load(path: Path, what: str, admitted: dict[str, Any], allowed: str, torch_format: bool) -> Any:
    unpickler = type("Unpickler", (_RestrictedUnpickler,), {"admitted": admitted})
    try:
        with warnings.catch_warnings():
            # Legacy files carry their modules' source; torch warns it cannot check ours against it.
            warnings.simplefilter("ignore")
            if not torch_format:
                with open(path, "rb") as file:
                    return unpickler(file).load()
            module = types.ModuleType("captioner_restricted_pickle")
            module.Unpickler = unpickler
            module.load = lambda file, **options: unpickler(file, **options).load()
            # weights_only=False only because a pickle_module is given: ours admits what it lists.
            return torch.load(path, map_location="cpu", pickle_module=module, weights_only=False)
    except _Refused as e:
        raise CheckpointImportError(
            f"{path}: refused to load {e} from the pickle (only {allowed} are allowed); nothing in the file ran"
        ) from None
    except Exception as e:  # noqa: BLE001  a malformed file fails in many ways (EOF, zip, storage sizes)
        raise CheckpointImportError(f"{path}: not a readable {what} ({_first_line(e)})") from None


def load_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save(module.state_dict())``: parameter names → tensors."""
    path = Path(path)
    _check_size(path, what)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's weights-only refusal, wrapped in advice on loading it unsafely
        refused = re.search(r"GLOBAL (\S+)", str(e))  # "Unsupported global: GLOBAL x" / "unsupported GLOBAL x whose"
        if refused:
            name = refused.group(1) if "." in refused.group(1) else f"builtins.{refused.group(1)}"  # torch drops it
            raise CheckpointImportError(
                f"{path}: refused to load {name} from the pickle (a {what} holds tensors only); nothing in the file ran"
            ) from None
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        raise CheckpointImportError(
            f"{path}: not a readable {what} ({reason.group(1).strip()[:200] if reason else _first_line(e)})"
        ) from None
    except Exception as e:  # noqa: BLE001  a malformed file fails in many ways (EOF, zip, storage sizes)
        raise CheckpointImportError(f"{path}: not a readable {what} ({_first_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointImportError(f"{path}: not a {what} (a mapping of parameter names to tensors)")
    return dict(state)


def load_torch_pickle(path: str | Path, what: str, admitted: dict[str, Any], allowed: str) -> Any:
    """What ``torch.save`` pickled into ``path`` (zip or legacy format): plain values, tensors
    and the objects of ``admitted`` (full name → stand-in or inert function); ``allowed`` says
    in words what is admitted, for the one-line refusal of anything else."""
    path = Path(path)
    _check_size(path, what)
    return _restricted_load(path, what, {**TORCH_GLOBALS, **admitted}, allowed, torch_format=True)


def load_small_pickle(path: str | Path, what: str, admitted: dict[str, type]) -> Any:
    """The one object ``pickle.dump`` wrote into ``path``, made of plain values and the
    stand-ins ``admitted`` (full class name → stand-in); any other class is refused."""
    path = Path(path)
    _check_size(path, what, MAX_SMALL_PICKLE_BYTES)
    return _restricted_load(path, what, admitted, f"{', '.join(admitted)} and plain values", torch_format=False)


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
