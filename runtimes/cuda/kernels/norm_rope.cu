// RMSNorm (weighted or weightless, per row or per head) and NEOX RoPE with frequency factors.
#include "formats.cuh"

// y = x / sqrt(mean(x^2) + eps) * (w or 1); one block per row of n values.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                                    int n, float eps) {
    const float* xr = x + (long)blockIdx.x * n;
    float* yr = y + (long)blockIdx.x * n;
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.f;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
        if (threadIdx.x == 0) part[0] = s;
    }
    __syncthreads();
    float r = rsqrtf(part[0] / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * r * (w ? w[i] : 1.f);
}

// Rotate-half RoPE in place on x (tokens, heads, d): dimension j pairs with j + n_rot/2.
// angle = pos[token] * inv_freq[j] in f32; inv_freq already divided by the freq factors
// (a factor of 1e30 gives angle 0). One thread per (token, head, pair).
extern "C" __global__ void rope_neox(float* __restrict__ x, const int* __restrict__ pos,
                                     const float* __restrict__ inv_freq, int n_tokens, int n_heads, int d, int n_rot) {
    int half = n_rot >> 1;
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n_tokens * n_heads * half) return;
    int j = (int)(i % half);
    long th = i / half;  // token * n_heads + head
    int t = (int)(th / n_heads);
    float a = (float)pos[t] * inv_freq[j];
    float c = cosf(a), s = sinf(a);
    float* v = x + th * d;
    float x1 = v[j], x2 = v[j + half];
    v[j] = x1 * c - x2 * s;
    v[j + half] = x2 * c + x1 * s;
}

// gate = gelu_tanh(gate) * up, elementwise.
extern "C" __global__ void gelu_mul(float* __restrict__ gate, const float* __restrict__ up, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i];
    gate[i] = 0.5f * g * (1.f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g))) * up[i];
}

// x = cap * tanh(x / cap)
extern "C" __global__ void softcap(float* __restrict__ x, float cap, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = cap * tanhf(x[i] / cap);
}
