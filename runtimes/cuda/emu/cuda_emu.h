// What the CUDA kernels in ../kernels need from CUDA, on the CPU, so that the same sources
// compile with g++ and run through the emulator (scheduler.cpp): every CUDA thread of a
// block is a fiber; a barrier (__syncthreads, __syncwarp, a warp shuffle) switches to the
// next fiber; shared memory is a per-worker static. Force-included before a kernel source.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>

#define G4C_CUDA_EMU 1  // kernels take the emulator's stand-in where CUDA needs inline PTX (mma)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))
// one block runs at a time on each worker thread: its shared memory is that worker's
#define __shared__ static thread_local

struct dim3 {
    unsigned x, y, z;
};
extern thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

using std::max;
using std::min;

template <class T> inline T __ldg(const T* p) { return *p; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
// result byte n: byte (s >> 4n) & 7 of the eight bytes of x then y
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    uint64_t v = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int n = 0; n < 4; n++) r |= (unsigned)((v >> (8 * ((s >> (4 * n)) & 7))) & 0xFF) << (8 * n);
    return r;
}
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// barriers: the scheduler resumes a fiber once every live thread of its warp (or block)
// has reached the same kind of barrier, and reports threads waiting at different kinds
extern "C" void g4c_emu_syncwarp(unsigned mask);
extern "C" void g4c_emu_syncthreads();
// a warp exchange: publish bits, wait for the warp, return what lane src published
extern "C" uint64_t g4c_emu_exchange(unsigned mask, uint64_t bits, int src);
extern "C" int g4c_emu_lane();

inline void __syncthreads() { g4c_emu_syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { g4c_emu_syncwarp(mask); }

template <class T> inline T g4c_emu_shfl(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "warp shuffles move at most 64 bits");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    bits = g4c_emu_exchange(mask, bits, src);
    T r;
    memcpy(&r, &bits, sizeof(T));
    return r;
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return g4c_emu_shfl(mask, v, ((g4c_emu_lane() ^ lane_mask) & (width - 1)) | (g4c_emu_lane() & ~(width - 1)));
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return g4c_emu_shfl(mask, v, (g4c_emu_lane() & ~(width - 1)) | (src & (width - 1)));
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    int lane = g4c_emu_lane(), src = (lane & (width - 1)) + (int)delta;
    return g4c_emu_shfl(mask, v, src < width ? (lane & ~(width - 1)) + src : lane);
}

// every lane of the warp publishes n bytes (at most 64); all gets the warp's 32 in lane order
extern "C" void g4c_emu_gather(unsigned mask, const void* mine, int n, void* all);

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 with d as both C and D, fragments laid
// out as the PTX ISA gives them (g = lane / 4, t = lane % 4; see mma_f16 in matvec_direct.cu).
// Products of f16 values are exact in f32; the sum runs over k in order, in f32.
inline float g4c_emu_f16(unsigned bits) {
    unsigned short h = (unsigned short)bits;
    _Float16 f;
    memcpy(&f, &h, 2);
    return (float)f;
}
inline void g4c_emu_mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b) {
    struct Frag {
        uint32_t a[4], b[2];
        float c[4];
    } me, all[32];
    memcpy(me.a, a, 16);
    memcpy(me.b, b, 8);
    memcpy(me.c, d, 16);
    g4c_emu_gather(0xffffffffu, &me, sizeof me, all);
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; l++) {
        int g = l >> 2, t = l & 3;
        for (int i = 0; i < 8; i++) {  // a[i / 2] holds halves i & 1
            int reg = i >> 1;
            A[g + 8 * (reg & 1)][2 * t + (i & 1) + 8 * (reg >> 1)] = g4c_emu_f16(all[l].a[reg] >> (16 * (i & 1)));
        }
        for (int i = 0; i < 4; i++) B[2 * t + (i & 1) + 8 * (i >> 1)][g] = g4c_emu_f16(all[l].b[i >> 1] >> (16 * (i & 1)));
        for (int i = 0; i < 4; i++) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = all[l].c[i];
    }
    int lane = g4c_emu_lane(), g = (lane & 31) >> 2, t = lane & 3;
    for (int i = 0; i < 4; i++) {
        int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
        float s = C[row][col];
        for (int k = 0; k < 16; k++) s += A[row][k] * B[k][col];
        d[i] = s;
    }
}
