"""_header.py — the facts of include/gpuheap.h that the package needs, by hand.

ctypes cannot read a C header, so the statistics' field list and the error
codes are written out here once; python/tests/test_header.py parses
include/gpuheap.h and fails when the two disagree, so a field added in C shows
up as a failing test rather than as a struct read at the wrong offsets.

Fields are only ever appended to GPU_STATS_FIELDS (the version says how many
there are), so each version's list is the previous one plus its new names.
"""

_V5 = (
    "live_bytes", "live_blocks", "peak_live_bytes", "mapped_bytes", "peak_mapped_bytes", "idle_bytes",
    "quarantine_bytes", "quarantine_blocks", "extents", "stream_free_bytes", "stream_free_blocks", "stream_events",
    "sparse_reserved_bytes", "sparse_committed_bytes", "file_loaded_bytes", "file_zerocopy_bytes", "file_mappings",
    "reserved_bytes", "granularity", "fences", "backend_reserve", "backend_create", "backend_release", "backend_map",
    "backend_unmap", "backend_set_access", "backend_errors", "protected_extents", "backend_fence", "backend_memset",
    "backend_copy", "copy_bytes", "cached_bytes", "cached_blocks", "seal_events", "backend_event_record",
    "extents_lost",
)

# GPU_STATS_VERSION -> the names of GPU_STATS_FIELDS, in order (the gpu_stats_t
# members after `uint32_t version`).
STATS_FIELDS_BY_VERSION = {
    5: _V5,
    6: _V5 + ("ipc_exports", "ipc_imports_open"),  # sharing between processes: gpu_ipc_*
    7: _V5 + ("ipc_exports", "ipc_imports_open", "paused_bytes", "backup_bytes"),  # memory control: gpu_pause
    8: _V5 + ("ipc_exports", "ipc_imports_open", "paused_bytes", "backup_bytes",
              "backup_pinned_bytes"),  # the backup's pinned buffer, kept for the next pause
    9: _V5 + ("ipc_exports", "ipc_imports_open", "paused_bytes", "backup_bytes",
              "backup_pinned_bytes", "order_releases"),  # legacy free order: gpu_set_free_order
}

# gpu_error_t. GPU_ERR_PAUSED comes with memory control (gpu_pause).
ERRORS = {
    "GPU_OK": 0,
    "GPU_ERR_INVALID": -1,
    "GPU_ERR_NOT_OWNED": -2,
    "GPU_ERR_NOT_LIVE": -3,
    "GPU_ERR_OUT_OF_MEMORY": -4,
    "GPU_ERR_OUT_OF_VA": -5,
    "GPU_ERR_NOT_WHOLE_EXTENT": -6,
    "GPU_ERR_NO_DRIVER": -7,
    "GPU_ERR_NO_DEVICE": -8,
    "GPU_ERR_BACKEND": -9,
    "GPU_ERR_BUSY": -10,
    "GPU_ERR_DESTROYED": -11,
    "GPU_ERR_CORRUPT": -12,
    "GPU_ERR_CAPTURING": -13,
    "GPU_ERR_NOT_RESERVATION": -14,
    "GPU_ERR_PAUSED": -15,
}

# Memory control's constants (gpu_pause's flags, the longest tag).
PAUSE_BACKUP = 1 << 0
TAG_MAX = 63
