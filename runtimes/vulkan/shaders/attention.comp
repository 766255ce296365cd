#version 450
// Attention of query token t, head h (one workgroup each) over its sequence's cache:
// cap slots of (n_kv, d) keys and values with their positions (-1: empty). A key is visible
// when 0 <= qpos - kpos (< window on sliding layers). Scores go to a scratch row, then max,
// exp and sum are reduced in shared memory and the output dims are split over the threads.
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer KC { float kc[]; };
layout(std430, binding = 2) readonly buffer VC { float vc[]; };
layout(std430, binding = 3) readonly buffer KP { int kpos[]; };
layout(std430, binding = 4) readonly buffer TQ { int tok[]; };  // per token: position, sequence
layout(std430, binding = 5) buffer SC { float sc[]; };
layout(std430, binding = 6) writeonly buffer O { float o[]; };
layout(push_constant) uniform P { uint n_tok; uint n_head; uint n_kv; uint d; uint cap; uint window; float scale; } p;
shared float red[64];

void main() {
    uint th = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
    uint t = gl_LocalInvocationID.x;
    if (th >= p.n_tok * p.n_head) return;
    uint qt = th / p.n_head, h = th % p.n_head;
    int qp = tok[2u * qt];
    uint seq = uint(tok[2u * qt + 1u]);
    uint kvh = h / (p.n_head / p.n_kv);
    uint qb = th * p.d;
    uint srow = th * p.cap;
    float mx = -1.0 / 0.0;
    for (uint j = t; j < p.cap; j += 64u) {
        int kp = kpos[seq * p.cap + j];
        int delta = qp - kp;
        bool vis = kp >= 0 && delta >= 0 && (p.window == 0u || delta < int(p.window));
        float s = -1.0 / 0.0;
        if (vis) {
            uint kb = ((seq * p.cap + j) * p.n_kv + kvh) * p.d;
            s = 0.0;
            for (uint i = 0u; i < p.d; i++) s += q[qb + i] * kc[kb + i];
            s *= p.scale;
            mx = max(mx, s);
        }
        sc[srow + j] = s;
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
    for (uint j = t; j < p.cap; j += 64u) {
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
    // output: thread t owns dims t, t + 64, ... (d <= 512: 8 of them); visible keys only
    float acc[8];
    for (uint k = 0u; k < 8u; k++) acc[k] = 0.0;
    for (uint j = 0u; j < p.cap; j++) {
        float e = sc[srow + j];
        if (e == 0.0) continue;
        uint vb = ((seq * p.cap + j) * p.n_kv + kvh) * p.d;
        for (uint k = 0u; k < 8u && t + 64u * k < p.d; k++) acc[k] += e * vc[vb + t + 64u * k];
    }
    for (uint k = 0u; k < 8u && t + 64u * k < p.d; k++) o[qb + t + 64u * k] = acc[k] * inv;
}
