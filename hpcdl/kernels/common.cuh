// Shared device helpers for hpcdl's kernels: dtype conversion, 16-byte vectors,
// the multi-tensor table, and a block-wide copy loop.
//
// Every arithmetic step uses an explicitly rounded intrinsic (__fmul_rn,
// __fadd_rn, ...) so the compiler cannot contract a*b+c into an FMA: the NumPy
// reference in hpcdl/kernels/reference.py does the same float32 steps and the
// GPU tests compare bit for bit.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// dtype codes; mirrored by hpcdl/kernels/layout.py (DTYPE_CODES)
#define HPCDL_F32 0
#define HPCDL_F16 1
#define HPCDL_BF16 2

// One tensor of a multi-tensor layout; mirrored by layout.py (TENSOR_DESC).
struct HpcdlTensor {
    unsigned long long ptr;  // the tensor's first element (device memory)
    long long offset;        // its first element in the fusion buffer
    long long numel;
    int dtype;               // HPCDL_F32 / HPCDL_F16 / HPCDL_BF16
    int pad;
};

// One unit of work: chunk `chunk` (of chunk_elems elements) of tensor `tensor`.
// A block copies a whole chunk, so no thread searches for its tensor.
struct HpcdlChunk {
    int tensor;
    int chunk;
};

__device__ __forceinline__ float hpcdl_to_float(float x) { return x; }
__device__ __forceinline__ float hpcdl_to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float hpcdl_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T hpcdl_from_float(float x);
template <> __device__ __forceinline__ float hpcdl_from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half hpcdl_from_float<__half>(float x) {
    return __float2half_rn(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 hpcdl_from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

template <typename A, typename B> struct HpcdlSame { static constexpr bool value = false; };
template <typename A> struct HpcdlSame<A, A> { static constexpr bool value = true; };

template <typename T, int N>
struct alignas(sizeof(T) * N) HpcdlVec {
    T v[N];
};

// Elements per vector access: 16 bytes on the wider side of the copy.
template <typename TIn, typename TOut>
struct HpcdlVecWidth {
    static constexpr int value = 16 / (sizeof(TIn) > sizeof(TOut) ? sizeof(TIn) : sizeof(TOut));
};

// dst[i] = f(src[i], dst[i], i) for i in [0, n) by the threads of one block.
// 16-byte vector accesses when both pointers allow it (every chunk of a tensor
// has the alignment of its first chunk: chunk_elems is a multiple of 8), else
// scalar. READ_DST: f needs the old destination value (accumulate).
template <bool READ_DST, typename TIn, typename TOut, typename F>
__device__ __forceinline__ void hpcdl_block_map(const TIn* __restrict__ src,
                                                TOut* __restrict__ dst, long long n, F f) {
    constexpr int VEC = HpcdlVecWidth<TIn, TOut>::value;
    typedef HpcdlVec<TIn, VEC> VIn;
    typedef HpcdlVec<TOut, VEC> VOut;
    const bool aligned = (reinterpret_cast<unsigned long long>(src) % sizeof(VIn) == 0) &&
                         (reinterpret_cast<unsigned long long>(dst) % sizeof(VOut) == 0);
    long long head = 0;
    if (aligned) {
        const long long nvec = n / VEC;
        const VIn* vs = reinterpret_cast<const VIn*>(src);
        VOut* vd = reinterpret_cast<VOut*>(dst);
        for (long long j = threadIdx.x; j < nvec; j += blockDim.x) {
            VIn a = vs[j];
            VOut b;
            if (READ_DST) b = vd[j];
#pragma unroll
            for (int k = 0; k < VEC; ++k) b.v[k] = f(a.v[k], b.v[k], j * VEC + k);
            vd[j] = b;
        }
        head = nvec * VEC;
    }
    for (long long i = head + threadIdx.x; i < n; i += blockDim.x) {
        TOut old = READ_DST ? dst[i] : hpcdl_from_float<TOut>(0.0f);
        dst[i] = f(src[i], old, i);
    }
}

// The (tensor, element range) a chunk-table entry stands for.
__device__ __forceinline__ void hpcdl_chunk_range(const HpcdlTensor* tensors,
                                                  const HpcdlChunk* chunks, int c,
                                                  int chunk_elems, HpcdlTensor* t,
                                                  long long* start, long long* n) {
    const HpcdlChunk ch = chunks[c];
    *t = tensors[ch.tensor];
    *start = static_cast<long long>(ch.chunk) * chunk_elems;
    const long long left = t->numel - *start;
    *n = left < chunk_elems ? left : static_cast<long long>(chunk_elems);
}
