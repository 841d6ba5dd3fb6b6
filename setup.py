"""Build and install pixelaux (docs/design.md section 4).

Install (the build imports the installed torch, hence --no-build-isolation)::

    pip install torch==2.13.0 ninja setuptools wheel
    pip install --no-build-isolation -e ".[test]"

Always builds the C++ extension ``pixelaux._C`` (the CPU cached sampling engine,
ops ``torch.ops.pixelaux.*``) for the generic target of the machine (no
``-march=native``: the AVX2 kernels are chosen at run time, so a wheel may move).
There is no CUDA extension: the GPU engine is the Triton backend, compiled
at run time (docs/design.md section 4). If torch is missing at build time or the
compilation fails, pixelaux is installed as pure Python (the ``torch``
backend still works) and a notice says why.

Environment: ``MAX_JOBS`` (parallel compile jobs, capped at 2),
``PIXELAUX_NO_EXT=1`` (skip the extension).
"""
from __future__ import annotations

import glob
import os
import re
import sys
import time

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _read_version() -> str:
    with open(os.path.join(ROOT, "pixelaux", "__init__.py"), encoding="utf-8") as f:
        match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', f.read(), re.M)
    return match.group(1) if match else "0.0.0"


def _notice(lines) -> None:
    bar = "=" * 78
    print("\n".join([bar] + [f"pixelaux: {line}" for line in lines] + [bar]), file=sys.stderr, flush=True)


def _cap_max_jobs(cap: int = 2) -> int:
    try:
        jobs = int(os.environ.get("MAX_JOBS", "") or os.cpu_count() or 1)
    except ValueError:
        jobs = cap
    jobs = max(1, min(jobs, cap))
    os.environ["MAX_JOBS"] = str(jobs)
    return jobs


def _extensions():
    """(ext_modules, cmdclass) for the native build, or ([], {}) with a notice."""
    if os.environ.get("PIXELAUX_NO_EXT", "0") not in ("", "0"):
        _notice(["PIXELAUX_NO_EXT is set: installing pure Python, without pixelaux._C."])
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as e:  # noqa: BLE001 - any import failure means "no build"
        _notice([f"torch is not importable at build time ({type(e).__name__}: {e}).",
                 "Installing pure Python, without the C++ engine pixelaux._C.",
                 "Install torch first and build with: pip install --no-build-isolation -e ."])
        return [], {}

    jobs = _cap_max_jobs()
    sources = [os.path.relpath(p, ROOT) for p in
               sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
               + sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))]
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
                 "-Wno-unused-function"]
    if sys.platform == "darwin":  # Apple clang has no -fopenmp without libomp
        cxx_flags.remove("-fopenmp")
    link_flags = ["-fopenmp"] if "-fopenmp" in cxx_flags else []
    ext = cpp_extension.CppExtension("pixelaux._C", sources, extra_compile_args={"cxx": cxx_flags},
                                     extra_link_args=link_flags)

    _notice([
        "build configuration",
        f"  torch {torch.__version__} (CUDA: {torch.version.cuda}), python {sys.version.split()[0]}",
        f"  extension pixelaux._C: {', '.join(sources)}",
        f"  C++ flags: {' '.join(cxx_flags)} (generic target; AVX2 kernels picked at run time)",
        f"  link flags: {' '.join(link_flags) or '-'}",
        f"  ninja: {cpp_extension.is_ninja_available()}, MAX_JOBS={jobs}",
    ])

    class BuildExt(cpp_extension.BuildExtension):
        """torch's BuildExtension, falling back to a pure-Python install on failure."""

        def run(self):
            start = time.time()
            try:
                super().run()
            except Exception as e:  # noqa: BLE001 - compiler missing, compile error, ...
                self.extensions = []
                self.distribution.ext_modules = []
                _notice(["building the C++ extension pixelaux._C FAILED:",
                         f"  {type(e).__name__}: {e}",
                         "Installing pure Python: the 'cpp' backend is unavailable, the 'torch'",
                         "backend is used instead (pixelaux.native.reason() says why)."])
                return
            _notice([f"built pixelaux._C in {time.time() - start:.1f} s"])

        def get_outputs(self):
            return super().get_outputs() if self.extensions else []

        def get_output_mapping(self):
            return super().get_output_mapping() if self.extensions else {}

    return [ext], {"build_ext": BuildExt.with_options(use_ninja=cpp_extension.is_ninja_available())}


ext_modules, cmdclass = _extensions()

packages = find_packages(include=["pixelaux", "pixelaux.*"]) + ["pixelaux.kernels"]

setup(
    name="pixelaux",
    version=_read_version(),
    description="PixelCNN models with auxiliary variables and a fast, exact cached sampling engine",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=packages,
    package_dir={"pixelaux.kernels": "kernels"},
    package_data={"pixelaux": ["weights/*.safetensors", "weights/*.json"]},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # torch is installed first (see the README): a plain requirement, so that pip keeps
    # the installed build instead of pulling another one.
    install_requires=["torch>=2.1", "numpy", "pillow", "safetensors", "tqdm", "scikit-image"],
    extras_require={
        # triton: the Triton backend's tests run its kernels under TRITON_INTERPRET=1 on CPU
        # matplotlib: the plot tests (bench --plot, train --plot-metrics) run instead of skipping
        "test": ["pytest", "hypothesis", "matplotlib", "triton; platform_system == 'Linux'"],
        "triton": ["triton"],
        # plots of pixelaux bench; the engine's hot-path timings (python -m pytest benchmarks/ --benchmark-only)
        "bench": ["matplotlib", "pytest-benchmark"],
    },
    entry_points={"console_scripts": ["pixelaux = pixelaux.cli:main"]},
    zip_safe=False,
)
