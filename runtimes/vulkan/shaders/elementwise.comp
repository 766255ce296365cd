#version 450
// a[i] op= b[i] over n values (tanh arguments clamped to +-15, where it is 1 in f32 and
// an exp-based tanh would overflow to NaN): 0 add, 1 scale by param, 2 gelu-tanh(a) * b, 3 softcap(param),
// 4 copy b[b_off + i] into a[a_off + i].
layout(local_size_x = 64) in;
layout(std430, binding = 0) buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer B { float b[]; };
layout(push_constant) uniform P { uint n; uint mode; float param; uint a_off; uint b_off; } p;

void main() {
    uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * 64u;
    if (i >= p.n) return;
    if (p.mode == 0u) {
        a[i] += b[i];
    } else if (p.mode == 1u) {
        a[i] *= p.param;
    } else if (p.mode == 2u) {
        float x = a[i];
        a[i] = 0.5 * x * (1.0 + tanh(clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -15.0, 15.0))) * b[i];
    } else if (p.mode == 3u) {
        a[i] = p.param * tanh(clamp(a[i] / p.param, -15.0, 15.0));
    } else {
        a[p.a_off + i] = b[p.b_off + i];
    }
}
