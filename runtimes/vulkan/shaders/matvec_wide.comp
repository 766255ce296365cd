#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_ARB_gpu_shader_int64 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_ballot : require
// Wide-load matvec (device.py's `wide` path): y[s][y_off + r] = sum_c W[r][c] x[x_off + s][c]
// for NSEQ (-D, 1..16) vectors. One weight row per invocation, its units decoded once for
// all vectors from 64-bit loads; each vector's inputs come by subgroup broadcast (wide.glsl).
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer W { uint64_t wq[]; };
layout(std430, binding = 1) readonly buffer X { uint64_t x2[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant) uniform P { uint n_rows; uint n_cols; uint row_bytes; uint n_seq; uint x_off; uint y_off; uint y_stride; } p;

#include "wide.glsl"
#include "broadcast.glsl"

void main() {
    uint r = (gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x) * 64u + gl_LocalInvocationID.x;
    // lanes past the last row decode the last row again: every lane must take part in the broadcasts
    uint row = min(r, p.n_rows - 1u) * p.row_bytes;
    float acc[NSEQ];
    [[unroll]] for (uint s = 0u; s < NSEQ; s++) acc[s] = 0.0;
    for (uint u = 0u; u < p.n_cols / 32u; u++) {
        float w[32];
        unit_weights(row, u, w);
        [[unroll]] for (uint s = 0u; s < NSEQ; s++) {
            float xv[V];
            x_chunk(p.x_off + s * p.n_cols + u * 32u, 32u, xv);
            acc[s] += unit_dot(w, xv);
        }
    }
    if (r < p.n_rows)
        [[unroll]] for (uint s = 0u; s < NSEQ; s++) y[s * p.y_stride + p.y_off + r] = acc[s];
}
