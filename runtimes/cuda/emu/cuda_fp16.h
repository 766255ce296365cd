// The part of CUDA's cuda_fp16.h the kernels use, on the CPU: IEEE binary16 through
// GCC's _Float16, whose conversion to float is exact, as the GPU's.
#pragma once
#include <string.h>

struct __half {
    unsigned short x;
};
struct __attribute__((aligned(4))) __half2 {
    __half x, y;
};

inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline float __half2float(__half h) {
    _Float16 f;
    memcpy(&f, &h.x, 2);
    return (float)f;
}
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline __half __float2half_rn(float f) {
    _Float16 h = (_Float16)f;  // round to nearest even, as the GPU's
    __half r;
    memcpy(&r.x, &h, 2);
    return r;
}
inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half2 __hsub2(__half2 a, __half2 b) {
    return __half2{__float2half_rn(__half2float(a.x) - __half2float(b.x)), __float2half_rn(__half2float(a.y) - __half2float(b.y))};
}
