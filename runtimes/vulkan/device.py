"""Vulkan compute through the `vulkan` PyPI binding: device choice, buffers, SPIR-V pipelines.

Device choice: a discrete GPU when one is present, else the first device (lavapipe on a
machine without a GPU); G4C_VULKAN_DEVICE=<index or name substring> overrides. Shaders are
GLSL in shaders/*.comp, compiled by glslang (`glslangValidator`, Debian glslang-tools) with
-D defines, and cached as SPIR-V by the hash of source, includes and defines under
$G4C_CACHE/spirv (no binaries are committed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from functools import cached_property
from pathlib import Path

import numpy as np

from g4c.errors import DeviceUnavailableError, G4CError

SHADERS = Path(__file__).parent / "shaders"


def _vk():
    try:
        import vulkan as vk
    except (ImportError, OSError) as e:  # OSError: the binding found no libvulkan.so.1
        raise DeviceUnavailableError(f"the vulkan binding cannot load ({type(e).__name__}: {e}); "
                                     "pip install vulkan and apt install libvulkan1 mesa-vulkan-drivers") from None
    return vk


def spirv_cache() -> Path:
    root = os.environ.get("G4C_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gemma4-conformance")
    return Path(root) / "spirv"


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
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cmd = [tool, "-V", "--target-env", "vulkan1.1", *[f"-D{k}={v}" for k, v in defines.items()], str(src), "-o", str(tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise G4CError(f"glslang failed on {src.name} {defines}: {(r.stdout + r.stderr).strip()[:2000]}")
        os.replace(tmp, out)
    return out.read_bytes()


class Buffer:
    """A host-visible, coherent storage buffer (lavapipe's memory is host memory anyway)."""

    def __init__(self, dev: "Device", nbytes: int):
        vk = dev.vk
        self.dev, self.nbytes = dev, max(4, int(nbytes))
        if self.nbytes > dev.max_binding:
            raise G4CError(f"buffer of {self.nbytes} bytes exceeds the device's storage binding limit of {dev.max_binding} "
                           f"({dev.name})")
        self.buf = vk.vkCreateBuffer(dev.device, vk.VkBufferCreateInfo(
            size=self.nbytes, usage=vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT, sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
        req = vk.vkGetBufferMemoryRequirements(dev.device, self.buf)
        want = vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
        kind = dev.memory_type(req.memoryTypeBits, want)
        self.mem = vk.vkAllocateMemory(dev.device, vk.VkMemoryAllocateInfo(allocationSize=req.size, memoryTypeIndex=kind), None)
        vk.vkBindBufferMemory(dev.device, self.buf, self.mem, 0)
        self._map = vk.vkMapMemory(dev.device, self.mem, 0, self.nbytes, 0)

    def write(self, data: np.ndarray, offset: int = 0) -> None:
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        if offset + raw.nbytes > self.nbytes:
            raise G4CError(f"write of {raw.nbytes} bytes at {offset} overflows a buffer of {self.nbytes}")
        self._view()[offset:offset + raw.nbytes] = raw

    def _view(self) -> np.ndarray:
        return np.frombuffer(self._map, np.uint8, self.nbytes)

    def read(self, dtype=np.float32, count: int | None = None) -> np.ndarray:
        v = self._view().view(dtype)
        return np.array(v if count is None else v[:count])

    def free(self) -> None:
        vk = self.dev.vk
        if self.mem is not None:
            vk.vkUnmapMemory(self.dev.device, self.mem)
            vk.vkDestroyBuffer(self.dev.device, self.buf, None)
            vk.vkFreeMemory(self.dev.device, self.mem, None)
            self.mem = None


class Pipeline:
    """A compute pipeline: n storage-buffer bindings and up to 8 uint push constants."""

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
        self.pool = vk.vkCreateDescriptorPool(dev.device, vk.VkDescriptorPoolCreateInfo(
            maxSets=1, poolSizeCount=1, flags=vk.VK_DESCRIPTOR_POOL_CREATE_FREE_DESCRIPTOR_SET_BIT,
            pPoolSizes=[vk.VkDescriptorPoolSize(type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=n_bindings)]), None)
        self.set = vk.vkAllocateDescriptorSets(dev.device, vk.VkDescriptorSetAllocateInfo(
            descriptorPool=self.pool, descriptorSetCount=1, pSetLayouts=[self.set_layout]))[0]

    def bind(self, buffers: list[Buffer]) -> None:
        vk = self.dev.vk
        writes = [vk.VkWriteDescriptorSet(dstSet=self.set, dstBinding=i, descriptorCount=1,
                                          descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                          pBufferInfo=[vk.VkDescriptorBufferInfo(buffer=b.buf, offset=0, range=b.nbytes)])
                  for i, b in enumerate(buffers)]
        vk.vkUpdateDescriptorSets(self.dev.device, len(writes), writes, 0, None)

    def record(self, cb, push: list[int], groups: tuple[int, int, int]) -> None:
        vk, ffi = self.dev.vk, self.dev.ffi
        vk.vkCmdBindPipeline(cb, vk.VK_PIPELINE_BIND_POINT_COMPUTE, self.pipeline)
        vk.vkCmdBindDescriptorSets(cb, vk.VK_PIPELINE_BIND_POINT_COMPUTE, self.layout, 0, 1, [self.set], 0, None)
        if self.n_push:
            data = ffi.new("uint32_t[]", [int(v) for v in push] + [0] * (self.n_push - len(push)))
            vk.vkCmdPushConstants(cb, self.layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, 4 * self.n_push, data)
        vk.vkCmdDispatch(cb, *groups)


class Device:
    def __init__(self):
        vk = self.vk = _vk()
        self.ffi = vk.ffi
        try:
            self.instance = vk.vkCreateInstance(vk.VkInstanceCreateInfo(pApplicationInfo=vk.VkApplicationInfo(
                pApplicationName="gemma4-conformance", apiVersion=vk.VK_MAKE_VERSION(1, 1, 0))), None)
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
        families = vk.vkGetPhysicalDeviceQueueFamilyProperties(self.physical)
        self.family = next(i for i, f in enumerate(families) if f.queueFlags & vk.VK_QUEUE_COMPUTE_BIT)
        self.device = vk.vkCreateDevice(self.physical, vk.VkDeviceCreateInfo(
            queueCreateInfoCount=1, pQueueCreateInfos=[vk.VkDeviceQueueCreateInfo(
                queueFamilyIndex=self.family, queueCount=1, pQueuePriorities=[1.0])]), None)
        self.queue = vk.vkGetDeviceQueue(self.device, self.family, 0)
        self.cmd_pool = vk.vkCreateCommandPool(self.device, vk.VkCommandPoolCreateInfo(
            queueFamilyIndex=self.family, flags=vk.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT), None)
        self.fence = vk.vkCreateFence(self.device, vk.VkFenceCreateInfo(), None)

    @cached_property
    def memory_properties(self):
        return self.vk.vkGetPhysicalDeviceMemoryProperties(self.physical)

    def memory_type(self, bits: int, want: int) -> int:
        mp = self.memory_properties
        for i in range(mp.memoryTypeCount):
            if bits & (1 << i) and (mp.memoryTypes[i].propertyFlags & want) == want:
                return i
        raise G4CError(f"{self.name}: no memory type with flags {want:#x}")

    def buffer(self, nbytes: int) -> Buffer:
        return Buffer(self, nbytes)

    def pipeline(self, name: str, defines: dict, n_bindings: int, n_push: int) -> Pipeline:
        return Pipeline(self, compile_shader(name, defines), n_bindings, n_push)

    def command_buffer(self):
        vk = self.vk
        return vk.vkAllocateCommandBuffers(self.device, vk.VkCommandBufferAllocateInfo(
            commandPool=self.cmd_pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]

    def submit(self, cb) -> None:
        """Run a recorded command buffer and wait for it."""
        vk = self.vk
        vk.vkResetFences(self.device, 1, [self.fence])
        vk.vkQueueSubmit(self.queue, 1, [vk.VkSubmitInfo(commandBufferCount=1, pCommandBuffers=[cb])], self.fence)
        vk.vkWaitForFences(self.device, 1, [self.fence], vk.VK_TRUE, 60 * 10**9)

    def run(self, pipeline: Pipeline, buffers: list[Buffer], push: list[int], groups: tuple[int, int, int]) -> None:
        """One dispatch, recorded, submitted and waited for (op-level use; a forward records many)."""
        vk = self.vk
        pipeline.bind(buffers)
        cb = self.command_buffer()
        vk.vkBeginCommandBuffer(cb, vk.VkCommandBufferBeginInfo(flags=vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT))
        pipeline.record(cb, push, groups)
        vk.vkEndCommandBuffer(cb)
        self.submit(cb)
        vk.vkFreeCommandBuffers(self.device, self.cmd_pool, 1, [cb])
