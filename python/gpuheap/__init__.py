"""gpuheap — the GPU heap from Python (ctypes; the standard library only).

The C library does the work; this package finds it (_library.py says where it
looks, and why it prefers the copy inside libgpuheap-preload.so), types its
calls, and turns its errors into exceptions:

    import gpuheap
    with gpuheap.region("weights"):       # allocations of this thread are tagged "weights"
        ...
    gpuheap.pause("weights", backup=True) # physical memory back to the device, contents kept on the host
    gpuheap.resume("weights")             # same addresses, contents restored
    gpuheap.stats()                       # the default heap's statistics, as a dict
    gpuheap.stats("weights")              # one tag's
    with gpuheap.trace("app.trace"): ...  # every heap call recorded
    gpuheap.limit(2 << 30)                # a cap on the device's physical memory

Errors: every failed call raises gpuheap.Error carrying the code (a negative
gpu_error_t, e.g. gpuheap.ERR_INVALID), the library's message (it names the
call and the cause) and gpu_strerror's text. The messages come from the
library's error handler: the package installs one on the copy it binds (a
ctypes callback, kept alive, removed at exit), which keeps each thread's last
message apart; the interposer's own handler, when bound to it, still hears
every error after the package's.

gpuheap.torch.use() and gpuheap.cupy.use() make PyTorch and CuPy allocate from
the same heap. The region, pause, resume, tag statistics and limit calls need
memory control in the library (gpu_pause); where it lacks them they raise
gpuheap.Unsupported.
"""
import atexit
import contextlib
import ctypes
import json
import os
import threading

from . import _header, _library
from ._library import Library, LibraryNotFound

__all__ = [
    "Error", "LibraryNotFound", "Unsupported", "library", "strerror", "region", "pause", "resume", "stats", "trace",
    "limit", "free_order", "malloc", "free", "trim", "capture", "ERRORS", "STATS_FIELDS_BY_VERSION", "PAUSE_BACKUP", "TAG_MAX",
]

ERRORS = dict(_header.ERRORS)
_ERROR_NAMES = {code: name for name, code in ERRORS.items()}
STATS_FIELDS_BY_VERSION = dict(_header.STATS_FIELDS_BY_VERSION)
PAUSE_BACKUP = _header.PAUSE_BACKUP
TAG_MAX = _header.TAG_MAX
# gpuheap.ERR_INVALID, gpuheap.ERR_PAUSED, ...
globals().update({name[len("GPU_"):]: code for name, code in ERRORS.items() if name != "GPU_OK"})


class Error(Exception):
    """A gpuheap call failed.

    code      the negative gpu_error_t (gpuheap.ERR_*)
    message   the library's message: the call and the cause
    strerror  gpu_strerror(code)
    name      the code's name in gpuheap.h (GPU_ERR_...)
    """

    def __init__(self, code, message, strerror=None):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.strerror = strerror if strerror is not None else ""
        self.name = _ERROR_NAMES.get(code, f"gpu_error {code}")

    def __str__(self):
        return f"{self.message} ({self.name}: {self.strerror})" if self.strerror else f"{self.message} ({self.name})"


class Unsupported(NotImplementedError):
    """The bound library lacks the C function a call needs (built before it existed)."""


# ---- binding and errors ---------------------------------------------------------------

_lib = None
_bind_lock = threading.Lock()
_tls = threading.local()  # .error: (code, message) of this thread's last reported failure
_handler = None           # the ctypes callback: kept alive while installed
_chained = None           # the interposer's own handler, called after ours
_previous = None          # the handler installed before ours (its address), put back at exit


def _on_error(code, message, arg):
    """The library's error handler: keeps the message for the thread that failed."""
    _tls.error = (code, message.decode("utf-8", "replace") if message else "")
    if _chained:
        _chained(code, message, None)


def _restore_handler():
    global _handler
    lib = _lib
    if lib is not None and _handler is not None:
        lib.function("gpu_set_error_handler")(_library.HANDLER(_previous or 0), None)
        _handler = None


def library():
    """The bound library (binding it on first use): .path, .kind, .under_run.

    Raises LibraryNotFound, listing every place looked at, when there is none."""
    global _lib, _handler, _chained, _previous
    lib = _lib
    if lib is not None:
        return lib
    with _bind_lock:
        if _lib is None:
            lib = _library.bind()
            _handler = _library.HANDLER(_on_error)
            _previous = lib.function("gpu_set_error_handler")(_handler, None)
            # The interposer's handler takes no argument (it records why a heap did
            # not open, for its exit report): it goes on hearing every error.
            _chained = _library.HANDLER(_previous) if _previous and lib.kind == "preload" else None
            _lib = lib
            atexit.register(_restore_handler)
    return _lib


def _fn(name, call=None):
    fn = library().function(name)
    if fn is None:
        raise Unsupported(f"gpuheap.{call or name}: the library {_lib.path} has no {name} "
                          "(built before it existed: rebuild gpuheap)")
    return fn


def strerror(code):
    """gpu_strerror(code): the text of an error code."""
    return _fn("gpu_strerror")(code).decode()


def _error(code, call):
    got = getattr(_tls, "error", None)
    message = got[1] if got and got[0] == code and got[1] else call
    return Error(code, message, strerror(code))


def _call(name, *args, call=None):
    """Calls name; a negative int result raises Error. Returns the result."""
    fn = _fn(name, call)
    _tls.error = None
    rc = fn(*args)
    if isinstance(rc, int) and rc < 0:
        raise _error(rc, f"{name}: failed")
    return rc


def _call_ptr(name, *args, call=None):
    """Calls name, which returns a pointer; NULL raises Error with the thread's last error."""
    fn = _fn(name, call)
    _tls.error = None
    p = fn(*args)
    if not p:
        code = _fn("gpu_last_error")()
        raise _error(code or ERRORS["GPU_ERR_INVALID"], f"{name}: returned NULL")
    return p


def _tag(tag, allow_none=False):
    if tag is None:
        if allow_none:
            return None
        raise TypeError("a tag is a str (or bytes), not None")
    if isinstance(tag, str):
        return tag.encode("utf-8")
    if isinstance(tag, bytes):
        return tag
    raise TypeError(f"a tag is a str (or bytes), not {type(tag).__name__}")


# ---- the API ---------------------------------------------------------------------------

@contextlib.contextmanager
def region(tag):
    """Tags this thread's allocations with tag while the block runs (gpu_region_begin/end).

    Regions nest; the innermost tag applies. PyTorch tensors (gpuheap.torch, or
    gpuheap-run with PYTORCH_NO_CUDA_MEMORY_CACHING=1) and CuPy arrays created
    inside are tagged."""
    _call("gpu_region_begin", _tag(tag), call="region")
    try:
        yield
    finally:
        _call("gpu_region_end", call="region")


def pause(tag=None, backup=False):
    """Gives the physical memory of tag's blocks (every tag's: None) back to the device.

    Their addresses stay reserved; with backup=True their contents are copied
    to host memory first and come back with resume(), else they are lost. Blocks
    of a paused tag must not be used until it is resumed."""
    _call("gpu_pause", _tag(tag, allow_none=True), PAUSE_BACKUP if backup else 0, call="pause")


def resume(tag=None):
    """Maps tag's blocks (every paused tag's: None) again at the same addresses."""
    _call("gpu_resume", _tag(tag, allow_none=True), call="resume")


def _stats_struct(fields):
    # gpu_stats_t: uint32_t version, then one uint64_t per field; room to spare
    # for a newer library's appended fields.
    class Stats(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32)] + [(f, ctypes.c_uint64) for f in fields] + \
                   [("_spare", ctypes.c_uint64 * 64)]
    return Stats


def stats(tag=None):
    """Statistics as a dict.

    tag None: the default heap of the current device, from gpu_heap_stats_json
    ({"version", "heap", "backend", "device", every GPU_STATS_FIELDS field}). A tag: its
    gpu_tag_stats, as {"version", "tag", the fields of that version}."""
    if tag is None:
        fn = _fn("gpu_heap_stats_json", "stats")
        size = 4096
        while True:
            buf = ctypes.create_string_buffer(size)
            _tls.error = None
            n = fn(None, buf, size)
            if n < 0:
                raise _error(n, "gpu_heap_stats_json: failed")
            if n < size:
                return json.loads(buf.value.decode())
            size = n + 1
    newest = max(STATS_FIELDS_BY_VERSION)
    out = _stats_struct(STATS_FIELDS_BY_VERSION[newest])()
    _call("gpu_tag_stats", _tag(tag), ctypes.byref(out), call="stats")
    known = [v for v in STATS_FIELDS_BY_VERSION if v <= out.version]
    if not known:
        raise Error(ERRORS["GPU_ERR_INVALID"], f"stats({tag!r}): statistics version {out.version} is older than "
                    "this package knows", "")
    fields = STATS_FIELDS_BY_VERSION[max(known)]  # fields are only appended: a newer struct starts the same
    result = {"version": out.version, "tag": tag if isinstance(tag, str) else tag.decode()}
    result.update((f, getattr(out, f)) for f in fields)
    return result


@contextlib.contextmanager
def trace(path):
    """Records every call of every heap to path while the block runs (gpu_trace_start/stop).

    The file starts with "# gpuheap trace 1" (README.md, "Trace format")."""
    _call("gpu_trace_start", os.fsencode(path), call="trace")
    try:
        yield path
    finally:
        _call("gpu_trace_stop", call="trace")


def limit(nbytes=None):
    """The cap on the device's physical memory (gpu_limit); with nbytes, sets it
    (gpu_set_limit) and returns the previous cap. GPUHEAP_LIMIT sets it at start."""
    current = _fn("gpu_limit", "limit")()
    if nbytes is not None:
        if not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"limit: nbytes is a byte count >= 0, not {nbytes!r}")
        _call("gpu_set_limit", nbytes, call="limit")
    return current


_ORDERS = ("event", "legacy")  # GPU_FREE_ORDER_EVENT, GPU_FREE_ORDER_LEGACY


def free_order(order=None):
    """The process's free order, "event" or "legacy" (gpu_free_order; README.md,
    Reuse safety): when a block freed without a stream is handed out again. With
    order, sets it (gpu_set_free_order; back to "event" fences what legacy order
    released) and returns the previous one. Under gpuheap-run it is the
    interposer's: "legacy" unless GPUHEAP_FREE_ORDER=event or the program did what
    legacy order cannot cover."""
    current = _ORDERS[_fn("gpu_free_order", "free_order")()]
    if order is not None:
        if order not in _ORDERS:
            raise ValueError(f"free_order: 'event' or 'legacy', not {order!r}")
        _call("gpu_set_free_order", _ORDERS.index(order), call="free_order")
    return current


def malloc(size, tag=None):
    """size bytes of device memory from the default heap (tagged when tag is given): its address, an int."""
    if tag is None:
        return _call_ptr("gpu_malloc", size, call="malloc")
    return _call_ptr("gpu_malloc_tagged", size, _tag(tag), call="malloc")


def free(ptr):
    """Frees a block malloc returned (gpu_free)."""
    _call("gpu_free", ptr, call="free")


def trim(keep=0, tag=None):
    """Gives idle memory of the default heap back until keep bytes stay idle (gpu_heap_trim);
    with tag, of that tag's heaps instead, and frees the pinned buffer a resume kept
    for the tag's next backup (gpu_tag_trim)."""
    if tag is None:
        _call("gpu_heap_trim", None, keep, call="trim")
    else:
        _call("gpu_tag_trim", _tag(tag), keep, call="trim")


@contextlib.contextmanager
def capture():
    """Tells the heap a stream capture runs (gpu_capture_begin/end): needed around
    the capture of a non-blocking stream (PyTorch's torch.cuda.graph) so that the
    heap neither fences nor unmaps meanwhile (README.md, "Graph capture")."""
    _fn("gpu_capture_begin", "capture")()
    try:
        yield
    finally:
        _fn("gpu_capture_end", "capture")()
