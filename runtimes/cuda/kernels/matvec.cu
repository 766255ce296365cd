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

__device__ __forceinline__ void stage(uint8_t* dst, const uint8_t* src, int n, int lane) {
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
    __syncwarp();
}

#define MATVEC_WARPS 4

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
        // chunk bytes: whole units, or for Q6_K whole super-blocks (32 units = 4 of them)
        int bytes = (T == T_Q6_K) ? (units >> 3) * 210 : units * UnitBytes<T>::n;
        long offset = (T == T_Q6_K) ? (long)(u0 >> 3) * 210 : (long)u0 * UnitBytes<T>::n;
        __syncwarp();
        stage(buf, row + offset, bytes, lane);
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
    load_unit<T>(W + src * row_bytes, u, w);
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
    MATVEC(NAME, T, 1)                                                                                             \
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
