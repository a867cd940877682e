"""Compiled extensions are used only when built from the current sources: a stale build is
ignored with a warning (and decoding falls back to the tested reference), never called with
arguments it does not know."""
import importlib
import importlib.machinery
import sys
import types
import warnings

from pathlib import Path

import numpy as np
import pytest

import ralhe_me
from ralhe_me.entropy import latent_coder
from ralhe_me.geometry import occupancy
from ralhe_me.native import StaleExtensionWarning, load_native
from ralhe_me.nn import neighbors

EXTENSIONS = [
    ("ralhe_me.entropy._lockstep_cpu", latent_coder.NATIVE_API_VERSION),
    ("ralhe_me.geometry._occupancy_cpu", occupancy.NATIVE_API_VERSION),
    ("ralhe_me.nn._decode_cpu", neighbors.NATIVE_API_VERSION),
]


def _fake(monkeypatch, name, version):
    module = types.ModuleType(name)
    if version is not None:
        module.API_VERSION = version
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_matching_fake_is_loaded_and_stale_one_is_refused(monkeypatch):
    good = _fake(monkeypatch, "ralhe_fake_ext_a", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_native("ralhe_fake_ext_a", 3) is good
    _fake(monkeypatch, "ralhe_fake_ext_b", 2)
    with pytest.warns(StaleExtensionWarning, match="interface version 2, these sources need 3.*rebuild"):
        assert load_native("ralhe_fake_ext_b", 3) is None
    _fake(monkeypatch, "ralhe_fake_ext_c", None)  # built before versions existed
    with pytest.warns(StaleExtensionWarning, match="interface version None"):
        assert load_native("ralhe_fake_ext_c", 3) is None


def test_missing_extension_is_none_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_native("ralhe_me.no_such_extension_here", 1) is None


def test_every_compiled_extension_that_is_present_loads():
    """A compiled module that is there but cannot be loaded (a source missing from its list in
    setup.py leaves an undefined symbol) fails here instead of making its tests skip as 'not
    built' while the slower Python reference runs."""
    root = Path(ralhe_me.__file__).resolve().parent
    suffixes = [s for s in importlib.machinery.EXTENSION_SUFFIXES if s != ".so"]  # not plain C libraries
    modules = sorted(path for path in root.rglob("*") if any(path.name.endswith(s) for s in suffixes))
    for path in modules:
        rel = path.relative_to(root.parent)
        importlib.import_module(".".join(rel.parts[:-1] + (rel.name.split(".")[0],)))


def test_an_unloadable_extension_is_refused_with_a_warning(monkeypatch):
    def broken(name, *args, **kwargs):
        raise ImportError(f"{name}.so: undefined symbol: _ZN5ralhe5crc32EPKhmj")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.warns(StaleExtensionWarning, match="built but cannot be loaded.*undefined symbol"):
        assert load_native("ralhe_fake_ext_d", 1) is None


@pytest.mark.parametrize("name,version", EXTENSIONS)
def test_built_extensions_match_the_sources(name, version):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        pytest.skip(f"{name} is not built")
    assert module.API_VERSION == version


def test_stale_lockstep_build_falls_back_to_the_reference(monkeypatch):
    from test_latent_coder import ar_latents, make_arm

    q = make_arm(2)
    lat = ar_latents(2, [300, 40], seed=3)
    data = latent_coder.encode_latents(lat, q, 32)
    _fake(monkeypatch, "ralhe_me.entropy._lockstep_cpu", latent_coder.NATIVE_API_VERSION - 1)
    with pytest.warns(StaleExtensionWarning):
        assert not latent_coder.native_available()
    with pytest.warns(StaleExtensionWarning):
        out = latent_coder.decode_latents(data, [300, 40], 2, q, 32)
    for x, y in zip(lat, out):
        assert np.array_equal(x, y)


def test_stale_occupancy_build_falls_back_to_the_reference(monkeypatch):
    rng = np.random.default_rng(0)
    coords = np.unique(rng.integers(0, 32, (300, 3)), axis=0)
    data = occupancy.encode_positions(coords, 5)
    _fake(monkeypatch, "ralhe_me.geometry._occupancy_cpu", None)
    with pytest.warns(StaleExtensionWarning):
        out = occupancy.decode_positions(data, 5)
    assert np.array_equal(np.sort(occupancy.morton_encode(out)), np.sort(occupancy.morton_encode(coords)))


def test_native_choice_follows_the_argument():
    from ralhe_me.native import native_choice

    module, calls = types.ModuleType("ralhe_fake_ext_choice"), []

    def found():
        calls.append("found")
        return module

    def missing():
        calls.append("missing")
        return None

    assert native_choice(None, found, "x") is module and native_choice(True, found, "x") is module
    assert native_choice(None, missing, "the native thing") is None  # the Python reference runs
    with pytest.raises(ImportError, match="^the native thing is not built$"):
        native_choice(True, missing, "the native thing")
    calls.clear()
    assert native_choice(False, found, "x") is None and calls == []  # never loaded
