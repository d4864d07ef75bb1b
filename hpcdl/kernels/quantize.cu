// FP16 compression with one power-of-two scale per chunk, over a multi-tensor
// layout (one tensor is the single-tensor case).
//
//   hpcdl_chunk_absmax   maxabs[c] = max |x| over chunk c (non-finite -> +inf)
//   -- the caller allreduces maxabs with op=max, so every rank uses one scale --
//   hpcdl_quantize_fp16  scale[c] = 2^k, the largest with maxabs*world*2^k <= 2^15;
//                        out = fp16(x * scale) into the fusion buffer;
//                        with a residual: x += residual first, then
//                        residual = x - out / scale  (error feedback)
//   hpcdl_dequantize_fp16  t = cast(float(q) * (1/scale[c]) * extra)  (mode 0)
//                          t = cast(float(t) + that)                   (mode 2)
//
// Why 2^15 / world: after the sum over `world` ranks every partial sum stays
// below 2^15 (plus rounding), far from fp16's 65504, and a power of two makes
// scaling and unscaling exact.
#include "common.cuh"

#define HPCDL_ABSMAX_THREADS 256

__device__ __forceinline__ float hpcdl_fp16_scale(float maxabs, int world) {
    if (!(maxabs > 0.0f) || isinf(maxabs)) return 1.0f;  // zero, NaN or inf: leave as is
    int e;
    frexp(static_cast<double>(maxabs) * static_cast<double>(world), &e);  // = m * 2^e, m in [0.5, 1)
    int k = 15 - e;
    k = k < -126 ? -126 : (k > 126 ? 126 : k);
    return __int_as_float((k + 127) << 23);  // 2^k, exactly: k in [-126, 126] is a normal float
}

template <typename TIn>
__device__ __forceinline__ float hpcdl_local_absmax(const TIn* src, long long n) {
    float m = 0.0f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        float a = fabsf(hpcdl_to_float(src[i]));
        if (!isfinite(a)) a = __int_as_float(0x7f800000);  // NaN must win the max too (MPI's max ignores it)
        m = fmaxf(m, a);
    }
    return m;
}

__global__ void __launch_bounds__(HPCDL_ABSMAX_THREADS)
hpcdl_chunk_absmax(const HpcdlTensor* __restrict__ tensors, const HpcdlChunk* __restrict__ chunks,
                   int nchunks, int chunk_elems, float* __restrict__ maxabs) {
    __shared__ float warp_max[HPCDL_ABSMAX_THREADS / 32];
    for (int c = blockIdx.x; c < nchunks; c += gridDim.x) {
        HpcdlTensor t;
        long long start, n;
        hpcdl_chunk_range(tensors, chunks, c, chunk_elems, &t, &start, &n);
        float m = 0.0f;
        switch (t.dtype) {
            case HPCDL_F32: m = hpcdl_local_absmax(reinterpret_cast<const float*>(t.ptr) + start, n); break;
            case HPCDL_F16: m = hpcdl_local_absmax(reinterpret_cast<const __half*>(t.ptr) + start, n); break;
            case HPCDL_BF16:
                m = hpcdl_local_absmax(reinterpret_cast<const __nv_bfloat16*>(t.ptr) + start, n);
                break;
        }
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
        __syncthreads();
        if (threadIdx.x == 0) {
            float b = warp_max[0];
            for (int w = 1; w < (int)(blockDim.x >> 5); ++w) b = fmaxf(b, warp_max[w]);
            maxabs[c] = b;
        }
        __syncthreads();  // warp_max is reused by the next chunk
    }
}

template <typename TIn>
struct HpcdlQuantize {
    float scale;
    float inv_scale;
    float* residual;  // this chunk's residual, or nullptr
    __device__ __forceinline__ __half operator()(TIn x, __half, long long i) const {
        float v = hpcdl_to_float(x);
        if (residual != nullptr) v = __fadd_rn(v, residual[i]);
        const __half q = __float2half_rn(__fmul_rn(v, scale));
        if (residual != nullptr) {
            float r = __fsub_rn(v, __fmul_rn(__half2float(q), inv_scale));
            residual[i] = isfinite(r) ? r : 0.0f;  // an inf/NaN step must not poison later ones
        }
        return q;
    }
};

// residual: fp32, same layout as the fusion buffer (or nullptr: no error feedback)
__global__ void __launch_bounds__(256)
hpcdl_quantize_fp16(const HpcdlTensor* __restrict__ tensors, const HpcdlChunk* __restrict__ chunks,
                    int nchunks, int chunk_elems, const float* __restrict__ maxabs, int world,
                    __half* __restrict__ dst, float* __restrict__ scales, float* residual) {
    for (int c = blockIdx.x; c < nchunks; c += gridDim.x) {
        HpcdlTensor t;
        long long start, n;
        hpcdl_chunk_range(tensors, chunks, c, chunk_elems, &t, &start, &n);
        const float s = hpcdl_fp16_scale(maxabs[c], world);
        if (threadIdx.x == 0) scales[c] = s;
        const float inv = 1.0f / s;  // exact: s is a power of two
        __half* out = dst + t.offset + start;
        float* res = residual == nullptr ? nullptr : residual + t.offset + start;
        switch (t.dtype) {
            case HPCDL_F32:
                hpcdl_block_map<false>(reinterpret_cast<const float*>(t.ptr) + start, out, n,
                                       HpcdlQuantize<float>{s, inv, res});
                break;
            case HPCDL_F16:
                hpcdl_block_map<false>(reinterpret_cast<const __half*>(t.ptr) + start, out, n,
                                       HpcdlQuantize<__half>{s, inv, res});
                break;
            case HPCDL_BF16:
                hpcdl_block_map<false>(reinterpret_cast<const __nv_bfloat16*>(t.ptr) + start, out,
                                       n, HpcdlQuantize<__nv_bfloat16>{s, inv, res});
                break;
        }
    }
}

template <typename TOut>
struct HpcdlDequantize {
    float factor;
    int accumulate;
    __device__ __forceinline__ TOut operator()(__half q, TOut old, long long) const {
        const float v = __fmul_rn(__half2float(q), factor);
        return hpcdl_from_float<TOut>(accumulate ? __fadd_rn(hpcdl_to_float(old), v) : v);
    }
};

template <typename TOut>
__device__ __forceinline__ void hpcdl_dequantize_chunk(const __half* in, TOut* out, long long n,
                                                       float factor, int mode) {
    if (mode == 2)
        hpcdl_block_map<true>(in, out, n, HpcdlDequantize<TOut>{factor, 1});
    else
        hpcdl_block_map<false>(in, out, n, HpcdlDequantize<TOut>{factor, 0});
}

__global__ void __launch_bounds__(256)
hpcdl_dequantize_fp16(const HpcdlTensor* __restrict__ tensors,
                      const HpcdlChunk* __restrict__ chunks, int nchunks, int chunk_elems,
                      const __half* __restrict__ src, const float* __restrict__ scales,
                      float extra, int mode) {
    for (int c = blockIdx.x; c < nchunks; c += gridDim.x) {
        HpcdlTensor t;
        long long start, n;
        hpcdl_chunk_range(tensors, chunks, c, chunk_elems, &t, &start, &n);
        const float factor = __fmul_rn(1.0f / scales[c], extra);
        const __half* in = src + t.offset + start;
        switch (t.dtype) {
            case HPCDL_F32:
                hpcdl_dequantize_chunk(in, reinterpret_cast<float*>(t.ptr) + start, n, factor, mode);
                break;
            case HPCDL_F16:
                hpcdl_dequantize_chunk(in, reinterpret_cast<__half*>(t.ptr) + start, n, factor, mode);
                break;
            case HPCDL_BF16:
                hpcdl_dequantize_chunk(in, reinterpret_cast<__nv_bfloat16*>(t.ptr) + start, n,
                                       factor, mode);
                break;
        }
    }
}
