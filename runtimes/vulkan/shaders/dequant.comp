#version 450
#extension GL_GOOGLE_include_directive : require
// out[r][c] = W[r][c] as float: one invocation per 32-weight unit
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer W { uint wq[]; };
layout(std430, binding = 1) writeonly buffer O { float o[]; };
layout(push_constant) uniform P { uint n_rows; uint n_cols; uint row_bytes; uint unused; } p;

#include "formats.glsl"

void main() {
    uint g = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * 64u;
    uint units = p.n_cols / 32u;
    if (g >= p.n_rows * units) return;
    uint r = g / units, u = g % units;
    float w[32];
    load_unit(r * p.row_bytes, u, w);
    for (uint i = 0u; i < 32u; i++) o[r * p.n_cols + u * 32u + i] = w[i];
}
