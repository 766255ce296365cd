// Products with a weight matrix in its stored format (formats.cl, TYPE from the build
// options), and its dequantization. Row r of W starts at byte r * row_bytes; x holds
// n vectors of n_cols values from x_off; y[s * y_stride + y_off + r] receives row r's sum
// for vector s.
#include "formats.cl"

#define WG64 __attribute__((reqd_work_group_size(64, 1, 1)))  // every kernel: local arrays are sized for 64

#define MAX_SEQ 16  // vectors a matvec reads each weight row once for

// w (32 decoded weights) . x[0..31] in four float4 lanes, then their pairwise sum: written as
// vectors, PoCL's CPU code runs 2 to 4 times faster than from the scalar loop (its vectorizer
// leaves that one scalar). The order of the sum moves f32 rounding only: a sweep case whose
// layer 4 amplifies it (hd512-16-g2-w1024) ends at hidden NMSE 1.7e-10 of its 3.6e-10 with
// these lanes, 5.2e-10 with eight, 2.1e-11 with the scalar loop (cpu runtime: 2.4e-10)
inline float dot32(const float* w, global const float* x) {
    float4 s = vload4(0, w) * vload4(0, x);
    for (int i = 1; i < 8; i++) s += vload4(i, w) * vload4(i, x);
    return (s.x + s.y) + (s.z + s.w);
}

// acc[s] += (the row's units lane, lane + lanes, ...) . (the same units of vector s) for the
// n vectors at x, n_cols apart: each unit decoded once for all of them. Every product kernel
// below sums a row this way (matmul with lane 0 of 1).
inline void row_dots(global const uchar* row, global const float* x, int n_cols, int n, int lane, int lanes, float* acc) {
    float w[32];
    for (int u = lane; u < n_cols / 32; u += lanes) {
        load_unit(row, u, w);
        for (int s = 0; s < n; s++) acc[s] += dot32(w, x + (long)s * n_cols + u * 32);
    }
}

// y = W x for n <= MAX_SEQ vectors, the plain path (no sub-group functions): a work-group of
// 64 takes 8 rows, 8 work-items per row striding over its 32-weight units (each unit decoded
// once for every vector), then a tree reduction over the 8 in local memory.
#define ROWS 8
#define LANES 8
WG64 kernel void matvec(global const uchar* W, global const float* x, global float* y, int n_rows, int n_cols,
                   long row_bytes, int n, int x_off, int y_off, int y_stride) {
    local float part[MAX_SEQ * 64];
    int t = get_local_id(0);
    int r = get_group_id(0) * ROWS + t / LANES, lane = t % LANES;
    float acc[MAX_SEQ];
    for (int s = 0; s < n; s++) acc[s] = 0.0f;
    if (r < n_rows) row_dots(W + (long)r * row_bytes, x + x_off, n_cols, n, lane, LANES, acc);
    for (int s = 0; s < n; s++) part[s * 64 + t] = acc[s];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = LANES / 2; k > 0; k >>= 1) {
        if (lane < k)
            for (int s = 0; s < n; s++) part[s * 64 + t] += part[s * 64 + t + k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lane == 0 && r < n_rows)
        for (int s = 0; s < n; s++) y[(long)s * y_stride + y_off + r] = part[s * 64 + t];
}

// The same product on the sub-group path: each sub-group takes one row at a time (rows
// strided over every sub-group of the launch, so any sub-group size works), its work-items
// striding over the row's units, and sub_group_reduce_add sums them: no local memory, no
// barrier. Built only for a device with sub-groups (cl_khr_subgroups, cl_intel_subgroups or
// OpenCL C 3.0's __opencl_c_subgroups), or with SG_EMU=<lanes>: subgroup_emu.cl stands in
// for the sub-group functions with local memory (PoCL has none), so the path runs in CI.
#ifdef SUBGROUPS
#ifdef SG_EMU
#include "subgroup_emu.cl"
#else
#ifdef KHR_SUBGROUPS
#pragma OPENCL EXTENSION cl_khr_subgroups : enable
#endif
#define SG_SCRATCH
#endif
WG64 kernel void matvec_sg(global const uchar* W, global const float* x, global float* y, int n_rows, int n_cols,
                      long row_bytes, int n, int x_off, int y_off, int y_stride) {
    SG_SCRATCH;
    int lanes = get_sub_group_size(), lane = get_sub_group_local_id();
    int per_group = get_num_sub_groups(), stride = get_num_groups(0) * per_group;
    // the loop is uniform over the work-group (r0), so the emulation's barriers are too
    for (int r0 = get_group_id(0) * per_group; r0 < n_rows; r0 += stride) {
        int r = r0 + get_sub_group_id();
        float acc[MAX_SEQ];
        for (int s = 0; s < n; s++) acc[s] = 0.0f;
        if (r < n_rows) row_dots(W + (long)r * row_bytes, x + x_off, n_cols, n, lane, lanes, acc);
        for (int s = 0; s < n; s++) {
            float sum = sub_group_reduce_add(acc[s]);
            if (lane == 0 && r < n_rows) y[(long)s * y_stride + y_off + r] = sum;
        }
    }
}
#endif

// Prefill product: a work-item takes one weight row and a tile of TM vectors, decodes each
// 32-weight unit of its row once for the tile and dots it with the TM vectors' matching
// inputs (read by every work-item of a group alike: cached, or broadcast on a GPU). No
// local memory and no barrier: PoCL turns the work-group into one vectorizable loop.
#define TM 16
WG64 kernel void matmul(global const uchar* W, global const float* x, global float* y, int n_rows, int n_cols,
                   long row_bytes, int n, int x_off, int y_off, int y_stride) {
    int r = get_global_id(0), t0 = get_group_id(1) * TM;
    if (r >= n_rows) return;
    int nt = min(TM, n - t0);
    float acc[TM];
    for (int m = 0; m < TM; m++) acc[m] = 0.0f;
    row_dots(W + (long)r * row_bytes, x + x_off + (long)t0 * n_cols, n_cols, nt, 0, 1, acc);
    for (int m = 0; m < nt; m++) y[(long)(t0 + m) * y_stride + y_off + r] = acc[m];
}

// out[i][c] = W[rows[i]][c] * scale as float (rows[i] = i when use_rows is 0): one
// work-item per 32-weight unit. The embedding lookup, and the op cases' dequantize.
WG64 kernel void dequant(global const uchar* W, global const int* rows, global float* out, int n_out, int n_cols,
                    long row_bytes, int use_rows, float scale) {
    int g = get_global_id(0), units = n_cols / 32;
    if (g >= n_out * units) return;
    int i = g / units, u = g % units;
    long r = use_rows ? rows[i] : i;
    float w[32];
    load_unit(W + r * row_bytes, u, w);
    global float* o = out + (long)i * n_cols + u * 32;
    for (int k = 0; k < 32; k++) o[k] = w[k] * scale;
}
