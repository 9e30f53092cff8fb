"""Read EG3D/GSGAN network pickles without running any of their code.

The official files are pickles of dict(G, D, G_ema, augment_pipe, training_set_kwargs) whose networks are stored
through `torch_utils.persistence`, which embeds the source code of every class and expects the reader to execute it:
`pickle.load` on such a file runs whatever it contains. Here every global the file names passes through
`_RestrictedUnpickler.find_class`: tensors, storages (loaded with torch.load(weights_only=True)), containers, EasyDicts
and numpy scalars are rebuilt; the persistence reconstructor and every other class become inert records of their
arguments and state; globals that could run code (os.system, builtins.exec, getattr, ...) are refused. BUILD may only
set the state of those records. The embedded source is kept as text (its hash) and never executed.
"""
from __future__ import annotations

import collections
import hashlib
import io
import pickle
import re
import struct
import warnings

import numpy as np
import torch

from torch_utils.checkpoint import SnapshotError

_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "bytearray": bytearray, "complex": complex}
# Modules whose globals can run code or reach the system: a file asking for one is refused outright.
_REFUSED_MODULES = ("builtins", "__builtin__", "os", "posix", "nt", "subprocess", "sys", "importlib", "runpy",
                    "pickle", "_pickle", "marshal", "shutil", "socket", "ctypes", "code", "codeop", "pty",
                    "webbrowser", "types", "functools", "operator", "io", "_io", "pathlib", "tempfile", "signal",
                    "multiprocessing", "threading", "asyncio", "inspect", "pdb", "timeit", "platform", "glob")


class _Refused(Exception):
    """Raised inside the unpickler; turned into a SnapshotError naming the file."""


# ---------------------------------------------------------------------------------------------- inert records
class InertObject:
    """Stands for an instance of a class the importer does not trust: records constructor args and state only."""

    global_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):  # SETITEMS of dict subclasses
        self.items.append((key, value))

    def append(self, value):  # APPENDS of list subclasses
        self.items.append(value)

    def extend(self, values):
        self.items.extend(values)

    def __repr__(self):
        return f"<inert {self.global_name}>"


class PersistentRecord:
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` would have built; only meta is kept (the
    embedded module_src is kept as text, never executed)."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or not isinstance(meta.get("class_name"), str) or \
                not isinstance(meta.get("state"), dict):
            raise _Refused("a persistent object without a class_name / state dict")
        self.class_name = meta["class_name"]
        self.version = meta.get("version")
        self.state = meta["state"]
        source = meta.get("module_src")
        self.module_src_sha256 = hashlib.sha256(source.encode()).hexdigest() if isinstance(source, str) else None

    def __repr__(self):
        return f"<persistent {self.class_name}>"


class _EasyDictRecord(dict):
    """dnnlib.util.EasyDict read as a plain dict (attributes of the original are its items)."""

    def __setstate__(self, state):
        pass


class _DtypeRecord:
    """numpy.dtype(name, align, copy) + its pickled state, restricted to numeric kinds."""

    def __init__(self, name, align=False, copy=False):
        if not isinstance(name, str) or not re.fullmatch(r"[?biufc]\d*", name):
            raise _Refused(f"numpy dtype {name!r} (only numeric dtypes are read)")
        self.name, self.byteorder = name, "="

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def numpy(self) -> np.dtype:
        return np.dtype(("" if self.byteorder == "|" else self.byteorder) + self.name)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, _DtypeRecord):
        raise _Refused("numpy scalar of an unsupported dtype")
    if isinstance(data, str):  # protocol 2 writes bytes as latin-1 text
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != dtype.numpy().itemsize:
        raise _Refused("malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype.numpy(), count=1)[0].item()


def _latin1_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode other than latin-1 text")
    return text.encode("latin1")


def _reconstructor(cls, base, state=None):
    """copyreg._reconstructor, for inert classes only."""
    if not (isinstance(cls, type) and issubclass(cls, InertObject)):
        raise _Refused(f"copyreg._reconstructor of {cls!r}")
    obj = cls.__new__(cls)
    obj.state = state
    return obj


# ---------------------------------------------------------------------------------------------- tensors
def _load_storage(data):
    """torch.storage._load_from_bytes, without pickle: the bytes are a torch.save file of one storage."""
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused("storage bytes that are not bytes")
    try:
        storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  weights_only refuses anything but tensors/storages
        raise _Refused(f"a storage that torch.load(weights_only=True) refuses ({str(error).splitlines()[0][:120]})")
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _Refused("storage bytes that hold no storage")
    return storage


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 with every argument checked: a view must lie inside its storage
    (torch itself does not check, and would read past the end)."""
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _Refused("a tensor without a storage")
    ints = (offset, *size, *stride)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints) or len(size) != len(stride):
        raise _Refused("a tensor with malformed offset / size / stride")
    if hooks:
        raise _Refused("a tensor with backward hooks")
    numel = storage.size() if isinstance(storage, torch.TypedStorage) else None
    if numel is None:
        raise _Refused("an untyped storage without a dtype")
    if all(s > 0 for s in size) and offset + sum((s - 1) * st for s, st in zip(size, stride)) >= numel:
        raise _Refused(f"a tensor view {tuple(size)} (offset {offset}, strides {tuple(stride)}) outside its "
                       f"storage of {numel} elements")
    if offset > numel:
        raise _Refused("a tensor offset outside its storage")
    return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    if not isinstance(data, torch.Tensor) or hooks:
        raise _Refused("a parameter that is not a plain tensor")
    return data


def _rebuild_from_type(func, new_type, args, state=None):
    if func not in (_rebuild_tensor, _rebuild_parameter) or not isinstance(args, tuple):
        raise _Refused("a tensor subclass rebuilt through an unknown function")
    return func(*args)


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _DtypeRecord,
    ("dnnlib.util", "EasyDict"): _EasyDictRecord,
    ("dnnlib", "EasyDict"): _EasyDictRecord,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord,
}


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcodes can be overridden): find_class decides what each global becomes, and
    BUILD may only set the state of the importer's own records (a tensor's __setstate__ would accept any view)."""

    def __init__(self, handle):
        super().__init__(handle)
        self.inert_classes: dict[str, type] = {}

    def load_build(self):
        target, state = self.stack[-2], self.stack[-1]
        plain = isinstance(target, (dict, collections.OrderedDict)) and not isinstance(target, _EasyDictRecord)
        if not isinstance(target, (InertObject, _DtypeRecord, _EasyDictRecord)) and not (plain and not state):
            raise _Refused(f"the pickle sets the state of a {type(target).__name__}")
        super().load_build()

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module.split(".")[0] in _REFUSED_MODULES:
            raise _Refused(f"the pickle asks for {module}.{name}, which could run code")
        key = f"{module}.{name}"
        if key not in self.inert_classes:
            self.inert_classes[key] = type(name, (InertObject,), {"global_name": key})
        return self.inert_classes[key]

    def persistent_load(self, pid):
        raise _Refused("a persistent id (a torch.save file, not a network pickle)")


def read_network_pickle(path: str) -> dict:
    """The top-level dict of a network pickle, every object rebuilt safely (see the module docstring)."""
    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            data = _RestrictedUnpickler(handle).load()
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no such network pickle") from None
    except _Refused as error:
        raise SnapshotError(f"{path}: refused: {error}; nothing was executed") from None
    except IsADirectoryError:
        raise SnapshotError(f"{path} is a folder, not a network pickle") from None
    except OSError as error:
        raise SnapshotError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            RuntimeError, MemoryError, RecursionError, UnicodeDecodeError, struct.error) as error:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise SnapshotError(f"{path} is not a readable network pickle (truncated or corrupt: {reason})") from None
    if not isinstance(data, dict):
        raise SnapshotError(f"{path} is not an EG3D/GSGAN network pickle: the top level is a "
                            f"{getattr(data, 'global_name', type(data).__name__)}, expected a dict with G_ema")
    return data


# ---------------------------------------------------------------------------------------------- module records
def _state_of(node, where: str) -> dict:
    state = getattr(node, "state", None)
    if not isinstance(node, (PersistentRecord, InertObject)) or not isinstance(state, dict):
        raise SnapshotError(f"{where}: expected a network module, found {node!r}")
    return state


def record_state_dict(node, where: str, prefix: str = "") -> dict:
    """state_dict of a recorded module tree: _parameters, persistent _buffers, then _modules, as torch orders them."""
    state = _state_of(node, where + (f" ({prefix.rstrip('.')})" if prefix else ""))
    out = {}
    skip = state.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset)) else set()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise SnapshotError(f"{where}: {prefix}{name} is not a tensor ({value!r})")
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(record_state_dict(child, where, f"{prefix}{name}."))
    return out


def submodule(node, dotted: str):
    """The recorded child at a dotted path, or None."""
    for name in dotted.split("."):
        modules = (getattr(node, "state", None) or {}).get("_modules") or {}
        node = modules.get(name)
        if node is None:
            return None
    return node


def attribute(node, name: str, default=None):
    """A plain attribute recorded in a module's __dict__ (numpy scalars already read as Python numbers)."""
    value = (getattr(node, "state", None) or {}).get(name, default)
    return default if value is None else value


def init_kwargs(node) -> dict:
    state = getattr(node, "state", None) or {}
    kwargs = state.get("_init_kwargs", state.get("init_kwargs"))
    return dict(kwargs) if isinstance(kwargs, dict) else {}
