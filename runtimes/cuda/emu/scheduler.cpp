// Runs a grid of CUDA blocks on CPU threads. Each worker thread takes blocks in turn; the
// threads of a block are fibers on that worker, each run until its next barrier, in lane
// order on even rounds and reverse order on odd ones (so that a read of shared memory that
// lacks a barrier sees another thread's stale data whichever side it is on). A barrier
// releases when every live thread of its warp (warp barriers, shuffles) or block
// (__syncthreads) waits at it; threads waiting at different kinds of barrier are a
// deadlock on a GPU and an error here. Kernel arguments are passed through libffi from the
// type codes of the launch, as the CUDA driver takes them: one pointer per argument.
#include <ffi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// save the callee-saved registers on this stack, store its pointer in *save, continue on to
asm(R"(
.text
.globl g4c_emu_switch
.hidden g4c_emu_switch
.type g4c_emu_switch,@function
g4c_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size g4c_emu_switch, .-g4c_emu_switch
)");
extern "C" void g4c_emu_switch(void** save, void* to);

namespace {

enum State { READY, AT_WARP, AT_BLOCK, DONE };
const size_t STACK = 128 * 1024;
const int MAX_THREADS = 1024;

struct Launch {
    void (*fn)();
    ffi_cif cif;
    void** args;
    const char* name;
    dim3 grid, block;
    std::atomic<long> next{0};
    std::atomic<bool> failed{false};
    std::string error;
    std::atomic_flag error_set = ATOMIC_FLAG_INIT;
};

struct Fiber {
    void* sp;
    State state;
    unsigned mask;  // of the warp barrier it waits at
    int parity;     // which exchange buffer its next shuffle writes
    dim3 index;     // threadIdx
    int gparity;    // which gather buffer its next gather writes
};

struct Worker {
    Launch* launch = nullptr;
    std::pair<size_t, std::unique_ptr<char[]>> stacks;
    std::vector<Fiber> fibers;
    void* home = nullptr;  // the scheduler's stack pointer while a fiber runs
    int current = 0;
    uint64_t exchange[2][MAX_THREADS];
    unsigned char gather[2][MAX_THREADS][64];
};

thread_local Worker* worker;

// fiber stacks outlive launches, so that their pages stay mapped from one launch to the next
std::mutex stacks_lock;
std::vector<std::pair<size_t, std::unique_ptr<char[]>>> spare_stacks;

std::pair<size_t, std::unique_ptr<char[]>> take_stacks(size_t n) {
    std::lock_guard<std::mutex> g(stacks_lock);
    for (auto it = spare_stacks.begin(); it != spare_stacks.end(); ++it)
        if (it->first >= n) {
            auto s = std::move(*it);
            spare_stacks.erase(it);
            return s;
        }
    return {n, std::unique_ptr<char[]>(new char[n])};  // uninitialized: pages map as fibers touch them
}

void give_stacks(std::pair<size_t, std::unique_ptr<char[]>> s) {
    std::lock_guard<std::mutex> g(stacks_lock);
    spare_stacks.push_back(std::move(s));
}

void fail(Launch* L, const std::string& msg) {
    if (!L->error_set.test_and_set()) {
        L->error = msg;
        L->failed = true;
    }
}

void fiber_main() {
    Worker* w = worker;
    ffi_call(&w->launch->cif, w->launch->fn, nullptr, w->launch->args);
    w->fibers[w->current].state = DONE;
    g4c_emu_switch(&w->fibers[w->current].sp, w->home);
    abort();  // a finished fiber is never resumed
}

void wait_at(State s, unsigned mask) {
    Worker* w = worker;
    Fiber& f = w->fibers[w->current];
    f.state = s;
    f.mask = mask;
    g4c_emu_switch(&f.sp, w->home);
}

std::string block_name(const Launch* L) {
    char b[160];
    snprintf(b, sizeof b, "kernel %s block (%u, %u, %u)", L->name, blockIdx.x, blockIdx.y, blockIdx.z);
    return b;
}

bool run_block(Worker* w, long id) {
    Launch* L = w->launch;
    dim3 g = L->grid;
    blockIdx = dim3{(unsigned)(id % g.x), (unsigned)(id / g.x % g.y), (unsigned)(id / ((long)g.x * g.y))};
    int n = (int)(L->block.x * L->block.y * L->block.z);
    dim3 b = L->block;
    for (int t = 0; t < n; t++) {
        // a frame g4c_emu_switch pops: six registers, then fiber_main as the return address;
        // rsp is then 8 below a 16-byte boundary, as at any function's entry. Stack tops are
        // staggered by cache lines: 128 KiB apart, they would all fall in one cache set.
        char* base = w->stacks.second.get() + (size_t)(t + 1) * STACK - (size_t)(t % 61) * 64;
        uintptr_t top = (uintptr_t)base & ~(uintptr_t)15;
        void** frame = (void**)(top - 64);
        for (int i = 0; i < 6; i++) frame[i] = nullptr;
        frame[6] = (void*)fiber_main;
        frame[7] = nullptr;
        dim3 index{(unsigned)(t % b.x), (unsigned)(t / b.x % b.y), (unsigned)(t / (b.x * b.y))};
        w->fibers[t] = Fiber{frame, READY, 0, 0, index, 0};
    }
    for (int round = 0;; round++) {
        for (int i = 0; i < n; i++) {
            int t = round & 1 ? n - 1 - i : i;
            if (w->fibers[t].state != READY) continue;
            w->current = t;
            threadIdx = w->fibers[t].index;
            g4c_emu_switch(&w->home, w->fibers[t].sp);
        }
        int live = 0, at_block = 0;
        for (int t = 0; t < n; t++) {
            live += w->fibers[t].state != DONE;
            at_block += w->fibers[t].state == AT_BLOCK;
        }
        if (!live) return true;
        bool released = false;
        for (int w0 = 0; w0 < n; w0 += 32) {
            int waiting = 0, lanes = std::min(32, n - w0);
            for (int t = w0; t < w0 + lanes; t++) waiting += w->fibers[t].state == AT_WARP;
            if (!waiting) continue;
            if (waiting != lanes) {
                // a full-mask warp op needs all 32 lanes; a lane elsewhere never joins it
                for (int t = w0; t < w0 + lanes; t++)
                    if (w->fibers[t].state != AT_WARP) {
                        char b[200];
                        snprintf(b, sizeof b, ": warp %d waits at a warp barrier or shuffle while its thread %d %s", w0 / 32, t,
                                 w->fibers[t].state == DONE ? "has exited" : "waits at __syncthreads");
                        fail(L, block_name(L) + b);
                        return false;
                    }
            }
            for (int t = w0; t < w0 + lanes; t++)
                if (w->fibers[t].mask != 0xffffffffu) {
                    fail(L, block_name(L) + ": a warp barrier or shuffle with a partial mask (the emulator takes full masks)");
                    return false;
                }
            for (int t = w0; t < w0 + lanes; t++) w->fibers[t].state = READY;
            released = true;
        }
        if (!released && at_block == live) {
            for (int t = 0; t < n; t++)
                if (w->fibers[t].state == AT_BLOCK) w->fibers[t].state = READY;
            released = true;
        }
        if (!released) {
            fail(L, block_name(L) + ": threads wait at __syncthreads while others have exited before reaching it");
            return false;
        }
    }
}

void work(Launch* L) {
    Worker w;
    w.launch = L;
    int n = (int)(L->block.x * L->block.y * L->block.z);
    w.stacks = take_stacks((size_t)n * STACK);
    w.fibers.resize(n);
    worker = &w;
    gridDim = L->grid;
    blockDim = L->block;
    long total = (long)L->grid.x * L->grid.y * L->grid.z;
    for (long id = L->next++; id < total && !L->failed; id = L->next++)
        if (!run_block(&w, id)) break;
    worker = nullptr;
    give_stacks(std::move(w.stacks));
}

ffi_type* ffi_of(char c) {
    switch (c) {
        case 'p': return &ffi_type_pointer;
        case 'i': return &ffi_type_sint32;
        case 'I': return &ffi_type_uint32;
        case 'l': return &ffi_type_sint64;
        case 'f': return &ffi_type_float;
        case 'd': return &ffi_type_double;
        default: return nullptr;
    }
}

}  // namespace

extern "C" int g4c_emu_lane() { return worker->current & 31; }

extern "C" void g4c_emu_syncwarp(unsigned mask) { wait_at(AT_WARP, mask); }

extern "C" void g4c_emu_syncthreads() { wait_at(AT_BLOCK, 0); }

extern "C" uint64_t g4c_emu_exchange(unsigned mask, uint64_t bits, int src) {
    // two buffers used in turn: a lane writes buffer b again only after the barrier of the
    // next shuffle, which every lane reaches after reading buffer b
    Worker* w = worker;
    int t = w->current, b = w->fibers[t].parity;
    w->fibers[t].parity ^= 1;
    w->exchange[b][t] = bits;
    wait_at(AT_WARP, mask);
    return w->exchange[b][(t & ~31) + src];
}

extern "C" void g4c_emu_gather(unsigned mask, const void* mine, int n, void* all) {
    // double-buffered as the exchange is
    Worker* w = worker;
    int t = w->current, b = w->fibers[t].gparity;
    w->fibers[t].gparity ^= 1;
    memcpy(w->gather[b][t], mine, n);
    wait_at(AT_WARP, mask);
    for (int l = 0; l < 32; l++) memcpy((char*)all + l * n, w->gather[b][(t & ~31) + l], n);
}

// Run kernel fn over grid x block with n_args arguments of the given type codes (p pointer,
// i int32, I uint32, l int64, f float, d double) on n_workers threads. Returns 0, or -1
// with the reason in err.
extern "C" int g4c_emu_launch(void (*fn)(), const char* name, const unsigned* grid, const unsigned* block, int n_args,
                              const char* types, void** args, int n_workers, char* err, int err_len) {
    Launch L;
    L.fn = fn;
    L.name = name;
    L.args = args;
    L.grid = dim3{grid[0], grid[1], grid[2]};
    L.block = dim3{block[0], block[1], block[2]};
    std::vector<ffi_type*> tys(n_args);
    for (int i = 0; i < n_args; i++)
        if (!(tys[i] = ffi_of(types[i]))) {
            snprintf(err, err_len, "kernel %s: argument %d has type code %c", name, i, types[i]);
            return -1;
        }
    long threads = (long)L.block.x * L.block.y * L.block.z;
    if (threads < 1 || threads > MAX_THREADS) {
        snprintf(err, err_len, "kernel %s: %ld threads per block (CUDA allows 1 to %d)", name, threads, MAX_THREADS);
        return -1;
    }
    if (ffi_prep_cif(&L.cif, FFI_DEFAULT_ABI, n_args, &ffi_type_void, tys.data()) != FFI_OK) {
        snprintf(err, err_len, "kernel %s: libffi cannot describe the call", name);
        return -1;
    }
    long blocks = (long)L.grid.x * L.grid.y * L.grid.z;
    int n = (int)std::max(1L, std::min<long>(n_workers, blocks));
    std::vector<std::thread> pool;
    for (int i = 1; i < n; i++) pool.emplace_back(work, &L);
    work(&L);
    for (auto& t : pool) t.join();
    if (L.failed) {
        snprintf(err, err_len, "%s", L.error.c_str());
        return -1;
    }
    return 0;
}
