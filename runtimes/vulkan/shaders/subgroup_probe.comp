#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_ballot : require
// Whether the wide shaders' broadcast works at the subgroup size SG the device reports
// (device.py): every invocation of a workgroup of 64 sums, over lanes j < SG, lane j's
// subgroup invocation id, as broadcast.glsl's loops broadcast (SPIR-V 1.5); the host expects
// SG (SG - 1) / 2 everywhere. Lavapipe reports 32 under LP_NATIVE_VECTOR_WIDTH=1024 but its
// vectors stop at 512 bits: broadcasts from lanes past 15 return other lanes' values.
layout(local_size_x = 64) in;
layout(std430, binding = 0) writeonly buffer O { uint o[]; };
layout(push_constant) uniform P { uint n; } p;
void main() {
    uint sum = 0u;
    [[unroll]] for (uint j = 0u; j < SG; j++) sum += subgroupBroadcast(gl_SubgroupInvocationID, j);
    if (gl_LocalInvocationID.x < p.n) o[gl_LocalInvocationID.x] = sum;
}
