// The CPU execution harness: hpcdl's unchanged kernel sources, compiled by the host
// compiler with cuda_on_cpu.h (given by -include), behind a small C API that
// hpcdl/kernels/cpu/runner.py drives through ctypes.
//
// A kernel is launched by the same name expression the GPU loader uses
// (hpcdl.kernels.name_expressions) with its arguments passed as cuLaunchKernel
// takes them: an array of pointers to the values, with their sizes, checked
// against the kernel's parameter list. "Device memory" is exact-size heap memory
// (optionally offset to break 16-byte alignment), so AddressSanitizer sees every
// read or write past a buffer.
#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "pack.cu"
#include "quantize.cu"
#include "reduce.cu"

namespace hpcdl_cpu {

thread_local Block* current_block = nullptr;

namespace {
std::mutex g_fault_mu;
std::string g_fault;                 // the first fault of the current launch
std::atomic<bool> g_faulted{false};
struct Aborted {};                   // thrown in threads ended by another thread's fault
struct Fault {};
}  // namespace

void fail(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    {
        std::lock_guard<std::mutex> lock(g_fault_mu);
        if (!g_faulted.load()) g_fault = buf;
        g_faulted.store(true);
    }
    throw Fault{};
}

void check_faulted() {
    if (g_faulted.load()) throw Aborted{};
}

double timeout_seconds() {
    static const double t = [] {
        const char* s = std::getenv("HPCDL_CPU_TIMEOUT");
        const double v = s ? std::atof(s) : 0.0;
        return v > 0 ? v : 120.0;
    }();
    return t;
}

// Worker threads kept across launches: creating 256 threads per block dominated
// the run time (most of all under ThreadSanitizer). Its mutex orders one block's
// work before the next block's, as a kernel boundary does on a GPU.
class Pool {
  public:
    ~Pool() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_ = true;
        }
        work_.notify_all();
        for (auto& t : threads_) t.join();
    }
    // f(i) on threads 0..n-1, returning when all are done.
    void run(unsigned n, const std::function<void(unsigned)>& f) {
        while (threads_.size() < n) {
            const unsigned id = static_cast<unsigned>(threads_.size());
            threads_.emplace_back([this, id] { loop(id); });
        }
        std::unique_lock<std::mutex> lock(mu_);
        job_ = &f;
        active_ = n;
        done_ = 0;
        ++generation_;
        work_.notify_all();
        finished_.wait(lock, [this] { return done_ == active_; });
        job_ = nullptr;
    }

  private:
    void loop(unsigned id) {
        unsigned seen = 0;
        std::unique_lock<std::mutex> lock(mu_);
        for (;;) {
            work_.wait(lock, [&] { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
            if (id >= active_) continue;
            const std::function<void(unsigned)>* job = job_;
            lock.unlock();
            (*job)(id);
            lock.lock();
            if (++done_ == active_) finished_.notify_one();
        }
    }
    std::mutex mu_;
    std::condition_variable work_, finished_;
    std::vector<std::thread> threads_;
    const std::function<void(unsigned)>* job_ = nullptr;
    unsigned active_ = 0, done_ = 0, generation_ = 0;
    bool stop_ = false;
};

std::mutex g_launch_mu;  // one launch at a time: the pool and the fault record are shared

// Runs body() as `block` threads per block for `grid` blocks, the blocks one after
// another in an order shuffled by `seed`. Returns "" or the first fault.
template <typename F>
std::string launch(unsigned grid, unsigned block, unsigned seed, F body) {
    std::lock_guard<std::mutex> launching(g_launch_mu);
    static Pool pool;
    {
        std::lock_guard<std::mutex> lock(g_fault_mu);
        g_fault.clear();
        g_faulted.store(false);
    }
    if (grid == 0 || block == 0 || block > 1024)
        return "invalid launch: grid " + std::to_string(grid) + ", block " + std::to_string(block) +
               " (a GPU takes 1..1024 threads per block)";
    std::vector<unsigned> order(grid);
    std::iota(order.begin(), order.end(), 0u);
    std::shuffle(order.begin(), order.end(), std::mt19937(seed));
    const unsigned nwarps = (block + 31) / 32;
    for (unsigned b : order) {
        Block blk;
        blk.index = b;
        blk.barrier.reset(static_cast<int>(block), "__syncthreads");
        std::vector<Warp> warps(nwarps);
        for (unsigned w = 0; w < nwarps; ++w) {
            const unsigned lanes = std::min(32u, block - 32 * w);
            warps[w].present = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
            warps[w].barrier.reset(static_cast<int>(lanes), "__shfl_xor_sync");
        }
        blk.warps = warps.data();
        pool.run(block, [&](unsigned t) {
            threadIdx.x = t;
            blockIdx.x = b;
            blockDim.x = block;
            gridDim.x = grid;
            threadIdx.y = threadIdx.z = blockIdx.y = blockIdx.z = 0;
            blockDim.y = blockDim.z = gridDim.y = gridDim.z = 1;
            current_block = &blk;
            try {
                body();
                blk.warps[t >> 5].barrier.leave(static_cast<int>(t), b);
                blk.barrier.leave(static_cast<int>(t), b);
            } catch (const Fault&) {
            } catch (const Aborted&) {
            }
            current_block = nullptr;
        });
        if (g_faulted.load()) break;
    }
    std::lock_guard<std::mutex> lock(g_fault_mu);
    return g_fault;
}

// A kernel's launcher: unpacks cuLaunchKernel-style arguments into its parameter types.
template <auto K>
struct Launch;
template <typename... A, void (*K)(A...)>
struct Launch<K> {
    template <std::size_t... I>
    static std::string go(void** args, unsigned grid, unsigned block, unsigned seed,
                          std::index_sequence<I...>) {
        // by value, as a GPU copies parameters into constant memory at launch
        std::tuple<std::decay_t<A>...> vals(*static_cast<std::decay_t<A>*>(args[I])...);
        return launch(grid, block, seed, [&vals] { K(std::get<I>(vals)...); });
    }
    static std::string run(void** args, const unsigned long long* sizes, int nargs, unsigned grid,
                           unsigned block, unsigned seed) {
        if (nargs != static_cast<int>(sizeof...(A)))
            return "takes " + std::to_string(sizeof...(A)) + " arguments, got " +
                   std::to_string(nargs);
        const std::size_t want[] = {sizeof(std::decay_t<A>)...};
        for (int i = 0; i < nargs; ++i)
            if (sizes[i] != want[i])
                return "argument " + std::to_string(i) + " has " + std::to_string(sizes[i]) +
                       " bytes, the kernel's parameter " + std::to_string(want[i]);
        return go(args, grid, block, seed, std::index_sequence_for<A...>{});
    }
};

using Runner = std::string (*)(void**, const unsigned long long*, int, unsigned, unsigned, unsigned);
struct Named {
    const char* name;
    Runner run;
};

// Spelled as hpcdl.kernels.name_expressions() spells them (the test checks both lists).
#define HPCDL_KERNEL(...) Named{#__VA_ARGS__, &Launch<&__VA_ARGS__>::run}
const Named kKernels[] = {
    HPCDL_KERNEL(hpcdl_pack<float>),
    HPCDL_KERNEL(hpcdl_pack<__half>),
    HPCDL_KERNEL(hpcdl_pack<__nv_bfloat16>),
    HPCDL_KERNEL(hpcdl_unpack<float>),
    HPCDL_KERNEL(hpcdl_unpack<__half>),
    HPCDL_KERNEL(hpcdl_unpack<__nv_bfloat16>),
    HPCDL_KERNEL(hpcdl_chunk_absmax),
    HPCDL_KERNEL(hpcdl_quantize_fp16),
    HPCDL_KERNEL(hpcdl_dequantize_fp16),
    HPCDL_KERNEL(hpcdl_reduce<float, 0>),
    HPCDL_KERNEL(hpcdl_reduce<float, 1>),
    HPCDL_KERNEL(hpcdl_reduce<float, 2>),
    HPCDL_KERNEL(hpcdl_reduce<float, 3>),
    HPCDL_KERNEL(hpcdl_reduce<__half, 0>),
    HPCDL_KERNEL(hpcdl_reduce<__half, 1>),
    HPCDL_KERNEL(hpcdl_reduce<__half, 2>),
    HPCDL_KERNEL(hpcdl_reduce<__half, 3>),
    HPCDL_KERNEL(hpcdl_reduce<__nv_bfloat16, 0>),
    HPCDL_KERNEL(hpcdl_reduce<__nv_bfloat16, 1>),
    HPCDL_KERNEL(hpcdl_reduce<__nv_bfloat16, 2>),
    HPCDL_KERNEL(hpcdl_reduce<__nv_bfloat16, 3>),
};

std::mutex g_alloc_mu;
std::map<void*, void*> g_allocs;  // returned pointer -> what malloc gave
thread_local std::string g_error;

}  // namespace hpcdl_cpu

extern "C" {

// Names of every kernel the harness can launch, separated by ';'.
const char* hpcdl_cpu_kernel_names() {
    static const std::string names = [] {
        std::string s;
        for (const auto& k : hpcdl_cpu::kKernels) s += std::string(s.empty() ? "" : ";") + k.name;
        return s;
    }();
    return names.c_str();
}

// nbytes of "device memory" starting `misalign` bytes after a 16-byte boundary; the
// allocation ends exactly at the last byte, so a read past it is an ASan error.
void* hpcdl_cpu_alloc(unsigned long long nbytes, unsigned misalign) {
    void* base = nullptr;
    if (posix_memalign(&base, 16, nbytes + misalign + (nbytes + misalign == 0)) != 0) return nullptr;
    void* p = static_cast<char*>(base) + misalign;
    std::lock_guard<std::mutex> lock(hpcdl_cpu::g_alloc_mu);
    hpcdl_cpu::g_allocs[p] = base;
    return p;
}

int hpcdl_cpu_free(void* p) {
    std::lock_guard<std::mutex> lock(hpcdl_cpu::g_alloc_mu);
    auto it = hpcdl_cpu::g_allocs.find(p);
    if (it == hpcdl_cpu::g_allocs.end()) return -1;
    std::free(it->second);
    hpcdl_cpu::g_allocs.erase(it);
    return 0;
}

// 0 on success; else -1 and hpcdl_cpu_error() says why.
int hpcdl_cpu_launch(const char* name, unsigned grid, unsigned block, unsigned seed, void** args,
                     const unsigned long long* sizes, int nargs) {
    for (const auto& k : hpcdl_cpu::kKernels) {
        if (std::string(k.name) == name) {
            hpcdl_cpu::g_error = k.run(args, sizes, nargs, grid, block, seed);
            return hpcdl_cpu::g_error.empty() ? 0 : -1;
        }
    }
    hpcdl_cpu::g_error = std::string("no kernel named ") + name;
    return -1;
}

const char* hpcdl_cpu_error() { return hpcdl_cpu::g_error.c_str(); }

}  // extern "C"
