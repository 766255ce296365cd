"""OpenCL through pyopencl: platform and device choice, buffers, programs built from kernels/*.cl.

Device choice: the first GPU of any platform when there is one, else the first device
(PoCL's CPU device on a machine without a GPU). G4C_OPENCL_DEVICE overrides: a device's
index in the list of every platform's devices, "<platform>:<device>" indices, or a substring
of "<platform name> / <device name>" (case ignored).

Two matvec paths. `plain` needs OpenCL 1.2 and nothing optional (local-memory reductions).
`subgroup` sums each row with sub_group_reduce_add, one sub-group per row: taken where the
device has sub-groups (cl_khr_subgroups, cl_intel_subgroups, or OpenCL C 3.0 with
__opencl_c_subgroups). On a device without them, asking for it (G4C_OPENCL_PATH=subgroup,
or `Device.path` set between sessions, as the tests do) builds the same kernel over
kernels/subgroup_emu.cl, local-memory stand-ins for sub-groups of 8, so CI runs both paths
on PoCL. G4C_OPENCL_PATH=plain|subgroup overrides the default.

Programs: a kernel file with its #include "x.cl" lines replaced by those files, built per
set of -D defines (TYPE, the weight format; T_<type> ids from g4c.quants) once per process;
a build error raises G4CError with the compiler's log. pyopencl and the driver cache the
binaries on disk (pyopencl: ~/.cache/pyopencl; PoCL: ~/.cache/pocl).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from g4c.errors import DeviceUnavailableError, G4CError

KERNELS = Path(__file__).parent / "kernels"
LOCAL = 64  # work-items per work-group of every kernel
SG_EMU = 8  # lanes of an emulated sub-group


def _cl():
    try:
        import pyopencl as cl
    except ImportError as e:
        raise DeviceUnavailableError(f"pyopencl is not installed ({e}): pip install pyopencl") from None
    return cl


def source(name: str) -> str:
    """kernels/<name>.cl with its #include "x.cl" lines replaced by those files."""
    def expand(m):
        return source(Path(m.group(1)).stem)

    return re.sub(r'^#include "([^"]+)"$', expand, (KERNELS / f"{name}.cl").read_text(), flags=re.M)


def devices(cl) -> list[tuple[int, int, object]]:
    """(platform index, device index, device) of every platform's devices."""
    try:
        platforms = cl.get_platforms()
    except cl.Error as e:  # the ICD loader found no platform (clGetPlatformIDs: -1001)
        raise DeviceUnavailableError(f"no OpenCL platform ({e}); install an ICD: Debian pocl-opencl-icd for the CPU") from None
    out = []
    for p, plat in enumerate(platforms):
        try:
            devs = plat.get_devices()
        except cl.Error:  # a platform with no device answers with an error
            continue
        out += [(p, d, dev) for d, dev in enumerate(devs)]
    if not out:
        raise DeviceUnavailableError("no OpenCL device on any platform; install an ICD: Debian pocl-opencl-icd for the CPU")
    return out


def choose(cl, choice: str | None) -> tuple[int, int, object]:
    found = devices(cl)
    label = lambda e: f"{e[2].platform.name.strip()} / {e[2].name.strip()}"  # noqa: E731
    if choice:
        # an index or platform:device first: "1" must not pick a device whose name holds a 1
        hits = ([e for i, e in enumerate(found) if choice in (str(i), f"{e[0]}:{e[1]}")]
                or [e for e in found if choice.lower() in label(e).lower()])
        if not hits:
            raise G4CError(f"G4C_OPENCL_DEVICE={choice!r} matches no OpenCL device ("
                           + "; ".join(f"{i} = {e[0]}:{e[1]} {label(e)}" for i, e in enumerate(found)) + ")")
        return hits[0]
    gpus = [e for e in found if e[2].type & cl.device_type.GPU]
    return (gpus or found)[0]


class Device:
    """The chosen device, its context and in-order queue, and the programs built on it."""

    def __init__(self):
        cl = self.cl = _cl()
        p, d, dev = choose(cl, os.environ.get("G4C_OPENCL_DEVICE"))
        self.dev, self.index = dev, f"{p}:{d}"
        self.name = dev.name.strip()
        self.platform = dev.platform.name.strip()
        self.driver = f"{dev.platform.version.strip()}, driver {dev.driver_version.strip()}"
        self.is_cpu = bool(dev.type & cl.device_type.CPU)
        self.max_alloc = int(dev.max_mem_alloc_size)
        self.global_mem = int(dev.global_mem_size)
        self.ctx = cl.Context([dev])
        self.queue = cl.CommandQueue(self.ctx)
        self.subgroups, self._sg_options = self._subgroup_support()
        forced = os.environ.get("G4C_OPENCL_PATH", "")
        if forced not in ("", "plain", "subgroup"):
            raise G4CError(f"G4C_OPENCL_PATH={forced!r}: expected plain or subgroup")
        self._programs: dict = {}
        self._kernels: dict = {}
        self.subgroup_error = self._check_subgroup_build() if self.subgroups and not forced else ""
        self.path = forced or ("subgroup" if self.subgroups and not self.subgroup_error else "plain")

    def _subgroup_support(self) -> tuple[str, tuple[str, ...]]:
        """(which sub-group functions the device has, or "", build options they need). An
        OpenCL 3.0 device reports OpenCL C 1.2 as its C version and lists the others, with
        the optional features, apart; cl_khr_subgroups needs OpenCL C 2.0 or 3.0 mode."""
        cl, dev = self.cl, self.dev
        ext = dev.extensions.split()
        c_major = {int(dev.get_info(cl.device_info.OPENCL_C_VERSION).split()[2][0])}
        features = set()
        if dev.version.startswith("OpenCL 3."):
            try:
                c_major |= {v.version >> 22 for v in dev.get_info(cl.device_info.OPENCL_C_ALL_VERSIONS)}
                features = {f.name for f in dev.get_info(cl.device_info.OPENCL_C_FEATURES)}
            except Exception:  # a driver or pyopencl without the OpenCL 3.0 queries
                pass
        if "cl_intel_subgroups" in ext:
            return "cl_intel_subgroups", ()
        if 3 in c_major and "__opencl_c_subgroups" in features:
            return "__opencl_c_subgroups", ("-cl-std=CL3.0",)
        if "cl_khr_subgroups" in ext and (2 in c_major or 3 in c_major):
            return "cl_khr_subgroups", ("-cl-std=CL2.0" if 2 in c_major else "-cl-std=CL3.0", "-DKHR_SUBGROUPS=1")
        return "", ()

    def _check_subgroup_build(self) -> str:
        """Why the sub-group matvec does not build on this device with its sub-groups, or "":
        a driver that lists sub-groups but rejects the kernel gets the plain path by default."""
        try:
            self.kernel("matrix", {"TYPE": 2, **self.sg_defines()}, "matvec_sg")
        except G4CError as e:
            return str(e)
        return ""

    @property
    def path_label(self) -> str:
        if self.path == "subgroup" and not self.subgroups:
            return f"subgroup (emulated: {SG_EMU} lanes in local memory)"
        if self.path == "plain" and self.subgroup_error:
            return "plain (the sub-group kernel did not build: see settings' subgroup_error)"
        return self.path if self.path == "plain" else f"subgroup ({self.subgroups})"

    def sg_defines(self) -> dict:
        """Defines of the sub-group path's kernels on this device (native or emulated)."""
        return {"SUBGROUPS": 1} if self.subgroups else {"SUBGROUPS": 1, "SG_EMU": SG_EMU}

    def program(self, name: str, defines: dict):
        """kernels/<name>.cl built with -D defines (and T_<type> for every weight format)."""
        from g4c.quants import SUPPORTED_TYPES

        key = (name, tuple(sorted(defines.items())))
        prog = self._programs.get(key)
        if prog is None:
            opts = [f"-D{k}={v}" for k, v in {**{f"T_{t.name}": int(t) for t in SUPPORTED_TYPES}, **defines}.items()]
            if defines.get("SUBGROUPS") and not defines.get("SG_EMU"):
                opts += self._sg_options
            prog = self._programs[key] = self.build(source(name), opts, f"kernels/{name}.cl {defines}")
        return prog

    def build(self, src: str, options: list[str], what: str):
        cl = self.cl
        try:
            return cl.Program(self.ctx, src).build(options=options)
        except (cl.RuntimeError, cl.LogicError) as e:  # pyopencl's message carries the compiler's log
            raise G4CError(f"OpenCL build of {what} failed on {self.name} ({self.platform}): {str(e).strip()[:4000]}") from None

    def kernel(self, name: str, defines: dict, fn: str):
        """Kernel fn of kernels/<name>.cl built with defines; refused, naming it, where the
        device cannot run it in work-groups of LOCAL (every kernel's size: its local arrays
        are sized for it)."""
        key = (name, tuple(sorted(defines.items())), fn)
        k = self._kernels.get(key)
        if k is None:
            k = self.cl.Kernel(self.program(name, defines), fn)
            most = k.get_work_group_info(self.cl.kernel_work_group_info.WORK_GROUP_SIZE, self.dev)
            if most < LOCAL:
                raise G4CError(f"kernel {fn} of kernels/{name}.cl {defines}: {self.name} runs it in work-groups of at most "
                               f"{most} work-items; the kernels take {LOCAL}")
            self._kernels[key] = k
        return k

    def run(self, kernel, args: list, n_items: int, groups_y: int = 1) -> None:
        """Enqueue kernel over n_items work-items (rounded up to whole work-groups of LOCAL)
        times groups_y rows of work-groups."""
        kernel.set_args(*args)
        g = -(-max(1, n_items) // LOCAL) * LOCAL
        self.cl.enqueue_nd_range_kernel(self.queue, kernel, (g, groups_y), (LOCAL, 1))

    # -- memory ---------------------------------------------------------------------------
    def buffer(self, nbytes: int, data: np.ndarray | None = None):
        """A device buffer of nbytes (at least 4), filled from data when given, else zeroed."""
        cl = self.cl
        nbytes = max(4, int(nbytes))
        if nbytes > self.max_alloc:
            raise G4CError(f"buffer of {nbytes} bytes exceeds {self.name}'s largest allocation of {self.max_alloc}")
        buf = cl.Buffer(self.ctx, cl.mem_flags.READ_WRITE, nbytes)
        if data is None:
            cl.enqueue_fill_buffer(self.queue, buf, np.zeros(1, np.uint32), 0, nbytes - nbytes % 4)
        else:
            self.write(buf, data)
        return buf

    def write(self, buf, data: np.ndarray, offset: int = 0) -> None:
        self.cl.enqueue_copy(self.queue, buf, np.ascontiguousarray(data), dst_offset=offset, is_blocking=True)

    def read(self, buf, dtype, count: int) -> np.ndarray:
        out = np.empty(count, dtype)
        self.cl.enqueue_copy(self.queue, out, buf, is_blocking=True)
        return out

    def copy(self, src, dst, nbytes: int, src_offset: int = 0, dst_offset: int = 0) -> None:
        self.cl.enqueue_copy(self.queue, dst, src, byte_count=nbytes, src_offset=src_offset, dst_offset=dst_offset)

    def finish(self) -> None:
        self.queue.finish()

    def available_memory(self) -> int:
        """Bytes a session may plan on: host memory on a CPU device (PoCL), else the device's."""
        if self.is_cpu:
            from g4c.plan import available_host_memory

            return min(available_host_memory(), self.global_mem)
        return self.global_mem
