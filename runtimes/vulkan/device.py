"""Vulkan compute through the `vulkan` PyPI binding: device choice, buffers, SPIR-V pipelines.

Device choice: a discrete GPU when one is present, else the first device (lavapipe on a
machine without a GPU); G4C_VULKAN_DEVICE=<index or name substring> overrides.

Two kernel paths. `baseline` needs nothing beyond Vulkan 1.1 storage buffers of 32-bit
words (no subgroup operations, no 8/16/64-bit types). `wide` (matvec_wide, matmul_wide)
reads weights as 64-bit words and shares each input over the subgroup by broadcast; it is
taken on a Vulkan 1.2 device with shaderInt64 and subgroup broadcast in compute shaders at
a subgroup size of 4 to 32 (lavapipe: 8, or 4 to 32 by LP_NATIVE_VECTOR_WIDTH; NVIDIA: 32).
Its shaders are SPIR-V 1.5 (broadcast from a loop index), one code path for every subgroup
size. G4C_VULKAN_PATH=baseline|wide
overrides; `Device.wide` may be switched between sessions (the tests run both paths). Shaders are
GLSL in shaders/*.comp, compiled by glslang (`glslangValidator`, Debian glslang-tools) with
-D defines, and cached as SPIR-V by the hash of source, includes and defines under
$G4C_CACHE/spirv (no binaries are committed).

Memory: weights, caches and activations live in device-local memory (on a discrete GPU its
own memory, not the host-visible window), the inputs the host writes and the logits it reads
in host-visible twins copied at the start and end of a batch. Where device-local memory is
host-visible too (lavapipe, integrated GPUs) it is mapped and written directly; elsewhere,
or with G4C_VULKAN_STAGING=1 (or `Device.staging`, for buffers made afterwards), uploads go
through a staging buffer and transfer copies.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
from functools import cached_property
from pathlib import Path

import numpy as np

from g4c.errors import DeviceUnavailableError, G4CError
from g4c.paths import cache_dir, remove_stale_temps, temp_path

SHADERS = Path(__file__).parent / "shaders"


def _vk():
    try:
        import vulkan as vk
    except (ImportError, OSError) as e:  # OSError: the binding found no libvulkan.so.1
        raise DeviceUnavailableError(f"the vulkan binding cannot load ({type(e).__name__}: {e}); "
                                     "pip install vulkan and apt install libvulkan1 mesa-vulkan-drivers") from None
    return vk


def spirv_cache() -> Path:
    return cache_dir() / "spirv"


# the wide path's shaders: SPIR-V 1.5 (Vulkan 1.2), whose subgroup broadcast takes a loop index
WIDE_SHADERS = ("matvec_wide", "matmul_wide", "attention_wide", "subgroup_probe")


def compile_shader(name: str, defines: dict[str, int | str]) -> bytes:
    """SPIR-V of shaders/<name>.comp with -D defines (and T_<type>=<GGML id> for every weight
    format g4c reads), compiled once per source hash."""
    from g4c.quants import SUPPORTED_TYPES

    defines = {**{f"T_{t.name}": int(t) for t in SUPPORTED_TYPES}, **defines}
    src = SHADERS / f"{name}.comp"
    h = hashlib.sha256(src.read_bytes())
    for inc in sorted(SHADERS.glob("*.glsl")):
        h.update(inc.read_bytes())
    h.update(repr(sorted(defines.items())).encode())
    out = spirv_cache() / f"{name}-{h.hexdigest()[:16]}.spv"
    if not out.exists():
        tool = shutil.which("glslangValidator")
        if tool is None:
            raise DeviceUnavailableError("glslangValidator is not installed (Debian glslang-tools): shaders cannot compile")
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out.parent)
        tmp = temp_path(out)
        env = "vulkan1.2" if name in WIDE_SHADERS else "vulkan1.1"
        cmd = [tool, "-V", "--target-env", env, *[f"-D{k}={v}" for k, v in defines.items()], str(src), "-o", str(tmp)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise G4CError(f"glslang failed on {src.name} {defines}: {(r.stdout + r.stderr).strip()[:2000]}")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out.read_bytes()


_serial = itertools.count()
STAGE = 32 << 20  # bytes of the staging buffer that uploads to unmapped device-local memory pass through


class Buffer:
    """A storage buffer. `host` buffers are host-visible and coherent: the inputs the host
    writes and the outputs it reads. Device-local ones (weights, caches, activations) are
    mapped only where their memory is host-visible too (lavapipe, integrated GPUs) and the
    device does not force staging; otherwise the host reaches them only through
    Device.upload and copies. `key` is unique for the life of the process (Python ids are
    reused after collection, and cached descriptor sets must never bind a newer buffer's id
    to an older VkBuffer)."""

    def __init__(self, dev: "Device", nbytes: int, host: bool = True):
        vk = dev.vk
        self.key = next(_serial)
        self.mem = None
        self.dev, self.nbytes = dev, max(4, -(-int(nbytes) // 4) * 4)  # fills and copies go by 4 bytes
        if self.nbytes > dev.max_binding:
            raise G4CError(f"buffer of {self.nbytes} bytes exceeds the device's storage binding limit of {dev.max_binding} "
                           f"({dev.name})")
        usage = vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | vk.VK_BUFFER_USAGE_TRANSFER_SRC_BIT | vk.VK_BUFFER_USAGE_TRANSFER_DST_BIT
        self.buf = vk.vkCreateBuffer(dev.device, vk.VkBufferCreateInfo(
            size=self.nbytes, usage=usage, sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
        req = vk.vkGetBufferMemoryRequirements(dev.device, self.buf)
        visible = vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
        local = vk.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT
        if host:  # cached where offered: the host reads logits back
            kind = dev.memory_type(req.memoryTypeBits, visible, prefer=vk.VK_MEMORY_PROPERTY_HOST_CACHED_BIT)
        else:  # a discrete GPU's own memory first, not its small host-visible window
            kind = dev.memory_type(req.memoryTypeBits, local, avoid=vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT)
        flags = dev.memory_properties.memoryTypes[kind].propertyFlags
        self.mem = vk.vkAllocateMemory(dev.device, vk.VkMemoryAllocateInfo(allocationSize=req.size, memoryTypeIndex=kind), None)
        vk.vkBindBufferMemory(dev.device, self.buf, self.mem, 0)
        self.mapped = host or (not dev.staging and (flags & visible) == visible)
        self._map = vk.vkMapMemory(dev.device, self.mem, 0, self.nbytes, 0) if self.mapped else None

    def _mapping(self) -> np.ndarray:
        if self._map is None:
            raise G4CError(f"{self.dev.name}: a device-local buffer of {self.nbytes} bytes is not host-visible "
                           "(reach it through Device.upload and copies)")
        return np.frombuffer(self._map, np.uint8, self.nbytes)

    def write(self, data: np.ndarray, offset: int = 0) -> None:
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        if offset + raw.nbytes > self.nbytes:
            raise G4CError(f"write of {raw.nbytes} bytes at {offset} overflows a buffer of {self.nbytes}")
        self._mapping()[offset:offset + raw.nbytes] = raw

    def read(self, dtype=np.float32, count: int | None = None) -> np.ndarray:
        v = self._mapping().view(dtype)
        return np.array(v if count is None else v[:count])

    def __del__(self):
        try:
            self.free()
        except Exception:  # interpreter shutdown: the binding may be gone already
            pass

    def free(self) -> None:
        vk = self.dev.vk
        if self.mem is not None:
            self.dev.forget([self])
            if self._map is not None:
                vk.vkUnmapMemory(self.dev.device, self.mem)
            vk.vkDestroyBuffer(self.dev.device, self.buf, None)
            vk.vkFreeMemory(self.dev.device, self.mem, None)
            self.mem = None


class Pipeline:
    """A compute pipeline: n storage-buffer bindings and n 32-bit push constants."""

    def __init__(self, dev: "Device", spirv: bytes, n_bindings: int, n_push: int):
        vk = dev.vk
        self.dev, self.n_bindings, self.n_push = dev, n_bindings, n_push
        self.module = vk.vkCreateShaderModule(dev.device, vk.VkShaderModuleCreateInfo(codeSize=len(spirv), pCode=spirv), None)
        bindings = [vk.VkDescriptorSetLayoutBinding(binding=i, descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                                    descriptorCount=1, stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT)
                    for i in range(n_bindings)]
        self.set_layout = vk.vkCreateDescriptorSetLayout(dev.device, vk.VkDescriptorSetLayoutCreateInfo(
            bindingCount=n_bindings, pBindings=bindings), None)
        push = vk.VkPushConstantRange(stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT, offset=0, size=4 * n_push)
        self.layout = vk.vkCreatePipelineLayout(dev.device, vk.VkPipelineLayoutCreateInfo(
            setLayoutCount=1, pSetLayouts=[self.set_layout], pushConstantRangeCount=1 if n_push else 0,
            pPushConstantRanges=[push] if n_push else None), None)
        stage = vk.VkPipelineShaderStageCreateInfo(stage=vk.VK_SHADER_STAGE_COMPUTE_BIT, module=self.module, pName="main")
        self.pipeline = vk.vkCreateComputePipelines(dev.device, None, 1, [vk.VkComputePipelineCreateInfo(
            stage=stage, layout=self.layout)], None)[0]
    def record(self, cb, buffers: list[Buffer], push: list, groups: tuple[int, int, int]) -> None:
        """Bind, push constants (ints, or floats passed as their f32 bits), dispatch."""
        vk, ffi = self.dev.vk, self.dev.ffi
        ds = self.dev.descriptor_set(self, buffers)
        vk.vkCmdBindPipeline(cb, vk.VK_PIPELINE_BIND_POINT_COMPUTE, self.pipeline)
        vk.vkCmdBindDescriptorSets(cb, vk.VK_PIPELINE_BIND_POINT_COMPUTE, self.layout, 0, 1, [ds], 0, None)
        if self.n_push:
            words = [int(np.float32(v).view(np.uint32)) if isinstance(v, float) else int(v) for v in push]
            data = ffi.new("uint32_t[]", words + [0] * (self.n_push - len(words)))
            vk.vkCmdPushConstants(cb, self.layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, 4 * self.n_push, data)
        vk.vkCmdDispatch(cb, *groups)


class Device:
    def __init__(self):
        vk = self.vk = _vk()
        self.ffi = vk.ffi
        try:
            self.instance = vk.vkCreateInstance(vk.VkInstanceCreateInfo(pApplicationInfo=vk.VkApplicationInfo(
                pApplicationName="gemma4-conformance", apiVersion=vk.VK_MAKE_VERSION(1, 2, 0))), None)
            physical = vk.vkEnumeratePhysicalDevices(self.instance)
        except vk.VkError as e:
            raise DeviceUnavailableError(f"no Vulkan device: {type(e).__name__} (install mesa-vulkan-drivers for lavapipe)") from None
        if not physical:
            raise DeviceUnavailableError("no Vulkan device (install mesa-vulkan-drivers for lavapipe)")
        props = [vk.vkGetPhysicalDeviceProperties(p) for p in physical]
        names = [p.deviceName if isinstance(p.deviceName, str) else self.ffi.string(p.deviceName).decode() for p in props]
        choice = os.environ.get("G4C_VULKAN_DEVICE")
        if choice:
            hits = [i for i, n in enumerate(names) if choice == str(i) or choice.lower() in n.lower()]
            if not hits:
                raise G4CError(f"G4C_VULKAN_DEVICE={choice!r} matches no device ({', '.join(names)})")
            idx = hits[0]
        else:
            discrete = [i for i, p in enumerate(props) if p.deviceType == vk.VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU]
            idx = discrete[0] if discrete else 0
        self.physical, self.name = physical[idx], names[idx]
        self.max_binding = int(props[idx].limits.maxStorageBufferRange)
        self.is_cpu = props[idx].deviceType == vk.VK_PHYSICAL_DEVICE_TYPE_CPU
        self.int64 = bool(vk.vkGetPhysicalDeviceFeatures(self.physical).shaderInt64)  # enabled where offered
        self.subgroup_size, self.wide_reason = self._wide_support(vk, props[idx])
        self.driver = self._driver(vk, props[idx])
        forced = os.environ.get("G4C_VULKAN_PATH", "")
        if forced not in ("", "baseline", "wide"):
            raise G4CError(f"G4C_VULKAN_PATH={forced!r}: expected baseline or wide")
        self.wide = False  # until the subgroup probe below has run
        staging = os.environ.get("G4C_VULKAN_STAGING", "")
        if staging not in ("", "0", "1"):
            raise G4CError(f"G4C_VULKAN_STAGING={staging!r}: expected 0 or 1")
        self.staging = staging == "1"  # never map device-local memory, even where it is host-visible
        # 16-bit storage, enabled where offered: only the load-width probe uses it (the wide path's
        # 64-bit loads beat 16-bit ones on lavapipe; benchmarks/test_vulkan_loads.py measures it)
        s16 = vk.VkPhysicalDevice16BitStorageFeatures()
        if props[idx].apiVersion >= vk.VK_MAKE_VERSION(1, 1, 0):
            vk.vkGetPhysicalDeviceFeatures2(self.physical, vk.VkPhysicalDeviceFeatures2(pNext=s16))
        self.storage16 = bool(s16.storageBuffer16BitAccess)
        families = vk.vkGetPhysicalDeviceQueueFamilyProperties(self.physical)
        self.family = next(i for i, f in enumerate(families) if f.queueFlags & vk.VK_QUEUE_COMPUTE_BIT)
        self.device = vk.vkCreateDevice(self.physical, vk.VkDeviceCreateInfo(
            queueCreateInfoCount=1, pQueueCreateInfos=[vk.VkDeviceQueueCreateInfo(
                queueFamilyIndex=self.family, queueCount=1, pQueuePriorities=[1.0])],
            pEnabledFeatures=vk.VkPhysicalDeviceFeatures(shaderInt64=self.int64),
            pNext=vk.VkPhysicalDevice16BitStorageFeatures(storageBuffer16BitAccess=vk.VK_TRUE) if self.storage16 else None),
            None)
        self.queue = vk.vkGetDeviceQueue(self.device, self.family, 0)
        self.cmd_pool = vk.vkCreateCommandPool(self.device, vk.VkCommandPoolCreateInfo(
            queueFamilyIndex=self.family, flags=vk.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT), None)
        self.fence = vk.vkCreateFence(self.device, vk.VkFenceCreateInfo(), None)
        self._pools: list = []
        self._sets: dict = {}
        self._pipelines: dict = {}
        self._stage: Buffer | None = None
        if not self.wide_reason:
            if not self._broadcast_works():
                self.wide_reason = f"reports subgroup size {self.subgroup_size} but broadcast from its lanes fails"
        if forced == "wide" and self.wide_reason:
            raise DeviceUnavailableError(f"G4C_VULKAN_PATH=wide but {self.name} {self.wide_reason}")
        self.wide = forced != "baseline" and not self.wide_reason

    def _broadcast_works(self) -> bool:
        """Whether subgroup broadcast from each of the reported subgroup's lanes, as the wide
        shaders do it, reaches that lane (shaders/subgroup_probe.comp)."""
        out = self.buffer(64 * 4)
        sg = self.subgroup_size
        self.run(self.pipeline("subgroup_probe", {"SG": sg}, 1, 1), [out], [64], (1, 1, 1))
        got = out.read(np.uint32, 64)
        self.forget([out])
        out.free()
        return bool((got == sg * (sg - 1) // 2).all())

    def _driver(self, vk, props) -> str:
        """The driver's own name and version string (Vulkan 1.2), and the API version."""
        api = props.apiVersion
        version = f"Vulkan {vk.VK_VERSION_MAJOR(api)}.{vk.VK_VERSION_MINOR(api)}.{vk.VK_VERSION_PATCH(api)}"
        if api < vk.VK_MAKE_VERSION(1, 2, 0):
            return f"driver version {props.driverVersion:#x}, {version}"
        dp = vk.VkPhysicalDeviceDriverProperties()
        vk.vkGetPhysicalDeviceProperties2(self.physical, vk.VkPhysicalDeviceProperties2(pNext=dp))
        text = lambda v: v if isinstance(v, str) else self.ffi.string(v).decode()  # noqa: E731
        return f"{text(dp.driverName)} {text(dp.driverInfo)}, {version}"

    def _wide_support(self, vk, props) -> tuple[int, str]:
        """(subgroup size, why the wide path cannot run here or "")."""
        sg = vk.VkPhysicalDeviceSubgroupProperties()
        if props.apiVersion < vk.VK_MAKE_VERSION(1, 1, 0):
            return 0, "is a Vulkan 1.0 device"
        if props.apiVersion < vk.VK_MAKE_VERSION(1, 2, 0):
            return 0, "is a Vulkan 1.1 device (the wide shaders are SPIR-V 1.5: Vulkan 1.2)"
        vk.vkGetPhysicalDeviceProperties2(self.physical, vk.VkPhysicalDeviceProperties2(pNext=sg))
        size = int(sg.subgroupSize)
        if not self.int64:
            return size, "has no shaderInt64"
        if not sg.supportedStages & vk.VK_SHADER_STAGE_COMPUTE_BIT:
            return size, "has no subgroup operations in compute shaders"
        if not sg.supportedOperations & vk.VK_SUBGROUP_FEATURE_BALLOT_BIT:
            return size, "has no subgroup broadcast (ballot feature)"
        if size not in (4, 8, 16, 32):
            return size, f"has subgroup size {size} (the wide kernels take 4 to 32)"
        return size, ""

    @cached_property
    def memory_properties(self):
        return self.vk.vkGetPhysicalDeviceMemoryProperties(self.physical)

    def descriptor_set(self, pipeline: Pipeline, buffers: list[Buffer]):
        """A descriptor set binding these buffers to this pipeline's layout, made once."""
        vk = self.vk
        key = (id(pipeline), tuple(b.key for b in buffers))
        ds = self._sets.get(key)
        if ds is not None:
            return ds
        for _ in range(2):
            try:
                ds = vk.vkAllocateDescriptorSets(self.device, vk.VkDescriptorSetAllocateInfo(
                    descriptorPool=self._pools[-1], descriptorSetCount=1, pSetLayouts=[pipeline.set_layout]))[0]
                break
            except (vk.VkErrorOutOfPoolMemory, vk.VkErrorFragmentedPool, IndexError):
                self._pools.append(vk.vkCreateDescriptorPool(self.device, vk.VkDescriptorPoolCreateInfo(
                    maxSets=1024, poolSizeCount=1, pPoolSizes=[vk.VkDescriptorPoolSize(
                        type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=8192)]), None))
        writes = [vk.VkWriteDescriptorSet(dstSet=ds, dstBinding=i, descriptorCount=1,
                                          descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                          pBufferInfo=[vk.VkDescriptorBufferInfo(buffer=b.buf, offset=0, range=b.nbytes)])
                  for i, b in enumerate(buffers)]
        vk.vkUpdateDescriptorSets(self.device, len(writes), writes, 0, None)
        self._sets[key] = ds
        return ds

    def forget(self, buffers: list[Buffer]) -> None:
        """Drop cached descriptor sets naming these buffers (before they are freed)."""
        keys = {b.key for b in buffers}
        # the sets themselves stay in their pool (allocated without FREE_DESCRIPTOR_SET_BIT)
        self._sets = {k: v for k, v in self._sets.items() if not keys & set(k[1])}

    def barrier(self, cb) -> None:
        vk = self.vk
        mb = vk.VkMemoryBarrier(srcAccessMask=vk.VK_ACCESS_SHADER_WRITE_BIT | vk.VK_ACCESS_HOST_WRITE_BIT,
                                dstAccessMask=vk.VK_ACCESS_SHADER_READ_BIT | vk.VK_ACCESS_SHADER_WRITE_BIT)
        vk.vkCmdPipelineBarrier(cb, vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                                0, 1, [mb], 0, None, 0, None)

    def available_memory(self) -> int:
        """Bytes the session may plan on: host memory on a CPU device (lavapipe), else the
        device-local heaps."""
        from g4c.plan import available_host_memory

        if self.is_cpu:
            return available_host_memory()
        mp = self.memory_properties
        return sum(mp.memoryHeaps[i].size for i in range(mp.memoryHeapCount)
                   if mp.memoryHeaps[i].flags & self.vk.VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)

    def memory_type(self, bits: int, want: int, prefer: int = 0, avoid: int = 0) -> int:
        """A memory type allowed by `bits` with all of `want`; among those, one with `prefer`
        and without `avoid` if there is one."""
        mp = self.memory_properties
        ok = [i for i in range(mp.memoryTypeCount)
              if bits & (1 << i) and (mp.memoryTypes[i].propertyFlags & want) == want]
        if not ok:
            raise G4CError(f"{self.name}: no memory type with flags {want:#x}")
        return max(ok, key=lambda i: (bool(mp.memoryTypes[i].propertyFlags & prefer) if prefer else 0,
                                      not mp.memoryTypes[i].propertyFlags & avoid, -i))

    def buffer(self, nbytes: int, host: bool = True) -> Buffer:
        """A host-visible buffer, or with host=False a device-local one."""
        return Buffer(self, nbytes, host)

    def upload(self, buf: Buffer, data: np.ndarray, offset: int = 0) -> None:
        """Write data into buf at offset: directly where buf is mapped, else through a
        host-visible staging buffer and transfer copies of at most STAGE bytes."""
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        if offset + raw.nbytes > buf.nbytes:
            raise G4CError(f"upload of {raw.nbytes} bytes at {offset} overflows a buffer of {buf.nbytes}")
        if buf.mapped:
            buf.write(raw, offset)
            return
        if self._stage is None:
            self._stage = Buffer(self, min(STAGE, self.max_binding))
        for a in range(0, raw.nbytes, self._stage.nbytes):
            part = raw[a:a + self._stage.nbytes]
            self._stage.write(part)
            self.copy(self._stage, buf, [(0, offset + a, part.nbytes)])

    def copy(self, src: Buffer, dst: Buffer, regions: list[tuple[int, int, int]]) -> None:
        """Transfer (src offset, dst offset, bytes) regions from src to dst, and wait."""
        self.once(lambda cb: self.record_copy(cb, src, dst, regions))

    def fill(self, buf: Buffer, word: int = 0) -> None:
        """Set every 32-bit word of buf to `word` on the device, and wait."""
        self.once(lambda cb: self.vk.vkCmdFillBuffer(cb, buf.buf, 0, buf.nbytes, word))

    def record_copy(self, cb, src: Buffer, dst: Buffer, regions: list[tuple[int, int, int]]) -> None:
        vk = self.vk
        vk.vkCmdCopyBuffer(cb, src.buf, dst.buf, len(regions),
                           [vk.VkBufferCopy(srcOffset=a, dstOffset=b, size=n) for a, b, n in regions])

    def transfer_barrier(self, cb, to_host: bool = False) -> None:
        """Order transfers and compute dispatches both ways; to_host: also make everything
        written so far visible to host reads after the fence."""
        vk = self.vk
        every = vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | vk.VK_PIPELINE_STAGE_TRANSFER_BIT
        rw = (vk.VK_ACCESS_SHADER_WRITE_BIT | vk.VK_ACCESS_TRANSFER_WRITE_BIT | vk.VK_ACCESS_SHADER_READ_BIT
              | vk.VK_ACCESS_TRANSFER_READ_BIT)
        mb = vk.VkMemoryBarrier(srcAccessMask=rw | vk.VK_ACCESS_HOST_WRITE_BIT,
                                dstAccessMask=rw | (vk.VK_ACCESS_HOST_READ_BIT if to_host else 0))
        vk.vkCmdPipelineBarrier(cb, every, every | (vk.VK_PIPELINE_STAGE_HOST_BIT if to_host else 0),
                                0, 1, [mb], 0, None, 0, None)

    def once(self, record) -> None:
        """Record a one-time command buffer with record(cb), submit it and wait."""
        vk = self.vk
        cb = self.command_buffer()
        vk.vkBeginCommandBuffer(cb, vk.VkCommandBufferBeginInfo(flags=vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT))
        record(cb)
        self.transfer_barrier(cb, to_host=True)
        vk.vkEndCommandBuffer(cb)
        self.submit(cb)
        vk.vkFreeCommandBuffers(self.device, self.cmd_pool, 1, [cb])

    def pipeline(self, name: str, defines: dict, n_bindings: int, n_push: int) -> Pipeline:
        key = (name, tuple(sorted(defines.items())))
        if key not in self._pipelines:
            self._pipelines[key] = Pipeline(self, compile_shader(name, defines), n_bindings, n_push)
        return self._pipelines[key]

    def command_buffer(self):
        vk = self.vk
        return vk.vkAllocateCommandBuffers(self.device, vk.VkCommandBufferAllocateInfo(
            commandPool=self.cmd_pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]

    def submit(self, cb) -> None:
        """Run a recorded command buffer and wait for it."""
        vk = self.vk
        vk.vkResetFences(self.device, 1, [self.fence])
        vk.vkQueueSubmit(self.queue, 1, [vk.VkSubmitInfo(commandBufferCount=1, pCommandBuffers=[cb])], self.fence)
        try:
            vk.vkWaitForFences(self.device, 1, [self.fence], vk.VK_TRUE, 1800 * 10**9)
        except vk.VkTimeout:
            raise G4CError(f"{self.name}: a command buffer did not finish within 30 minutes") from None

    def run(self, pipeline: Pipeline, buffers: list[Buffer], push: list[int], groups: tuple[int, int, int]) -> None:
        """One dispatch, recorded, submitted and waited for (op-level use; a forward records many)."""
        self.once(lambda cb: pipeline.record(cb, buffers, push, groups))
