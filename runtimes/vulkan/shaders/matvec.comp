#version 450
#extension GL_GOOGLE_include_directive : require
// y[s][r] = sum_c W[r][c] x[s][c] for n_seq vectors: one workgroup per weight row reads the
// row once for every vector; WG threads stride over the row's 32-weight units, then a
// shared-memory tree reduction (no subgroup operations: lavapipe's baseline).
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer W { uint wq[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant) uniform P { uint n_rows; uint n_cols; uint row_bytes; uint n_seq; } p;

#include "formats.glsl"

#define MAX_SEQ 16
shared float partial[64 * MAX_SEQ];

void main() {
    uint r = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
    uint t = gl_LocalInvocationID.x;
    if (r >= p.n_rows) return;
    float acc[MAX_SEQ];
    for (uint s = 0u; s < p.n_seq; s++) acc[s] = 0.0;
    uint row = r * p.row_bytes;
    for (uint u = t; u < p.n_cols / 32u; u += 64u) {
        for (uint i = 0u; i < 32u; i++) {
            float w = load_weight(row, u, i);
            for (uint s = 0u; s < p.n_seq; s++) acc[s] += w * x[s * p.n_cols + u * 32u + i];
        }
    }
    for (uint s = 0u; s < p.n_seq; s++) partial[s * 64u + t] = acc[s];
    barrier();
    for (uint k = 32u; k > 0u; k >>= 1) {
        if (t < k)
            for (uint s = 0u; s < p.n_seq; s++) partial[s * 64u + t] += partial[s * 64u + t + k];
        barrier();
    }
    if (t == 0u)
        for (uint s = 0u; s < p.n_seq; s++) y[s * p.n_rows + r] = partial[s * 64u];
}
