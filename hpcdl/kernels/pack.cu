// Multi-tensor pack and unpack: N tensors of mixed dtypes <-> one fusion buffer,
// in one launch each. The layout (pointer/offset table and chunk table) lives in
// device memory, built once per layout by hpcdl/kernels/fusion.py.
//
// mode 0: plain copy / dtype cast
// mode 1: out = cast(float(in) * scale)
// mode 2: out = cast(float(out) + float(in) * scale)   (unpack only: accumulate)
#include "common.cuh"

template <typename TIn, typename TOut>
struct HpcdlScaleCast {
    float scale;
    int mode;
    __device__ __forceinline__ TOut operator()(TIn x, TOut old, long long) const {
        const float v = hpcdl_to_float(x);
        if (mode == 0) return hpcdl_from_float<TOut>(v);
        const float s = __fmul_rn(v, scale);
        if (mode == 1) return hpcdl_from_float<TOut>(s);
        return hpcdl_from_float<TOut>(__fadd_rn(hpcdl_to_float(old), s));
    }
};

// Same dtype, no scaling: move the bits (NaN payloads and -0.0 included).
template <typename T>
struct HpcdlRawCopy {
    __device__ __forceinline__ T operator()(T x, T, long long) const { return x; }
};

template <typename TIn, typename TOut>
__device__ __forceinline__ void hpcdl_copy_chunk(const TIn* src, TOut* dst, long long n,
                                                 float scale, int mode) {
    if (mode == 2) {
        hpcdl_block_map<true>(src, dst, n, HpcdlScaleCast<TIn, TOut>{scale, mode});
        return;
    }
    if constexpr (HpcdlSame<TIn, TOut>::value) {
        if (mode == 0) {
            hpcdl_block_map<false>(src, dst, n, HpcdlRawCopy<TIn>{});
            return;
        }
    }
    hpcdl_block_map<false>(src, dst, n, HpcdlScaleCast<TIn, TOut>{scale, mode});
}

template <typename TOut>
__global__ void __launch_bounds__(256)
hpcdl_pack(const HpcdlTensor* __restrict__ tensors, const HpcdlChunk* __restrict__ chunks,
           int nchunks, int chunk_elems, TOut* __restrict__ dst, float scale, int mode) {
    for (int c = blockIdx.x; c < nchunks; c += gridDim.x) {
        HpcdlTensor t;
        long long start, n;
        hpcdl_chunk_range(tensors, chunks, c, chunk_elems, &t, &start, &n);
        TOut* out = dst + t.offset + start;
        switch (t.dtype) {
            case HPCDL_F32:
                hpcdl_copy_chunk(reinterpret_cast<const float*>(t.ptr) + start, out, n, scale, mode);
                break;
            case HPCDL_F16:
                hpcdl_copy_chunk(reinterpret_cast<const __half*>(t.ptr) + start, out, n, scale, mode);
                break;
            case HPCDL_BF16:
                hpcdl_copy_chunk(reinterpret_cast<const __nv_bfloat16*>(t.ptr) + start, out, n,
                                 scale, mode);
                break;
        }
    }
}

template <typename TIn>
__global__ void __launch_bounds__(256)
hpcdl_unpack(const HpcdlTensor* __restrict__ tensors, const HpcdlChunk* __restrict__ chunks,
             int nchunks, int chunk_elems, const TIn* __restrict__ src, float scale, int mode) {
    for (int c = blockIdx.x; c < nchunks; c += gridDim.x) {
        HpcdlTensor t;
        long long start, n;
        hpcdl_chunk_range(tensors, chunks, c, chunk_elems, &t, &start, &n);
        const TIn* in = src + t.offset + start;
        switch (t.dtype) {
            case HPCDL_F32:
                hpcdl_copy_chunk(in, reinterpret_cast<float*>(t.ptr) + start, n, scale, mode);
                break;
            case HPCDL_F16:
                hpcdl_copy_chunk(in, reinterpret_cast<__half*>(t.ptr) + start, n, scale, mode);
                break;
            case HPCDL_BF16:
                hpcdl_copy_chunk(in, reinterpret_cast<__nv_bfloat16*>(t.ptr) + start, n, scale,
                                 mode);
                break;
        }
    }
}
