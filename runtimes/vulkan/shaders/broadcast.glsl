// Inputs by subgroup broadcast (the wide path, device.py): a unit's 32 inputs are read once
// per subgroup, V = 32 / SG per lane (lane l holds inputs l * V ... l * V + V - 1), then
// shared out lane by lane, so no two lanes of a subgroup load the same input (lavapipe
// turns a load every lane makes from one address into a load per lane). SG (4, 8, 16 or
// 32) comes from -D; the includer names the inputs `x2` (uint64_t[], SG <= 16) or `x`
// (float[], SG 32). Every lane of the subgroup must call these together.
#define V (32u / SG)
void x_chunk(uint off, out float xv[V]) {
    uint lane = gl_SubgroupInvocationID;
#if SG <= 16
    [[unroll]] for (uint m = 0u; m < V / 2u; m++) {
        uint64_t pair = x2[(off + lane * V) / 2u + m];
        xv[2u * m] = uintBitsToFloat(uint(pair));
        xv[2u * m + 1u] = uintBitsToFloat(uint(pair >> 32));
    }
#else
    xv[0] = x[off + lane];
#endif
}
// sum_i w[i] x[i] over the unit, x spread over the subgroup as x_chunk left it
#define DOT1(j) acc_ += w[(j) * V + m_] * subgroupBroadcast(xv[m_], j);
#define DOT4(j) DOT1(j) DOT1(j + 1u) DOT1(j + 2u) DOT1(j + 3u)
#define DOT8(j) DOT4(j) DOT4(j + 4u)
#define DOT16(j) DOT8(j) DOT8(j + 8u)
#if SG == 4
#define DOT_ALL DOT4(0u)
#elif SG == 8
#define DOT_ALL DOT8(0u)
#elif SG == 16
#define DOT_ALL DOT16(0u)
#elif SG == 32
#define DOT_ALL DOT16(0u) DOT16(16u)
#else
#error SG must be 4, 8, 16 or 32
#endif
float unit_dot(float w[32], float xv[V]) {
    float acc_ = 0.0;
    [[unroll]] for (uint m_ = 0u; m_ < V; m_++) { DOT_ALL }
    return acc_;
}
