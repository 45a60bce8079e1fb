"""The native engine's library: model/csrc/draw_loop.cpp, built once per machine by PyTorch's own
``torch.utils.cpp_extension.load`` (with ninja), and loaded.

The library registers two ops, ``torch.ops.drawcli.loop_forward`` and ``loop_backward``
(model/native_loop.py calls them; engine "native" runs DRAW's training and evaluation loops with
them). It is built the first time it is needed, with the C++ compiler torch's extensions use
($CXX, else c++, g++ or clang++), into $DRAWCLI_CACHE (default ~/.cache/drawcli)/native/<key>/,
where the key covers what the build depends on: this source, torch's version, the CPU's flags,
the compiler and the flags. Building takes 20-40 s; later processes load the file. Processes that
start together (``--nproc``) build one at a time: the others wait for the lock and load the
result. A build the compiler refused is remembered in FAILED beside it (later runs do not try
again; delete the file to retry). Where nothing can be built the commands say why in one line
and run the Python engine: the same numbers, slower.

drawcli/model/draw.py never builds or loads anything itself (it does no I/O): engine.resolve calls
``load()`` where the native engine could run a call, and the model then runs it.
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
from contextlib import contextmanager
from pathlib import Path

import torch

from drawcli.core.files import environment

SOURCE = Path(__file__).parent / "csrc" / "draw_loop.cpp"
HEADERS = (SOURCE.parent / "kernels.h", SOURCE.parent / "amx.h")  # included by SOURCE: part of what a build depends on
NAME = "drawcli_loop"  # the library's file name (torch.ops.drawcli is its namespace)
# The one place of the library's ABI number: compiled in as DRAWCLI_ABI and checked after loading.
# Raise it when the ops change in a way a library built from an older source must not serve.
ABI = 4
OPS = ("loop_forward", "loop_backward", "amx_pack")

_STATE: dict = {"loaded": None, "error": None}  # this process's one attempt: loaded or not, and why


def cache_dir() -> Path:
    base = os.environ.get("DRAWCLI_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "drawcli")
    return Path(base) / "native"


def _off(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


def switched_off() -> bool:
    """DRAWCLI_NATIVE=0 (or false, no, off): `auto` never picks the native engine."""
    return _off("DRAWCLI_NATIVE")


def amx_switched_off() -> bool:
    """DRAWCLI_AMX=0 (or false, no, off): the library is built without its AMX kernels (csrc/amx.h),
    as on a CPU without AMX; the bfloat16 products then run through oneDNN."""
    return _off("DRAWCLI_AMX")


def target_arch() -> str:
    """The -march the library is built for: $DRAWCLI_NATIVE_ARCH (e.g. x86-64-v3 for AVX2 only,
    x86-64-v4 for AVX-512, x86-64 for the generic baseline), else "native"."""
    return os.environ.get("DRAWCLI_NATIVE_ARCH", "").strip() or "native"


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


def compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def flags(cxx: str) -> tuple[list[str], list[str]]:
    """Compile and link flags (torch.utils.cpp_extension adds torch's include paths, libraries and
    -D_GLIBCXX_USE_CXX11_ABI).

    $DRAWCLI_NATIVE_ARCH replaces -march=native (to build for a smaller instruction set than this
    CPU's, e.g. AVX2 only: benchmarks/speed.py --isa), and DRAWCLI_AMX=0 adds -DDRAWCLI_NO_AMX, which
    leaves the AMX kernels out; both are part of the build key.

    -ffast-math and -march=native stay because they were measured to matter (docs/performance.md,
    its table of compile flags; Intel Xeon with AMX, one thread, medians of three interleaved
    rounds): without -ffast-math, which lets gcc call libmvec's vector exp, paper-config training
    in bfloat16 ran 31% slower, evaluation 41% and colour training 24%; without -march=native (no
    AVX-512) 20%, 18% and 21%.
    On x86, -mprefer-vector-width=512 (AVX-512 where the CPU has it; gcc's tuning otherwise keeps
    to 256-bit vectors, e.g. in the LSTM cells) made training 3-4% faster in six of six interleaved
    pairs and changed nothing measurable elsewhere. -ffast-math is given
    at compile time only: linking without it keeps crtfastmath (flush-to-zero for the whole
    process) out. The source tests NaN on the bits and clamps the exponentials, and
    tests/test_native.py pins NaN and infinity behaviour. OpenMP must be torch's own runtime
    (libgomp): the loop's at::parallel_for and the products nested in it must see the same
    parallel region, so clang is told -fopenmp=libgomp. -z defs: an unresolved symbol fails the
    build here, not every later load."""
    clang = "clang" in Path(cxx).name or "clang" in _compiler_version(cxx).lower()
    openmp = "-fopenmp=libgomp" if clang else "-fopenmp"
    mvec = ["-Wl,--as-needed", "-lmvec"] if ctypes.util.find_library("mvec") else []
    wide = ["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else []
    arch = target_arch()
    no_amx = ["-DDRAWCLI_NO_AMX"] if amx_switched_off() else []
    cflags = ["-O3", f"-march={arch}", *wide, "-ffast-math", openmp, f"-DDRAWCLI_ABI={ABI}", *no_amx]
    ldflags = [openmp, "-Wl,-z,defs", *mvec]
    return cflags, ldflags


def build_key(cxx: str) -> str:
    """These sources, torch, the CPU, the compiler and the flags: a change in any is a new build."""
    h = hashlib.sha256()
    cflags, ldflags = flags(cxx)
    for part in (SOURCE.read_bytes(), *(h.read_bytes() for h in HEADERS), torch.__version__, _cpu_id(), sys.platform, platform.machine(),
                 str(torch._C._GLIBCXX_USE_CXX11_ABI), cxx, _compiler_version(cxx), " ".join(cflags), " ".join(ldflags)):
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class Unavailable(RuntimeError):
    """Why the library cannot be built or loaded here (one line)."""


def refusal(message: str) -> str | None:
    """The compiler's first error line in a failed build's output, or None when the build was
    killed or timed out rather than refused (not worth remembering)."""
    lines = [line.strip() for line in message.splitlines()]
    if any("Killed signal" in line or "terminated" in line for line in lines):
        return None
    return next((line for line in lines if "error:" in line.lower()), None)


@contextmanager
def _build_environment(cxx: str):
    """CXX for cpp_extension (it uses $CXX, else c++), and ninja on the PATH: the ninja package's
    binary and this Python's scripts folder, where pip puts it even when the venv is not active."""
    extra = [os.path.dirname(sys.executable)]
    try:
        import ninja  # the PyPI package: a dependency of drawcli

        extra.insert(0, ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    with environment(CXX=cxx, PATH=os.pathsep.join([*extra, os.environ.get("PATH", "")])):
        yield


def build(folder: Path, cxx: str) -> None:
    """Compile SOURCE into folder with torch.utils.cpp_extension.load, which also loads it."""
    from torch.utils.cpp_extension import is_ninja_available, load

    cflags, ldflags = flags(cxx)
    with _build_environment(cxx):
        if not is_ninja_available():
            raise Unavailable("ninja is missing (pip install ninja)")
        # cpp_extension's own lock file; we hold the folder's flock, so one left here was a killed build's.
        (folder / "lock").unlink(missing_ok=True)
        try:
            load(NAME, [str(SOURCE)], extra_cflags=cflags, extra_ldflags=ldflags, build_directory=str(folder),
                 is_python_module=False, verbose=False)
        except RuntimeError as e:
            why = refusal(str(e))
            if why is not None:
                raise CompileError(f"{Path(cxx).name} failed: {why}") from None
            raise


class CompileError(Unavailable):
    """The compiler refused the source or the link: remembered in FAILED."""


def load(say=None) -> bool:
    """Build (once per machine) and load the library; False, with the reason kept, if impossible.

    say: called with one line before a build starts (it takes 20-40 s)."""
    if _STATE["loaded"] is not None:
        return _STATE["loaded"]
    ok = False
    try:
        if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64", "aarch64")):
            raise Unavailable(f"not built on {sys.platform}/{platform.machine()}")
        cxx = compiler()
        if cxx is None:
            raise Unavailable("no C++ compiler (set CXX, or install g++)")
        folder = cache_dir() / build_key(cxx)
        library, built, failed = folder / f"{NAME}.so", folder / "BUILT", folder / "FAILED"
        loaded = False
        if not built.exists():
            import fcntl

            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait, then load it
                if not built.exists():
                    if failed.exists():
                        reason = failed.read_text(encoding="utf-8").strip() or "an earlier build failed"
                        raise Unavailable(f"{reason} (remembered in {failed}: delete it to try again)")
                    if say is not None:
                        say(f"building the native engine once for this machine into {folder} (20-40 s)")
                    try:
                        build(folder, cxx)
                    except CompileError as e:
                        failed.write_text(str(e) + "\n", encoding="utf-8")
                        raise
                    built.write_text(f"{NAME}.so built from {SOURCE}\n", encoding="utf-8")
                    loaded = True
        if not loaded:
            torch.ops.load_library(str(library))
        if int(torch.ops.drawcli.abi_version()) != ABI:
            raise Unavailable(f"{library} is stale (ABI {int(torch.ops.drawcli.abi_version())}, expected {ABI})")
        for op in OPS:  # for torch.compile and opcheck: the ops return nothing, they write their buffers
            torch.library.register_fake(f"drawcli::{op}")(_writes_only)
        ok = True
    except Exception as e:  # any failure: the Python engine it is
        _STATE["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    _STATE["loaded"] = ok
    return ok


def _writes_only(*args, **kwargs) -> None:
    return None


def unavailable_reason() -> str | None:
    """Why load() failed in this process (None if it did not, or was not called)."""
    return _STATE["error"]
