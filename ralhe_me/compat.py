"""Import shims kept in one place.

MinkowskiEngine 0.5.4 still uses ``collections.Sequence`` and friends, which moved to
``collections.abc`` in Python 3.10. Everything in RALHE-ME imports MinkowskiEngine
through :func:`import_minkowski` so the alias is installed exactly once, before the import.
"""
from __future__ import annotations

import collections
import collections.abc
import importlib
import warnings

_ABC_NAMES = ("Sequence", "Mapping", "MutableMapping", "Iterable", "Callable", "MutableSequence")


class MissingDependencyError(ImportError):
    """A package RALHE-ME needs is not installed; the message says how to install it."""


def _alias_collections_abc() -> None:
    for name in _ABC_NAMES:
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def import_minkowski():
    """Return the ``MinkowskiEngine`` module, installing the Python >= 3.10 shim first."""
    _alias_collections_abc()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("MinkowskiEngine")
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MissingDependencyError(
            "MinkowskiEngine 0.5.4 is not installed; run `bash scripts/setup.sh` "
            f"(it builds the CPU version from source). Import error: {exc}"
        ) from exc


def check_stack() -> None:
    """Import every runtime dependency once; used by the set-up script as a smoke test."""
    import numpy
    import torch

    me = import_minkowski()
    for mod in ("compressai", "open3d", "plyfile"):
        try:
            importlib.import_module(mod)
        except ImportError as exc:  # pragma: no cover
            raise MissingDependencyError(f"{mod} is not installed: {exc}") from exc
    if int(numpy.__version__.split(".")[0]) >= 2:  # pragma: no cover
        raise MissingDependencyError("compressai 1.2.8 needs numpy<2; found " + numpy.__version__)
    print(f"torch {torch.__version__}, MinkowskiEngine {me.__version__}, numpy {numpy.__version__}: ok")
