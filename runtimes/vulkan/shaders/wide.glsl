// Weight decoding for the wide-load path (device.py: shaderInt64 and subgroup broadcast).
// Lavapipe turns every storage-buffer load into a per-lane scalar load, so the count of load
// instructions, not bytes, bounds a matvec there: a unit's bytes are read as 64-bit words
// (`wq` is the weight buffer seen as uint64_t[]) and its bytes taken out of registers. A
// span may start at any byte: its words are read from the 8-byte boundary below it and
// shifted into place, one word more than the span needs (weight buffers carry 16 bytes of
// padding for that word). Included by matvec_wide.comp and matmul_wide.comp after `wq`,
// with broadcast.glsl for the inputs.

// the n (<= 16) aligned 64-bit words holding the bytes at b, b + 1, ...
#define SPAN(a, n, b) { \
    uint q0_ = (b) >> 3, s_ = ((b) & 7u) * 8u; \
    uint64_t r_[n + 1]; \
    [[unroll]] for (uint k_ = 0u; k_ <= n; k_++) r_[k_] = wq[q0_ + k_]; \
    [[unroll]] for (uint k_ = 0u; k_ < n; k_++) a[k_] = s_ == 0u ? r_[k_] : (r_[k_] >> s_) | (r_[k_ + 1u] << (64u - s_)); }
#define BYTE(a, i) (uint((a)[(i) >> 3] >> (((i) & 7u) * 8u)) & 0xFFu)
#define U16(a, i) (uint((a)[(i) >> 3] >> (((i) & 7u) * 8u)) & 0xFFFFu)
#define HALF(a, i) unpackHalf2x16(U16(a, i)).x
#define I8(a, i) (int(BYTE(a, i) << 24) >> 24)

// K-quant 6-bit scale and min of sub-block j from the 12 scale bytes in words s0, s1, s2
uint kq_byte(uint s0, uint s1, uint s2, uint k) { return ((k < 4u ? s0 : k < 8u ? s1 : s2) >> ((k & 3u) * 8u)) & 0xFFu; }
void kq_sm(uint s0, uint s1, uint s2, uint j, out float sc, out float m) {
    if (j < 4u) {
        sc = float(kq_byte(s0, s1, s2, j) & 63u);
        m = float(kq_byte(s0, s1, s2, j + 4u) & 63u);
    } else {
        sc = float((kq_byte(s0, s1, s2, j + 4u) & 0xFu) | ((kq_byte(s0, s1, s2, j - 4u) >> 6) << 4));
        m = float((kq_byte(s0, s1, s2, j + 4u) >> 4) | ((kq_byte(s0, s1, s2, j) >> 6) << 4));
    }
}

// the 32 weights of unit u of the row starting at byte `row`
void unit_weights(uint row, uint u, out float w[32]) {
#if TYPE == T_F32
    uint64_t a[16];
    SPAN(a, 16, row + u * 128u);
    [[unroll]] for (uint i = 0u; i < 32u; i++) w[i] = uintBitsToFloat(uint(a[i >> 1] >> ((i & 1u) * 32u)));
#elif TYPE == T_F16 || TYPE == T_BF16
    uint64_t a[8];
    SPAN(a, 8, row + u * 64u);
#if TYPE == T_F16
    [[unroll]] for (uint i = 0u; i < 32u; i++) w[i] = HALF(a, 2u * i);
#else
    [[unroll]] for (uint i = 0u; i < 32u; i++) w[i] = uintBitsToFloat(U16(a, 2u * i) << 16);
#endif
#elif TYPE == T_Q8_0
    uint64_t a[5];
    SPAN(a, 5, row + u * 34u);
    float d = HALF(a, 0u);
    [[unroll]] for (uint i = 0u; i < 32u; i++) w[i] = d * float(I8(a, i + 2u));
#elif TYPE == T_Q4_0
    uint64_t a[3];
    SPAN(a, 3, row + u * 18u);
    float d = HALF(a, 0u);
    [[unroll]] for (uint i = 0u; i < 16u; i++) {
        uint q = BYTE(a, i + 2u);
        w[i] = d * float(int(q & 0xFu) - 8);
        w[i + 16u] = d * float(int(q >> 4) - 8);
    }
#elif TYPE == T_Q5_0
    uint64_t a[3];
    SPAN(a, 3, row + u * 22u);
    float d = HALF(a, 0u);
    uint qh = U16(a, 2u) | (U16(a, 4u) << 16);
    [[unroll]] for (uint i = 0u; i < 16u; i++) {
        uint q = BYTE(a, i + 6u);
        w[i] = d * float(int((q & 0xFu) | (((qh >> i) & 1u) << 4)) - 16);
        w[i + 16u] = d * float(int((q >> 4) | (((qh >> (i + 16u)) & 1u) << 4)) - 16);
    }
#elif TYPE == T_Q4_K || TYPE == T_Q5_K
    uint b = row + (u >> 3) * (TYPE == T_Q4_K ? 144u : 176u), j = u & 7u;
    uint64_t h[2], q[4];
    SPAN(h, 2, b);
    float sc, m;
    kq_sm(uint(h[0] >> 32), uint(h[1]), uint(h[1] >> 32), j, sc, m);
    float d = HALF(h, 0u) * sc, dm = HALF(h, 2u) * m;
    SPAN(q, 4, b + (TYPE == T_Q4_K ? 16u : 48u) + (j >> 1) * 32u);
    uint shift = (j & 1u) * 4u;
#if TYPE == T_Q5_K
    uint64_t hb[4];
    SPAN(hb, 4, b + 16u);
#endif
    [[unroll]] for (uint i = 0u; i < 32u; i++) {
        uint v = (BYTE(q, i) >> shift) & 0xFu;
#if TYPE == T_Q5_K
        v |= ((BYTE(hb, i) >> j) & 1u) << 4;
#endif
        w[i] = d * float(v) - dm;
    }
#elif TYPE == T_Q6_K
    uint b = row + (u >> 3) * 210u, j = u & 7u, hh = j >> 2, c = j & 3u;
    uint64_t ql[4], qh[4], s[1], dd[1];
    SPAN(ql, 4, b + hh * 64u + (c & 1u) * 32u);
    SPAN(qh, 4, b + 128u + hh * 32u);
    SPAN(s, 1, b + 192u + hh * 8u + c * 2u);
    SPAN(dd, 1, b + 208u);
    float d = HALF(dd, 0u);
    float s0 = d * float(I8(s, 0u)), s1 = d * float(I8(s, 1u));
    uint ls = (c >> 1) * 4u, hs = 2u * c;
    [[unroll]] for (uint i = 0u; i < 32u; i++) {
        int v = int(((BYTE(ql, i) >> ls) & 0xFu) | (((BYTE(qh, i) >> hs) & 3u) << 4)) - 32;
        w[i] = (i < 16u ? s0 : s1) * float(v);
    }
#else
#error unknown TYPE
#endif
}
