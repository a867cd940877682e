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
