"""Vulkan runtime: the forward in GLSL compute shaders (shaders/*.comp), through the vulkan binding."""

from .runtime import VulkanRuntime

__all__ = ["VulkanRuntime"]
