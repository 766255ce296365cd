// Inputs by subgroup broadcast (the wide path, device.py): a unit's 32 inputs are read once
// per subgroup, V = 32 / SG per lane (lane l holds inputs l * V ... l * V + V - 1), then
// shared out lane by lane, so no two lanes of a subgroup load the same input (lavapipe
// turns a load every lane makes from one address into a load per lane). SG, the device's
// subgroup size (4 to 32), comes from -D; the code is the same for every size (loops over
// lanes, broadcast from a loop index: SPIR-V 1.5), so lavapipe's subgroups of 4, 8, 16 and
// 32 (LP_NATIVE_VECTOR_WIDTH 128 to 1024; tests/test_vulkan_ops.py) run what a GPU runs.
// The includer names the inputs `x2` (uint64_t[]). Every lane of the subgroup must call
// these together.
#define V (32u / SG)

// the chunk's inputs at off .. off + 31 (off even), those from lim on taken as 0 (a head dim
// that is not a multiple of 32 ends in a part chunk; lim is even)
void x_chunk(uint off, uint lim, out float xv[V]) {
    uint i0 = gl_SubgroupInvocationID * V;
    uint base = off + i0;
    uint s = (base & 1u) * 32u;  // 0 unless V is 1: then a lane takes its half of a word
    [[unroll]] for (uint m = 0u; m < (V + 1u) / 2u; m++) {
        uint i = i0 + 2u * m;
        uint64_t pair = i < lim ? x2[base / 2u + m] : 0ul;
        xv[2u * m] = uintBitsToFloat(uint(pair >> s));
        if (2u * m + 1u < V) xv[2u * m + 1u] = uintBitsToFloat(uint(pair >> 32));
    }
}

// sum_i w[i] x[i] over the unit, x spread over the subgroup as x_chunk left it
float unit_dot(float w[32], float xv[V]) {
    float acc = 0.0;
    [[unroll]] for (uint j = 0u; j < SG; j++)
        [[unroll]] for (uint m = 0u; m < V; m++) acc += w[j * V + m] * subgroupBroadcast(xv[m], j);
    return acc;
}
