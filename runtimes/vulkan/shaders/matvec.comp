#version 450
#extension GL_GOOGLE_include_directive : require
// y[s][y_off + r] = sum_c W[r][c] x[x_off + s][c] for n_seq <= 16 vectors (y rows y_stride
// apart). A workgroup of 64 takes 8 weight rows, 8 lanes per row striding over its 32-weight
// units (each unit decoded once for every vector), then a shared-memory reduction over the
// 8 lanes (no subgroup operations: lavapipe's baseline).
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer W { uint wq[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant) uniform P { uint n_rows; uint n_cols; uint row_bytes; uint n_seq; uint x_off; uint y_off; uint y_stride; } p;

#include "formats.glsl"

#define MAX_SEQ 16
#define ROWS 8
#define LANES 8
shared float partial[64 * MAX_SEQ];

void main() {
    uint t = gl_LocalInvocationID.x;
    uint r = (gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x) * ROWS + t / LANES;
    uint lane = t % LANES;
    float acc[MAX_SEQ];
    for (uint s = 0u; s < p.n_seq; s++) acc[s] = 0.0;
    if (r < p.n_rows) {
        uint row = r * p.row_bytes;
        float w[32];
        for (uint u = lane; u < p.n_cols / 32u; u += LANES) {
            load_unit(row, u, w);
            for (uint s = 0u; s < p.n_seq; s++) {
                uint xb = p.x_off + s * p.n_cols + u * 32u;
                float a = 0.0;
                for (uint i = 0u; i < 32u; i++) a += w[i] * x[xb + i];
                acc[s] += a;
            }
        }
    }
    for (uint s = 0u; s < p.n_seq; s++) partial[s * 64u + t] = acc[s];
    barrier();
    for (uint k = LANES / 2u; k > 0u; k >>= 1) {
        if (lane < k)
            for (uint s = 0u; s < p.n_seq; s++) partial[s * 64u + t] += partial[s * 64u + t + k];
        barrier();
    }
    if (lane == 0u && r < p.n_rows)
        for (uint s = 0u; s < p.n_seq; s++) y[s * p.y_stride + p.y_off + r] = partial[s * 64u + t];
}
