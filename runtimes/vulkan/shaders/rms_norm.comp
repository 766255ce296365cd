#version 450
// y = x / sqrt(mean(x^2) + eps) (* w[i % w_len] when has_w), one workgroup per segment of n
// values (a row, or one head of a row for the q/k/v norms); x and y may be the same buffer.
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Y { float y[]; };
layout(std430, binding = 2) readonly buffer Wt { float w[]; };
layout(push_constant) uniform P { uint n; uint n_seg; float eps; uint has_w; } p;
shared float part[64];

void main() {
    uint seg = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
    uint t = gl_LocalInvocationID.x;
    if (seg >= p.n_seg) return;
    uint base = seg * p.n;
    float s = 0.0;
    for (uint i = t; i < p.n; i += 64u) s += x[base + i] * x[base + i];
    part[t] = s;
    barrier();
    for (uint k = 32u; k > 0u; k >>= 1) {
        if (t < k) part[t] += part[t + k];
        barrier();
    }
    float scale = 1.0 / sqrt(part[0] / float(p.n) + p.eps);
    for (uint i = t; i < p.n; i += 64u) {
        float v = x[base + i] * scale;
        y[base + i] = p.has_w != 0u ? v * w[i] : v;
    }
}
