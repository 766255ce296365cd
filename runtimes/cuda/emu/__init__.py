"""The CUDA runtime without a GPU: its kernels compiled by g++ and run on CPU threads, its
host code on a numpy stand-in for the part of CuPy it uses.

The kernel sources are the runtime's own (kernels/*.cu), compiled against cuda_emu.h and
cuda_fp16.h, which map CUDA's built-ins onto C++; scheduler.cpp runs each block's threads
as fibers with CUDA's barrier and warp-shuffle semantics, and reports a barrier that would
deadlock on a GPU. Arrays are numpy arrays: a kernel argument is the array's data pointer,
as CuPy passes a device pointer, and a non-contiguous array is refused (the kernel would
read it as contiguous on a GPU too). CUDA graphs are not emulated: capture raises, so the
runtime takes its eager decode path and says why in `session.graph_error`.

This checks what a kernel computes, its indexing, its barriers and the host code around it;
it says nothing about speed, and CPU float rounding differs from the GPU's in the last bit
(g++ does not contract a*b+c into an FMA where nvcc does).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from g4c.errors import DeviceUnavailableError, G4CError
from g4c.paths import cache_dir, remove_stale_temps, temp_path

from ..runtime import CudaRuntime

EMU_DIR = Path(__file__).parent
SOURCES = ("cuda_emu.h", "cuda_fp16.h", "scheduler.cpp")
CXXFLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-w")
# numpy scalar type -> libffi type code of scheduler.cpp (np.uintp is how the runtime passes a null pointer)
SCALARS = {np.int32: "i", np.uint32: "I", np.int64: "l", np.uintp: "p", np.float32: "f", np.float64: "d"}
CTYPES = {"i": ctypes.c_int32, "I": ctypes.c_uint32, "l": ctypes.c_int64, "p": ctypes.c_void_p,
          "f": ctypes.c_float, "d": ctypes.c_double}


class EmulatorError(G4CError):
    """A kernel launch the emulator refuses, or one that would misbehave on a GPU."""


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise DeviceUnavailableError("the CUDA emulator needs g++ (Debian: g++ libffi-dev)")
    return cxx


def build(code: str) -> Path:
    """The shared library of a kernel source, compiled once per source and kept in the cache."""
    cxx = compiler()
    emu = "".join((EMU_DIR / f).read_text() for f in SOURCES)
    key = hashlib.sha256("\0".join((cxx, " ".join(CXXFLAGS), emu, code)).encode()).hexdigest()[:20]
    out = cache_dir() / "cuda-emu" / f"kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)
    # per process: two builds may race, each renames its own result
    src, tmp = temp_path(out.with_suffix(".cu")), temp_path(out)
    cmd = [cxx, *CXXFLAGS, f"-I{EMU_DIR}", "-include", str(EMU_DIR / "cuda_emu.h"), "-x", "c++", str(src),
           "-x", "none", str(EMU_DIR / "scheduler.cpp"), "-lffi", "-lpthread", "-o", str(tmp)]
    try:
        src.write_text(code)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise G4CError(f"g++ could not build the CUDA kernels for the emulator:\n{r.stderr[-4000:]}")
        tmp.replace(out)
    finally:
        src.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return out


class Function:
    """A kernel: called as CuPy's RawKernel is, fn(grid, block, args)."""

    def __init__(self, lib: ctypes.CDLL, name: str, workers: int):
        self.name, self.workers = name, workers
        self._lib = lib
        self._addr = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value

    def __call__(self, grid, block, args, shared_mem: int = 0, stream=None):
        codes, values = [], []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise EmulatorError(f"kernel {self.name}: argument {i} is a non-contiguous array {a.shape} "
                                        f"strides {a.strides}; the kernel would read it as contiguous")
                codes.append("p")
                values.append(ctypes.c_void_p(a.ctypes.data))
                continue
            code = SCALARS.get(type(a))
            if code is None:
                raise EmulatorError(f"kernel {self.name}: argument {i} is a {type(a).__name__}; pass a numpy array "
                                    f"or a sized numpy scalar ({', '.join(t.__name__ for t in SCALARS)})")
            codes.append(code)
            values.append(CTYPES[code](a.item()))
        argv = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
        dims = lambda d: (ctypes.c_uint * 3)(*(tuple(d) + (1, 1, 1))[:3])  # noqa: E731
        err = ctypes.create_string_buffer(1024)
        rc = self._lib.g4c_emu_launch(ctypes.c_void_p(self._addr), self.name.encode(), dims(grid), dims(block),
                                      len(values), "".join(codes).encode(), argv, self.workers, err, len(err))
        if rc:
            raise EmulatorError(err.value.decode())


class RawModule:
    def __init__(self, code: str, backend: str = "", options=()):
        self._lib = ctypes.CDLL(str(build(code)))
        self._lib.g4c_emu_launch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint),
                                             ctypes.POINTER(ctypes.c_uint), ctypes.c_int, ctypes.c_char_p,
                                             ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._workers = int(os.environ.get("G4C_CUDA_EMU_THREADS") or os.cpu_count() or 1)

    def get_function(self, name: str) -> Function:
        return Function(self._lib, name, self._workers)


class _Stream:
    """Work runs when it is issued; capture (a CUDA graph) is what the emulator lacks."""

    def __init__(self, non_blocking: bool = False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self):
        raise NotImplementedError("CUDA graphs are not emulated")

    def is_capturing(self) -> bool:
        return False


class _Pool:
    def malloc(self, n):
        raise NotImplementedError("device memory pools are not emulated")


class _Device:
    compute_capability = "90"  # the kernels are written for sm_80 and later


class _Runtime:
    @staticmethod
    def memGetInfo() -> tuple[int, int]:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"), total


class _Cuda:
    runtime = _Runtime
    Device = _Device
    Stream = _Stream
    MemoryPool = _Pool

    @staticmethod
    @contextlib.contextmanager
    def using_allocator(malloc):
        yield


class cupy:  # noqa: N801 - stands where the cupy module does
    """The CuPy names the CUDA runtime uses, over numpy arrays in host memory."""

    cuda = _Cuda
    RawModule = RawModule
    emulated = True  # what has no kernel of ours (cuBLAS) runs in numpy
    float32, uint8, uint16, uint32 = np.float32, np.uint8, np.uint16, np.uint32
    full, copyto = staticmethod(np.full), staticmethod(np.copyto)
    empty, zeros, empty_like = staticmethod(np.empty), staticmethod(np.zeros), staticmethod(np.empty_like)
    ascontiguousarray, concatenate = staticmethod(np.ascontiguousarray), staticmethod(np.concatenate)

    @staticmethod
    def asarray(a, dtype=None):
        return np.array(a, dtype=dtype, order="C")  # a device copy, as cupy.asarray of host data

    @staticmethod
    def asnumpy(a):
        return np.array(a)


class EmulatedCudaRuntime(CudaRuntime):
    """The CUDA runtime's host code and kernels on the CPU; for testing, not a speed figure."""

    name = "cuda-emu"
    # runs when asked for by name, never in a default run
    capabilities = dataclasses.replace(CudaRuntime.capabilities, backend="CUDA emulator", explicit_only=True)

    def cupy(self):
        compiler()  # raises DeviceUnavailableError without g++, which makes the runtime unavailable
        return cupy

    def memory_bandwidth(self) -> dict:
        """The host's read bandwidth: the emulator's arrays live in host memory (CUDA events
        and device copies, which CudaRuntime measures with, are not emulated)."""
        from g4c.bench import host_read_bandwidth

        return {**host_read_bandwidth(), "note": "CUDA emulator: host memory"}

    def settings(self) -> dict:
        from g4c.provenance import cpu_name

        cxx = compiler()
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
        return {"device": f"CUDA emulator on {cpu_name()}", "driver": version,
                "threads": int(os.environ.get("G4C_CUDA_EMU_THREADS") or os.cpu_count() or 1), "graphs": False}
