// What the CUDA kernels in ../kernels need from CUDA, on the CPU, so that the same sources
// compile with g++ and run through the emulator (scheduler.cpp): every CUDA thread of a
// block is a fiber; a barrier (__syncthreads, __syncwarp, a warp shuffle) switches to the
// next fiber; shared memory is a per-worker static. Force-included before a kernel source.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>

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
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

using std::max;
using std::min;

template <class T> inline T __ldg(const T* p) { return *p; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
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
