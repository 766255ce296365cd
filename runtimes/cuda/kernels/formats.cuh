// GGML weight formats, decoded 32 weights at a time ("a unit").
// Every format's row is a sequence of units: a legacy block (32 weights) is one unit, a
// K-quant super-block (256 weights) is eight. load_unit<T>(row, u, w) writes the 32 float
// weights of unit u of a row. Layouts as in gguf-py's quants.py and g4c/quants.py.
#pragma once
#include <cuda_fp16.h>
#ifdef __CUDACC_RTC__  // NVRTC has no C library headers
typedef unsigned char uint8_t;
typedef signed char int8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uintptr_t;
#else
#include <stdint.h>
#endif

#define T_F32 0
#define T_F16 1
#define T_BF16 30
#define T_Q4_0 2
#define T_Q5_0 6
#define T_Q8_0 8
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
// Q4_0 and Q6_K repacked at upload (repack_* in matvec_direct.cu): the same bytes per row,
// regrouped so that a lane loads a 32-weight unit's quants in one 16-byte piece
#define T_Q4_0P 102
#define T_Q4_KP 112
#define T_Q6_KP 114

__device__ __forceinline__ __half2 u32_as_half2(uint32_t u) {
    __half2 h;
    memcpy(&h, &u, 4);
    return h;
}
__device__ __forceinline__ uint32_t half2_as_u32(__half2 h) {
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}

__device__ __forceinline__ float f16_at(const uint8_t* p) {
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}

// K-quant 6-bit scale and min of sub-block j (0..7) from the 12-byte table
__device__ __forceinline__ void kq_scale_min(const uint8_t* s, int j, float* sc, float* m) {
    if (j < 4) {
        *sc = (float)(s[j] & 63);
        *m = (float)(s[j + 4] & 63);
    } else {
        *sc = (float)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *m = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

template <int T> __device__ __forceinline__ void load_unit(const uint8_t* row, int u, float* w);

template <> __device__ __forceinline__ void load_unit<T_F32>(const uint8_t* row, int u, float* w) {
    const float4* p = (const float4*)(row + u * 128);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float4 v = p[i];
        w[4 * i] = v.x; w[4 * i + 1] = v.y; w[4 * i + 2] = v.z; w[4 * i + 3] = v.w;
    }
}

template <> __device__ __forceinline__ void load_unit<T_F16>(const uint8_t* row, int u, float* w) {
    const __half2* p = (const __half2*)(row + u * 64);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        float2 f = __half22float2(p[i]);
        w[2 * i] = f.x; w[2 * i + 1] = f.y;
    }
}

template <> __device__ __forceinline__ void load_unit<T_BF16>(const uint8_t* row, int u, float* w) {
    const uint32_t* p = (const uint32_t*)(row + u * 64);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        uint32_t v = p[i];
        w[2 * i] = __uint_as_float(v << 16);
        w[2 * i + 1] = __uint_as_float(v & 0xFFFF0000u);
    }
}

template <> __device__ __forceinline__ void load_unit<T_Q8_0>(const uint8_t* row, int u, float* w) {
    const uint8_t* b = row + u * 34;
    float d = f16_at(b);
#pragma unroll
    for (int i = 0; i < 32; i++) w[i] = d * (float)(int8_t)b[2 + i];
}

template <> __device__ __forceinline__ void load_unit<T_Q4_0>(const uint8_t* row, int u, float* w) {
    const uint8_t* b = row + u * 18;
    float d = f16_at(b);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        uint8_t q = b[2 + i];
        w[i] = d * (float)((int)(q & 0xF) - 8);
        w[i + 16] = d * (float)((int)(q >> 4) - 8);
    }
}

template <> __device__ __forceinline__ void load_unit<T_Q5_0>(const uint8_t* row, int u, float* w) {
    const uint8_t* b = row + u * 22;
    float d = f16_at(b);
    uint32_t qh = b[2] | (b[3] << 8) | (b[4] << 16) | ((uint32_t)b[5] << 24);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        uint8_t q = b[6 + i];
        int lo = (q & 0xF) | (((qh >> i) & 1) << 4);
        int hi = (q >> 4) | (((qh >> (i + 16)) & 1) << 4);
        w[i] = d * (float)(lo - 16);
        w[i + 16] = d * (float)(hi - 16);
    }
}

template <> __device__ __forceinline__ void load_unit<T_Q4_K>(const uint8_t* row, int u, float* w) {
    const uint8_t* b = row + (u >> 3) * 144;
    int j = u & 7;
    float sc, m;
    kq_scale_min(b + 4, j, &sc, &m);
    float d = f16_at(b) * sc, dm = f16_at(b + 2) * m;
    const uint8_t* qs = b + 16 + (j >> 1) * 32;
    int shift = (j & 1) * 4;
#pragma unroll
    for (int i = 0; i < 32; i++) w[i] = d * (float)((qs[i] >> shift) & 0xF) - dm;
}

template <> __device__ __forceinline__ void load_unit<T_Q5_K>(const uint8_t* row, int u, float* w) {
    const uint8_t* b = row + (u >> 3) * 176;
    int j = u & 7;
    float sc, m;
    kq_scale_min(b + 4, j, &sc, &m);
    float d = f16_at(b) * sc, dm = f16_at(b + 2) * m;
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + 48 + (j >> 1) * 32;
    int shift = (j & 1) * 4;
#pragma unroll
    for (int i = 0; i < 32; i++) {
        int q = ((qs[i] >> shift) & 0xF) | (((qh[i] >> j) & 1) << 4);
        w[i] = d * (float)q - dm;
    }
}

template <> __device__ __forceinline__ void load_unit<T_Q6_K>(const uint8_t* row, int u, float* w) {
    const uint8_t* b = row + (u >> 3) * 210;
    int j = u & 7, h = j >> 2, c = j & 3;  // half of the super-block, 32-weight chunk in it
    const uint8_t* ql = b + h * 64 + (c & 1) * 32;
    const uint8_t* qh = b + 128 + h * 32;
    const int8_t* scales = (const int8_t*)(b + 192) + h * 8 + c * 2;
    float d = f16_at(b + 208);
    int lshift = (c >> 1) * 4, hshift = 2 * c;
#pragma unroll
    for (int i = 0; i < 32; i++) {
        int q = ((ql[i] >> lshift) & 0xF) | (((qh[i] >> hshift) & 3) << 4);
        w[i] = d * (float)scales[i >> 4] * (float)(q - 32);
    }
}

// The packed layouts (rows padded to 16 bytes). In both, the unit's quants are 16 bytes whose
// 32-bit word t holds, in its bytes b = 0..3, the low nibble of weight i = 2t + (b & 1) +
// 8 (b >> 1) and the high nibble of weight i + 16: the order of an mma.m16n8k16 A fragment,
// so a tensor-core lane reads its word and a CUDA-core lane all four.
//   Q4_0P row: quants (16 B per unit) | f16 scale per unit (2 B)
//   Q4_KP row: quants (16 B per unit) | the 12-byte 6-bit scales and mins per super-block, as
//     stored | f16 d and dmin per super-block
//   Q6_KP row: low 4 bits (16 B per unit) | high 2 bits (8 B per unit: 16 bits per word t,
//     its low byte the 2-bit highs of word t's low nibbles at bits 2b, its high byte those of
//     the high nibbles) | the unit's two int8 sub-scales (weights 0..15, 16..31) | f16 scale
//     per super-block of 8 units
__device__ __forceinline__ int packed_weight(int t, int b) { return 2 * t + (b & 1) + 8 * (b >> 1); }

// load_unit for any format, given the row's unit count (the packed layouts need it)
template <int T> __device__ __forceinline__ void load_unit_n(const uint8_t* row, int u, int n_units, float* w) {
    load_unit<T>(row, u, w);
}

template <> __device__ __forceinline__ void load_unit_n<T_Q4_0P>(const uint8_t* row, int u, int n_units, float* w) {
    const uint8_t* q = row + 16 * u;
    float d = f16_at(row + 16 * n_units + 2 * u);
#pragma unroll
    for (int t = 0; t < 4; t++)
#pragma unroll
        for (int b = 0; b < 4; b++) {
            uint8_t v = q[4 * t + b];
            int i = packed_weight(t, b);
            w[i] = d * (float)((int)(v & 0xF) - 8);
            w[i + 16] = d * (float)((int)(v >> 4) - 8);
        }
}

template <> __device__ __forceinline__ void load_unit_n<T_Q6_KP>(const uint8_t* row, int u, int n_units, float* w) {
    const uint8_t* q = row + 16 * u;
    const uint8_t* qh = row + 16 * n_units + 8 * u;
    const int8_t* sc = (const int8_t*)(row + 24 * n_units + 2 * u);
    float d = f16_at(row + 26 * n_units + 2 * (u >> 3));
#pragma unroll
    for (int t = 0; t < 4; t++)
#pragma unroll
        for (int b = 0; b < 4; b++) {
            uint8_t v = q[4 * t + b];
            int i = packed_weight(t, b);
            int lo = (v & 0xF) | (((qh[2 * t] >> (2 * b)) & 3) << 4);
            int hi = (v >> 4) | (((qh[2 * t + 1] >> (2 * b)) & 3) << 4);
            w[i] = d * (float)sc[0] * (float)(lo - 32);  // as load_unit<T_Q6_K>: the same float
            w[i + 16] = d * (float)sc[1] * (float)(hi - 32);
        }
}

template <> __device__ __forceinline__ void load_unit_n<T_Q4_KP>(const uint8_t* row, int u, int n_units, float* w) {
    const uint8_t* q = row + 16 * u;
    const uint8_t* sm = row + 16 * n_units + 12 * (u >> 3);
    const uint8_t* dd = row + 16 * n_units + 12 * (n_units >> 3) + 4 * (u >> 3);
    float sc, m;
    kq_scale_min(sm, u & 7, &sc, &m);
    float d = f16_at(dd) * sc, dm = f16_at(dd + 2) * m;  // as load_unit<T_Q4_K>: the same floats
#pragma unroll
    for (int t = 0; t < 4; t++)
#pragma unroll
        for (int b = 0; b < 4; b++) {
            uint8_t v = q[4 * t + b];
            int i = packed_weight(t, b);
            w[i] = d * (float)(v & 0xF) - dm;
            w[i + 16] = d * (float)(v >> 4) - dm;
        }
}
