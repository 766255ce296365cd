// Fused dequantize + matrix-vector products for every weight format, NV vectors at once.
// One warp per weight row; each lane decodes whole 32-weight units and dots them with
// every vector, then a warp shuffle reduction. Reading a row once for all NV vectors is
// what batched decode needs: the weights are the bytes that cost.
#include "formats.cuh"

// Bytes of one 32-weight unit of each format.
template <int T> struct UnitBytes;
template <> struct UnitBytes<T_F32> { static const int n = 128; };
template <> struct UnitBytes<T_F16> { static const int n = 64; };
template <> struct UnitBytes<T_BF16> { static const int n = 64; };
template <> struct UnitBytes<T_Q8_0> { static const int n = 34; };
template <> struct UnitBytes<T_Q4_0> { static const int n = 18; };
template <> struct UnitBytes<T_Q5_0> { static const int n = 22; };
template <> struct UnitBytes<T_Q4_K> { static const int n = 18; };   // 144 / 8
template <> struct UnitBytes<T_Q5_K> { static const int n = 22; };   // 176 / 8
template <> struct UnitBytes<T_Q6_K> { static const int n = 210 / 8; };  // not whole: see CHUNK

// A warp stages 32 consecutive units (a K-quant: 4 super-blocks) of its row in shared
// memory with the widest loads the address allows, then each lane decodes one unit there:
// global reads are coalesced 16-byte loads instead of lanes reading 18-byte blocks bytewise.
template <int T> struct Chunk { static const int bytes = UnitBytes<T>::n * 32; };
template <> struct Chunk<T_Q6_K> { static const int bytes = 210 * 4; };

__device__ __forceinline__ void stage_issue(uint8_t* dst, const uint8_t* src, int n, int lane) {
    uintptr_t a = (uintptr_t)src;
    if ((a & 15) == 0 && (n & 15) == 0) {
        for (int i = lane; i < (n >> 4); i += 32) ((uint4*)dst)[i] = __ldg((const uint4*)src + i);
    } else if ((a & 3) == 0 && (n & 3) == 0) {
        for (int i = lane; i < (n >> 2); i += 32) ((uint32_t*)dst)[i] = __ldg((const unsigned int*)src + i);
    } else if ((a & 1) == 0 && (n & 1) == 0) {
        for (int i = lane; i < (n >> 1); i += 32) ((uint16_t*)dst)[i] = __ldg((const unsigned short*)src + i);
    } else {
        for (int i = lane; i < n; i += 32) dst[i] = __ldg(src + i);
    }
}

__device__ __forceinline__ void stage(uint8_t* dst, const uint8_t* src, int n, int lane) {
    stage_issue(dst, src, n, lane);
    __syncwarp();
}

#define MATVEC_WARPS 4

// Chunk of 32 units starting at unit u0 (a multiple of 32): byte offset and length; for
// Q6_K, whose unit is not a whole number of bytes, whole super-blocks of 8 units.
template <int T> __device__ __forceinline__ long chunk_offset(int u0) {
    return T == T_Q6_K ? (long)(u0 >> 3) * 210 : (long)u0 * UnitBytes<T>::n;
}
template <int T> __device__ __forceinline__ int chunk_bytes(int units) {
    return T == T_Q6_K ? (units >> 3) * 210 : units * UnitBytes<T>::n;
}

// Batched form: one warp per row, each lane's 32 x values read per vector from L1.
template <int T, int NV>
__device__ void matvec(const uint8_t* __restrict__ W, const float* __restrict__ X, float* __restrict__ Y,
                       int n_rows, int n_cols, long row_bytes, int nv) {
    __shared__ __align__(16) uint8_t smem[MATVEC_WARPS][Chunk<T>::bytes];
    int warp_in_block = threadIdx.x >> 5;
    int warp = blockIdx.x * MATVEC_WARPS + warp_in_block;
    int lane = threadIdx.x & 31;
    if (warp >= n_rows) return;
    uint8_t* buf = smem[warp_in_block];
    const uint8_t* row = W + (long)warp * row_bytes;
    float acc[NV];
#pragma unroll
    for (int v = 0; v < NV; v++) acc[v] = 0.f;
    int n_units = n_cols >> 5;
    float w[32];
    for (int u0 = 0; u0 < n_units; u0 += 32) {
        int units = min(32, n_units - u0);
        __syncwarp();
        stage(buf, row + chunk_offset<T>(u0), chunk_bytes<T>(units), lane);
        if (lane < units) {
            int u = u0 + lane;
            load_unit<T>(buf, lane, w);
#pragma unroll
            for (int v = 0; v < NV; v++) {
                if (v < nv) {
                    const float4* x = (const float4*)(X + (long)v * n_cols + u * 32);
                    float s = 0.f;
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        float4 xv = __ldg(x + i);
                        s += w[4 * i] * xv.x + w[4 * i + 1] * xv.y + w[4 * i + 2] * xv.z + w[4 * i + 3] * xv.w;
                    }
                    acc[v] += s;
                }
            }
        }
    }
#pragma unroll
    for (int v = 0; v < NV; v++) {
        float s = acc[v];
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
        if (lane == 0 && v < nv) Y[(long)v * n_rows + warp] = s;
    }
}

// Single-vector form (decode of one sequence): a warp takes RowsPer<T> rows, keeps its
// lane's 32 x values in registers across them (x read once per RowsPer rows), and issues the
// loads of all its rows' chunks before decoding any, to keep more bytes in flight.
template <int T> struct RowsPer { static const int n = 4; };
template <> struct RowsPer<T_F32> { static const int n = 2; };  // 4 would not fit 48 KB of shared memory

template <int T>
__device__ void matvec1(const uint8_t* __restrict__ W, const float* __restrict__ X, float* __restrict__ Y,
                        int n_rows, int n_cols, long row_bytes) {
    const int R = RowsPer<T>::n;
    __shared__ __align__(16) uint8_t smem[MATVEC_WARPS][R][Chunk<T>::bytes];
    int warp_in_block = threadIdx.x >> 5;
    int row0 = (blockIdx.x * MATVEC_WARPS + warp_in_block) * R;
    int lane = threadIdx.x & 31;
    if (row0 >= n_rows) return;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.f;
    int n_units = n_cols >> 5;
    float w[32], xr[32];
    for (int u0 = 0; u0 < n_units; u0 += 32) {
        int units = min(32, n_units - u0);
        __syncwarp();
#pragma unroll
        for (int r = 0; r < R; r++)
            if (row0 + r < n_rows)
                stage_issue(smem[warp_in_block][r], W + (long)(row0 + r) * row_bytes + chunk_offset<T>(u0),
                            chunk_bytes<T>(units), lane);
        if (lane < units) {
            const float4* x = (const float4*)(X + (u0 + lane) * 32);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                float4 xv = __ldg(x + i);
                xr[4 * i] = xv.x; xr[4 * i + 1] = xv.y; xr[4 * i + 2] = xv.z; xr[4 * i + 3] = xv.w;
            }
        }
        __syncwarp();
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (row0 + r < n_rows && lane < units) {
                load_unit<T>(smem[warp_in_block][r], lane, w);
                float s = 0.f;
#pragma unroll
                for (int i = 0; i < 32; i++) s += w[i] * xr[i];
                acc[r] += s;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float s = acc[r];
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
        if (lane == 0 && row0 + r < n_rows) Y[row0 + r] = s;
    }
}

// Dequantize whole rows (rows[i] of W, or row i when rows is null) to float32.
template <int T>
__device__ void dequant_rows(const uint8_t* __restrict__ W, const long long* __restrict__ rows, float* __restrict__ out,
                             int n_out_rows, int n_cols, long row_bytes) {
    long unit = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int units_per_row = n_cols >> 5;
    if (unit >= (long)n_out_rows * units_per_row) return;
    int r = (int)(unit / units_per_row), u = (int)(unit % units_per_row);
    long src = rows ? rows[r] : r;
    float w[32];
    load_unit_n<T>(W + src * row_bytes, u, units_per_row, w);
    float4* o = (float4*)(out + (long)r * n_cols + u * 32);
#pragma unroll
    for (int i = 0; i < 8; i++) o[i] = make_float4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
}

#define MATVEC(NAME, T, NV)                                                                                        \
    extern "C" __global__ void matvec_##NAME##_nv##NV(const uint8_t* W, const float* X, float* Y, int n_rows,       \
                                                      int n_cols, long row_bytes, int nv) {                         \
        matvec<T, NV>(W, X, Y, n_rows, n_cols, row_bytes, nv);                                                      \
    }
#define FORMAT(NAME, T)                                                                                            \
    extern "C" __global__ void matvec_##NAME##_nv1(const uint8_t* W, const float* X, float* Y, int n_rows,          \
                                                   int n_cols, long row_bytes, int nv) {                            \
        matvec1<T>(W, X, Y, n_rows, n_cols, row_bytes);                                                             \
    }                                                                                                              \
    MATVEC(NAME, T, 4)                                                                                             \
    MATVEC(NAME, T, 16)                                                                                            \
    extern "C" __global__ void dequant_##NAME(const uint8_t* W, const long long* rows, float* out, int n_out_rows,  \
                                              int n_cols, long row_bytes) {                                         \
        dequant_rows<T>(W, rows, out, n_out_rows, n_cols, row_bytes);                                               \
    }

FORMAT(f32, T_F32)
FORMAT(f16, T_F16)
FORMAT(bf16, T_BF16)
FORMAT(q8_0, T_Q8_0)
FORMAT(q4_0, T_Q4_0)
FORMAT(q5_0, T_Q5_0)
FORMAT(q4_k, T_Q4_K)
FORMAT(q5_k, T_Q5_K)
FORMAT(q6_k, T_Q6_K)

// the packed layouts' dequantize (the prefill's matrices, the embedding lookup); their
// matvecs are in matvec_direct.cu
#define DEQUANT(NAME, T)                                                                                           \
    extern "C" __global__ void dequant_##NAME(const uint8_t* W, const long long* rows, float* out, int n_out_rows,  \
                                              int n_cols, long row_bytes) {                                         \
        dequant_rows<T>(W, rows, out, n_out_rows, n_cols, row_bytes);                                               \
    }
DEQUANT(q4_0p, T_Q4_0P)
DEQUANT(q4_kp, T_Q4_KP)
DEQUANT(q6_kp, T_Q6_KP)
