// Attention of query rows over two key segments: the cache (positions written before this
// call) and the rows' own new keys. Reading the new keys from the batch, not from the ring,
// is what keeps a prefill longer than the window from evicting keys its earlier rows need.
//
// One block per (query row, query head). Visible keys of a row at position p:
//   cache:  positions [lo, p0) with, on sliding layers, p - k < W;
//           slot = k mod n_slots on a ring (sliding layers), k - lo on full layers
//   batch:  new rows r' of the same sequence with position <= p (and p - k < W)
// Scores are written to a scratch row, then softmax and the weighted sum of V.
#include "formats.cuh"

extern "C" __global__ void attention(
    const float* __restrict__ q,       // (n_rows, H, d)
    const float* __restrict__ k_new,   // (n_rows, Hkv, d)
    const float* __restrict__ v_new,
    const float* __restrict__ k_cache, // (n_seq, n_slots, Hkv, d)
    const float* __restrict__ v_cache,
    float* __restrict__ out,           // (n_rows, H, d)
    float* __restrict__ scratch,       // (n_rows, H, max_keys)
    const int* __restrict__ row_pos, const int* __restrict__ row_seq,
    const int* __restrict__ seq_lo,    // first cached position per sequence
    const int* __restrict__ seq_p0,    // first position of this call's rows per sequence
    int n_rows, int H, int Hkv, int d, int n_slots, int window, float scale, int max_keys,
    int ring) {                        // 1: slot = position mod n_slots; 0: slot = position - lo
    int r = blockIdx.x, h = blockIdx.y;
    int p = row_pos[r], s = row_seq[r];
    int kvh = h / (H / Hkv);
    int lo = seq_lo[s], p0 = seq_p0[s];
    int first = lo;
    if (window > 0 && p - window + 1 > first) first = p - window + 1;
    int n_cache = p0 > first ? p0 - first : 0;   // cached keys first .. p0-1
    // new rows of this sequence: positions p0 .. p; they sit at rows r - (p - p0) .. r
    int first_new = first > p0 ? first : p0;
    int n_new = p - first_new + 1;
    int n_keys = n_cache + n_new;
    const float* qv = q + ((long)r * H + h) * d;
    float* sc = scratch + ((long)r * H + h) * max_keys;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
    for (int i = warp; i < n_keys; i += n_warps) {
        const float* kv;
        if (i < n_cache) {
            int kpos = first + i;
            int slot = ring ? kpos % n_slots : kpos - lo;
            kv = k_cache + (((long)s * n_slots + slot) * Hkv + kvh) * d;
        } else {
            int kpos = first_new + (i - n_cache);
            kv = k_new + ((long)(r - (p - kpos)) * Hkv + kvh) * d;
        }
        float dot = 0.f;
        for (int j = lane; j < d; j += 32) dot += qv[j] * kv[j];
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffff, dot, o);
        if (lane == 0) sc[i] = dot * scale;
    }
    __syncthreads();
    __shared__ float red[32];
    float m = -3.402823466e38f;
    for (int i = threadIdx.x; i < n_keys; i += blockDim.x) m = fmaxf(m, sc[i]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = -3.402823466e38f;
    for (int i = 0; i < n_warps; i++) m = fmaxf(m, red[i]);
    __syncthreads();
    float sum = 0.f;
    for (int i = threadIdx.x; i < n_keys; i += blockDim.x) {
        float e = expf(sc[i] - m);
        sc[i] = e;
        sum += e;
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
    if (lane == 0) red[warp] = sum;
    __syncthreads();
    sum = 0.f;
    for (int i = 0; i < n_warps; i++) sum += red[i];
    float inv = 1.f / sum;
    float* o = out + ((long)r * H + h) * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = 0.f;
        for (int i = 0; i < n_keys; i++) {
            const float* vv;
            if (i < n_cache) {
                int kpos = first + i;
                int slot = ring ? kpos % n_slots : kpos - lo;
                vv = v_cache + (((long)s * n_slots + slot) * Hkv + kvh) * d;
            } else {
                int kpos = first_new + (i - n_cache);
                vv = v_new + ((long)(r - (p - kpos)) * Hkv + kvh) * d;
            }
            acc += sc[i] * vv[j];
        }
        o[j] = acc * inv;
    }
}
