"""_library.py — which copy of gpuheap this process talks to, and its functions.

A process must have one heap per device, or pausing, tracing and counting
would watch a heap that serves nobody. gpuheap exists in two shared objects:

  libgpuheap.so            the library, its API exported;
  libgpuheap-preload.so    the interposer (gpuheap-run) and the framework entry
                           points (gpu_torch_alloc, gpu_cupy_malloc), with a
                           whole gpuheap inside whose API it hides but hands
                           out by name (gpu_preload_symbol).

So the package binds, in this order, and says where it looked when nothing fits:

  1. the interposer already in the process (/proc/self/maps shows it):
     gpuheap-run put it in LD_PRELOAD, or a framework loaded it as its
     allocator; its heap serves the program's memory, so it is the only right
     one, whatever GPUHEAP_LIB says;
  2. GPUHEAP_LIB: a path to either library, and nothing else if it is set;
  3. the build tree, when the package runs from the source tree
     (python/gpuheap -> ../../build/lib/preload/, ../../build/lib/);
  4. the installed libraries: the libdir `meson install` used (_paths.py), the
     loader's search (ctypes.util.find_library), the usual lib directories.

Where both libraries are at hand the interposer is preferred: PyTorch and CuPy
load it as their allocator (gpuheap.torch, gpuheap.cupy), and dlopen of the
same file gives the same copy, so the framework's tensors and the package's
calls meet in one heap. Loaded this way (not preloaded) it interposes nothing.
"""
import ctypes
import ctypes.util
import os
import sysconfig

PRELOAD = "libgpuheap-preload.so"
LIBRARY = "libgpuheap.so"

# name -> (restype, argtypes): the public functions the package calls.
HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_c = ctypes
PROTOTYPES = {
    "gpu_strerror": (_c.c_char_p, [_c.c_int]),
    "gpu_last_error": (_c.c_int, []),
    "gpu_set_error_handler": (_c.c_void_p, [HANDLER, _c.c_void_p]),
    "gpu_malloc": (_c.c_void_p, [_c.c_size_t]),
    "gpu_free": (_c.c_int, [_c.c_void_p]),
    "gpu_malloc_usable_size": (_c.c_size_t, [_c.c_void_p]),
    "gpu_heap_stats_json": (_c.c_int, [_c.c_void_p, _c.c_void_p, _c.c_size_t]),
    "gpu_heap_trim": (_c.c_int, [_c.c_void_p, _c.c_size_t]),
    "gpu_capture_begin": (None, []),
    "gpu_capture_end": (None, []),
    "gpu_trace_start": (_c.c_int, [_c.c_char_p]),
    "gpu_trace_stop": (_c.c_int, []),
    "gpu_set_free_order": (_c.c_int, [_c.c_int]),
    "gpu_free_order": (_c.c_int, []),
    # memory control
    "gpu_region_begin": (_c.c_int, [_c.c_char_p]),
    "gpu_region_end": (_c.c_int, []),
    "gpu_malloc_tagged": (_c.c_void_p, [_c.c_size_t, _c.c_char_p]),
    "gpu_pause": (_c.c_int, [_c.c_char_p, _c.c_uint]),
    "gpu_resume": (_c.c_int, [_c.c_char_p]),
    "gpu_tag_stats": (_c.c_int, [_c.c_char_p, _c.c_void_p]),
    "gpu_tag_trim": (_c.c_int, [_c.c_char_p, _c.c_size_t]),
    "gpu_set_limit": (_c.c_int, [_c.c_size_t]),
    "gpu_limit": (_c.c_size_t, []),
}


class LibraryNotFound(OSError):
    """No usable gpuheap library: .tried lists (place, why) for every place looked at."""

    def __init__(self, tried, hint=None):
        self.tried = list(tried)
        lines = "\n".join(f"  {place}: {why}" for place, why in self.tried)
        hint = hint or ("build it (meson setup build && ninja -C build), install it (meson install), "
                        f"or set GPUHEAP_LIB to the path of {PRELOAD} or {LIBRARY}")
        super().__init__(f"gpuheap: no usable gpuheap library; looked at:\n{lines}\n{hint}")


class Library:
    """One bound copy of gpuheap.

    path       the shared object's file
    kind       "preload" (libgpuheap-preload.so: API through gpu_preload_symbol,
               framework entry points exported) or "library" (libgpuheap.so)
    under_run  the interposer was already in the process (gpuheap-run)
    handle     the ctypes.CDLL
    """

    def __init__(self, path, handle, under_run=False):
        self.path = path
        self.handle = handle
        self.under_run = under_run
        self.kind = "preload" if self.exports("gpu_preload_symbol") else "library"
        self._functions = {}
        if self.kind == "preload":
            lookup = handle.gpu_preload_symbol
            lookup.restype, lookup.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
            self._lookup = lookup

    def __repr__(self):
        run = ", under gpuheap-run" if self.under_run else ""
        return f"<gpuheap library {self.path!r} ({self.kind}{run})>"

    def exports(self, name):
        """True when the shared object exports name (gpu_torch_alloc, ...)."""
        try:
            getattr(self.handle, name)
        except AttributeError:
            return False
        return True

    def address(self, name):
        """The address of an exported function, or None."""
        return ctypes.cast(getattr(self.handle, name), ctypes.c_void_p).value if self.exports(name) else None

    def function(self, name):
        """The public function name of this copy, typed from PROTOTYPES; None if it has none."""
        if name in self._functions:
            return self._functions[name]
        restype, argtypes = PROTOTYPES[name]
        fn = None
        if self.kind == "preload":
            addr = self._lookup(name.encode())
            if addr:
                fn = ctypes.CFUNCTYPE(restype, *argtypes)(addr)
        elif self.exports(name):
            fn = getattr(self.handle, name)
            fn.restype, fn.argtypes = restype, argtypes
        self._functions[name] = fn
        return fn

    def has(self, name):
        return self.function(name) is not None


def mapped_preload():
    """The interposer's file if it is loaded in this process, else None: preloaded
    by gpuheap-run, or opened by the package or a framework (PyTorch loads it as
    its allocator) — in every case the copy whose heap the process uses."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    named = os.environ.get("GPUHEAP_PRELOAD_LIB")
    named = os.path.realpath(named) if named else None
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue
        path = fields[5]
        if os.path.basename(path).startswith("libgpuheap-preload") or path == named:
            return path
    return None


def preloaded(path):
    """True when LD_PRELOAD names path: the interposer serves this process (gpuheap-run)."""
    for entry in os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":"):
        try:
            if entry and os.path.samefile(entry, path):
                return True
        except OSError:
            pass
    return False


def _mapped_path(prefix):
    """The file of the first mapping whose name starts with prefix (a soname's path)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) == 6 and os.path.basename(fields[5].strip()).startswith(prefix):
                    return fields[5].strip()
    except OSError:
        pass
    return None


def _is_gpuheap(lib):
    """Why lib is not a usable gpuheap, or None when it is."""
    if lib.kind == "preload":
        return None if lib.has("gpu_malloc") else "gpu_preload_symbol does not know gpu_malloc"
    if lib.exports("gpu_torch_alloc"):
        return ("an interposer without gpu_preload_symbol (built before the Python package): "
                "its heap cannot be reached; rebuild it")
    return None if lib.exports("gpu_malloc") else "not gpuheap (no gpu_malloc)"


def _try(place, tried, under_run=False, mode=ctypes.DEFAULT_MODE):
    """Binds place (a path or a soname) or notes why not in tried."""
    if os.sep in place and not os.path.exists(place):
        tried.append((place, "no such file"))
        return None
    try:
        handle = ctypes.CDLL(place, mode=mode)
    except OSError as e:
        tried.append((place, str(e)))
        return None
    path = os.path.abspath(place) if os.sep in place else (_mapped_path(place) or place)
    lib = Library(path, handle, under_run)
    why = _is_gpuheap(lib)
    if why:
        tried.append((place, why))
        return None
    return lib


def _build_tree():
    """The build tree's libraries when the package runs from the source tree."""
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "lib"))
    return [os.path.join(root, "preload", PRELOAD), os.path.join(root, LIBRARY)]


def _installed():
    """The installed libraries' places, most specific first."""
    places = []
    try:
        from . import _paths  # written by meson at install time
        places += [os.path.join(_paths.LIBDIR, PRELOAD), os.path.join(_paths.LIBDIR, LIBRARY)]
    except ImportError:
        pass
    for name in ("gpuheap-preload", "gpuheap"):
        found = ctypes.util.find_library(name)
        if found:
            places.append(found)
    multiarch = sysconfig.get_config_var("MULTIARCH")
    for prefix in ("/usr/local/lib", "/usr/lib"):
        for d in ([os.path.join(prefix, multiarch)] if multiarch else []) + [prefix]:
            places += [os.path.join(d, PRELOAD), os.path.join(d, LIBRARY)]
    seen = set()
    return [p for p in places if not (p in seen or seen.add(p))]


def bind():
    """The gpuheap this process should talk to (module docstring), or LibraryNotFound."""
    tried = []
    preload = mapped_preload()
    if preload:
        # Already loaded: RTLD_NOLOAD makes sure this finds that copy and no other.
        lib = _try(preload, tried, under_run=preloaded(preload), mode=os.RTLD_LAZY | os.RTLD_NOLOAD)
        if lib:
            return lib
        raise LibraryNotFound(tried, "the interposer loaded in this process holds the heap that serves it; "
                                     "rebuild it so that it has gpu_preload_symbol")
    env = os.environ.get("GPUHEAP_LIB")
    if env:
        lib = _try(env, tried)
        if lib:
            return lib
        raise LibraryNotFound([(f"GPUHEAP_LIB={p}", why) for p, why in tried],
                              f"GPUHEAP_LIB must name {PRELOAD} or {LIBRARY} (or be unset)")
    for place in _build_tree() + _installed():
        lib = _try(place, tried)
        if lib:
            return lib
    raise LibraryNotFound(tried)

