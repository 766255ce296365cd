// GGML weight formats in OpenCL C, decoded 32 weights at a time ("a unit"), as
// runtimes/cuda/kernels/formats.cuh and g4c/quants.py: a legacy block (32 weights) is one
// unit, a K-quant super-block (256 weights) eight. Weights are read as bytes through a
// global uchar pointer (Q4_0 blocks are 18 bytes: no layout is assumed 4-byte aligned but
// F32's); f16 scales are assembled from two bytes and converted by vload_half, which every
// OpenCL 1.2 device has (no cl_khr_fp16 needed). TYPE and the type ids T_F32 ... T_Q6_K
// come from the build options (device.py, from g4c.quants), so the ids are stated once.

inline float f16_at(global const uchar* p) {
    ushort h = (ushort)(p[0] | (p[1] << 8));
    return vload_half(0, (const private half*)&h);
}

inline int i8_at(global const uchar* p) { return (int)(char)p[0]; }

// K-quant 6-bit scale and min of sub-block j (0..7) from the 12-byte table at s
inline void kq_scale_min(global const uchar* s, int j, float* sc, float* m) {
    if (j < 4) {
        *sc = (float)(s[j] & 63);
        *m = (float)(s[j + 4] & 63);
    } else {
        *sc = (float)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *m = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

// the 32 weights of unit u of the row at `row`, block header decoded once
inline void load_unit(global const uchar* row, int u, float* w) {
#if TYPE == T_F32
    global const float* p = (global const float*)(row + (long)u * 128);
    for (int i = 0; i < 32; i++) w[i] = p[i];
#elif TYPE == T_F16
    global const uchar* p = row + (long)u * 64;
    for (int i = 0; i < 32; i++) w[i] = f16_at(p + 2 * i);
#elif TYPE == T_BF16
    global const uchar* p = row + (long)u * 64;
    for (int i = 0; i < 32; i++) w[i] = as_float((uint)(p[2 * i] | (p[2 * i + 1] << 8)) << 16);
#elif TYPE == T_Q8_0
    global const uchar* b = row + (long)u * 34;
    float d = f16_at(b);
    for (int i = 0; i < 32; i++) w[i] = d * (float)i8_at(b + 2 + i);
#elif TYPE == T_Q4_0
    global const uchar* b = row + (long)u * 18;
    float d = f16_at(b);
    for (int i = 0; i < 16; i++) {
        int q = b[2 + i];
        w[i] = d * (float)((q & 0xF) - 8);
        w[i + 16] = d * (float)((q >> 4) - 8);
    }
#elif TYPE == T_Q5_0
    global const uchar* b = row + (long)u * 22;
    float d = f16_at(b);
    uint qh = (uint)b[2] | ((uint)b[3] << 8) | ((uint)b[4] << 16) | ((uint)b[5] << 24);
    for (int i = 0; i < 16; i++) {
        int q = b[6 + i];
        w[i] = d * (float)((int)((q & 0xF) | (((qh >> i) & 1u) << 4)) - 16);
        w[i + 16] = d * (float)((int)((q >> 4) | (((qh >> (i + 16)) & 1u) << 4)) - 16);
    }
#elif TYPE == T_Q4_K || TYPE == T_Q5_K
    global const uchar* b = row + (long)(u >> 3) * (TYPE == T_Q4_K ? 144 : 176);
    int j = u & 7;
    float sc, m;
    kq_scale_min(b + 4, j, &sc, &m);
    float d = f16_at(b) * sc, dm = f16_at(b + 2) * m;
    global const uchar* qs = b + (TYPE == T_Q4_K ? 16 : 48) + (j >> 1) * 32;
    int shift = (j & 1) * 4;
    for (int i = 0; i < 32; i++) {
        int q = (qs[i] >> shift) & 0xF;
#if TYPE == T_Q5_K
        q |= ((b[16 + i] >> j) & 1) << 4;
#endif
        w[i] = d * (float)q - dm;
    }
#elif TYPE == T_Q6_K
    global const uchar* b = row + (long)(u >> 3) * 210;
    int j = u & 7, h = j >> 2, c = j & 3;  // half of the super-block, 32-weight chunk in it
    float d = f16_at(b + 208);
    float s0 = d * (float)i8_at(b + 192 + h * 8 + c * 2), s1 = d * (float)i8_at(b + 193 + h * 8 + c * 2);
    global const uchar* ql = b + h * 64 + (c & 1) * 32;
    global const uchar* qh = b + 128 + h * 32;
    int ls = (c >> 1) * 4, hs = 2 * c;
    for (int i = 0; i < 32; i++) {
        int q = (((ql[i] >> ls) & 0xF) | (((qh[i] >> hs) & 3) << 4)) - 32;
        w[i] = (i < 16 ? s0 : s1) * (float)q;
    }
#else
#error unknown TYPE
#endif
}
