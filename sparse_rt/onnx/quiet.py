"""Silencing torch.onnx.export's chatter (deprecations, "torchvision is not installed"), safely
from several threads at once."""

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator

# Logger levels and warning filters are process-wide: each export saving and restoring them
# itself would, when exports overlap, restore a neighbour's quiet state and leave it for good.
# The first export in saves them and the last one out restores them.
_lock = threading.Lock()
_exports_running = 0
_saved_level = logging.NOTSET
_saved_warnings = None


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """While any thread is inside: the "torch.onnx" loggers show errors only, warnings are ignored."""
    global _exports_running, _saved_level, _saved_warnings

    exporter_log = logging.getLogger("torch.onnx")
    with _lock:
        if _exports_running == 0:
            _saved_level = exporter_log.level
            _saved_warnings = warnings.catch_warnings()
            _saved_warnings.__enter__()
            warnings.simplefilter("ignore")
            exporter_log.setLevel(logging.ERROR)
        _exports_running += 1
    try:
        yield
    finally:
        with _lock:
            _exports_running -= 1
            if _exports_running == 0:
                exporter_log.setLevel(_saved_level)
                _saved_warnings.__exit__(None, None, None)
