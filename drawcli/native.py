"""The native training loop: model/csrc/draw_loop.cpp, compiled once per machine, with a switch.

model/fused.py's training loop (forward and backpropagation through time) for the attention model
with one channel on the CPU, as C++: the per-step elementwise work in vectorised loops, one
dispatcher call per product, the batch split into one chunk per thread, and bfloat16 product
inputs written once where they are made. It fills the same buffers as fused.py's loop, so the
weight gradients after it are fused.py's. tests/test_native.py checks it against fused.py.

The library is built the first time it is needed, with the C++ compiler torch's own extensions
use ($CXX, else c++), into $DRAWCLI_CACHE (default ~/.cache/drawcli)/native/<key>/, where the
key covers this source, torch's version, the CPU's flags, the compiler and its commands. Building
takes 10-30 s; later processes load the file. Where no compiler works (or DRAWCLI_NATIVE=0), the loop stays
fused.py's Python one: the numbers are the same, only slower.

The model never builds or loads anything itself (it does no I/O): the commands that train
(``draw train``, benchmarks/speed.py) call ``load()`` first, and fused.py uses the loop when
``ready()`` says it is loaded and enabled.
"""

from __future__ import annotations

import ctypes.util
import functools
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


def _cpu_id() -> str:
    """The lines of /proc/cpuinfo that say which instructions -march=native may use (x86 `flags`,
    Arm `Features` and `CPU part`), else what platform knows."""
    keep = ("flags", "Features", "CPU implementer", "CPU part", "model name")
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            seen = {}
            for line in f:
                name = line.split(":", 1)[0].strip()
                if name in keep and name not in seen:
                    seen[name] = line.strip()
            if seen:
                return "\n".join(seen[k] for k in keep if k in seen)
    except OSError:
        pass
    return platform.processor() + platform.machine()


@functools.cache
def _compiler_version(cxx: str) -> str:
    try:
        done = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return done.stdout.splitlines()[0] if done.stdout else ""
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def build_key(cxx: str) -> str:
    """This source, torch, the CPU, the compiler and the commands: a change in any is a new build."""
    h = hashlib.sha256()
    compile_cmd, link_cmd = commands(cxx, "o", "so")
    for part in (SOURCE.read_bytes(), torch.__version__, _cpu_id(), sys.platform, platform.machine(),
                 str(torch._C._GLIBCXX_USE_CXX11_ABI), cxx, _compiler_version(cxx), " ".join(compile_cmd),
                 " ".join(link_cmd)):
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def commands(cxx: str, obj: str, so: str) -> tuple[list[str], list[str]]:
    """The compile and link commands.

    -ffast-math at compile time only (vectorised exp from libmvec); linking without it keeps
    crtfastmath (flush-to-zero for the whole process) out of the library. OpenMP must be torch's
    own runtime (libgomp): the loop's at::parallel_for and the products nested in it must see the
    same parallel region, so clang is told -fopenmp=libgomp. -z defs: an unresolved symbol fails
    the build here, not every later load."""
    from torch.utils.cpp_extension import include_paths, library_paths

    clang = "clang" in Path(cxx).name or "clang" in _compiler_version(cxx).lower()
    openmp = "-fopenmp=libgomp" if clang else "-fopenmp"
    libs = library_paths()
    mvec = ["-Wl,--as-needed", "-lmvec"] if ctypes.util.find_library("mvec") else []
    compile_cmd = [cxx, "-O3", "-march=native", "-ffast-math", openmp, "-fPIC", "-std=c++20",
                   f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
                   *(f"-I{p}" for p in include_paths()), "-c", str(SOURCE), "-o", obj]
    link_cmd = [cxx, "-shared", obj, "-o", so, openmp, "-Wl,-z,defs", *(f"-L{p}" for p in libs),
                "-lc10", "-ltorch_cpu", "-ltorch", *mvec, "-lm", *(f"-Wl,-rpath,{p}" for p in libs)]
    return compile_cmd, link_cmd


class CompileError(RuntimeError):
    """The compiler refused the source or the link: worth remembering (not a killed or timed-out build)."""


def build(dest: Path, cxx: str) -> None:
    """Compile SOURCE into dest (atomically: a half-written library is never loaded)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        obj, so = Path(tmp) / "draw_loop.o", Path(tmp) / dest.name
        for cmd in commands(cxx, str(obj), str(so)):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                err = CompileError if done.returncode > 0 else RuntimeError  # < 0: killed by a signal
                raise err(f"{Path(cmd[0]).name} failed: {last}")
        os.replace(so, dest)


def load(say=None) -> bool:
    """Build (once per machine) and load the library; False, with the reason kept, if impossible.

    say: called with one line before a build starts (the build takes 10-30 s). Processes that
    start together (--nproc) build one at a time: the others wait and load the result. A build
    the compiler refused is remembered in FAILED beside it, so later runs do not retry it."""
    if _STATE["loaded"] is not None:
        return _STATE["loaded"]
    ok = False
    try:
        if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64", "aarch64")):
            raise RuntimeError(f"not built on {sys.platform}/{platform.machine()}")
        cxx = compiler()
        if cxx is None:
            raise RuntimeError("no C++ compiler (set CXX, or install g++)")
        folder = cache_dir() / build_key(cxx)
        dest, failed = folder / "draw_loop.so", folder / "FAILED"
        if not dest.exists():
            import fcntl

            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not dest.exists():
                    if failed.exists():
                        reason = failed.read_text(encoding="utf-8").strip() or "an earlier build failed"
                        raise RuntimeError(f"{reason} (remembered in {failed}: delete it to try again)")
                    if say is not None:
                        say(f"building the native training loop once for this machine into {folder} (10-30 s)")
                    try:
                        build(dest, cxx)
                    except CompileError as e:
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


