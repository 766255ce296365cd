// Everything of a layer but its products (matrix.cl): RMSNorm, NEOX RoPE, the KV store,
// attention and the elementwise ops. Work-groups of 64, required (local arrays are sized so).
#define WG64 __attribute__((reqd_work_group_size(64, 1, 1)))

// the sum (op 0) or max (op 1) of v over the work-group of 64, returned to every work-item;
// red is 64 floats of local memory, and every work-item must call it (barriers)
inline float group_reduce(float v, local float* red, int op) {
    int t = get_local_id(0);
    barrier(CLK_LOCAL_MEM_FENCE);  // a previous call's readers of red[0] are done
    red[t] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = 32; k > 0; k >>= 1) {
        if (t < k) red[t] = op ? fmax(red[t], red[t + k]) : red[t] + red[t + k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    return red[0];
}

// y = x / sqrt(mean(x^2) + eps) (* w[i] when has_w), one work-group per segment of n values
// (a row, or one head of a row for the q/k/v norms); x and y may be the same buffer.
WG64 kernel void rms_norm(global const float* x, global float* y, global const float* w, int n, float eps, int has_w) {
    local float red[64];
    int t = get_local_id(0);
    long base = (long)get_group_id(0) * n;
    float s = 0.0f;
    for (int i = t; i < n; i += 64) s += x[base + i] * x[base + i];
    float scale = 1.0f / sqrt(group_reduce(s, red, 0) / (float)n + eps);
    for (int i = t; i < n; i += 64) {
        float v = x[base + i] * scale;
        y[base + i] = has_w ? v * w[i] : v;
    }
}

// NEOX rotate-half RoPE in place on x (n_tok, n_heads, d): pair (i, i + n_rot/2) of token t
// rotates by the angle whose cos and sin the host tabulated (cs[t][i], cs[t][half + i]), so
// angles at position 262143 keep the host's float64 accuracy rather than the device's cos/sin.
WG64 kernel void rope(global float* x, global const float* cs, int n_tok, int n_heads, int d, int n_rot) {
    int half_rot = n_rot / 2;
    int g = get_global_id(0);
    if (g >= n_tok * n_heads * half_rot) return;
    int i = g % half_rot, th = g / half_rot, t = th / n_heads;
    long base = (long)th * d;
    float c = cs[t * n_rot + i], s = cs[t * n_rot + half_rot + i];
    float x1 = x[base + i], x2 = x[base + half_rot + i];
    x[base + i] = x1 * c - x2 * s;
    x[base + half_rot + i] = x2 * c + x1 * s;
}

// The batch's K and V (n_tok, n_kv * d = row) into the caches (n_seq * cap, row) at the slot
// the host chose for each token (its sequence's ring slot or position slot), and the token's
// position into that slot's entry of kpos (the slot's key position; -1 is empty).
WG64 kernel void kv_store(global const float* k, global const float* v, global const int* slot, global float* kc,
                     global float* vc, global const int* tok, global int* kpos, int n_tok, int row) {
    int g = get_global_id(0);
    if (g >= n_tok * row) return;
    int t = g / row, e = g % row;
    long dst = (long)slot[t] * row + e;
    kc[dst] = k[g];
    vc[dst] = v[g];
    if (e == 0) kpos[slot[t]] = tok[2 * t];
}

// Attention of query token qt, head h (one work-group of 64 each) over its sequence's
// cache: cap slots of (n_kv, d) keys and values with their positions (-1: empty). A key is
// visible when 0 <= qpos - kpos (< window on sliding layers). Scores go to a scratch row sc,
// max, exp and sum are reduced in local memory, and the output dims are split over the
// work-items (d <= 1024: at most 16 each).
WG64 kernel void attention(global const float* q, global const float* kc, global const float* vc, global const int* kpos,
                      global const int* tok, global float* sc, global float* o, int n_head, int n_kv, int d,
                      int cap, int window, float scale) {
    local float red[64];
    int th = get_group_id(0), t = get_local_id(0);
    int qt = th / n_head, h = th % n_head;
    int qp = tok[2 * qt], seq = tok[2 * qt + 1];
    int kvh = h / (n_head / n_kv);
    global const float* qv = q + (long)th * d;
    global float* srow = sc + (long)th * cap;
    float mx = -INFINITY;
    for (int j = t; j < cap; j += 64) {
        int kp = kpos[seq * cap + j];
        int delta = qp - kp;
        float s = -INFINITY;
        if (kp >= 0 && delta >= 0 && (window == 0 || delta < window)) {
            global const float* kv = kc + ((long)(seq * cap + j) * n_kv + kvh) * d;
            s = 0.0f;
            for (int i = 0; i < d; i++) s += qv[i] * kv[i];
            s *= scale;
            mx = fmax(mx, s);
        }
        srow[j] = s;
    }
    float m = group_reduce(mx, red, 1);
    float sum = 0.0f;
    for (int j = t; j < cap; j += 64) {
        float e = srow[j] == -INFINITY ? 0.0f : exp(srow[j] - m);
        srow[j] = e;
        sum += e;
    }
    float inv = 1.0f / group_reduce(sum, red, 0);
    barrier(CLK_GLOBAL_MEM_FENCE);  // every work-item's probabilities written before any reads them
    float acc[16];
    for (int k = 0; k < 16; k++) acc[k] = 0.0f;
    for (int j = 0; j < cap; j++) {
        float e = srow[j];
        if (e == 0.0f) continue;
        global const float* vv = vc + ((long)(seq * cap + j) * n_kv + kvh) * d;
        for (int k = 0; k < 16 && t + 64 * k < d; k++) acc[k] += e * vv[t + 64 * k];
    }
    for (int k = 0; k < 16 && t + 64 * k < d; k++) o[(long)th * d + t + 64 * k] = acc[k] * inv;
}

// a[i] op= b[i] over n values (tanh arguments clamped to +-15, where it is 1 in f32): 0 add,
// 1 scale by param, 2 gelu-tanh(a) * b, 3 softcap(param), 4 copy b[i] into a[i]
WG64 kernel void elementwise(global float* a, global const float* b, int n, int mode, float param) {
    int i = get_global_id(0);
    if (i >= n) return;
    if (mode == 0) {
        a[i] += b[i];
    } else if (mode == 1) {
        a[i] *= param;
    } else if (mode == 2) {
        float x = a[i];
        a[i] = 0.5f * x * (1.0f + tanh(clamp(0.7978845608028654f * (x + 0.044715f * x * x * x), -15.0f, 15.0f))) * b[i];
    } else if (mode == 3) {
        a[i] = param * tanh(clamp(a[i] / param, -15.0f, 15.0f));
    } else {
        a[i] = b[i];
    }
}
