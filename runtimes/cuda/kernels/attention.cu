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

// The prefill's form of attention_split: block (tile, head, split) takes ATT_TILE consecutive
// rows of one sequence (positions P0, P0 + 1, ...; the host uses it only then), a warp per
// row, and walks the union of their visible keys (first(P0) .. the last row's position) in
// pieces of ATT_TILE_KEYS keys staged once in shared memory for all the tile's rows: each
// key and value crosses from memory once per tile instead of once per row. A row skips the
// keys it cannot see. Writes part as attention_split does (attention_combine merges).
#define ATT_TILE 8
#define ATT_TILE_KEYS 8
extern "C" __global__ void attention_tile(
    const float* __restrict__ q, const float* __restrict__ k_new, const float* __restrict__ v_new,
    const float* __restrict__ k_cache, const float* __restrict__ v_cache, float* __restrict__ part,
    const int* __restrict__ row_pos, const int* __restrict__ row_seq, const int* __restrict__ seq_base,
    const int* __restrict__ seq_p0, int n_rows, int H, int Hkv, int d, int n_slots, int window, float scale, int ring,
    int n_split) {
    __shared__ __align__(16) float sk[ATT_TILE_KEYS][MAX_D], sv[ATT_TILE_KEYS][MAX_D];
    int r0 = blockIdx.x * ATT_TILE, h = blockIdx.y, sp = blockIdx.z;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int last = min(r0 + ATT_TILE, n_rows) - 1;
    int P0 = row_pos[r0], s = row_seq[r0], base = seq_base[s], p0 = seq_p0[s];
    int kvh = h / (H / Hkv);
    // the union of the tile's visible keys: from the first row's first key to the last row
    Keys uk = visible_keys(P0, base, p0, window);
    int P_last = row_pos[last];
    int n_union = (P_last - uk.first) + 1;
    int per = (n_union + n_split - 1) / n_split;
    int begin = sp * per, end = min(n_union, begin + per);
    int r = r0 + warp, p = P0 + warp;
    bool live = r <= last;
    Keys mine = visible_keys(p, base, p0, window);  // this row's: mine.first .. p
    float qr[MAX_D / 32], acc[MAX_D / 32];
    int nd = d >> 5;
#pragma unroll
    for (int j = 0; j < MAX_D / 32; j++) {
        qr[j] = live && j < nd ? q[((long)r * H + h) * d + lane + 32 * j] : 0.f;
        acc[j] = 0.f;
    }
    float m = -3.402823466e38f, l = 0.f;
    for (int i0 = begin; i0 < end; i0 += ATT_TILE_KEYS) {
        int nk = min(ATT_TILE_KEYS, end - i0);
        __syncthreads();  // the previous piece is read by every warp
        for (int e = threadIdx.x; e < nk * d; e += blockDim.x) {
            int k = e / d, j = e % d, kpos = uk.first + i0 + k;
            long off = kpos < p0 ? (((long)s * n_slots + (ring ? kpos % n_slots : kpos - base)) * Hkv + kvh) * d
                                 : ((long)(r0 + (kpos - P0)) * Hkv + kvh) * d;
            sk[k][j] = (kpos < p0 ? k_cache : k_new)[off + j];
            sv[k][j] = (kpos < p0 ? v_cache : v_new)[off + j];
        }
        __syncthreads();
        if (!live) continue;
        for (int k = 0; k < nk; k++) {
            int kpos = uk.first + i0 + k;
            if (kpos < mine.first || kpos > p) continue;  // the same for every lane of the warp
            float dot = 0.f;
#pragma unroll
            for (int j = 0; j < MAX_D / 32; j++)
                if (j < nd) dot += qr[j] * sk[k][lane + 32 * j];
            for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffff, dot, o);
            float sc = dot * scale;
            float m_new = fmaxf(m, sc);
            float corr = expf(m - m_new), ex = expf(sc - m_new);
            l = l * corr + ex;
#pragma unroll
            for (int j = 0; j < MAX_D / 32; j++)
                if (j < nd) acc[j] = acc[j] * corr + ex * sv[k][lane + 32 * j];
            m = m_new;
        }
    }
    if (!live) return;
    float* out = part + (((long)r * H + h) * n_split + sp) * (d + 2);
#pragma unroll
    for (int j = 0; j < MAX_D / 32; j++)
        if (j < nd) out[lane + 32 * j] = acc[j];
    if (lane == 0) {
        out[d] = m;
        out[d + 1] = l;
    }
}
