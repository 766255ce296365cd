#version 450
// NEOX rotate-half RoPE in place on x (n_tok, n_heads, d): pair (i, i + n_rot/2) of token t
// rotates by the angle whose cos and sin the host tabulated (cs[t][i], cs[t][half + i]), so
// angles at position 262143 keep the host's accuracy rather than the device's cos/sin.
layout(local_size_x = 64) in;
layout(std430, binding = 0) buffer Xb { float x[]; };
layout(std430, binding = 1) readonly buffer CS { float cs[]; };
layout(push_constant) uniform P { uint n_tok; uint n_heads; uint d; uint n_rot; } p;

void main() {
    uint half_rot = p.n_rot / 2u;
    uint g = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * 64u;
    if (g >= p.n_tok * p.n_heads * half_rot) return;
    uint i = g % half_rot, th = g / half_rot, t = th / p.n_heads;
    uint base = th * p.d;
    float c = cs[t * p.n_rot + i], s = cs[t * p.n_rot + half_rot + i];
    float x1 = x[base + i], x2 = x[base + half_rot + i];
    x[base + i] = x1 * c - x2 * s;
    x[base + half_rot + i] = x2 * c + x1 * s;
}
