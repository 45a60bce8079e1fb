"""The native training loop: model/csrc/draw_loop.cpp, compiled once per machine, with a switch.

model/fused.py's training loop (forward and backpropagation through time) for the attention model
with one channel on the CPU, as C++: the per-step elementwise work in vectorised loops, one
dispatcher call per product, the batch split into one chunk per thread, and bfloat16 product
inputs written once where they are made. It fills the same buffers as fused.py's loop, so the
weight gradients after it are fused.py's. tests/test_native.py checks it against fused.py.

The library is built the first time it is needed, with the C++ compiler torch's own extensions
use ($CXX, else c++), into $DRAWCLI_CACHE (default ~/.cache/drawcli)/native/<key>/, where the
key covers this source, torch's version and the CPU's flags. Building takes 10-30 s;
later processes load the file. Where no compiler works (or DRAWCLI_NATIVE=0), the loop stays
fused.py's Python one: the numbers are the same, only slower.

The model never builds or loads anything itself (it does no I/O): the commands that train
(``draw train``, benchmarks/speed.py) call ``load()`` first, and fused.py uses the loop when
``ready()`` says it is loaded and enabled.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "model" / "csrc" / "draw_loop.cpp"
ABI = 1  # draw_loop.cpp's abi_version()

_STATE: dict = {"enabled": os.environ.get("DRAWCLI_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off"),
                "loaded": None, "error": None}


def set_native(enabled: bool) -> None:
    """Use the native loop where it applies (default, unless DRAWCLI_NATIVE=0) or never."""
    _STATE["enabled"] = bool(enabled)


def native_enabled() -> bool:
    return _STATE["enabled"]


def cache_dir() -> Path:
    base = os.environ.get("DRAWCLI_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "drawcli")
    return Path(base) / "native"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def build_key() -> str:
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), _cpu_flags().encode(), sys.platform.encode(),
                 platform.machine().encode(), str(torch._C._GLIBCXX_USE_CXX11_ABI).encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def build(dest: Path, cxx: str) -> None:
    """Compile SOURCE into dest (atomically: a half-written library is never loaded)."""
    from torch.utils.cpp_extension import include_paths, library_paths

    dest.parent.mkdir(parents=True, exist_ok=True)
    libs = library_paths()
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        obj, so = Path(tmp) / "draw_loop.o", Path(tmp) / dest.name
        # -ffast-math at compile time only (vectorised exp from libmvec); linking without it keeps
        # crtfastmath (flush-to-zero for the whole process) out of the library.
        compile_cmd = [cxx, "-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c++20",
                       f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
                       *(f"-I{p}" for p in include_paths()), "-c", str(SOURCE), "-o", str(obj)]
        link_cmd = [cxx, "-shared", str(obj), "-o", str(so), "-fopenmp", *(f"-L{p}" for p in libs),
                    "-lc10", "-ltorch_cpu", "-ltorch", *(["-lmvec"] if sys.platform.startswith("linux") else []),
                    "-lm", *(f"-Wl,-rpath,{p}" for p in libs)]
        for cmd in (compile_cmd, link_cmd):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                raise RuntimeError(f"{Path(cmd[0]).name} failed: {last}")
        os.replace(so, dest)


def load(say=None) -> bool:
    """Build (once per machine) and load the library; False, with the reason kept, if impossible.

    say: called with one line before a build starts (the build takes 10-30 s)."""
    if _STATE["loaded"] is not None:
        return _STATE["loaded"]
    ok = False
    try:
        if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64", "aarch64")):
            raise RuntimeError(f"not built on {sys.platform}/{platform.machine()}")
        key = build_key()
        dest = cache_dir() / key / "draw_loop.so"
        failed = dest.with_name("FAILED")
        if failed.exists():
            raise RuntimeError(failed.read_text(encoding="utf-8").strip() or "an earlier build failed")
        if not dest.exists():
            cxx = compiler()
            if cxx is None:
                raise RuntimeError("no C++ compiler (set CXX, or install g++)")
            if say is not None:
                say(f"building the native training loop once for this machine into {dest.parent} (10-30 s)")
            try:
                build(dest, cxx)
            except Exception as e:
                dest.parent.mkdir(parents=True, exist_ok=True)
                failed.write_text(str(e) + "\n", encoding="utf-8")
                raise
        torch.ops.load_library(str(dest))
        if int(torch.ops.drawcli.abi_version()) != ABI:
            raise RuntimeError("stale native library")
        ok = True
    except Exception as e:  # any failure: the Python loop it is
        _STATE["error"] = str(e) or type(e).__name__
    _STATE["loaded"] = ok
    return ok


def unavailable_reason() -> str | None:
    return _STATE["error"]


def ready() -> bool:
    """Loaded in this process and not switched off."""
    return bool(_STATE["enabled"] and _STATE["loaded"])


