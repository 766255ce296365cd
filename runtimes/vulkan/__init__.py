"""Vulkan runtime (issue 3), in progress: the device layer and the dequantize / matvec
shaders for all nine weight formats exist and are tested at op level on lavapipe
(tests/test_vulkan_ops.py). The forward is not written yet, so no runtime is registered."""
