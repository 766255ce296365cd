// GGML weight formats in GLSL, decoded 32 weights at a time ("a unit"), as
// runtimes/cuda/kernels/formats.cuh and g4c/quants.py: a legacy block (32 weights) is one
// unit, a K-quant super-block (256 weights) eight. Weights are read from a uint[] storage
// buffer byte by byte (wq_byte), so no layout needs 4-byte alignment (Q4_0 blocks are 18
// bytes); the baseline path needs nothing lavapipe lacks (no 8/16-bit storage).
// TYPE and the type ids T_F32 ... T_Q6_K come from the compiler's -D flags (device.py,
// from g4c.quants), so the ids are stated once.

uint wq_byte(uint off) { return (wq[off >> 2] >> ((off & 3u) * 8u)) & 0xFFu; }
uint wq_u16(uint off) { return wq_byte(off) | (wq_byte(off + 1u) << 8); }
uint wq_u32(uint off) { return wq_u16(off) | (wq_u16(off + 2u) << 16); }
float wq_f16(uint off) { return unpackHalf2x16(wq_u16(off)).x; }
int wq_i8(uint off) { return int(wq_byte(off) << 24) >> 24; }

// K-quant 6-bit scale and min of sub-block j (0..7) from the 12-byte table at s
void kq_scale_min(uint s, uint j, out float sc, out float m) {
    if (j < 4u) {
        sc = float(wq_byte(s + j) & 63u);
        m = float(wq_byte(s + j + 4u) & 63u);
    } else {
        sc = float((wq_byte(s + j + 4u) & 0xFu) | ((wq_byte(s + j - 4u) >> 6) << 4));
        m = float((wq_byte(s + j + 4u) >> 4) | ((wq_byte(s + j) >> 6) << 4));
    }
}

// weight i (0..31) of unit u of the row starting at byte `row`
float load_weight(uint row, uint u, uint i) {
#if TYPE == T_F32
    return uintBitsToFloat(wq_u32(row + u * 128u + 4u * i));
#elif TYPE == T_F16
    return wq_f16(row + u * 64u + 2u * i);
#elif TYPE == T_BF16
    return uintBitsToFloat(wq_u16(row + u * 64u + 2u * i) << 16);
#elif TYPE == T_Q8_0
    uint b = row + u * 34u;
    return wq_f16(b) * float(wq_i8(b + 2u + i));
#elif TYPE == T_Q4_0
    uint b = row + u * 18u;
    uint q = wq_byte(b + 2u + (i & 15u));
    return wq_f16(b) * float(int(i < 16u ? (q & 0xFu) : (q >> 4)) - 8);
#elif TYPE == T_Q5_0
    uint b = row + u * 22u;
    uint qh = wq_u32(b + 2u);
    uint q = wq_byte(b + 6u + (i & 15u));
    uint lo = (i < 16u ? (q & 0xFu) : (q >> 4)) | (((qh >> i) & 1u) << 4);
    return wq_f16(b) * float(int(lo) - 16);
#elif TYPE == T_Q4_K
    uint b = row + (u >> 3) * 144u;
    uint j = u & 7u;
    float sc, m;
    kq_scale_min(b + 4u, j, sc, m);
    uint q = (wq_byte(b + 16u + (j >> 1) * 32u + i) >> ((j & 1u) * 4u)) & 0xFu;
    return wq_f16(b) * sc * float(q) - wq_f16(b + 2u) * m;
#elif TYPE == T_Q5_K
    uint b = row + (u >> 3) * 176u;
    uint j = u & 7u;
    float sc, m;
    kq_scale_min(b + 4u, j, sc, m);
    uint q = ((wq_byte(b + 48u + (j >> 1) * 32u + i) >> ((j & 1u) * 4u)) & 0xFu) | (((wq_byte(b + 16u + i) >> j) & 1u) << 4);
    return wq_f16(b) * sc * float(q) - wq_f16(b + 2u) * m;
#elif TYPE == T_Q6_K
    uint b = row + (u >> 3) * 210u;
    uint j = u & 7u, h = j >> 2, c = j & 3u;
    uint ql = (wq_byte(b + h * 64u + (c & 1u) * 32u + i) >> ((c >> 1) * 4u)) & 0xFu;
    uint qh = (wq_byte(b + 128u + h * 32u + i) >> (2u * c)) & 3u;
    float scale = float(wq_i8(b + 192u + h * 8u + c * 2u + (i >> 4)));
    return wq_f16(b + 208u) * scale * float(int(ql | (qh << 4)) - 32);
#else
#error unknown TYPE
#endif
}

// the 32 weights of unit u, block header decoded once
void load_unit(uint row, uint u, out float w[32]) {
#if TYPE == T_Q8_0
    uint b = row + u * 34u;
    float d = wq_f16(b);
    for (uint i = 0u; i < 32u; i++) w[i] = d * float(wq_i8(b + 2u + i));
#elif TYPE == T_Q4_0
    uint b = row + u * 18u;
    float d = wq_f16(b);
    for (uint i = 0u; i < 16u; i++) {
        uint q = wq_byte(b + 2u + i);
        w[i] = d * float(int(q & 0xFu) - 8);
        w[i + 16u] = d * float(int(q >> 4) - 8);
    }
#elif TYPE == T_Q5_0
    uint b = row + u * 22u;
    float d = wq_f16(b);
    uint qh = wq_u32(b + 2u);
    for (uint i = 0u; i < 16u; i++) {
        uint q = wq_byte(b + 6u + i);
        w[i] = d * float(int((q & 0xFu) | (((qh >> i) & 1u) << 4)) - 16);
        w[i + 16u] = d * float(int((q >> 4) | (((qh >> (i + 16u)) & 1u) << 4)) - 16);
    }
#elif TYPE == T_Q4_K || TYPE == T_Q5_K
    uint b = row + (u >> 3) * (TYPE == T_Q4_K ? 144u : 176u);
    uint j = u & 7u;
    float sc, m;
    kq_scale_min(b + 4u, j, sc, m);
    float d = wq_f16(b) * sc, dm = wq_f16(b + 2u) * m;
    uint qs = b + (TYPE == T_Q4_K ? 16u : 48u) + (j >> 1) * 32u, shift = (j & 1u) * 4u;
    for (uint i = 0u; i < 32u; i++) {
        uint q = (wq_byte(qs + i) >> shift) & 0xFu;
#if TYPE == T_Q5_K
        q |= ((wq_byte(b + 16u + i) >> j) & 1u) << 4;
#endif
        w[i] = d * float(q) - dm;
    }
#elif TYPE == T_Q6_K
    uint b = row + (u >> 3) * 210u;
    uint j = u & 7u, h = j >> 2, c = j & 3u;
    float d = wq_f16(b + 208u);
    float s0 = d * float(wq_i8(b + 192u + h * 8u + c * 2u)), s1 = d * float(wq_i8(b + 193u + h * 8u + c * 2u));
    uint ql = b + h * 64u + (c & 1u) * 32u, qh = b + 128u + h * 32u, ls = (c >> 1) * 4u, hs = 2u * c;
    for (uint i = 0u; i < 32u; i++) {
        int q = int(((wq_byte(ql + i) >> ls) & 0xFu) | (((wq_byte(qh + i) >> hs) & 3u) << 4)) - 32;
        w[i] = (i < 16u ? s0 : s1) * float(q);
    }
#else
    for (uint i = 0u; i < 32u; i++) w[i] = load_weight(row, u, i);
#endif
}
