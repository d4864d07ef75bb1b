// The CUDA built-ins hpcdl's kernels use, for running the unchanged .cu sources
// on the CPU (g++ -include cuda_on_cpu.h -x c++ pack.cu).
//
// One CUDA thread = one std::thread. threadIdx/blockIdx/blockDim/gridDim are
// thread_local; __syncthreads is a block barrier and __shfl_xor_sync a per-warp
// exchange, both strict: a thread that leaves the kernel while others wait, a
// shuffle mask naming an absent lane or a lane that does not call, disagreeing
// masks, and a wait longer than HPCDL_CPU_TIMEOUT seconds (default 120) end the
// launch with a message (HarnessError in Python) instead of a wrong answer or a
// hang. Blocks run one after another in a shuffled order, so a __shared__ array
// is a function-local static (one block owns it at a time). Every sync object is per block or per
// warp: ThreadSanitizer then sees exactly the ordering CUDA guarantees, so a
// missing __syncthreads shows up as a data race.
//
// Float arithmetic: x86-64 SSE, IEEE single with subnormals kept (no -ffast-math,
// MXCSR untouched), -ffp-contract=off so a*b+c is never fused: the _rn
// intrinsics below are then exactly the GPU's with -ftz=false. __half and
// __nv_bfloat16 are CUDA's own host implementations (cuda_fp16.h, cuda_bf16.h).
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

// host_defines.h (via cuda_fp16.h) defines __shared__ as nothing on a host compiler.
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)

using std::isfinite;
using std::isinf;
using std::isnan;

namespace hpcdl_cpu {

// Records the first fault of a launch and throws; the launcher catches it in every
// thread, wakes the waiting ones, and returns the message to the caller.
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Throws when another thread of the launch has faulted.
void check_faulted();
double timeout_seconds();

// Arrivals of `expected` threads; a thread that has left the kernel can never
// arrive, so one leaving while others wait (or before they come) is an error.
class Barrier {
  public:
    void reset(int expected, const char* what) {
        expected_ = expected;
        arrived_ = 0;
        left_ = 0;
        generation_ = 0;
        what_ = what;
    }
    void arrive_and_wait(int who, unsigned block) {
        std::unique_lock<std::mutex> lock(mu_);
        if (left_ > 0)
            fail("%s: thread %d of block %u waits, but %d thread(s) of its group already left "
                 "the kernel (a barrier in divergent code)", what_, who, block, left_);
        const unsigned gen = generation_;
        if (++arrived_ == expected_) {
            arrived_ = 0;
            ++generation_;
            cv_.notify_all();
            return;
        }
        const auto start = std::chrono::steady_clock::now();
        while (generation_ == gen) {
            // wake now and then: another thread's fault ends the launch (faulted() throws)
            cv_.wait_for(lock, std::chrono::milliseconds(50));
            if (generation_ != gen) break;
            check_faulted();
            if (std::chrono::steady_clock::now() - start >
                std::chrono::duration<double>(timeout_seconds()))
                fail("%s: thread %d of block %u waited %.0f s for %d other thread(s) (a hang on "
                     "a GPU)", what_, who, block, timeout_seconds(), expected_ - arrived_);
        }
    }
    void leave(int who, unsigned block) {
        std::lock_guard<std::mutex> lock(mu_);
        if (arrived_ > 0)
            fail("%s: thread %d of block %u left the kernel while %d thread(s) wait for it (a "
                 "barrier in divergent code)", what_, who, block, arrived_);
        ++left_;
    }

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    int expected_ = 0;
    int arrived_ = 0;
    int left_ = 0;
    unsigned generation_ = 0;
    const char* what_ = "";
};

struct Warp {
    Barrier barrier;
    unsigned present = 0;  // lanes that exist in this warp (a partial last warp has fewer)
    unsigned mask[32];     // each lane's mask in the exchange in progress
    std::uint64_t slot[32];
};

struct Block {
    unsigned index = 0;
    Barrier barrier;
    Warp* warps = nullptr;
};

extern thread_local Block* current_block;

}  // namespace hpcdl_cpu

struct HpcdlCpuIndex {
    unsigned int x = 0, y = 0, z = 0;
};
inline thread_local HpcdlCpuIndex threadIdx;
inline thread_local HpcdlCpuIndex blockIdx;
inline thread_local HpcdlCpuIndex blockDim;
inline thread_local HpcdlCpuIndex gridDim;

inline void __syncthreads() {
    hpcdl_cpu::current_block->barrier.arrive_and_wait(static_cast<int>(threadIdx.x), blockIdx.x);
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    static_assert(sizeof(T) <= 8, "__shfl_xor_sync: at most 8 bytes");
    using hpcdl_cpu::fail;
    const unsigned lane = threadIdx.x & 31u;
    hpcdl_cpu::Warp& w = hpcdl_cpu::current_block->warps[threadIdx.x >> 5];
    if (width != 32) fail("__shfl_xor_sync: width %d is not emulated (only 32)", width);
    if (mask & ~w.present)
        fail("__shfl_xor_sync: mask 0x%08x names lanes absent from warp %u of block %u (present "
             "0x%08x; blockDim.x=%u)", mask, threadIdx.x >> 5, blockIdx.x, w.present, blockDim.x);
    if (!((mask >> lane) & 1u))
        fail("__shfl_xor_sync: lane %u of warp %u calls with mask 0x%08x that does not name it",
             lane, threadIdx.x >> 5, mask);
    const unsigned src = (lane ^ static_cast<unsigned>(lane_mask)) & 31u;
    if (!((mask >> src) & 1u))
        fail("__shfl_xor_sync: lane %u reads lane %u, which mask 0x%08x does not name (undefined "
             "on a GPU)", lane, src, mask);
    if (mask != w.present)
        fail("__shfl_xor_sync: mask 0x%08x is a subset of warp %u's lanes 0x%08x; the harness "
             "emulates whole-warp exchanges only", mask, threadIdx.x >> 5, w.present);
    // write, barrier, read, barrier: the second barrier keeps a fast lane's next exchange
    // from overwriting a slot that a slow lane has yet to read.
    std::uint64_t bits = 0;
    std::memcpy(&bits, &var, sizeof(T));
    w.slot[lane] = bits;
    w.mask[lane] = mask;
    const int who = static_cast<int>(threadIdx.x);
    w.barrier.arrive_and_wait(who, blockIdx.x);
    for (unsigned l = 0; l < 32; ++l)
        if (((mask >> l) & 1u) && w.mask[l] != mask)
            fail("__shfl_xor_sync: lanes %u and %u of warp %u disagree on the mask (0x%08x vs "
                 "0x%08x)", lane, l, threadIdx.x >> 5, mask, w.mask[l]);
    bits = w.slot[src];
    w.barrier.arrive_and_wait(who, blockIdx.x);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

__device__ __forceinline__ float __fadd_rn(float a, float b) { return a + b; }
__device__ __forceinline__ float __fsub_rn(float a, float b) { return a - b; }
__device__ __forceinline__ float __fmul_rn(float a, float b) { return a * b; }
__device__ __forceinline__ float __fdiv_rn(float a, float b) { return a / b; }
__device__ __forceinline__ float __int_as_float(int x) {
    float f;
    std::memcpy(&f, &x, sizeof f);
    return f;
}
__device__ __forceinline__ int __float_as_int(float f) {
    int x;
    std::memcpy(&x, &f, sizeof x);
    return x;
}
