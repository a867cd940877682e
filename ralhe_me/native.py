"""Loading the compiled extensions only when they match the Python sources.

Why: with an editable install, pulling new sources leaves the old compiled modules in place
until they are rebuilt.  An old loop called with new arguments fails deep inside a decode (and
the decoder would report the file as corrupt).  Each extension states the interface version it
was built for; a stale one is ignored, with a warning that says how to rebuild, and the tested
Python reference runs instead.
"""
from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Callable, Optional

REBUILD_HINT = "rebuild with `pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`)"


class StaleExtensionWarning(RuntimeWarning):
    """A compiled extension built from older sources than the Python code around it."""


def load_native(name: str, api_version: int) -> Optional[ModuleType]:
    """The extension module ``name`` if it is built and its ``API_VERSION`` is ``api_version``;
    None if it is not built, or (with a StaleExtensionWarning) if it is built from other sources
    or is there but cannot be loaded (e.g. an undefined symbol)."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:  # the module is there; something it imports is not
            _warn_unloadable(name, e)
        return None
    except ImportError as e:
        _warn_unloadable(name, e)
        return None
    found = getattr(module, "API_VERSION", None)
    if found != api_version:
        warnings.warn(f"{name} was built for interface version {found}, these sources need {api_version}: "
                      f"using the slower Python reference instead; {REBUILD_HINT}", StaleExtensionWarning,
                      stacklevel=2)
        return None
    return module


def _warn_unloadable(name: str, error: ImportError) -> None:
    warnings.warn(f"{name} is built but cannot be loaded ({error}): using the slower Python reference instead; "
                  f"{REBUILD_HINT}", StaleExtensionWarning, stacklevel=3)


def native_choice(native: Optional[bool], load: Callable[[], Optional[ModuleType]], what: str) -> Optional[ModuleType]:
    """The extension to run for a ``native`` argument, or None to run the Python reference: None
    takes the extension when ``load`` finds it, True requires it (an ImportError that says
    ``what`` is not built), False never loads it."""
    if native is False:
        return None
    module = load()
    if native and module is None:
        raise ImportError(f"{what} is not built")
    return module
