// dst = dst (op) src elementwise on the device, for fp16, bf16 and fp32 (the
// types MPI has no reduction for, and fp32 beside them), ops sum/prod/min/max.
// Reached through hpcdl.kernels.fusion.reduce_into (compiled on first use with
// NVRTC). No collective calls it today: the allreduce algorithms reduce host
// NumPy buffers (device data is staged, or handed to a CUDA-aware MPI whole);
// it is the building block for device-side algorithms and is tested against
// the NumPy reference (tests/test_kernels.py) on a GPU.
// Each step computes in float32 and rounds once to T, as hpcdl.ops.reduce_into
// does with NumPy. min/max propagate NaN like numpy.minimum/maximum (fminf/fmaxf
// would drop it).
#include "common.cuh"

#define HPCDL_SUM 0
#define HPCDL_PROD 1
#define HPCDL_MIN 2
#define HPCDL_MAX 3

template <int OP>
__device__ __forceinline__ float hpcdl_apply(float a, float b) {
    if (OP == HPCDL_SUM) return __fadd_rn(a, b);
    if (OP == HPCDL_PROD) return __fmul_rn(a, b);
    if (OP == HPCDL_MIN) return (a < b || isnan(a)) ? a : b;
    return (a > b || isnan(a)) ? a : b;
}

template <typename T, int OP>
__global__ void __launch_bounds__(256)
hpcdl_reduce(T* __restrict__ dst, const T* __restrict__ src, long long n) {
    constexpr int VEC = 16 / sizeof(T);
    typedef HpcdlVec<T, VEC> V;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    const long long tid = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    long long head = 0;
    if (reinterpret_cast<unsigned long long>(dst) % sizeof(V) == 0 &&
        reinterpret_cast<unsigned long long>(src) % sizeof(V) == 0) {
        const long long nvec = n / VEC;
        V* vd = reinterpret_cast<V*>(dst);
        const V* vs = reinterpret_cast<const V*>(src);
        for (long long j = tid; j < nvec; j += stride) {
            V a = vd[j];
            const V b = vs[j];
#pragma unroll
            for (int k = 0; k < VEC; ++k)
                a.v[k] = hpcdl_from_float<T>(hpcdl_apply<OP>(hpcdl_to_float(a.v[k]),
                                                             hpcdl_to_float(b.v[k])));
            vd[j] = a;
        }
        head = nvec * VEC;
    }
    for (long long i = head + tid; i < n; i += stride)
        dst[i] = hpcdl_from_float<T>(hpcdl_apply<OP>(hpcdl_to_float(dst[i]), hpcdl_to_float(src[i])));
}
