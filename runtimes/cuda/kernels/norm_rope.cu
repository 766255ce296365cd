// RMSNorm, NEOX RoPE with frequency factors, and the fused forms a layer's decode step
// runs: the per-head norms and RoPE of q, k and v in one launch, and the residual add of a
// sub-layer with the norm that follows it in another.
#include "formats.cuh"

// The sum over the block of one value per thread, returned to every thread. Callable more
// than once in a kernel: the first barrier keeps a fast warp from overwriting part while
// another still reads the previous total.
__device__ __forceinline__ float block_sum(float s) {
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += part[w];
    return t;
}

// 1 / sqrt(mean(x^2) + eps) of the n values at x, for every thread of the block
__device__ __forceinline__ float rms_scale(const float* x, int n, float eps) {
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i] * x[i];
    return rsqrtf(block_sum(s) / n + eps);
}

// y = x / sqrt(mean(x^2) + eps) * (w or 1); one block per row of n values.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                                    int n, float eps) {
    const float* xr = x + (long)blockIdx.x * n;
    float* yr = y + (long)blockIdx.x * n;
    float r = rms_scale(xr, n, eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * r * (w ? w[i] : 1.f);
}

// The end of a sub-layer, one block per row of n values:
//   y_normed = rms_norm(y) * w_post;  x = (x + y_normed) * scale;  h = rms_norm(x) * w_next
// x is the residual stream (updated in place), h the next sub-layer's input. y_normed is
// written only when given (a trace asked for it).
extern "C" __global__ void residual_norm(float* __restrict__ x, const float* __restrict__ y,
                                         const float* __restrict__ w_post, const float* __restrict__ w_next,
                                         float* __restrict__ h, float* __restrict__ y_normed, int n, float eps,
                                         float scale) {
    long row = (long)blockIdx.x * n;
    float ry = rms_scale(y + row, n, eps);
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float yn = y[row + i] * ry * w_post[i];
        if (y_normed) y_normed[row + i] = yn;
        float v = (x[row + i] + yn) * scale;
        x[row + i] = v;  // each thread reads back only what it wrote
        s += v * v;
    }
    float rx = rsqrtf(block_sum(s) / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) h[row + i] = x[row + i] * rx * w_next[i];
}

// The per-head part of attention's input, one block per (row, head) over H + 2 Hkv heads:
// heads 0..H-1 of q and 0..Hkv-1 of k get their weighted RMSNorm and then NEOX RoPE at the
// row's position; v gets a weightless RMSNorm (v_norm) or is copied. qkv is one row of the
// fused projection per token, ld floats apart, with k at column col_k and v at col_v
// (col_v = col_k when V is the raw K projection). Outputs: q (n, H, d), k and v (n, Hkv, d).
extern "C" __global__ void qkv_prep(const float* __restrict__ qkv, long ld, int col_k, int col_v,
                                    const float* __restrict__ q_w, const float* __restrict__ k_w, float* __restrict__ q,
                                    float* __restrict__ k, float* __restrict__ v, const int* __restrict__ pos,
                                    const float* __restrict__ inv_freq, int H, int Hkv, int d, int n_rot, float eps,
                                    int v_norm) {
    int r = blockIdx.x, head = blockIdx.y;
    const float* src;
    const float* w;
    float* dst;
    if (head < H) {
        src = qkv + r * ld + (long)head * d;
        dst = q + ((long)r * H + head) * d;
        w = q_w;
    } else if (head < H + Hkv) {
        src = qkv + r * ld + col_k + (long)(head - H) * d;
        dst = k + ((long)r * Hkv + head - H) * d;
        w = k_w;
    } else {
        src = qkv + r * ld + col_v + (long)(head - H - Hkv) * d;
        dst = v + ((long)r * Hkv + head - H - Hkv) * d;
        w = nullptr;
    }
    float sc = (w || v_norm) ? rms_scale(src, d, eps) : 1.f;  // uniform over the block
    int rot = w ? n_rot : 0, half = rot >> 1;
    float p = (float)pos[r];
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        if (j < half) {
            float x1 = src[j] * sc * w[j], x2 = src[j + half] * sc * w[j + half];
            float a = p * inv_freq[j], c = cosf(a), s = sinf(a);
            dst[j] = x1 * c - x2 * s;
            dst[j + half] = x2 * c + x1 * s;
        } else if (j >= rot) {
            dst[j] = src[j] * sc * (w ? w[j] : 1.f);
        }
    }
}

// out (rows, f) = gelu_tanh(gate) * up, where each row of gu holds the row's f gate values
// and then its f up values (the fused gate and up projection).
extern "C" __global__ void gelu_mul(const float* __restrict__ gu, float* __restrict__ out, int f, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long r = i / f, j = i % f;
    float g = gu[2 * r * f + j];
    out[i] = 0.5f * g * (1.f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g))) * gu[2 * r * f + f + j];
}

// x = cap * tanh(x / cap)
extern "C" __global__ void softcap(float* __restrict__ x, float cap, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = cap * tanhf(x[i] / cap);
}
