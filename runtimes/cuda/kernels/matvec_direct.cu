// Matrix-vector products that read weights straight into registers (mvd_*: CUDA cores, any
// format, 1 to 16 vectors) and on tensor cores (mvt_*: Q4_0 and Q6_K, 2 to 16 vectors),
// and the upload-time repacking (repack_*) of Q4_0 and Q6_K into the layouts of formats.cuh.
//
// mvd: a block of WARPS warps takes R rows; lane l of warp w takes units w * 32 + l,
// + WARPS * 32, ...; for each unit it issues the loads of all R rows' pieces (one 16-byte
// load of quants per packed row) before using any, keeps the unit's 32 x values in
// registers for the R rows (one vector), converts nibbles by placing them in the mantissa
// of 2^23 (one byte permute, one add: exact), and applies the block scale once per 32
// weights. Warp shuffles, then the block's warps summed in a fixed order (no atomics).
//
// mvt: each warp takes 16 * MT rows and every WARPS-th unit; per unit it multiplies the
// rows' 4-bit or 6-bit integers (exact in f16) by x split as f16 hi + lo (two mma each,
// m16n8k16, f32 accumulation) and adds d_row * (that product) to f32 accumulators, so the
// result stays in the f32 class: x (prescaled by a power of two per vector so that hi + lo
// carries 22 bits of every value) is exact to 2^-22 of its largest value, products of f16
// are exact in f32.
#include "formats.cuh"

// 2^23 + v as a float for a byte v placed by __byte_perm into 0x4B0000vv
#define MAGIC 0x4B000000u
__device__ __forceinline__ float byte_float(uint32_t word, int b) {
    return __uint_as_float(__byte_perm(word, MAGIC, 0x7650 | b));
}

// ---- the pieces a lane loads for one unit of one row, and their dot with x ---------------
template <int T> struct Direct {  // unpacked formats: the row and unit, decoded at use
    struct Piece {
        const uint8_t* row;
        int u;
    };
    static __device__ __forceinline__ Piece load(const uint8_t* row, int u, int n_units) { return Piece{row, u}; }
    static __device__ __forceinline__ void decode(const Piece& p, int n_units, float* w) { load_unit<T>(p.row, p.u, w); }
    static __device__ __forceinline__ float dot(const Piece& p, int n_units, const float* x) {
        float w[32], s = 0.f;
        load_unit<T>(p.row, p.u, w);
#pragma unroll
        for (int i = 0; i < 32; i++) s += w[i] * x[i];
        return s;
    }
};

template <> struct Direct<T_Q4_0P> {
    struct Piece {
        uint4 q;
        float d;
    };
    static __device__ __forceinline__ Piece load(const uint8_t* row, int u, int n_units) {
        return Piece{__ldg((const uint4*)row + u), f16_at(row + 16 * n_units + 2 * u)};
    }
    static __device__ __forceinline__ float dot(const Piece& p, int n_units, const float* x) {
        const uint32_t q[4] = {p.q.x, p.q.y, p.q.z, p.q.w};
        float s = 0.f;
#pragma unroll
        for (int t = 0; t < 4; t++) {
            uint32_t lo = q[t] & 0x0F0F0F0Fu, hi = (q[t] >> 4) & 0x0F0F0F0Fu;
#pragma unroll
            for (int b = 0; b < 4; b++) {
                int i = packed_weight(t, b);
                s += (byte_float(lo, b) - 8388616.f) * x[i];  // 2^23 + 8: the value minus 8, exact
                s += (byte_float(hi, b) - 8388616.f) * x[i + 16];
            }
        }
        return p.d * s;
    }
    static __device__ __forceinline__ void decode(const Piece& p, int n_units, float* w) {
        const uint32_t q[4] = {p.q.x, p.q.y, p.q.z, p.q.w};
#pragma unroll
        for (int t = 0; t < 4; t++)
#pragma unroll
            for (int b = 0; b < 4; b++) {
                int i = packed_weight(t, b);
                w[i] = p.d * (byte_float(q[t] & 0x0F0F0F0Fu, b) - 8388616.f);
                w[i + 16] = p.d * (byte_float((q[t] >> 4) & 0x0F0F0F0Fu, b) - 8388616.f);
            }
    }
};

template <> struct Direct<T_Q4_KP> {
    struct Piece {
        uint4 q;
        float d, dm;  // the sub-block's scale and min times the super-block's d and dmin
    };
    static __device__ __forceinline__ Piece load(const uint8_t* row, int u, int n_units) {
        const uint8_t* dd = row + 16 * n_units + 12 * (n_units >> 3) + 4 * (u >> 3);
        float sc, m;
        kq_scale_min(row + 16 * n_units + 12 * (u >> 3), u & 7, &sc, &m);
        return Piece{__ldg((const uint4*)row + u), f16_at(dd) * sc, f16_at(dd + 2) * m};
    }
    static __device__ __forceinline__ float dot(const Piece& p, int n_units, const float* x) {
        const uint32_t q[4] = {p.q.x, p.q.y, p.q.z, p.q.w};
        float s = 0.f, sx = 0.f;
#pragma unroll
        for (int t = 0; t < 4; t++) {
            uint32_t lo = q[t] & 0x0F0F0F0Fu, hi = (q[t] >> 4) & 0x0F0F0F0Fu;
#pragma unroll
            for (int b = 0; b < 4; b++) {
                int i = packed_weight(t, b);
                s += (byte_float(lo, b) - 8388608.f) * x[i];  // 2^23: the value, exact
                s += (byte_float(hi, b) - 8388608.f) * x[i + 16];
            }
        }
#pragma unroll
        for (int i = 0; i < 32; i++) sx += x[i];  // the same for every row: computed once per unit
        return p.d * s - p.dm * sx;
    }
    static __device__ __forceinline__ void decode(const Piece& p, int n_units, float* w) {
        const uint32_t q[4] = {p.q.x, p.q.y, p.q.z, p.q.w};
#pragma unroll
        for (int t = 0; t < 4; t++)
#pragma unroll
            for (int b = 0; b < 4; b++) {
                int i = packed_weight(t, b);
                w[i] = p.d * (byte_float(q[t] & 0x0F0F0F0Fu, b) - 8388608.f) - p.dm;
                w[i + 16] = p.d * (byte_float((q[t] >> 4) & 0x0F0F0F0Fu, b) - 8388608.f) - p.dm;
            }
    }
};

// the 2-bit highs of a Q6_KP word's four nibbles, one per byte at bits 4-5
__device__ __forceinline__ uint32_t q6_highs(uint32_t h8) {
    return ((h8 | (h8 << 6) | (h8 << 12) | (h8 << 18)) & 0x03030303u) << 4;
}

template <> struct Direct<T_Q6_KP> {
    struct Piece {
        uint4 q;
        uint2 h;
        float d0, d1;  // the super-block scale times each sub-scale
    };
    static __device__ __forceinline__ Piece load(const uint8_t* row, int u, int n_units) {
        const int8_t* sc = (const int8_t*)(row + 24 * n_units + 2 * u);
        float d = f16_at(row + 26 * n_units + 2 * (u >> 3));
        return Piece{__ldg((const uint4*)row + u), __ldg((const uint2*)(row + 16 * n_units) + u), d * (float)sc[0],
                     d * (float)sc[1]};
    }
    static __device__ __forceinline__ void words(const Piece& p, int t, uint32_t* lo, uint32_t* hi) {
        const uint32_t q[4] = {p.q.x, p.q.y, p.q.z, p.q.w};
        uint32_t h16 = ((t < 2 ? p.h.x : p.h.y) >> (16 * (t & 1))) & 0xFFFFu;
        *lo = (q[t] & 0x0F0F0F0Fu) | q6_highs(h16 & 0xFF);
        *hi = ((q[t] >> 4) & 0x0F0F0F0Fu) | q6_highs(h16 >> 8);
    }
    static __device__ __forceinline__ float dot(const Piece& p, int n_units, const float* x) {
        float s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int t = 0; t < 4; t++) {
            uint32_t lo, hi;
            words(p, t, &lo, &hi);
#pragma unroll
            for (int b = 0; b < 4; b++) {
                int i = packed_weight(t, b);
                s0 += (byte_float(lo, b) - 8388640.f) * x[i];  // 2^23 + 32
                s1 += (byte_float(hi, b) - 8388640.f) * x[i + 16];
            }
        }
        return p.d0 * s0 + p.d1 * s1;
    }
    static __device__ __forceinline__ void decode(const Piece& p, int n_units, float* w) {
#pragma unroll
        for (int t = 0; t < 4; t++) {
            uint32_t lo, hi;
            words(p, t, &lo, &hi);
#pragma unroll
            for (int b = 0; b < 4; b++) {
                int i = packed_weight(t, b);
                w[i] = p.d0 * (byte_float(lo, b) - 8388640.f);
                w[i + 16] = p.d1 * (byte_float(hi, b) - 8388640.f);
            }
        }
    }
};

// ---- the CUDA-core frame ---------------------------------------------------------------
template <int T, int R, int WARPS, int NV>
__device__ void mv_direct(const uint8_t* __restrict__ W, const float* __restrict__ X, float* __restrict__ Y, int n_rows,
                          int n_cols, long row_bytes, int nv) {
    __shared__ float part[WARPS][R * NV];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row0 = blockIdx.x * R;
    int n_units = n_cols >> 5;
    const uint8_t* rows[R];
#pragma unroll
    for (int r = 0; r < R; r++) rows[r] = W + (long)min(row0 + r, n_rows - 1) * row_bytes;  // past the end: reread, not stored
    float acc[R][NV];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int v = 0; v < NV; v++) acc[r][v] = 0.f;
    for (int u = warp * 32 + lane; u < n_units; u += WARPS * 32) {
        typename Direct<T>::Piece p[R];
#pragma unroll
        for (int r = 0; r < R; r++) p[r] = Direct<T>::load(rows[r], u, n_units);  // every row's loads in flight
        if (NV == 1) {
            float x[32];
            const float4* xp = (const float4*)(X + u * 32);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                float4 f = __ldg(xp + i);
                x[4 * i] = f.x; x[4 * i + 1] = f.y; x[4 * i + 2] = f.z; x[4 * i + 3] = f.w;
            }
#pragma unroll
            for (int r = 0; r < R; r++) acc[r][0] += Direct<T>::dot(p[r], n_units, x);
        } else {
#pragma unroll
            for (int r = 0; r < R; r++) {
                float w[32];
                Direct<T>::decode(p[r], n_units, w);
#pragma unroll
                for (int v = 0; v < NV; v++) {
                    if (v < nv) {
                        const float4* xp = (const float4*)(X + (long)v * n_cols + u * 32);
                        float s = 0.f;
#pragma unroll
                        for (int i = 0; i < 8; i++) {
                            float4 f = __ldg(xp + i);
                            s += w[4 * i] * f.x + w[4 * i + 1] * f.y + w[4 * i + 2] * f.z + w[4 * i + 3] * f.w;
                        }
                        acc[r][v] += s;
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int v = 0; v < NV; v++) {
            float s = acc[r][v];
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
            if (lane == 0) part[warp][r * NV + v] = s;
        }
    __syncthreads();
    for (int i = threadIdx.x; i < R * NV; i += blockDim.x) {
        int r = i / NV, v = i % NV;
        if (row0 + r < n_rows && v < nv) {
            float s = 0.f;
#pragma unroll
            for (int w = 0; w < WARPS; w++) s += part[w][i];
            Y[(long)v * n_rows + row0 + r] = s;
        }
    }
}

#define MVD(NAME, T, R, WARPS, NV)                                                                                 \
    extern "C" __global__ void mvd_##NAME##_nv##NV##_r##R##_w##WARPS(const uint8_t* W, const float* X, float* Y,    \
                                                                      int n_rows, int n_cols, long row_bytes, int nv) { \
        mv_direct<T, R, WARPS, NV>(W, X, Y, n_rows, n_cols, row_bytes, nv);                                        \
    }
// the runtime's choices (DIRECT_CONFIG in runtime.py): R = 8 rows for one vector, 2 for more
#define MVD_FORMAT(NAME, T) \
    MVD(NAME, T, 8, 4, 1)   \
    MVD(NAME, T, 2, 4, 2)   \
    MVD(NAME, T, 2, 4, 4)   \
    MVD(NAME, T, 2, 4, 8)   \
    MVD(NAME, T, 2, 4, 16)
MVD_FORMAT(f32, T_F32)
MVD_FORMAT(f16, T_F16)
MVD_FORMAT(bf16, T_BF16)
MVD_FORMAT(q8_0, T_Q8_0)
MVD_FORMAT(q5_0, T_Q5_0)
MVD_FORMAT(q4_kp, T_Q4_KP)
MVD_FORMAT(q5_k, T_Q5_K)
MVD_FORMAT(q4_0p, T_Q4_0P)
MVD_FORMAT(q6_kp, T_Q6_KP)
// launch shapes for the device sweep (reports/device/matvec_sweep.py) on the two formats of the 12b preset
#define MVD_SWEEP(NAME, T) MVD(NAME, T, 4, 4, 1) MVD(NAME, T, 16, 4, 1) MVD(NAME, T, 8, 8, 1) MVD(NAME, T, 4, 8, 1)
MVD_SWEEP(q4_0p, T_Q4_0P)
MVD_SWEEP(q6_kp, T_Q6_KP)
MVD_SWEEP(q4_kp, T_Q4_KP)

// ---- tensor cores ----------------------------------------------------------------------
// d += a * b for one m16n8k16 tile: a the 16 x 16 f16 rows x k, b the 16 x 8 f16 k x vectors,
// d f32; fragments as the PTX ISA lays them out for mma.m16n8k16 (g = lane / 4, t = lane % 4):
// a[0] row g, k 2t and 2t+1; a[1] row g+8, same k; a[2] row g, k 2t+8, 2t+9; a[3] row g+8, those;
// b[0] k 2t, 2t+1 of vector g; b[1] k 2t+8, 2t+9; d[0], d[1] row g, vectors 2t, 2t+1; d[2], d[3] row g+8.
__device__ __forceinline__ void mma_f16(float* d, const uint32_t* a, const uint32_t* b) {
#ifdef G4C_CUDA_EMU
    g4c_emu_mma_m16n8k16(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Two f16 values q - bias (q < 1024, exact) from two 16-bit lanes holding q: 1024 + q by
// placing q in the mantissa of 1024 (0x6400), then one f16x2 subtraction of 1024 + bias.
__device__ __forceinline__ uint32_t half2_int(uint32_t q2, unsigned short bias_bits) {
    __half2 h = __hsub2(u32_as_half2(q2 | 0x64006400u), __halves2half2(__ushort_as_half(bias_bits), __ushort_as_half(bias_bits)));
    return half2_as_u32(h);
}

// The largest of one value per thread, returned to every thread of the block.
__device__ __forceinline__ float block_max(float m) {
    __shared__ float red[32];
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    m = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) m = fmaxf(m, red[w]);
    return m;
}

// The power of two that puts m below 2^14 (m < 2^e: 2^(14 - e), at most 2^127 so it stays
// finite for the tiniest m); 2^14 where m is 0, inf or NaN (the values pass as they are, inf
// and NaN propagate). Values so scaled split into f16 hi + lo that keep 22 bits of every
// value down to 2^-8 of m without leaving f16's normal range.
__device__ __forceinline__ float pow2_scale(float m) {
    int e = 0;
    if (m > 0.f && isfinite(m)) frexpf(m, &e);
    return ldexpf(1.f, 14 - max(e, -113));
}

// v * scale as f16 hi and lo (v * scale = hi + lo to 2^-22 of the scaled largest value)
__device__ __forceinline__ void split_store(float v, unsigned short* hi, unsigned short* lo) {
    __half h = __float2half_rn(v);
    *hi = __half_as_ushort(h);
    *lo = __half_as_ushort(__float2half_rn(v - __half2float(h)));
}

// The vectors as f16 hi + lo, prescaled by a power of two (one block per vector): XS holds
// the grid's vectors (those from nv on zero) of hi then lo, each n_cols halves; the product
// is multiplied by inv_scale[v].
// xsum (when not null): each 32-value unit's sum of the prescaled vector (f32), for the
// formats with a min (Q4_K: sum w x = d sum q x - dmin m sum x).
extern "C" __global__ void split_x(const float* __restrict__ X, unsigned short* __restrict__ XS, float* __restrict__ inv_scale,
                                   float* __restrict__ xsum, int n_cols, int nv) {
    int v = blockIdx.x;
    float m = 0.f;
    if (v < nv)
        for (int i = threadIdx.x; i < n_cols; i += blockDim.x) m = fmaxf(m, fabsf(X[(long)v * n_cols + i]));
    float scale = pow2_scale(block_max(m));
    if (threadIdx.x == 0) inv_scale[v] = 1.f / scale;
    unsigned short* hi = XS + (long)v * 2 * n_cols;
    for (int i = threadIdx.x; i < n_cols; i += blockDim.x)
        split_store(v < nv ? X[(long)v * n_cols + i] * scale : 0.f, hi + i, hi + n_cols + i);
    if (xsum)
        for (int u = threadIdx.x; u < (n_cols >> 5); u += blockDim.x) {
            float s = 0.f;
            for (int i = 0; i < 32; i++) s += v < nv ? X[(long)v * n_cols + 32 * u + i] * scale : 0.f;
            xsum[(long)v * (n_cols >> 5) + u] = s;
        }
}

// The prefill's weights: row r of W dequantized, prescaled by a power of two per row and
// split as split_x splits vectors (one block per row; the row decoded twice, for its largest
// value and then for the halves). With split_x's vectors, three f16 GEMMs with f32
// accumulation (hi hi, lo hi, hi lo) give the product to 2^-21 of max|w| sum|x| + max|x| sum|w|.
template <int T>
__device__ void dequant_split(const uint8_t* __restrict__ W, unsigned short* __restrict__ out, float* __restrict__ inv_scale,
                              int n_cols, long row_bytes) {
    const uint8_t* row = W + (long)blockIdx.x * row_bytes;
    int n_units = n_cols >> 5;
    float m = 0.f, w[32];
    for (int u = threadIdx.x; u < n_units; u += blockDim.x) {
        load_unit_n<T>(row, u, n_units, w);
#pragma unroll
        for (int i = 0; i < 32; i++) m = fmaxf(m, fabsf(w[i]));
    }
    float scale = pow2_scale(block_max(m));
    if (threadIdx.x == 0) inv_scale[blockIdx.x] = 1.f / scale;
    unsigned short* hi = out + (long)blockIdx.x * 2 * n_cols;
    for (int u = threadIdx.x; u < n_units; u += blockDim.x) {
        load_unit_n<T>(row, u, n_units, w);
#pragma unroll
        for (int i = 0; i < 32; i++) split_store(w[i] * scale, hi + 32 * u + i, hi + n_cols + 32 * u + i);
    }
}

#define DEQUANT_SPLIT(NAME, T)                                                                                       \
    extern "C" __global__ void dequant_split_##NAME(const uint8_t* W, unsigned short* out, float* inv_scale, int n_cols, \
                                                    long row_bytes) {                                                 \
        dequant_split<T>(W, out, inv_scale, n_cols, row_bytes);                                                      \
    }
DEQUANT_SPLIT(f32, T_F32)
DEQUANT_SPLIT(f16, T_F16)
DEQUANT_SPLIT(bf16, T_BF16)
DEQUANT_SPLIT(q8_0, T_Q8_0)
DEQUANT_SPLIT(q4_0, T_Q4_0)
DEQUANT_SPLIT(q5_0, T_Q5_0)
DEQUANT_SPLIT(q4_k, T_Q4_K)
DEQUANT_SPLIT(q5_k, T_Q5_K)
DEQUANT_SPLIT(q6_k, T_Q6_K)
DEQUANT_SPLIT(q4_0p, T_Q4_0P)
DEQUANT_SPLIT(q4_kp, T_Q4_KP)
DEQUANT_SPLIT(q6_kp, T_Q6_KP)

// Y (n x rows) *= inv_x[t] * inv_w[r]: the prescales undone after the GEMMs (powers of two: exact)
extern "C" __global__ void unscale(float* __restrict__ Y, const float* __restrict__ inv_x, const float* __restrict__ inv_w,
                                   int n_rows, long total) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) Y[i] *= inv_x[i / n_rows] * inv_w[i % n_rows];
}

template <int T> struct Mma;
// per row and unit: the quant word of this lane (word t), its high bits, the scales
template <> struct Mma<T_Q4_0P> {
    struct Row {
        uint32_t q;
        float d;
    };
    static __device__ __forceinline__ Row load(const uint8_t* row, int u, int n_units, int t) {
        return Row{__ldg((const uint32_t*)(row + 16 * u) + t), f16_at(row + 16 * n_units + 2 * u)};
    }
    // the A halves of k-step s (0: weights 0..15, 1: 16..31) for k 2t, 2t+1 (pair 0) or 2t+8, 2t+9 (pair 1)
    static __device__ __forceinline__ uint32_t a(const Row& r, int s, int pair) {
        uint32_t two = __byte_perm(r.q, 0, pair ? 0x4342 : 0x4140);  // bytes 2 pair, 2 pair + 1 in 16-bit lanes
        return half2_int((s ? two >> 4 : two) & 0x000F000Fu, 0x6408);  // f16 1032 = 1024 + 8
    }
    static __device__ __forceinline__ float scale(const Row& r, int s) { return r.d; }
    static const bool has_min = false;
    static __device__ __forceinline__ float min_of(const Row& r) { return 0.f; }
};

template <> struct Mma<T_Q4_KP> {
    struct Row {
        uint32_t q;
        float d, dm;
    };
    static __device__ __forceinline__ Row load(const uint8_t* row, int u, int n_units, int t) {
        const uint8_t* dd = row + 16 * n_units + 12 * (n_units >> 3) + 4 * (u >> 3);
        float sc, m;
        kq_scale_min(row + 16 * n_units + 12 * (u >> 3), u & 7, &sc, &m);
        return Row{__ldg((const uint32_t*)(row + 16 * u) + t), f16_at(dd) * sc, f16_at(dd + 2) * m};
    }
    static __device__ __forceinline__ uint32_t a(const Row& r, int s, int pair) {
        uint32_t two = __byte_perm(r.q, 0, pair ? 0x4342 : 0x4140);
        return half2_int((s ? two >> 4 : two) & 0x000F000Fu, 0x6400);  // f16 1024: q itself
    }
    static __device__ __forceinline__ float scale(const Row& r, int s) { return r.d; }
    static const bool has_min = true;
    static __device__ __forceinline__ float min_of(const Row& r) { return r.dm; }
};

template <> struct Mma<T_Q6_KP> {
    struct Row {
        uint32_t q, h;
        float d0, d1;
    };
    static __device__ __forceinline__ Row load(const uint8_t* row, int u, int n_units, int t) {
        const int8_t* sc = (const int8_t*)(row + 24 * n_units + 2 * u);
        float d = f16_at(row + 26 * n_units + 2 * (u >> 3));
        return Row{__ldg((const uint32_t*)(row + 16 * u) + t), (uint32_t)__ldg((const unsigned short*)(row + 16 * n_units + 8 * u) + t),
                   d * (float)sc[0], d * (float)sc[1]};
    }
    static __device__ __forceinline__ uint32_t a(const Row& r, int s, int pair) {
        uint32_t two = __byte_perm(r.q, 0, pair ? 0x4342 : 0x4140);
        uint32_t h = (r.h >> (8 * s + 4 * pair)) & 0xF;  // the 2-bit highs of these two weights
        uint32_t highs = ((h | (h << 14)) << 4) & 0x00300030u;
        return half2_int(((s ? two >> 4 : two) & 0x000F000Fu) | highs, 0x6420);  // f16 1056 = 1024 + 32
    }
    static __device__ __forceinline__ float scale(const Row& r, int s) { return s ? r.d1 : r.d0; }
    static const bool has_min = false;
    static __device__ __forceinline__ float min_of(const Row& r) { return 0.f; }
};

// Y (nv x n_rows) = X W^T on tensor cores for nv <= 8 NT; XS from split_x (8 NT vectors).
template <int T, int MT, int WARPS, int NT>
__device__ void mv_mma(const uint8_t* __restrict__ W, const unsigned short* __restrict__ XS, const float* __restrict__ inv_scale,
                       const float* __restrict__ xsum, float* __restrict__ Y, int n_rows, int n_cols, long row_bytes, int nv) {
    __shared__ float part[WARPS][16 * MT][8 * NT + 1];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int row0 = blockIdx.x * 16 * MT;
    int n_units = n_cols >> 5;
    const uint8_t* rows[MT][2];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int h = 0; h < 2; h++) rows[m][h] = W + (long)min(row0 + 16 * m + 8 * h + g, n_rows - 1) * row_bytes;
    float acc[MT][NT][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[m][n][i] = 0.f;
    for (int u = warp; u < n_units; u += WARPS) {
        typename Mma<T>::Row r[MT][2];
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int h = 0; h < 2; h++) r[m][h] = Mma<T>::load(rows[m][h], u, n_units, t);
        // b[n][s][part] for hi (part 0, 1) and lo (2, 3): vector 8n + g, k = 32u + 16s + 2t (+8)
        uint32_t b[NT][2][4];
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int s = 0; s < 2; s++) {
                const unsigned short* hi = XS + (long)(8 * n + g) * 2 * n_cols + 32 * u + 16 * s + 2 * t;
                const unsigned short* lo = hi + n_cols;
                b[n][s][0] = __ldg((const uint32_t*)hi);
                b[n][s][1] = __ldg((const uint32_t*)(hi + 8));
                b[n][s][2] = __ldg((const uint32_t*)lo);
                b[n][s][3] = __ldg((const uint32_t*)(lo + 8));
            }
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int s = 0; s < 2; s++) {
                uint32_t a[4] = {Mma<T>::a(r[m][0], s, 0), Mma<T>::a(r[m][1], s, 0), Mma<T>::a(r[m][0], s, 1),
                                 Mma<T>::a(r[m][1], s, 1)};
                float d0 = Mma<T>::scale(r[m][0], s), d1 = Mma<T>::scale(r[m][1], s);
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    float c[4] = {0.f, 0.f, 0.f, 0.f};
                    mma_f16(c, a, &b[n][s][0]);
                    mma_f16(c, a, &b[n][s][2]);
                    acc[m][n][0] += d0 * c[0];
                    acc[m][n][1] += d0 * c[1];
                    acc[m][n][2] += d1 * c[2];
                    acc[m][n][3] += d1 * c[3];
                }
            }
        if (Mma<T>::has_min) {  // - dmin m sum x, per row and vector
#pragma unroll
            for (int n = 0; n < NT; n++) {
                float s0 = __ldg(xsum + (long)(8 * n + 2 * t) * n_units + u), s1 = __ldg(xsum + (long)(8 * n + 2 * t + 1) * n_units + u);
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    float m0 = Mma<T>::min_of(r[m][0]), m1 = Mma<T>::min_of(r[m][1]);
                    acc[m][n][0] -= m0 * s0;
                    acc[m][n][1] -= m0 * s1;
                    acc[m][n][2] -= m1 * s0;
                    acc[m][n][3] -= m1 * s1;
                }
            }
        }
    }
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) part[warp][16 * m + g + 8 * (i >> 1)][8 * n + 2 * t + (i & 1)] = acc[m][n][i];
    __syncthreads();
    for (int i = threadIdx.x; i < 16 * MT * 8 * NT; i += blockDim.x) {
        int row = i / (8 * NT), v = i % (8 * NT);
        if (row0 + row < n_rows && v < nv) {
            float s = 0.f;
#pragma unroll
            for (int w = 0; w < WARPS; w++) s += part[w][row][v];
            Y[(long)v * n_rows + row0 + row] = s * inv_scale[v];
        }
    }
}

#define MVT(NAME, T, MT, WARPS, NT)                                                                                \
    extern "C" __global__ void mvt_##NAME##_nt##NT##_m##MT##_w##WARPS(                                            \
        const uint8_t* W, const unsigned short* XS, const float* inv_scale, const float* xsum, float* Y, int n_rows, \
        int n_cols, long row_bytes, int nv) {                                                                      \
        mv_mma<T, MT, WARPS, NT>(W, XS, inv_scale, xsum, Y, n_rows, n_cols, row_bytes, nv);                       \
    }
// the runtime's choice (MMA_CONFIG in runtime.py) first, then the sweep's other shapes
#define MVT_FORMAT(NAME, T) \
    MVT(NAME, T, 2, 4, 1)   \
    MVT(NAME, T, 2, 4, 2)   \
    MVT(NAME, T, 1, 4, 1)   \
    MVT(NAME, T, 1, 4, 2)   \
    MVT(NAME, T, 4, 4, 2)   \
    MVT(NAME, T, 2, 8, 2)
MVT_FORMAT(q4_0p, T_Q4_0P)
MVT_FORMAT(q6_kp, T_Q6_KP)
MVT_FORMAT(q4_kp, T_Q4_KP)

// ---- repacking at upload: one thread per unit of a row --------------------------------------
extern "C" __global__ void repack_q4_0(const uint8_t* __restrict__ src, uint8_t* __restrict__ dst, int n_rows, int n_units,
                                       long src_stride, long dst_stride) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n_rows * n_units) return;
    int r = (int)(i / n_units), u = (int)(i % n_units);
    const uint8_t* b = src + r * src_stride + u * 18;
    uint8_t* row = dst + r * dst_stride;
    row[16 * n_units + 2 * u] = b[0];
    row[16 * n_units + 2 * u + 1] = b[1];
    for (int t = 0; t < 4; t++)
        for (int k = 0; k < 4; k++) row[16 * u + 4 * t + k] = b[2 + packed_weight(t, k)];
}

extern "C" __global__ void repack_q4_k(const uint8_t* __restrict__ src, uint8_t* __restrict__ dst, int n_rows, int n_units,
                                       long src_stride, long dst_stride) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n_rows * n_units) return;
    int r = (int)(i / n_units), u = (int)(i % n_units);
    const uint8_t* b = src + r * src_stride + (u >> 3) * 144;
    int j = u & 7;
    const uint8_t* qs = b + 16 + (j >> 1) * 32;  // as load_unit<T_Q4_K>
    int shift = (j & 1) * 4;
    uint8_t* row = dst + r * dst_stride;
    for (int t = 0; t < 4; t++)
        for (int k = 0; k < 4; k++) {
            int w = packed_weight(t, k);
            row[16 * u + 4 * t + k] = (uint8_t)(((qs[w] >> shift) & 0xF) | (((qs[w + 16] >> shift) & 0xF) << 4));
        }
    if (j == 0) {
        int sb = u >> 3, n_sb = n_units >> 3;
        for (int k = 0; k < 12; k++) row[16 * n_units + 12 * sb + k] = b[4 + k];
        for (int k = 0; k < 4; k++) row[16 * n_units + 12 * n_sb + 4 * sb + k] = b[k];
    }
}

extern "C" __global__ void repack_q6_k(const uint8_t* __restrict__ src, uint8_t* __restrict__ dst, int n_rows, int n_units,
                                       long src_stride, long dst_stride) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n_rows * n_units) return;
    int r = (int)(i / n_units), u = (int)(i % n_units);
    const uint8_t* b = src + r * src_stride + (u >> 3) * 210;
    int j = u & 7, h = j >> 2, c = j & 3;  // as load_unit<T_Q6_K>
    const uint8_t* ql = b + h * 64 + (c & 1) * 32;
    const uint8_t* qh = b + 128 + h * 32;
    int lshift = (c >> 1) * 4, hshift = 2 * c;
    uint8_t* row = dst + r * dst_stride;
    for (int t = 0; t < 4; t++) {
        int hl = 0, hh = 0;
        for (int k = 0; k < 4; k++) {
            int w = packed_weight(t, k);
            row[16 * u + 4 * t + k] = (uint8_t)(((ql[w] >> lshift) & 0xF) | (((ql[w + 16] >> lshift) & 0xF) << 4));
            hl |= ((qh[w] >> hshift) & 3) << (2 * k);
            hh |= ((qh[w + 16] >> hshift) & 3) << (2 * k);
        }
        row[16 * n_units + 8 * u + 2 * t] = (uint8_t)hl;
        row[16 * n_units + 8 * u + 2 * t + 1] = (uint8_t)hh;
    }
    const uint8_t* sc = b + 192 + h * 8 + c * 2;
    row[24 * n_units + 2 * u] = sc[0];
    row[24 * n_units + 2 * u + 1] = sc[1];
    if (j == 0) {
        row[26 * n_units + 2 * (u >> 3)] = b[208];
        row[26 * n_units + 2 * (u >> 3) + 1] = b[209];
    }
}
