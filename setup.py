"""RALHE-ME: learned hierarchical compression of 3D Gaussian Splatting models.

Install with ``bash scripts/setup.sh`` (pip, builds MinkowskiEngine) or ``conda env create``
(environment.yml). The package needs torch at build time for its CPU rasterizer extension,
so install it with ``pip install --no-build-isolation -e .`` after torch.
"""
import glob
import os

from setuptools import Extension, find_packages, setup

ext_modules, cmdclass = [], {}
# The native decoder's library sources (ralhe_me/decode/native/README.md); the per-stage Python
# extensions below compile the parts they wrap instead of holding copies.
NATIVE_SRC = os.path.join("ralhe_me", "decode", "native", "src")
NATIVE_FLAGS = ["-O3", "-std=c++17", "-march=x86-64-v2", "-fno-math-errno", "-ffp-contract=off"]


def native_sources(*names):
    return [os.path.join(NATIVE_SRC, n) for n in names]


try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension, include_paths

    src = os.path.join("ralhe_me", "render", "csrc")
    sources = sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".cpp")) if os.path.isdir(src) else []
    if sources:
        ext_modules.append(
            CppExtension(
                "ralhe_me.render._rasterize_cpu",
                sources,
                extra_compile_args=["-O3", "-fopenmp", "-march=x86-64-v2"],
                extra_link_args=["-fopenmp"],
            )
        )
    # The native reader of CompressAI's rANS streams, shared by the two decoder loops below.
    rans_header = os.path.join(NATIVE_SRC, "rans_reader.h")
    # The latent decoder's lockstep loop (integer ARM + rANS reading); pybind11 only (no libtorch);
    # latent_coder.py falls back to numpy/torch without it.
    ext_modules.append(
        Extension(
            "ralhe_me.entropy._lockstep_cpu",
            [os.path.join("ralhe_me", "entropy", "csrc", "lockstep.cpp")]
            + native_sources("latents.cpp", "integer_arm.cpp", "laplace_tables.cpp"),
            depends=[rans_header] + native_sources("latents.h", "integer_arm.h", "laplace_tables.h", "common.h",
                                                   "det_math.h"),
            include_dirs=include_paths() + [NATIVE_SRC],  # torch ships pybind11's headers
            language="c++",
            extra_compile_args=NATIVE_FLAGS,
        )
    )
    # The occupancy decoder's per-level loop (contexts, adaptive tables, rANS reading); pybind11
    # only; occupancy.py falls back to numpy without it.
    ext_modules.append(
        Extension(
            "ralhe_me.geometry._occupancy_cpu",
            [os.path.join("ralhe_me", "geometry", "csrc", "occupancy.cpp")]
            + native_sources("occupancy.cpp", "categorical.cpp", "crc32.cpp"),
            depends=[rans_header] + native_sources("occupancy.h", "categorical.h", "bits.h", "octree.h", "common.h"),
            include_dirs=include_paths() + [NATIVE_SRC],
            language="c++",
            extra_compile_args=NATIVE_FLAGS,
        )
    )
    # Kernels of the attribute synthesis (inverse RAHT in place and its adjoint, point-wise layers,
    # neighbour maps); pybind11 only; the inverse's blocks run on OpenMP threads (same bits).
    # -ffp-contract=off: no fused multiply-adds, so results equal the torch reference bit for bit;
    # synthesis.py falls back to torch without it.
    ext_modules.append(
        Extension(
            "ralhe_me.nn._decode_cpu",
            [os.path.join("ralhe_me", "nn", "csrc", "decode.cpp")] + native_sources("raht.cpp"),
            depends=native_sources("raht.h", "common.h"),
            include_dirs=include_paths() + [NATIVE_SRC],
            language="c++",
            extra_compile_args=["-O3", "-std=c++17", "-march=x86-64-v2", "-fno-math-errno", "-ffp-contract=off",
                                "-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
    )
    # The training kernels (pybind11 only, threads: OpenMP); training falls back to their torch or
    # numpy references without them. The float ARM's rate with its gradient in one pass
    # (train/arm_rate.py), the per-level model's (train/level_rate.py), and the latents plus
    # counter-based uniform noise, the rounding's stand-in (train/quantization.py).
    for name in ("arm_rate", "level_rate", "uniform_noise"):
        ext_modules.append(
            Extension(
                f"ralhe_me.train._{name}_cpu",
                [os.path.join("ralhe_me", "train", "csrc", f"{name}.cpp")],
                include_dirs=include_paths(),
                language="c++",
                extra_compile_args=["-O3", "-std=c++17", "-march=x86-64-v2", "-fno-math-errno", "-fopenmp"],
                extra_link_args=["-fopenmp"],
            )
        )
    # The native decoder for Python: the whole library plus one binding file per part.
    native_dir = os.path.dirname(NATIVE_SRC)
    ext_modules.append(
        Extension(
            "ralhe_me.decode._native",
            sorted(glob.glob(os.path.join(native_dir, "python", "*.cpp"))) + sorted(glob.glob(os.path.join(NATIVE_SRC, "*.cpp"))),
            depends=sorted(glob.glob(os.path.join(NATIVE_SRC, "*.h"))) + [os.path.join(native_dir, "python", "bind.h")],
            include_dirs=include_paths() + [NATIVE_SRC],
            language="c++",
            extra_compile_args=NATIVE_FLAGS,
        )
    )
    if ext_modules:
        cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=False)
except ImportError:  # torch missing: the pure-PyTorch renderer is used instead
    pass

setup(
    name="ralhe_me",
    version="0.1.0",
    description="RALHE: region-adaptive learned hierarchical encoding of 3D Gaussian Splatting models",
    packages=find_packages(include=["ralhe_me", "ralhe_me.*"]),
    package_data={"ralhe_me": ["render/csrc/*.cpp", "render/csrc/*.h", "entropy/csrc/*.cpp", "geometry/csrc/*.cpp",
                                 "nn/csrc/*.cpp", "train/csrc/*.cpp", "decode/native/*.md",
                                 "decode/native/src/*", "decode/native/python/*", "decode/native/cli/*",
                                 "decode/native/wasm/*", "decode/native/Makefile"]},
    python_requires=">=3.9",
    install_requires=["numpy<2", "torch>=2.0", "plyfile", "tqdm", "pyyaml", "compressai==1.2.8", "open3d"],
    extras_require={"test": ["pytest"], "bench": ["DracoPy", "matplotlib"],
                    "ray": ["ray>=2.9,<3"]},  # experiments/run.py --ray
    entry_points={"console_scripts": ["ralhe=ralhe_me.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
