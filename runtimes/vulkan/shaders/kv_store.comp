#version 450
// Write the batch's K and V (n_tok, n_kv, d) into the caches (n_seq * cap, n_kv, d) at the
// slot the host chose for each token (its sequence's ring slot or position slot), and the
// token's position into that slot's entry of kpos (the slot's key position; -1 is empty).
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer K { float k[]; };
layout(std430, binding = 1) readonly buffer V { float v[]; };
layout(std430, binding = 2) readonly buffer S { int slot[]; };
layout(std430, binding = 3) writeonly buffer KC { float kc[]; };
layout(std430, binding = 4) writeonly buffer VC { float vc[]; };
layout(std430, binding = 5) readonly buffer T { int tok[]; };  // (position, sequence) per token
layout(std430, binding = 6) writeonly buffer KP { int kpos[]; };
layout(push_constant) uniform P { uint n_tok; uint row; } p;  // row = n_kv * d

void main() {
    uint g = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * 64u;
    if (g >= p.n_tok * p.row) return;
    uint t = g / p.row, e = g % p.row;
    uint dst = uint(slot[t]) * p.row + e;
    kc[dst] = k[g];
    vc[dst] = v[g];
    if (e == 0u) kpos[slot[t]] = tok[2u * t];
}
