#version 450
// Load-width probe (benchmarks/test_vulkan_loads.py): every lane sums a strided share of a
// buffer read as WIDTH-bit elements (16: uint16_t, 64 via 16-bit storage: f16vec4, 32: uint,
// 64: uint64_t), so the reported GB/s show how the device's loads scale with their width.
#extension GL_EXT_shader_16bit_storage : enable
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : enable
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : enable
layout(local_size_x = 64) in;
#if KIND == 0
layout(std430, binding = 0) readonly buffer A { uint16_t a[]; };
#elif KIND == 1
layout(std430, binding = 0) readonly buffer A { f16vec4 a[]; };
#elif KIND == 2
layout(std430, binding = 0) readonly buffer A { uint a[]; };
#else
layout(std430, binding = 0) readonly buffer A { uint64_t a[]; };
#endif
layout(std430, binding = 1) writeonly buffer O { float o[]; };
layout(push_constant) uniform P { uint n; } p;  // elements

void main() {
    uint g = gl_GlobalInvocationID.x, total = gl_NumWorkGroups.x * 64u;
    float acc = 0.0;
    for (uint i = g; i < p.n; i += total) {
#if KIND == 0
        acc += float(uint(a[i]));
#elif KIND == 1
        f16vec4 v = a[i];
        acc += float(v.x) + float(v.y) + float(v.z) + float(v.w);
#elif KIND == 2
        acc += float(a[i]);
#else
        uint64_t v = a[i];
        acc += float(uint(v)) + float(uint(v >> 32));
#endif
    }
    o[g] = acc;
}
