// Attention of query rows over two key segments, split over blocks (flash decoding).
//
// Visible keys of a row at position p (sequence s, its rows of this call start at p0):
//   cache:  positions first .. p0-1, first = max(base, p - W + 1) on sliding layers (base otherwise);
//           slot = k mod n_slots on a ring (sliding layers), k - base on full layers
//   batch:  this call's own new keys at positions max(first, p0) .. p, read from the batch,
//           not from the ring: a prefill longer than the window never evicts keys it needs.
// attention_split: block (row, head, split) takes an equal share of the visible keys, each
// warp an online softmax over its keys, and writes (max, sum, sum of p*V) for its share.
// attention_combine merges the splits. The split count depends on the cache capacity, not on
// the position, so a captured decode graph keeps its grid.
#include "formats.cuh"

#define ATT_WARPS 4
#define MAX_D 512

struct Keys {
    int first, n_cache, first_new, n_keys;
};

__device__ __forceinline__ Keys visible_keys(int p, int base, int p0, int window) {
    Keys k;
    k.first = base;
    if (window > 0 && p - window + 1 > k.first) k.first = p - window + 1;
    k.n_cache = p0 > k.first ? p0 - k.first : 0;
    k.first_new = k.first > p0 ? k.first : p0;
    k.n_keys = k.n_cache + (p - k.first_new + 1);
    return k;
}

__device__ __forceinline__ long key_offset(int i, const Keys& k, int r, int p, int s, int base, int kvh, int Hkv, int d,
                                           int n_slots, int ring, bool* from_cache) {
    if (i < k.n_cache) {
        int kpos = k.first + i;
        int slot = ring ? kpos % n_slots : kpos - base;
        *from_cache = true;
        return (((long)s * n_slots + slot) * Hkv + kvh) * d;
    }
    int kpos = k.first_new + (i - k.n_cache);
    *from_cache = false;
    return ((long)(r - (p - kpos)) * Hkv + kvh) * d;
}

extern "C" __global__ void attention_split(
    const float* __restrict__ q, const float* __restrict__ k_new, const float* __restrict__ v_new,
    const float* __restrict__ k_cache, const float* __restrict__ v_cache,
    float* __restrict__ part,  // (n_rows, H, n_split, d + 2): sum p*V, then max, then sum p
    const int* __restrict__ row_pos, const int* __restrict__ row_seq, const int* __restrict__ seq_base,
    const int* __restrict__ seq_p0, int H, int Hkv, int d, int n_slots, int window, float scale, int ring, int n_split) {
    int r = blockIdx.x, h = blockIdx.y, sp = blockIdx.z;
    int p = row_pos[r], s = row_seq[r], base = seq_base[s];
    int kvh = h / (H / Hkv);
    Keys keys = visible_keys(p, base, seq_p0[s], window);
    int per = (keys.n_keys + n_split - 1) / n_split;
    int begin = sp * per, end = min(keys.n_keys, begin + per);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float* qv = q + ((long)r * H + h) * d;
    float qr[MAX_D / 32], acc[MAX_D / 32];
    int nd = d >> 5;  // dims per lane: lane, lane + 32, ...
#pragma unroll
    for (int j = 0; j < MAX_D / 32; j++) {
        qr[j] = j < nd ? qv[lane + 32 * j] : 0.f;
        acc[j] = 0.f;
    }
    float m = -3.402823466e38f, l = 0.f;
    for (int i = begin + warp; i < end; i += ATT_WARPS) {
        bool cached;
        long off = key_offset(i, keys, r, p, s, base, kvh, Hkv, d, n_slots, ring, &cached);
        const float* kv = (cached ? k_cache : k_new) + off;
        const float* vv = (cached ? v_cache : v_new) + off;
        float dot = 0.f;
#pragma unroll
        for (int j = 0; j < MAX_D / 32; j++)
            if (j < nd) dot += qr[j] * kv[lane + 32 * j];
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffff, dot, o);
        float sc = dot * scale;
        float m_new = fmaxf(m, sc);
        float corr = expf(m - m_new), e = expf(sc - m_new);
        l = l * corr + e;
#pragma unroll
        for (int j = 0; j < MAX_D / 32; j++)
            if (j < nd) acc[j] = acc[j] * corr + e * vv[lane + 32 * j];
        m = m_new;
    }
    // merge the block's warps
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_acc[ATT_WARPS][MAX_D];
    if (lane == 0) { sm_m[warp] = m; sm_l[warp] = l; }
#pragma unroll
    for (int j = 0; j < MAX_D / 32; j++)
        if (j < nd) sm_acc[warp][lane + 32 * j] = acc[j];
    __syncthreads();
    float mb = -3.402823466e38f;
    for (int w = 0; w < ATT_WARPS; w++) mb = fmaxf(mb, sm_m[w]);
    float* out = part + (((long)r * H + h) * n_split + sp) * (d + 2);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float a = 0.f;
        for (int w = 0; w < ATT_WARPS; w++) a += sm_l[w] > 0.f ? sm_acc[w][j] * expf(sm_m[w] - mb) : 0.f;
        out[j] = a;
    }
    if (threadIdx.x == 0) {
        float lb = 0.f;
        for (int w = 0; w < ATT_WARPS; w++) lb += sm_l[w] > 0.f ? sm_l[w] * expf(sm_m[w] - mb) : 0.f;
        out[d] = mb;
        out[d + 1] = lb;
    }
}

// Merges the splits of block (row, head) into out, then stores the row's new key and value
// into the cache (blocks of heads below Hkv, one KV head each) at slot[row] of its
// sequence, unless slot[row] < 0 (a prefill row the ring does not keep). Storing here,
// after every split has read the cache, keeps a prefill from overwriting keys it reads.
extern "C" __global__ void attention_combine(const float* __restrict__ part, float* __restrict__ out, int H, int d,
                                             int n_split, const float* __restrict__ k_new,
                                             const float* __restrict__ v_new, float* __restrict__ k_cache,
                                             float* __restrict__ v_cache, const long long* __restrict__ slot,
                                             const int* __restrict__ row_seq, int Hkv, int n_slots) {
    int r = blockIdx.x, h = blockIdx.y;
    const float* pr = part + ((long)r * H + h) * n_split * (d + 2);
    float m = -3.402823466e38f;
    for (int sp = 0; sp < n_split; sp++)
        if (pr[sp * (d + 2) + d + 1] > 0.f) m = fmaxf(m, pr[sp * (d + 2) + d]);
    float l = 0.f;
    for (int sp = 0; sp < n_split; sp++) {
        float ls = pr[sp * (d + 2) + d + 1];
        if (ls > 0.f) l += ls * expf(pr[sp * (d + 2) + d] - m);
    }
    float inv = 1.f / l;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float a = 0.f;
        for (int sp = 0; sp < n_split; sp++) {
            float ls = pr[sp * (d + 2) + d + 1];
            if (ls > 0.f) a += pr[sp * (d + 2) + j] * expf(pr[sp * (d + 2) + d] - m);
        }
        out[((long)r * H + h) * d + j] = a * inv;
    }
    long sl = slot[r];
    if (h >= Hkv || sl < 0) return;
    long src = ((long)r * Hkv + h) * d, dst = (((long)row_seq[r] * n_slots + sl) * Hkv + h) * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        k_cache[dst + j] = k_new[src + j];
        v_cache[dst + j] = v_new[src + j];
    }
}
