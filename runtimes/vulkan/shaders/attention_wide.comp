#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_ARB_gpu_shader_int64 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_ballot : require
// Attention on the wide path (device.py): attention.comp's math, with keys and values read
// as 64-bit words and the query (then each probability) shared over the subgroup by
// broadcast (broadcast.glsl: the same code at every subgroup size). A head of d dims (even,
// at most 512) is read in chunks of 32, the last one partial when d is not a multiple of 32
// (16, 48, ...): the dims past d count as 0. A full layer's slot is position - base, so only
// slots up to the query's own (`slots`, the slot kv_store put its key in) can be visible:
// the loops stop there.
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer Q { uint64_t x2[]; };
layout(std430, binding = 1) readonly buffer KC { uint64_t kc[]; };
layout(std430, binding = 2) readonly buffer VC { uint64_t vc[]; };
layout(std430, binding = 3) readonly buffer KP { int kpos[]; };
layout(std430, binding = 4) readonly buffer TQ { int tok[]; };  // per token: position, sequence
layout(std430, binding = 5) buffer SC { float sc[]; };
layout(std430, binding = 6) writeonly buffer O { float o[]; };
layout(std430, binding = 7) readonly buffer SL { int slot[]; };  // per token: its cache slot
layout(push_constant) uniform P { uint n_tok; uint n_head; uint n_kv; uint d; uint cap; uint window; float scale; } p;
shared float red[64];

#include "broadcast.glsl"

void main() {
    uint th = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
    uint t = gl_LocalInvocationID.x;
    if (th >= p.n_tok * p.n_head) return;  // uniform over the workgroup
    uint qt = th / p.n_head, h = th % p.n_head;
    int qp = tok[2u * qt];
    uint seq = uint(tok[2u * qt + 1u]);
    uint kvh = h / (p.n_head / p.n_kv);
    uint qb = th * p.d;
    uint srow = th * p.cap;
    uint nl = p.window == 0u ? min(p.cap, uint(slot[qt]) - seq * p.cap + 1u) : p.cap;
    float mx = -1.0 / 0.0;
    for (uint jb = 0u; jb < nl; jb += 64u) {
        uint j = jb + t, jj = min(j, nl - 1u);
        uint kb = ((seq * p.cap + jj) * p.n_kv + kvh) * p.d / 2u;
        float s = 0.0;
        for (uint c = 0u; c < (p.d + 31u) / 32u; c++) {
            uint lim = min(32u, p.d - c * 32u);
            float w[32];
            [[unroll]] for (uint i = 0u; i < 16u; i++) {
                uint64_t pr = 2u * i < lim ? kc[kb + c * 16u + i] : 0ul;
                w[2u * i] = uintBitsToFloat(uint(pr));
                w[2u * i + 1u] = uintBitsToFloat(uint(pr >> 32));
            }
            float xv[V];
            x_chunk(qb + c * 32u, lim, xv);
            s += unit_dot(w, xv);
        }
        if (j < nl) {
            int kp = kpos[seq * p.cap + j];
            int delta = qp - kp;
            bool vis = kp >= 0 && delta >= 0 && (p.window == 0u || delta < int(p.window));
            s = vis ? s * p.scale : -1.0 / 0.0;
            mx = max(mx, s);
            sc[srow + j] = s;
        }
    }
    red[t] = mx;
    barrier();
    for (uint k = 32u; k > 0u; k >>= 1) {
        if (t < k) red[t] = max(red[t], red[t + k]);
        barrier();
    }
    float m = red[0];
    barrier();
    float sum = 0.0;
    for (uint j = t; j < nl; j += 64u) {
        float e = sc[srow + j] == -1.0 / 0.0 ? 0.0 : exp(sc[srow + j] - m);
        sc[srow + j] = e;
        sum += e;
    }
    red[t] = sum;
    barrier();
    for (uint k = 32u; k > 0u; k >>= 1) {
        if (t < k) red[t] += red[t + k];
        barrier();
    }
    float inv = 1.0 / red[0];
    memoryBarrierBuffer();
    barrier();
    // output: thread t owns dims 2t, 2t + 1 (+ 128 k); the probabilities come by broadcast
    float acc[8];
    [[unroll]] for (uint k = 0u; k < 8u; k++) acc[k] = 0.0;
    uint lane = gl_SubgroupInvocationID;
    for (uint jb = 0u; jb < nl; jb += SG) {
        float ev = jb + lane < nl ? sc[srow + jb + lane] : 0.0;
        [[unroll]] for (uint jj = 0u; jj < SG; jj++) {
            float e = subgroupBroadcast(ev, jj);
            if (e != 0.0) {
                uint vb = ((seq * p.cap + jb + jj) * p.n_kv + kvh) * p.d / 2u;
                [[unroll]] for (uint k = 0u; k < 4u; k++)
                    if (2u * (t + 64u * k) < p.d) {
                        uint64_t pr = vc[vb + t + 64u * k];
                        acc[2u * k] += e * uintBitsToFloat(uint(pr));
                        acc[2u * k + 1u] += e * uintBitsToFloat(uint(pr >> 32));
                    }
            }
        }
    }
    [[unroll]] for (uint k = 0u; k < 4u; k++)
        if (2u * (t + 64u * k) < p.d) {
            o[qb + 2u * (t + 64u * k)] = acc[2u * k] * inv;
            o[qb + 2u * (t + 64u * k) + 1u] = acc[2u * k + 1u] * inv;
        }
}
