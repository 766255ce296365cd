/* g4c-llama-engine: llama.cpp's C API behind the gemma4-conformance engine protocol,
 * version 1 (docs/engine-protocol.md).
 *
 * The suite starts this program and talks to it over stdin and stdout: one JSON request
 * line in, one JSON response line out, then the binary frames (logits) the response
 * declares. It computes what the suite's own `llamacpp` runtime computes
 * (runtimes/llamacpp/runtime.py): the same llama.cpp calls and context settings, and the
 * same session rules (g4c/session.py), so the conformance suite gives both the same
 * outcomes. README.md beside this file says what to change for another engine.
 *
 * Build: see the Makefile. Run: pytest conformance --runtime process --engine PATH/g4c-llama-engine
 */
#define _GNU_SOURCE /* getline, dladdr */
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ggml-backend.h"
#include "gguf.h"
#include "llama.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "frames are little-endian and this engine writes float arrays as they lie in memory"
#endif

#define PROTOCOL 1
#define ENGINE_VERSION "0.1.0"
#define N_BATCH 512 /* prefill rows per llama_decode, as the llamacpp runtime */

/* What hello declares: the llamacpp runtime's Capabilities as JSON, so that the suite holds
 * this engine to the same tolerance class (f16: 8-bit activations on quantized matmuls, an
 * f16 GeLU table) and turns the same failures into departures (spec section 5: llama.cpp
 * rounds activations by design; section 1: it knows no gemma4_unified architecture).
 * tests/test_c_engine.py checks this stays equal to the runtime's declaration. */
#define ROUNDED "[\"BF16\",\"Q8_0\",\"Q4_0\",\"Q5_0\",\"Q4_K\",\"Q5_K\",\"Q6_K\"]"
#define ACTIVATIONS "llama.cpp's CPU matmuls round the activations before multiplying (8-bit blocks, " \
                    "Q8_0 or Q8_K, for quantized weights; bf16 for BF16 weights)"
#define REAL_270M ACTIVATIONS " (the 270M is Q4_K/Q5_0/Q6_K/Q8_0; its F32 copy passes)"
static const char CAPABILITIES[] =
    "{\"precision\":\"f16\",\"trace\":false,\"weight_types\":null,\"ops\":[],\"backend\":\"CPU (llama.cpp)\","
    "\"departures\":["
    "{\"test\":\"test_model_in_type\",\"params\":{\"qtype\":" ROUNDED "},\"spec\":\"5\",\"reason\":\"" ACTIVATIONS "\"},"
    "{\"test\":\"test_greedy_parity\",\"params\":{\"preset\":[\"tiny\"],\"qtype\":" ROUNDED "},\"spec\":\"5\","
    "\"reason\":\"" ACTIVATIONS "\"},"
    "{\"test\":\"test_llamacpp_golden\",\"params\":{\"preset\":[\"tiny\"],\"qtype\":" ROUNDED "},\"spec\":\"5\","
    "\"reason\":\"" ACTIVATIONS "\"},"
    "{\"test\":\"test_gemma3_270m_llamacpp\",\"params\":{},\"spec\":\"5\",\"reason\":\"" REAL_270M "\"},"
    "{\"test\":\"test_gemma3_270m_reference_greedy\",\"params\":{},\"spec\":\"5\",\"reason\":\"" REAL_270M "\"},"
    "{\"test\":\"test_architecture_strings\",\"params\":{\"arch\":[\"gemma4_unified\"]},\"spec\":\"1\","
    "\"reason\":\"files may declare gemma4_unified; llama.cpp's architecture table knows only gemma4\"}]}";

/* -- errors: each handler returns 0, or fail(kind, ...) which returns -1 ------------------ */
static char err_kind[32], err_msg[4096];
static const char *request_name = "?"; /* the request being answered, for messages */

static int fail(const char *kind, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    snprintf(err_kind, sizeof err_kind, "%s", kind);
    return -1;
}

/* -- request fields ---------------------------------------------------------------------- */
static bool is_int(const cJSON *v) {
    /* JSON has one number type: an integer is a number without a fraction, exact in a double */
    return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && fabs(v->valuedouble) <= 9007199254740992.0;
}

static int bad_field(const char *key, const char *want, const cJSON *v) {
    char *text = cJSON_PrintUnformatted(v);
    fail("protocol", "%s: field '%s' must be %s, got %.100s", request_name, key, want, text ? text : "?");
    free(text);
    return -1;
}

/* req[key] as an integer; dflt when absent (required: a protocol error then) */
static int int_field(const cJSON *req, const char *key, bool required, long long dflt, long long *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, key);
    if (!v) {
        if (required) return fail("protocol", "%s: field '%s' is missing", request_name, key);
        *out = dflt;
        return 0;
    }
    if (!is_int(v)) return bad_field(key, "an integer", v);
    *out = (long long)v->valuedouble;
    return 0;
}

static int bool_field(const cJSON *req, const char *key, bool dflt, bool *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, key);
    if (!v) return *out = dflt, 0;
    if (!cJSON_IsBool(v)) return bad_field(key, "true or false", v);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* token ids of req["tokens"], checked as the suite's runtimes check them (g4c.session.check_tokens) */
static int tokens_field(const cJSON *req, int n_vocab, llama_token **toks, int *n) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(req, "tokens"), *v;
    if (!list) return fail("protocol", "%s: field 'tokens' is missing", request_name);
    if (!cJSON_IsArray(list)) return bad_field("tokens", "a list", list);
    *n = cJSON_GetArraySize(list);
    if (*n == 0) return fail("input", "empty prompt: at least one token is needed");
    *toks = malloc(sizeof **toks * (size_t)*n);
    int i = 0;
    cJSON_ArrayForEach(v, list) {
        if (!is_int(v)) return free(*toks), bad_field("tokens", "a list of integers", v);
        if (v->valuedouble < 0 || v->valuedouble >= n_vocab)
            return free(*toks), fail("input", "token id %.0f at index %d is out of range [0, %d)", v->valuedouble, i, n_vocab);
        (*toks)[i++] = (llama_token)v->valuedouble;
    }
    return 0;
}

/* -- what the suite needs from the file, read as its ModelConfig reads it --------------------- */
typedef struct {
    long long n_ctx_train; /* <arch>.context_length */
    long long n_vocab;     /* <arch>.vocab_size, or the rows of token_embd.weight */
    long long window;      /* <arch>.attention.sliding_window */
    bool sliding;          /* whether any layer is sliding (the pattern; gemma3 files have none: 5 of 6 are) */
} file_plan;

static bool gguf_int(const struct gguf_context *g, const char *key, long long *out) {
    int64_t k = gguf_find_key(g, key);
    if (k < 0) return false;
    switch (gguf_get_kv_type(g, k)) {
        case GGUF_TYPE_UINT8: *out = gguf_get_val_u8(g, k); return true;
        case GGUF_TYPE_INT8: *out = gguf_get_val_i8(g, k); return true;
        case GGUF_TYPE_UINT16: *out = gguf_get_val_u16(g, k); return true;
        case GGUF_TYPE_INT16: *out = gguf_get_val_i16(g, k); return true;
        case GGUF_TYPE_UINT32: *out = gguf_get_val_u32(g, k); return true;
        case GGUF_TYPE_INT32: *out = gguf_get_val_i32(g, k); return true;
        case GGUF_TYPE_UINT64: *out = (long long)gguf_get_val_u64(g, k); return true;
        case GGUF_TYPE_INT64: *out = gguf_get_val_i64(g, k); return true;
        default: return false;
    }
}

static int read_plan(const char *path, file_plan *p) {
    struct gguf_init_params params = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g = gguf_init_from_file(path, params);
    if (!g) return fail("format", "%s: not a readable GGUF file (gguf_init_from_file failed)", path);
    char key[256];
    int64_t k = gguf_find_key(g, "general.architecture");
    const char *arch = k >= 0 && gguf_get_kv_type(g, k) == GGUF_TYPE_STRING ? gguf_get_val_str(g, k) : NULL;
    int rc = 0;
    if (!arch) {
        rc = fail("format", "%s: key general.architecture is missing or not a string", path);
        goto done;
    }
    const char *need[] = {"context_length", "attention.sliding_window"};
    long long *into[] = {&p->n_ctx_train, &p->window};
    for (int i = 0; i < 2; i++) {
        snprintf(key, sizeof key, "%s.%s", arch, need[i]);
        if (!gguf_int(g, key, into[i])) {
            rc = fail("format", "%s: key %s is missing or not an integer", path, key);
            goto done;
        }
    }
    snprintf(key, sizeof key, "%s.vocab_size", arch);
    int64_t embd = gguf_find_tensor(g, "token_embd.weight");
    if (!gguf_int(g, key, &p->n_vocab)) p->n_vocab = embd >= 0 ? gguf_get_tensor_ne(g, embd)[1] : 0;
    snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", arch);
    k = gguf_find_key(g, key);
    p->sliding = k < 0;
    if (k >= 0 && gguf_get_kv_type(g, k) == GGUF_TYPE_ARRAY && gguf_get_arr_type(g, k) == GGUF_TYPE_BOOL) {
        const int8_t *pattern = gguf_get_arr_data(g, k);
        for (size_t i = 0; i < gguf_get_arr_n(g, k); i++) p->sliding |= pattern[i] != 0;
    }
done:
    gguf_free(g);
    return rc;
}

/* -- sessions: g4c.session.Session's rules over one llama.cpp context ------------------------ */
typedef struct session {
    struct session *next_session;
    int id, n_vocab, n_seq, held_limit;
    long long max_context, window, ring; /* ring: keys a sliding layer keeps (g4c.session.KVPlan) */
    char *path;
    struct llama_model *model;
    struct llama_context *ctx;
    llama_memory_t mem;
    struct llama_batch batch;
    long long *base, *next; /* per sequence: first position held, next position */
    llama_token **history;  /* per sequence: the tokens at base, base + 1, ..., next - 1 */
    float *last;            /* per sequence: the last logits (n_seq x n_vocab) */
} session;

static session *sessions;
static int next_session_id = 1;

static const char *env_or(const char *name, const char *dflt) {
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

static void free_session(session *s) {
    if (s->ctx) llama_free(s->ctx);
    if (s->model) llama_model_free(s->model);
    if (s->batch.token) llama_batch_free(s->batch);
    for (int q = 0; s->history && q < s->n_seq; q++) free(s->history[q]);
    free(s->history), free(s->base), free(s->next), free(s->last), free(s->path), free(s);
}

/* One llama_decode of n rows (at most the batch's size); logits of every row or the last */
static int forward(session *s, const llama_token *toks, const llama_seq_id *seqs, const llama_pos *pos, int n,
                   bool all_logits, float *out) {
    struct llama_batch *b = &s->batch;
    for (int i = 0; i < n; i++) {
        b->token[i] = toks[i], b->pos[i] = pos[i], b->n_seq_id[i] = 1, b->seq_id[i][0] = seqs[i];
        b->logits[i] = all_logits || i == n - 1;
    }
    b->n_tokens = n;
    int rc = llama_decode(s->ctx, *b);
    if (rc != 0)
        return fail("error", "%s: llama_decode failed with code %d at positions %d..%d", s->path, rc, pos[0], pos[n - 1]);
    for (int j = 0, i = all_logits ? 0 : n - 1; i < n; i++, j++)
        memcpy(out + (size_t)j * s->n_vocab, llama_get_logits_ith(s->ctx, i), sizeof(float) * s->n_vocab);
    return 0;
}

/* Tokens at start.. of sequence q in micro-batches of N_BATCH, each attending to what the
 * previous ones stored; out: n rows (all_logits) or the last row */
static int rows(session *s, const llama_token *toks, int n, int q, long long start, bool all_logits, float *out) {
    llama_pos pos[N_BATCH];
    llama_seq_id seqs[N_BATCH];
    for (int a = 0; a < n; a += N_BATCH) {
        int m = n - a < N_BATCH ? n - a : N_BATCH;
        for (int i = 0; i < m; i++) pos[i] = (llama_pos)(start + a + i), seqs[i] = q;
        if (forward(s, toks + a, seqs, pos, m, all_logits, all_logits ? out + (size_t)a * s->n_vocab : out)) return -1;
        /* memmove: re-evaluating kept tokens reads them from the history they are written back to */
        memmove(s->history[q] + (start + a - s->base[q]), toks + a, sizeof *toks * m);
        s->next[q] = start + a + m;
    }
    return 0;
}

/* Drop sequence q's positions >= start (all of them from its base); false where llama.cpp
 * refuses: part of a sliding-window cache */
static bool forget(session *s, int q, long long start) {
    return llama_memory_seq_rm(s->mem, q, start <= s->base[q] ? -1 : (llama_pos)start, -1);
}

static void restart(session *s, int q, long long start) {
    forget(s, q, 0);
    s->base[q] = s->next[q] = start;
}

/* Whether rewinding from next to start leaves in the sliding caches every key the positions
 * from start on need (KVPlan.keeps) */
static bool keeps(const session *s, long long base, long long next, long long start) {
    if (s->ring >= s->max_context) return true;
    long long need = start - s->window + 1, held = next - s->ring;
    return (need > base ? need : base) >= (held > base ? held : base);
}

static int check_held(const session *s, long long held) {
    if (held > s->held_limit)
        return fail("input", "a sequence would hold %lld positions; llama.cpp's context per sequence "
                             "(G4C_LLAMACPP_CTX sets it) holds %d", held, s->held_limit);
    return 0;
}

static int check_seq(const session *s, long long q) {
    if (q < 0 || q >= s->n_seq) return fail("input", "sequence %lld out of range: the session holds %d", q, s->n_seq);
    return 0;
}

/* g4c.session.Session.prefill: cached positions below start are kept when they reach up to
 * it (base <= start <= next); otherwise the sequence starts afresh at start */
static int prefill(session *s, const llama_token *toks, int n, long long start, int q, bool all_logits, float *out) {
    if (start < 0 || start + n > s->max_context)
        return fail("input", "positions %lld..%lld do not fit max_context %lld", start, start + n - 1, s->max_context);
    long long base = s->base[q], next = s->next[q];
    bool keep = base <= start && start <= next;
    if (check_held(s, start + n - (keep ? base : start))) return -1;
    if (!keep) {
        restart(s, q, start);
    } else if (start < next) {
        if (!(keeps(s, base, next, start) && forget(s, q, start))) {
            /* the caches lost keys the kept positions' successors need: evaluate them again */
            float *scratch = malloc(sizeof(float) * s->n_vocab);
            restart(s, q, base);
            int rc = start > base ? rows(s, s->history[q], (int)(start - base), q, base, false, scratch) : 0;
            free(scratch);
            if (rc) return -1;
        }
        s->next[q] = start;
    }
    if (rows(s, toks, n, q, start, all_logits, out)) return -1;
    memcpy(s->last + (size_t)q * s->n_vocab, out + (size_t)(all_logits ? n - 1 : 0) * s->n_vocab,
           sizeof(float) * s->n_vocab);
    return 0;
}

/* One token per sequence, each at its next position: one llama_decode of n_seq rows */
static int decode(session *s, const llama_token *toks, int n, float *out) {
    if (n != s->n_seq)
        return fail("input", "decode takes one token per sequence: got %d, n_seq is %d", n, s->n_seq);
    long long top = 0, held = 0;
    for (int q = 0; q < n; q++) {
        top = s->next[q] > top ? s->next[q] : top;
        held = s->next[q] - s->base[q] + 1 > held ? s->next[q] - s->base[q] + 1 : held;
    }
    if (top >= s->max_context) return fail("input", "context full: position %lld is past max_context %lld", top, s->max_context);
    if (check_held(s, held)) return -1;
    llama_pos *pos = calloc(n, sizeof *pos);
    llama_seq_id *seqs = calloc(n, sizeof *seqs);
    for (int q = 0; q < n; q++) pos[q] = (llama_pos)s->next[q], seqs[q] = q;
    int rc = forward(s, toks, seqs, pos, n, true, out);
    free(pos), free(seqs);
    if (rc) return -1;
    for (int q = 0; q < n; q++) s->history[q][s->next[q]++ - s->base[q]] = toks[q];
    memcpy(s->last, out, sizeof(float) * s->n_vocab * n);
    return 0;
}

/* -- requests: each adds its result fields to `res` and may set one f32 frame ----------------- */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[2];
    const float *data;
} frame;

static float *out_buf; /* logits of the current response */

static float *logits_buffer(size_t n) {
    free(out_buf);
    return out_buf = malloc(sizeof(float) * (n ? n : 1));
}

static session *find_session(const cJSON *req) {
    long long id;
    if (int_field(req, "session", true, 0, &id)) return NULL;
    for (session *s = sessions; s; s = s->next_session)
        if (s->id == id) return s;
    fail("protocol", "%s: no session %lld (never loaded, or unloaded)", request_name, id);
    return NULL;
}

static int on_hello(const cJSON *req, cJSON *res, frame *f) {
    (void)f;
    long long asked;
    if (int_field(req, "protocol", true, 0, &asked)) return -1;
    if (asked != PROTOCOL)
        return fail("protocol", "this engine speaks protocol %d, the suite asked for %lld", PROTOCOL, asked);
    cJSON_AddStringToObject(res, "engine", "g4c-llama-engine");
    cJSON_AddStringToObject(res, "version", ENGINE_VERSION);
    cJSON_AddNumberToObject(res, "protocol", PROTOCOL);
    cJSON_AddItemToObject(res, "capabilities", cJSON_Parse(CAPABILITIES));
    /* what results depend on: recorded with the results, beside the command line */
    cJSON *settings = cJSON_AddObjectToObject(res, "settings");
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    cJSON_AddStringToObject(settings, "device", cpu ? ggml_backend_dev_description(cpu) : "?");
    char driver[2048];
    snprintf(driver, sizeof driver, "llama.cpp C API: %s", llama_print_system_info());
    cJSON_AddStringToObject(settings, "driver", driver);
    cJSON_AddStringToObject(settings, "kv_type", env_or("G4C_LLAMACPP_KV", "f32"));
    cJSON_AddStringToObject(settings, "flash_attn", env_or("G4C_LLAMACPP_FLASH_ATTN", "off"));
    cJSON_AddNumberToObject(settings, "threads", (double)sysconf(_SC_NPROCESSORS_ONLN));
    Dl_info lib;
    cJSON_AddStringToObject(settings, "library", dladdr((void *)llama_decode, &lib) && lib.dli_fname ? lib.dli_fname : "?");
    return 0;
}

static int on_load(const cJSON *req, cJSON *res, frame *f) {
    (void)f;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(req, "model");
    long long max_context, n_seq, n_ctx_env;
    bool trace; /* read, and ignored: this engine declares no trace, so the suite never asks for one */
    if (!cJSON_IsString(model)) return model ? bad_field("model", "a string", model) : fail("protocol", "load: field 'model' is missing");
    if (int_field(req, "max_context", true, 0, &max_context) || int_field(req, "n_seq", false, 1, &n_seq) ||
        bool_field(req, "trace", false, &trace))
        return -1;
    const char *path = model->valuestring;
    file_plan plan;
    if (read_plan(path, &plan)) return -1;
    if (!(0 < max_context && max_context <= plan.n_ctx_train))
        return fail("input", "max_context %lld must be in 1..%lld (context_length of %s)", max_context, plan.n_ctx_train, path);
    if (n_seq < 1) return fail("input", "n_seq must be at least 1, got %lld", n_seq);
    /* the llamacpp runtime's settings, by the same variables: an f32 KV cache and flash
     * attention off are llama.cpp's most exact (its CPU flash attention rounds to f16) */
    const char *kv = env_or("G4C_LLAMACPP_KV", "f32"), *fa = env_or("G4C_LLAMACPP_FLASH_ATTN", "off");
    const char *ctx_text = env_or("G4C_LLAMACPP_CTX", "8192");
    char *end;
    n_ctx_env = strtoll(ctx_text, &end, 10);
    if (strcmp(kv, "f32") && strcmp(kv, "f16")) return fail("error", "G4C_LLAMACPP_KV must be one of f32, f16, got '%s'", kv);
    if (strcmp(fa, "auto") && strcmp(fa, "off") && strcmp(fa, "on"))
        return fail("error", "G4C_LLAMACPP_FLASH_ATTN must be one of auto, off, on, got '%s'", fa);
    if (*end || n_ctx_env < 1) return fail("error", "G4C_LLAMACPP_CTX must be a positive integer, got '%s'", ctx_text);

    session *s = calloc(1, sizeof *s);
    s->path = strdup(path), s->max_context = max_context, s->n_seq = (int)n_seq, s->window = plan.window;
    s->ring = plan.sliding && plan.window < max_context ? plan.window : max_context;
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    if (!(s->model = llama_model_load_from_file(path, mp)))
        return free_session(s), fail("error", "%s: llama.cpp could not load the model (llama_model_load_from_file failed)", path);
    s->n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(s->model));
    if (s->n_vocab != plan.n_vocab)
        return free_session(s), fail("error", "%s: llama.cpp sees %d tokens, the file %lld", path, s->n_vocab, plan.n_vocab);
    struct llama_context_params cp = llama_context_default_params();
    /* positions are values in llama.cpp's cache cells, not indices: the cache only needs room
     * for the tokens held, so a prompt at position 262136 fits a small context */
    cp.n_ctx = (uint32_t)(n_seq * (max_context < n_ctx_env ? max_context : n_ctx_env));
    cp.n_batch = cp.n_ubatch = N_BATCH;
    cp.n_seq_max = (uint32_t)n_seq;
    cp.n_threads = cp.n_threads_batch = (int32_t)sysconf(_SC_NPROCESSORS_ONLN);
    cp.type_k = cp.type_v = strcmp(kv, "f32") ? GGML_TYPE_F16 : GGML_TYPE_F32;
    cp.flash_attn_type = !strcmp(fa, "on") ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                         : !strcmp(fa, "off") ? LLAMA_FLASH_ATTN_TYPE_DISABLED : LLAMA_FLASH_ATTN_TYPE_AUTO;
    cp.no_perf = true;
    if (!(s->ctx = llama_init_from_model(s->model, cp)))
        return free_session(s), fail("error", "%s: llama.cpp could not create a context of %u", path, cp.n_ctx);
    s->held_limit = (int)(llama_n_ctx(s->ctx) / n_seq);
    s->mem = llama_get_memory(s->ctx);
    s->batch = llama_batch_init(n_seq > N_BATCH ? (int32_t)n_seq : N_BATCH, 0, (int32_t)n_seq);
    s->base = calloc(n_seq, sizeof *s->base), s->next = calloc(n_seq, sizeof *s->next);
    s->history = calloc(n_seq, sizeof *s->history);
    for (int q = 0; q < n_seq; q++) s->history[q] = malloc(sizeof(llama_token) * s->held_limit);
    s->last = calloc((size_t)n_seq * s->n_vocab, sizeof(float));
    s->id = next_session_id++;
    s->next_session = sessions, sessions = s;
    cJSON_AddNumberToObject(res, "session", s->id);
    return 0;
}

static int on_prefill(const cJSON *req, cJSON *res, frame *f) {
    (void)res;
    session *s = find_session(req);
    long long start, q;
    bool all_logits;
    llama_token *toks;
    int n;
    if (!s || int_field(req, "start_pos", false, 0, &start) || int_field(req, "seq", false, 0, &q) ||
        bool_field(req, "all_logits", true, &all_logits) || tokens_field(req, s->n_vocab, &toks, &n))
        return -1;
    float *out = logits_buffer((size_t)(all_logits ? n : 1) * s->n_vocab);
    int rc = check_seq(s, q) ? -1 : prefill(s, toks, n, start, (int)q, all_logits, out);
    free(toks);
    *f = (frame){"logits", 2, {all_logits ? n : 1, s->n_vocab}, out};
    return rc;
}

static int on_decode(const cJSON *req, cJSON *res, frame *f) {
    (void)res;
    session *s = find_session(req);
    llama_token *toks;
    int n;
    if (!s || tokens_field(req, s->n_vocab, &toks, &n)) return -1;
    float *out = logits_buffer((size_t)n * s->n_vocab);
    int rc = decode(s, toks, n, out);
    free(toks);
    *f = (frame){"logits", 2, {s->n_seq, s->n_vocab}, out};
    return rc;
}

static int on_logits(const cJSON *req, cJSON *res, frame *f) {
    (void)res;
    session *s = find_session(req);
    if (!s) return -1;
    *f = (frame){"logits", 1, {s->n_vocab, 0}, s->last}; /* sequence 0's */
    return 0;
}

static int on_reset(const cJSON *req, cJSON *res, frame *f) {
    (void)res, (void)f;
    session *s = find_session(req);
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(req, "seq");
    long long q;
    if (!s) return -1;
    if (!seq || cJSON_IsNull(seq)) {
        for (int i = 0; i < s->n_seq; i++) restart(s, i, 0);
        return 0;
    }
    if (int_field(req, "seq", true, 0, &q) || check_seq(s, q)) return -1;
    restart(s, (int)q, 0);
    return 0;
}

static int on_unload(const cJSON *req, cJSON *res, frame *f) {
    (void)res, (void)f;
    session *s = find_session(req);
    if (!s) return -1;
    for (session **p = &sessions; *p; p = &(*p)->next_session)
        if (*p == s) {
            *p = s->next_session;
            break;
        }
    free_session(s);
    return 0;
}

static int on_shutdown(const cJSON *req, cJSON *res, frame *f) {
    (void)req, (void)res, (void)f;
    return 0;
}

static const struct {
    const char *name;
    int (*handle)(const cJSON *req, cJSON *res, frame *f);
} HANDLERS[] = {{"hello", on_hello},     {"load", on_load},   {"prefill", on_prefill}, {"decode", on_decode},
                {"logits", on_logits},   {"reset", on_reset}, {"unload", on_unload},   {"shutdown", on_shutdown}};
#define N_HANDLERS (sizeof HANDLERS / sizeof HANDLERS[0])

/* -- the wire ------------------------------------------------------------------------------ */
static void write_u64_le(FILE *out, uint64_t n) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(n >> (8 * i));
    fwrite(b, 1, 8, out);
}

/* The response header line, then its frame: byte count, then the floats as they lie in memory */
static void respond(FILE *out, const cJSON *id, int rc, cJSON *res, const frame *f) {
    cJSON *head = cJSON_CreateObject();
    cJSON_AddItemToObject(head, "id", id ? cJSON_Duplicate(id, true) : cJSON_CreateNull());
    cJSON_AddBoolToObject(head, "ok", rc == 0);
    if (rc == 0) {
        for (cJSON *field = res ? res->child : NULL; field; field = field->next)
            cJSON_AddItemToObject(head, field->string, cJSON_Duplicate(field, true));
        if (f->data) {
            cJSON *d = cJSON_CreateObject();
            cJSON_AddStringToObject(d, "name", f->name);
            cJSON_AddStringToObject(d, "dtype", "f32");
            cJSON *shape = cJSON_AddArrayToObject(d, "shape");
            for (int i = 0; i < f->ndim; i++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)f->shape[i]));
            cJSON_AddItemToArray(cJSON_AddArrayToObject(head, "frames"), d);
        }
    } else {
        cJSON *e = cJSON_AddObjectToObject(head, "error");
        cJSON_AddStringToObject(e, "kind", err_kind);
        cJSON_AddStringToObject(e, "message", err_msg);
    }
    char *line = cJSON_PrintUnformatted(head); /* no newline inside: cJSON escapes those in strings */
    fputs(line, out);
    fputc('\n', out);
    if (rc == 0 && f->data) {
        size_t n = (size_t)f->shape[0] * (f->ndim == 2 ? (size_t)f->shape[1] : 1);
        write_u64_le(out, n * sizeof(float));
        fwrite(f->data, sizeof(float), n, out);
    }
    fflush(out); /* the suite waits for the whole response */
    free(line);
    cJSON_Delete(head);
}

/* Frames a request carries (only `op`, which this engine does not declare): read past them,
 * checking each byte count against its descriptor, or the stream cannot be followed */
static int skip_frames(const cJSON *req, FILE *in) {
    const cJSON *frames = cJSON_GetObjectItemCaseSensitive(req, "frames"), *d, *dim;
    if (!frames) return 0;
    cJSON_ArrayForEach(d, frames) {
        const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(d, "dtype");
        uint64_t want = cJSON_IsString(dtype) && !strcmp(dtype->valuestring, "u8") ? 1 : 4, got = 0;
        cJSON_ArrayForEach(dim, cJSON_GetObjectItemCaseSensitive(d, "shape")) want *= (uint64_t)dim->valuedouble;
        unsigned char b[8], chunk[1 << 16];
        if (fread(b, 1, 8, in) != 8) return fail("protocol", "the request's frames end early");
        for (int i = 0; i < 8; i++) got |= (uint64_t)b[i] << (8 * i);
        if (got != want) return fail("protocol", "a frame's byte count %llu does not match its shape (%llu bytes)",
                                     (unsigned long long)got, (unsigned long long)want);
        for (size_t k; got; got -= k)
            if (!(k = fread(chunk, 1, got < sizeof chunk ? got : sizeof chunk, in))) return fail("protocol", "the request's frames end early");
    }
    return 0;
}

/* llama.cpp's warnings and errors go to stderr (the suite shows its tail when a request
 * fails); its info lines, hundreds per model load, nowhere */
static void log_to_stderr(enum ggml_log_level level, const char *text, void *user) {
    static enum ggml_log_level last = GGML_LOG_LEVEL_INFO;
    (void)user;
    if (level != GGML_LOG_LEVEL_CONT) last = level;
    if (last >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

int main(void) {
    /* stdout carries the protocol and nothing else: keep a handle of its own on it and point
     * fd 1 at stderr, so that a stray printf (ours, a library's) cannot corrupt the stream */
    fflush(stdout);
    FILE *out = fdopen(dup(STDOUT_FILENO), "wb");
    dup2(STDERR_FILENO, STDOUT_FILENO);
    llama_log_set(log_to_stderr, NULL);
    llama_backend_init();

    char *line = NULL;
    size_t cap = 0;
    bool running = true;
    while (running && getline(&line, &cap, stdin) > 0) { /* end of stdin: the suite is done */
        cJSON *req = cJSON_Parse(line), *res = cJSON_CreateObject();
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(req, "id"), *name = cJSON_GetObjectItemCaseSensitive(req, "request");
        frame f = {0};
        int rc;
        request_name = cJSON_IsString(name) ? name->valuestring : "?";
        if (!cJSON_IsObject(req) || skip_frames(req, stdin)) {
            /* past a malformed message the stream cannot be followed: answer, then stop */
            if (!cJSON_IsObject(req)) fail("protocol", "a request line is not a JSON object: %.200s", line);
            respond(out, cJSON_IsObject(req) ? id : NULL, -1, NULL, &f);
            return 1;
        }
        size_t h = 0;
        while (h < N_HANDLERS && !(cJSON_IsString(name) && !strcmp(HANDLERS[h].name, name->valuestring))) h++;
        if (h == N_HANDLERS)
            rc = fail("protocol", "unknown request '%s' (this engine answers: hello, load, prefill, decode, logits, "
                                  "reset, unload, shutdown)", request_name);
        else
            rc = HANDLERS[h].handle(req, res, &f);
        respond(out, id, rc, res, &f);
        running = !(rc == 0 && !strcmp(request_name, "shutdown"));
        cJSON_Delete(req), cJSON_Delete(res);
    }
    while (sessions) {
        session *s = sessions;
        sessions = s->next_session;
        free_session(s);
    }
    free(line), free(out_buf);
    llama_backend_free();
    return 0;
}
