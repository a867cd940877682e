"""The allocator tuning is applied once, can be turned off, and never changes what is coded."""
import subprocess
import sys

import pytest

CODE = ("import sys; sys.path.insert(0, {root!r}); from ralhe_me.allocator import keep_freed_memory; "
        "print(keep_freed_memory(), keep_freed_memory())")


def _run(env_extra):
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", CODE.format(root=root)], capture_output=True, text=True, env=env,
                         check=True)
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_applied_once_on_glibc_and_off_on_request():
    first, second = _run({"RALHE_MALLOC_DEFAULTS": "0"})
    assert first == second == "True"
    assert _run({"RALHE_MALLOC_DEFAULTS": "1"}) == ["False", "False"]


def test_the_bytes_do_not_depend_on_it(tmp_path):
    """One small encode in a fresh process with and without the tuning: the same file."""
    import os
    from pathlib import Path

    from ralhe_me.default_scene import make_default_scene
    from ralhe_me.gaussians import write_ply

    src = tmp_path / "in.ply"
    write_ply(make_default_scene(800, seed=9), src)
    root = Path(__file__).resolve().parents[1]
    outs = []
    for flag in ("0", "1"):
        out = tmp_path / f"out{flag}.ralhe"
        subprocess.run([sys.executable, "-m", "ralhe_me.cli", "encode", str(src), str(out), "--preset", "fast",
                        "--steps", "4", "--codebook", "64", "--finetune-iters", "0", "--render-steps", "0",
                        "--quiet"], check=True, cwd=root, env={**os.environ, "RALHE_MALLOC_DEFAULTS": flag},
                       capture_output=True)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


KEPT_CODE = """
import sys; sys.path.insert(0, {root!r})
from ralhe_me.allocator import keep_freed_memory
applied = keep_freed_memory() if {tune} else False

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 768 << 20
base = rss_mib()
p = libc.malloc(size)
ctypes.memset(p, 1, size)  # touch every page
libc.free(p)
print(applied, round(rss_mib() - base))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_stays_in_the_process():
    """A 768 MiB block freed at the heap top stays resident with the tuning (the next step reuses
    it without faulting its pages in again), and goes back to the system without it. A trim
    threshold that mallopt saw as 0 (a value masked to a C int) would keep only the 256 MiB top
    pad."""
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    kept = {}
    for tune in (True, False):
        out = subprocess.run([sys.executable, "-c", KEPT_CODE.format(root=root, tune=tune)], capture_output=True,
                             text=True, check=True)
        applied, mib = out.stdout.split()
        kept[tune] = int(mib)
        assert applied == str(tune)
    assert kept[True] >= 700, kept
    assert kept[False] < 100, kept
