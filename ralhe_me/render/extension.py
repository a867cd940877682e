"""The compiled CPU renderer (``ralhe_me.render._rasterize_cpu``, built by ``setup.py``): the
tile compositing and the fixed-geometry projection. Loaded once; None when it is not built or
was built from other sources (then the torch paths run)."""
from __future__ import annotations

from types import ModuleType
from typing import Optional

from ..native import load_native

#: the interface the sources here call (rasterize.cpp's API_VERSION): 2 added the projection
API_VERSION = 2

_EXT: Optional[ModuleType] = None
_EXT_TRIED = False


def cpp_extension() -> Optional[ModuleType]:
    """The compiled extension module, or None when it was not built (the torch path is used)."""
    global _EXT, _EXT_TRIED
    if not _EXT_TRIED:
        _EXT_TRIED = True
        _EXT = load_native("ralhe_me.render._rasterize_cpu", API_VERSION)
    return _EXT
