import os as _os

__version__ = "0.1.0"

# onnxruntime 1.32 starts its own telemetry when it is imported: a device id and
# an event database under ~/.cache/Microsoft, held open for the process's life.
# An edge agent phones nobody home; the variable must be set before the import,
# so it is set here, before any edgeloop_agent module can import onnxruntime.
# An operator who wants it can still set ORT_DISABLE_TELEMETRY=0 explicitly.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
