#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_ARB_gpu_shader_int64 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_ballot : require
// Wide-load prefill GEMM (device.py's `wide` path): a workgroup computes 64 weight rows x TM
// tokens, one row per invocation; each unit of the row is decoded once for the TM tokens,
// whose inputs come by subgroup broadcast (wide.glsl).
// y[t * y_stride + y_off + r] = sum_c W[r][c] x[x_off + t * n_cols + c].
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer W { uint64_t wq[]; };
layout(std430, binding = 1) readonly buffer X { uint64_t x2[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant) uniform P { uint n_rows; uint n_cols; uint row_bytes; uint n_tok; uint x_off; uint y_off; uint y_stride; } p;

#include "wide.glsl"
#include "broadcast.glsl"

#define TM 16

void main() {
    uint r = gl_WorkGroupID.x * 64u + gl_LocalInvocationID.x;
    uint t0 = gl_WorkGroupID.y * TM;
    uint row = min(r, p.n_rows - 1u) * p.row_bytes;
    uint nt = min(TM, p.n_tok - t0);
    float acc[TM];
    [[unroll]] for (uint m = 0u; m < TM; m++) acc[m] = 0.0;
    for (uint u = 0u; u < p.n_cols / 32u; u++) {
        float w[32];
        unit_weights(row, u, w);
        [[unroll]] for (uint m = 0u; m < TM; m++) {
            if (m < nt) {  // uniform over the workgroup
                float xv[V];
                x_chunk(p.x_off + (t0 + m) * p.n_cols + u * 32u, 32u, xv);
                acc[m] += unit_dot(w, xv);
            }
        }
    }
    if (r < p.n_rows)
        [[unroll]] for (uint m = 0u; m < TM; m++)
            if (m < nt) y[(t0 + m) * p.y_stride + p.y_off + r] = acc[m];
}
