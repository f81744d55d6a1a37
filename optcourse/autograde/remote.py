"""The narrow channel between the trusted test runner (``tester.py``) and the student's kernel.

Tests run in the runner, never in the kernel. When a test names something the notebook made (an answer
function, a variable), the runner asks the kernel for it through a socket; the kernel's agent (``serve``,
started for the duration of one test cell) answers with **data** or a **handle**:

* data is encoded as JSON: numbers, strings, containers, numpy arrays and torch tensors (``.npy`` bytes read
  with ``allow_pickle=False``), paths, dtypes, and dataclasses of the course library (rebuilt field by field
  from the runner's own class). Never pickle: nothing the kernel sends can run code in the runner.
* anything else (a function, a model, an iterator) stays in the kernel; the runner holds a ``RemoteObject``
  whose calls, attributes and items are forwarded. Results come back the same way.

In the other direction the runner sends data, handles it was given, library functions by name (the kernel
imports its own copy) and, for anything else it passes to student code (a callback such as an ``evaluate``
function or a fake clock), a callback handle: the kernel may only *call* it, never read its attributes.

A hostile kernel can therefore answer with wrong data (as a wrong answer would) but cannot see a test's
source, its expected values or the runner's memory, and cannot change how an assertion is evaluated.
"""
from __future__ import annotations

import base64
import collections.abc
import dataclasses
import functools
import importlib
import io
import itertools
import json
import math
import os
import pathlib
import socket
import struct
import sys

MAX_ITEMS = 1_000_000        # items of a test's iterator passed to the notebook's code
MAX_FRAME = 512 << 20        # one message; a kernel cannot make the runner hold more than this at once
TRUSTED_PREFIXES = ("optcourse.",)   # library modules whose dataclasses and exceptions cross by name
MODULE_PREFIXES = ("optcourse.", "torch.nn.")  # torch modules of these classes cross by value
_HEADER = struct.Struct(">Q")


class ChannelError(Exception):
    """The other side broke the protocol, closed the socket or did not answer in time."""


class RemoteError(Exception):
    """An exception raised by the student's code in the kernel (its class is not one the runner trusts)."""

    def __init__(self, type_name: str, message: str):
        super().__init__(message)
        self.type_name = type_name


# ---------------------------------------------------------------------------------------------- framing
def send_frame(sock: socket.socket, message: dict) -> None:
    body = json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
    sock.sendall(_HEADER.pack(len(body)) + body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ChannelError("the other side closed the channel")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> dict:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > MAX_FRAME:
        raise ChannelError(f"a message of {size} bytes is over the {MAX_FRAME} limit")
    try:
        message = json.loads(_recv_exact(sock, size))
    except (ValueError, RecursionError) as exc:
        raise ChannelError(f"a message that is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise ChannelError("a message that is not a JSON object")
    return message


# ------------------------------------------------------------------------------------------------ codec
def _npy(array) -> str:
    buf = io.BytesIO()
    import numpy as np

    np.save(buf, array, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def _from_npy(text: str):
    import numpy as np

    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def imported(path: str):
    """The object named ``module:qualname`` (``module:`` is the module itself), imported in this process."""
    module, _, qualname = str(path).partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part)
    return obj


def _trusted_attr(path: str, prefixes: tuple[str, ...] = TRUSTED_PREFIXES):
    """``module:qualname`` of a library object, imported in this process; None if not a library name."""
    module = str(path).partition(":")[0]
    if not module.startswith(prefixes) and module != "builtins":
        return None
    try:
        return imported(path)
    except (ImportError, AttributeError, ValueError):
        return None


def library_name(obj) -> str | None:
    """``module:qualname`` when ``obj`` is reachable under that name in the library (the same object)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    if not module.startswith(TRUSTED_PREFIXES) and not module.startswith(("numpy", "torch", "math", "builtins")):
        return None
    path = f"{module}:{qualname}"
    try:
        return path if imported(path) is obj else None
    except (ImportError, AttributeError, ValueError):
        return None


def _plain(value) -> bool:
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


@functools.lru_cache(maxsize=1)
def _module_internals() -> frozenset:
    """What ``nn.Module.__init__`` sets (parameters, buffers, children, hooks): rebuilt, never copied."""
    import torch

    return frozenset(vars(torch.nn.Module()))


def _plain_module(module) -> bool:
    """A module that can cross by value: every module in it of a library or ``torch.nn`` class, with only plain
    attributes (numbers, strings, tuples) besides its parameters, buffers and children, and no hooks."""
    for m in module.modules():
        name = library_name(type(m))
        if not name or not name.startswith(MODULE_PREFIXES):
            return False
        if any(k not in _module_internals() and not _plain(v) for k, v in vars(m).items()):
            return False
        if any(getattr(m, h, None) for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")):
            return False
    return True


class Codec:
    """Turns values into JSON and back. ``keep(obj) -> dict`` makes a handle for what is not data;
    ``resolve(dict) -> obj`` turns a handle from the other side back into an object."""

    def __init__(self, keep, resolve, *, trusted_side: bool):
        self.keep, self.resolve, self.trusted_side = keep, resolve, trusted_side

    def encode(self, value, depth: int = 0):
        if depth > 64:
            raise TypeError("a value nested more than 64 levels deep")
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return value if abs(value) < 2 ** 63 else {"$bigint": str(value)}
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$float": repr(value)}
        enc = lambda v: self.encode(v, depth + 1)  # noqa: E731
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return {"$tuple": [enc(v) for v in value]}
        if isinstance(value, list):
            return {"$list": [enc(v) for v in value]}
        if isinstance(value, dict):
            return {"$dict": [[enc(k), enc(v)] for k, v in value.items()]}
        if isinstance(value, (set, frozenset)):
            return {"$set": [enc(v) for v in value]}
        if isinstance(value, (bytes, bytearray)):
            return {"$bytes": base64.b64encode(bytes(value)).decode()}
        if isinstance(value, pathlib.PurePath):
            return {"$path": str(value)}
        if isinstance(value, range):
            return {"$range": [value.start, value.stop, value.step]}
        if isinstance(value, (collections.abc.KeysView, collections.abc.ValuesView)):
            return {"$list": [enc(v) for v in value]}
        if self.trusted_side and isinstance(value, collections.abc.Iterator) and not callable(value):
            # a test's generator (finite: the test's own) crosses as its items, an iterator again over there
            items = list(itertools.islice(value, MAX_ITEMS + 1))
            if len(items) > MAX_ITEMS:
                raise TypeError(f"an iterator of more than {MAX_ITEMS} items cannot be passed to the notebook's code")
            return {"$iter": [enc(v) for v in items]}
        np = sys.modules.get("numpy")
        if np is not None:
            if isinstance(value, np.ndarray) and value.dtype != object:
                return {"$ndarray": _npy(value)}
            if isinstance(value, np.generic) and not isinstance(value, np.object_):
                return {"$npscalar": _npy(np.asarray(value))}
            if isinstance(value, np.dtype) and value != object:
                return {"$npdtype": value.str}
        torch = sys.modules.get("torch")
        if torch is not None:
            if isinstance(value, torch.Tensor) and value.layout == torch.strided and not value.is_quantized:
                t = value.detach().cpu()
                dtype = str(t.dtype).removeprefix("torch.")
                data = t.float() if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16; float32 holds it exactly
                return {"$tensor": _npy(data.contiguous().numpy()), "dtype": dtype,
                        "requires_grad": bool(value.requires_grad and value.is_leaf)}
            if isinstance(value, torch.dtype):
                return {"$torch_dtype": str(value).removeprefix("torch.")}
            if isinstance(value, torch.Size):
                return {"$tuple": [int(v) for v in value]}
            if isinstance(value, torch.device):
                return {"$torch_device": str(value)}
            if isinstance(value, torch.nn.Module) and _plain_module(value):
                return self._encode_module(value, library_name(type(value)), enc)
        if np is not None and isinstance(value, np.random.Generator):  # rebuilt from its state on the other side
            return {"$np_generator": type(value.bit_generator).__name__, "state": enc(value.bit_generator.state)}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            name = library_name(type(value))
            if name and name.startswith(TRUSTED_PREFIXES):
                return {"$dataclass": name,
                        "fields": {f.name: enc(getattr(value, f.name)) for f in dataclasses.fields(value)}}
        if isinstance(value, tuple):  # a named tuple that is not the library's: a plain tuple
            return {"$tuple": [enc(v) for v in value]}
        return self.keep(value)

    @staticmethod
    def _encode_module(module, name: str, enc) -> dict:
        """A torch module of the library or of ``torch.nn`` by value: its class, plain attributes, parameters,
        buffers and child modules (a copy, as if the other side had built the same module)."""
        attrs = {k: v for k, v in vars(module).items() if k not in _module_internals()}
        return {"$torch_module": name, "training": module.training, "attrs": enc(attrs),
                "params": enc({k: (None if v is None else v.detach()) for k, v in module._parameters.items()}),
                "grad": enc({k: bool(v.requires_grad) for k, v in module._parameters.items() if v is not None}),
                "buffers": enc(dict(module._buffers)), "modules": enc(dict(module._modules))}

    def _decode_module(self, data, dec):
        import torch

        cls = _trusted_attr(data["$torch_module"], MODULE_PREFIXES)
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise ChannelError(f"not a library module class: {str(data['$torch_module'])[:100]}")
        module = cls.__new__(cls)
        torch.nn.Module.__init__(module)
        for key, value in dec(data["attrs"]).items():
            if isinstance(key, str) and key not in _module_internals() and _plain(value):
                object.__setattr__(module, key, value)
        grad = dec(data["grad"])
        for key, value in dec(data["params"]).items():
            module._parameters[str(key)] = None if value is None else torch.nn.Parameter(
                torch.as_tensor(value), requires_grad=bool(grad.get(key, True)))
        for key, value in dec(data["buffers"]).items():
            module._buffers[str(key)] = None if value is None else torch.as_tensor(value)
        for key, value in dec(data["modules"]).items():
            if value is not None and not isinstance(value, torch.nn.Module):
                raise ChannelError("a child module that is not a module")
            module._modules[str(key)] = value
        module.training = bool(data.get("training"))
        return module

    def decode(self, data, depth: int = 0):
        if depth > 64:
            raise ChannelError("a value nested more than 64 levels deep")
        if data is None or isinstance(data, (bool, int, float, str)):
            return data
        dec = lambda v: self.decode(v, depth + 1)  # noqa: E731
        if isinstance(data, list):
            raise ChannelError("a bare JSON list (lists are tagged)")
        if not isinstance(data, dict) or len(data) == 0:
            raise ChannelError("an untagged value")
        tag = next(iter(data))
        try:
            if tag == "$tuple":
                return tuple(dec(v) for v in data[tag])
            if tag == "$list":
                return [dec(v) for v in data[tag]]
            if tag == "$dict":
                return {dec(k): dec(v) for k, v in data[tag]}
            if tag == "$set":
                return {dec(v) for v in data[tag]}
            if tag == "$range":
                start, stop, step = (int(v) for v in data[tag])
                return range(start, stop, step)
            if tag == "$iter":
                return iter([dec(v) for v in data[tag]])
            if tag == "$bigint":
                return int(data[tag])
            if tag == "$float":
                return float(data[tag])
            if tag == "$bytes":
                return base64.b64decode(data[tag])
            if tag == "$path":
                return pathlib.Path(str(data[tag]))
            if tag == "$ndarray":
                return _from_npy(data[tag])
            if tag == "$npscalar":
                return _from_npy(data[tag])[()]
            if tag == "$npdtype":
                import numpy as np

                return np.dtype(str(data[tag]))
            if tag == "$tensor":
                import torch

                dtype = getattr(torch, str(data["dtype"]))
                if not isinstance(dtype, torch.dtype):
                    raise ChannelError(f"not a torch dtype: {data['dtype']!r}")
                t = torch.from_numpy(_from_npy(data[tag]).copy()).to(dtype)
                return t.requires_grad_(True) if data.get("requires_grad") and t.is_floating_point() else t
            if tag == "$torch_dtype":
                import torch

                dtype = getattr(torch, str(data[tag]))
                if not isinstance(dtype, torch.dtype):
                    raise ChannelError(f"not a torch dtype: {data[tag]!r}")
                return dtype
            if tag == "$torch_device":
                import torch

                return torch.device(str(data[tag]))
            if tag == "$torch_module":
                return self._decode_module(data, dec)
            if tag == "$np_generator":
                import numpy as np

                bit_generator = getattr(np.random, str(data[tag]))
                if not (isinstance(bit_generator, type) and issubclass(bit_generator, np.random.BitGenerator)):
                    raise ChannelError(f"not a numpy bit generator: {str(data[tag])[:50]}")
                generator = np.random.Generator(bit_generator())
                generator.bit_generator.state = dec(data["state"])
                return generator
            if tag == "$dataclass":
                cls = _trusted_attr(data[tag])
                if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                    raise ChannelError(f"not a library dataclass: {str(data[tag])[:100]}")
                obj = cls.__new__(cls)
                names = {f.name for f in dataclasses.fields(cls)}
                for key, value in dict(data["fields"]).items():
                    if key in names:
                        object.__setattr__(obj, key, dec(value))
                return obj
        except ChannelError:
            raise
        except Exception as exc:  # noqa: BLE001 - malformed data from the other side
            raise ChannelError(f"a malformed {tag} value ({type(exc).__name__})") from None
        return self.resolve(data)


# --------------------------------------------------------------------------------------------- endpoint
class Endpoint:
    """One side of the channel: ``request`` sends a message and waits for its answer, serving the other
    side's requests (callbacks, nested calls) while it waits."""

    def __init__(self, sock: socket.socket, handle, record_warnings: bool = False):
        self.sock, self.handle, self._next = sock, handle, 0
        self.record_warnings = record_warnings

    def request(self, op: str, **fields):
        self._next += 1
        my_id = self._next
        send_frame(self.sock, {"id": my_id, "op": op, **fields})
        while True:
            message = recv_frame(self.sock)
            if "re" in message:
                if message["re"] != my_id:
                    raise ChannelError("an answer to a request that was not asked")
                for line in message.get("warnings", [])[:20]:  # the notebook's warnings: notes, as in a kernel
                    print(str(line)[:500], file=sys.stderr)
                if "err" in message:
                    err = message["err"] if isinstance(message["err"], dict) else {}
                    return False, err
                return True, message.get("ok")
            self.serve_one(message)

    def serve_one(self, message: dict) -> bool:
        """Answer one request of the other side; False when it says the session is over."""
        if message.get("op") == "done":
            return False
        import warnings

        with warnings.catch_warnings(record=self.record_warnings) as caught:
            try:
                answer = {"re": message.get("id"), "ok": self.handle(message)}
            except ChannelError:
                raise
            except BaseException as exc:  # noqa: BLE001 - the other side gets the error, this side goes on
                answer = {"re": message.get("id"), "err": {"type": _exception_name(exc), "msg": str(exc)[:4000]}}
        if caught:
            answer["warnings"] = [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in caught[:20]]
        try:
            send_frame(self.sock, answer)
        except (TypeError, ValueError) as exc:
            send_frame(self.sock, {"re": message.get("id"), "err": {"type": "builtins:TypeError",
                                                                      "msg": f"unsendable answer: {exc}"[:4000]}})
        return True


def _exception_name(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}:{cls.__qualname__}"


# ------------------------------------------------------------------------------------ the kernel's agent
class _Callback:
    """A function of the runner handed to student code: calling it asks the runner to call it."""

    def __init__(self, agent: "_Agent", cb: int):
        self._agent, self._cb = agent, cb

    def __call__(self, *args, **kwargs):
        codec = self._agent.codec
        ok, value = self._agent.endpoint.request("call", cb=self._cb, args=codec.encode(list(args)),
                                                  kwargs=codec.encode(kwargs))
        if not ok:
            raise RuntimeError(f"a function the grader passed failed: {str(value.get('msg', ''))[:500]}")
        return codec.decode(value)


class _Agent:
    """Runs in the student's kernel for one test cell. It can be replaced or broken by the notebook; that only
    changes the answers the runner gets, never how the runner judges them."""

    def __init__(self, sock, namespace: dict):
        self.namespace, self.objects = namespace, {}
        self.codec = Codec(self._keep, self._resolve, trusted_side=False)
        self.endpoint = Endpoint(sock, self._handle, record_warnings=True)

    def _keep(self, obj) -> dict:
        if isinstance(obj, BaseException):
            obj = RuntimeError(f"{type(obj).__name__}: {obj}")
        ref = id(obj)
        self.objects[ref] = obj
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return {"$exc_class": library_name(obj) or f"__main__:{obj.__qualname__}", "ref": ref}
        return {"$ref": ref, "type": type(obj).__name__[:100], "callable": callable(obj)}

    def _resolve(self, data: dict):
        if "$ref" in data:
            try:
                return self.objects[int(data["$ref"])]
            except (KeyError, ValueError, TypeError):
                raise ChannelError("a handle this kernel never gave") from None
        if "$cb" in data:
            return _Callback(self, int(data["$cb"]))
        if "$import" in data:
            return imported(data["$import"])
        raise ChannelError(f"an unknown tag {next(iter(data))!r}")

    def _obj(self, message):
        return self.codec.decode(message["obj"])

    def _handle(self, m: dict):
        op, enc, dec = m.get("op"), self.codec.encode, self.codec.decode
        if op == "lookup":
            name = str(m["name"])
            if name not in self.namespace:
                return {"$undefined": True}
            return enc(self.namespace[name])
        if op == "has":
            return str(m["name"]) in self.namespace
        if op == "set":
            self.namespace[str(m["name"])] = dec(m["value"])
            return None
        if op == "delete":
            self.namespace.pop(str(m["name"]), None)
            return None
        if op == "names":
            return enc(sorted(k for k in self.namespace if isinstance(k, str)))
        if op == "call":
            return enc(self._obj(m)(*dec(m["args"]), **dec(m["kwargs"])))
        if op == "call_import":
            return enc(self._resolve({"$import": m["target"]})(*dec(m["args"]), **dec(m["kwargs"])))
        if op == "getattr":
            return enc(getattr(self._obj(m), str(m["name"])))
        if op == "setattr":
            setattr(self._obj(m), str(m["name"]), dec(m["value"]))
            return None
        if op == "getitem":
            return enc(self._obj(m)[dec(m["key"])])
        if op == "setitem":
            self._obj(m)[dec(m["key"])] = dec(m["value"])
            return None
        if op == "len":
            return int(len(self._obj(m)))
        if op == "iter":
            return enc(iter(self._obj(m)))
        if op == "next":
            try:
                return {"$tuple": [enc(next(self._obj(m)))]}
            except StopIteration:
                return {"$stop": True}
        if op == "contains":
            return bool(dec(m["item"]) in self._obj(m))
        if op in ("repr", "str"):
            return (repr if op == "repr" else str)(self._obj(m))[:10000]
        if op == "bool":
            return bool(self._obj(m))
        if op == "eq":
            return enc(self._obj(m) == dec(m["other"]))
        if op == "value":  # the object itself as data, when the test needs it (np.asarray of a kernel object)
            import numpy as np

            return enc(np.asarray(self._obj(m)))
        raise ChannelError(f"unknown operation {op!r}")


def serve(address: str, token: str) -> str:
    """Called in the kernel (``user_expressions`` of an execute request) for one test cell: connect to the
    runner and answer its requests until it says the cell is over."""
    import __main__

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect("\0" + address)
    try:
        send_frame(sock, {"hello": token})
        agent = _Agent(sock, vars(__main__))
        while agent.endpoint.serve_one(recv_frame(sock)):
            pass
    finally:
        sock.close()
    return "served"


def serve_expression(address: str, token: str) -> str:
    """The expression the grader evaluates in the kernel to start ``serve`` (no input or AST transformer runs
    on ``user_expressions``)."""
    return f"__import__('optcourse.autograde.remote', fromlist=['serve']).serve({address!r}, {token!r})"


# --------------------------------------------------------------------------------------- runner's proxies
_NOT_FORWARDED = frozenset({"__array_interface__", "__array_struct__", "__array_priority__", "__torch_function__",
                            "__cuda_array_interface__", "__dlpack__", "_fields", "__length_hint__"})


class RemoteObject:
    """A kernel object seen from the runner. Attribute reads, calls, items, ``len``, iteration and ``repr`` are
    forwarded; results come back as data or as new handles."""

    __slots__ = ("_session", "_ref", "_type", "_callable")

    def __init__(self, session: "RunnerSession", ref: int, type_name: str, is_callable: bool):
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_type", type_name)
        object.__setattr__(self, "_callable", is_callable)

    def _op(self, op, **fields):
        return self._session.op(op, obj={"$ref": self._ref}, **fields)

    def __getattr__(self, name):
        if name.startswith("__") or name in _NOT_FORWARDED:
            raise AttributeError(name)
        return self._op("getattr", name=name)

    def __setattr__(self, name, value):
        self._op("setattr", name=name, value=self._session.codec.encode(value))

    def __call__(self, *args, **kwargs):
        enc = self._session.codec.encode
        return self._op("call", args=enc(list(args)), kwargs=enc(kwargs))

    def __getitem__(self, key):
        return self._op("getitem", key=self._session.codec.encode(key))

    def __setitem__(self, key, value):
        enc = self._session.codec.encode
        self._op("setitem", key=enc(key), value=enc(value))

    def __len__(self):
        return int(self._op("len"))

    def __iter__(self):
        iterator = self._op("iter")
        if not isinstance(iterator, RemoteObject):
            raise TypeError("the kernel's iterator came back as data")
        while (item := iterator._op("next")) != "$stop":
            yield item[0]

    def __next__(self):
        item = self._op("next")
        if item == "$stop":
            raise StopIteration
        return item[0]

    def __contains__(self, item):
        return bool(self._op("contains", item=self._session.codec.encode(item)))

    def __bool__(self):
        return bool(self._op("bool"))

    def __eq__(self, other):
        return self._op("eq", other=self._session.codec.encode(other))

    __hash__ = object.__hash__

    def __array__(self, dtype=None, copy=None):
        import numpy as np

        value = self._op("value")
        return np.asarray(value, dtype=dtype)

    def __repr__(self):
        try:
            return str(self._op("repr"))
        except Exception:  # noqa: BLE001 - a repr must not fail
            return f"<{self._type} in the student's kernel>"

    def __str__(self):
        return str(self._op("str"))


class RunnerSession:
    """The runner's side of one test cell's channel."""

    def __init__(self, sock: socket.socket):
        self._callbacks: dict[int, object] = {}
        self._exception_classes: dict[str, type] = {}
        self.codec = Codec(self._keep, self._resolve, trusted_side=True)
        self.endpoint = Endpoint(sock, self._handle)

    def _keep(self, obj) -> dict:
        name = library_name(obj)
        if name is not None and (callable(obj) or isinstance(obj, type)):
            return {"$import": name}
        if isinstance(obj, RemoteObject):
            return {"$ref": obj._ref}
        if isinstance(obj, type(sys)):  # a module: the kernel imports its own copy
            return {"$import": f"{obj.__name__}:"}
        if not callable(obj):
            raise TypeError(f"the grader cannot pass a {type(obj).__name__} to the notebook's code (only data, "
                            "library functions, objects the notebook made and functions)")
        self._callbacks[id(obj)] = obj
        return {"$cb": id(obj)}

    def _resolve(self, data: dict):
        if "$ref" in data:
            return RemoteObject(self, int(data["$ref"]), str(data.get("type", "object"))[:100],
                                bool(data.get("callable")))
        if "$exc_class" in data:
            return self.exception_class(str(data["$exc_class"]))
        if "$undefined" in data:
            return _UNDEFINED
        if "$stop" in data:
            return "$stop"
        raise ChannelError(f"an unknown tag {str(next(iter(data)))[:50]!r}")

    def exception_class(self, name: str) -> type:
        """The runner's class for an exception the kernel raised: the library's or a builtin one when the
        kernel names it, else one stand-in per name (so ``except`` of a notebook-made class still works)."""
        trusted = _trusted_attr(name)
        # SystemExit, KeyboardInterrupt: not the runner's to obey, a stand-in of the same name instead
        if isinstance(trusted, type) and issubclass(trusted, Exception):
            return trusted
        if name not in self._exception_classes:
            short = name.rpartition(":")[2].rpartition(".")[2] or "Error"
            self._exception_classes[name] = type(short if short.isidentifier() else "Error", (RemoteError,), {
                "__init__": lambda self, msg="", _n=name: RemoteError.__init__(self, _n, msg)})
        return self._exception_classes[name]

    def _handle(self, m: dict):
        if m.get("op") != "call":  # the kernel may call what it was given, nothing else
            raise PermissionError("the notebook may only call the functions the grader passed")
        try:
            fn = self._callbacks[int(m["cb"])]
        except (KeyError, ValueError, TypeError):
            raise ChannelError("a callback the grader never gave") from None
        return self.codec.encode(fn(*self.codec.decode(m["args"]), **self.codec.decode(m["kwargs"])))

    def op(self, op: str, **fields):
        ok, value = self.endpoint.request(op, **fields)
        if ok:
            return self.codec.decode(value)
        cls = self.exception_class(str(value.get("type", "builtins:Exception")))
        message = str(value.get("msg", ""))[:4000]
        try:
            error = cls(message)
        except Exception:  # noqa: BLE001 - an exception class whose constructor needs other arguments
            error = RemoteError(str(value.get("type")), message)
        raise error

    def close(self) -> None:
        try:
            send_frame(self.endpoint.sock, {"op": "done"})
        except OSError:
            pass


class _Undefined:
    def __repr__(self):
        return "<undefined>"


_UNDEFINED = _Undefined()


def listen(address: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + address)
    server.listen(1)
    return server


def new_address() -> tuple[str, str]:
    return f"optcourse-tests-{os.getpid()}-{os.urandom(6).hex()}", os.urandom(16).hex()
