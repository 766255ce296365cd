#version 450
#extension GL_GOOGLE_include_directive : require
// Prefill GEMM, tiled: a workgroup computes 64 weight rows x 8 tokens. Each thread owns one
// weight row and decodes its 32-weight unit once per tile; the 8 tokens' matching 32 inputs
// sit in shared memory. y[t * y_stride + y_off + r] = sum_c W[r][c] x[x_off + t * n_cols + c].
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer W { uint wq[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant) uniform P { uint n_rows; uint n_cols; uint row_bytes; uint n_tok; uint x_off; uint y_off; uint y_stride; } p;

#include "formats.glsl"

#define TM 8
shared float xs[TM * 32];

void main() {
    uint t = gl_LocalInvocationID.x;
    uint r = gl_WorkGroupID.x * 64u + t;
    uint t0 = gl_WorkGroupID.y * TM;
    float acc[TM];
    for (uint m = 0u; m < TM; m++) acc[m] = 0.0;
    float w[32];
    for (uint u = 0u; u < p.n_cols / 32u; u++) {
        for (uint k = t; k < TM * 32u; k += 64u) {
            uint m = k / 32u, c = k % 32u;
            xs[k] = (t0 + m < p.n_tok) ? x[p.x_off + (t0 + m) * p.n_cols + u * 32u + c] : 0.0;
        }
        barrier();
        if (r < p.n_rows) {
            load_unit(r * p.row_bytes, u, w);
            for (uint m = 0u; m < TM; m++) {
                float s = 0.0;
                for (uint i = 0u; i < 32u; i++) s += w[i] * xs[m * 32u + i];
                acc[m] += s;
            }
        }
        barrier();
    }
    if (r < p.n_rows)
        for (uint m = 0u; m < TM; m++)
            if (t0 + m < p.n_tok) y[(t0 + m) * p.y_stride + p.y_off + r] = acc[m];
}
