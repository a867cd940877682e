"""RALHE-ME: learned hierarchical compression of 3D Gaussian Splatting models.

Install with ``bash scripts/setup.sh`` (pip, builds MinkowskiEngine) or ``conda env create``
(environment.yml). The package needs torch at build time for its CPU rasterizer extension,
so install it with ``pip install --no-build-isolation -e .`` after torch.
"""
import os

from setuptools import Extension, find_packages, setup

ext_modules, cmdclass = [], {}
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
    rans_header = os.path.join("ralhe_me", "entropy", "csrc", "rans_decoder.h")
    # The latent decoder's lockstep loop (integer ARM + rANS reading); pybind11 only (no libtorch);
    # latent_coder.py falls back to numpy/torch without it.
    ext_modules.append(
        Extension(
            "ralhe_me.entropy._lockstep_cpu",
            [os.path.join("ralhe_me", "entropy", "csrc", "lockstep.cpp")],
            depends=[rans_header],
            include_dirs=include_paths(),  # torch ships pybind11's headers
            language="c++",
            extra_compile_args=["-O3", "-std=c++17", "-march=x86-64-v2", "-fno-math-errno"],
        )
    )
    # The occupancy decoder's per-level loop (contexts, adaptive tables, rANS reading); pybind11
    # only; occupancy.py falls back to numpy without it.
    ext_modules.append(
        Extension(
            "ralhe_me.geometry._occupancy_cpu",
            [os.path.join("ralhe_me", "geometry", "csrc", "occupancy.cpp")],
            depends=[rans_header],
            include_dirs=include_paths(),
            language="c++",
            extra_compile_args=["-O3", "-std=c++17", "-march=x86-64-v2", "-fno-math-errno"],
        )
    )
    # Inference-only kernels of the attribute synthesis (inverse RAHT in place); pybind11 only.
    # -ffp-contract=off: no fused multiply-adds, so results equal the torch reference bit for bit;
    # synthesis.py falls back to torch without it.
    ext_modules.append(
        Extension(
            "ralhe_me.nn._decode_cpu",
            [os.path.join("ralhe_me", "nn", "csrc", "decode.cpp")],
            include_dirs=include_paths(),
            language="c++",
            extra_compile_args=["-O3", "-std=c++17", "-march=x86-64-v2", "-fno-math-errno", "-ffp-contract=off"],
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
    package_data={"ralhe_me": ["render/csrc/*.cpp", "render/csrc/*.h", "entropy/csrc/*.cpp", "entropy/csrc/*.h", "geometry/csrc/*.cpp",
                                 "nn/csrc/*.cpp"]},
    python_requires=">=3.9",
    install_requires=["numpy<2", "torch>=2.0", "plyfile", "tqdm", "pyyaml", "compressai==1.2.8", "open3d"],
    extras_require={"test": ["pytest"], "bench": ["DracoPy", "matplotlib"],
                    "ray": ["ray>=2.9,<3"]},  # experiments/run.py --ray
    entry_points={"console_scripts": ["ralhe=ralhe_me.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
