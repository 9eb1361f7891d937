// easel's CUDA kernels, compiled at run time by nvrtc (network/cuda/compile.rs) and,
// in the unit tests, as C++ for the CPU (network/cuda/on_cpu/). Launched from
// network/cuda/kernels.rs.
#define LOOP(i, n) for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

#ifdef EASEL_ON_CPU
// Most unit tests run these kernels on the CPU as a single thread (network/cuda/on_cpu/),
// where the block is that one thread; on_cpu/threads.rs runs the card's code below with
// a block's threads.
static void block_add(double v, double* out) { *out += v; }
static void block_max(unsigned v, unsigned* out) { if (v > *out) *out = v; }
#else
// Sums v over the block (in double) and adds the total to *out: one atomic per block.
// Every thread of the block must call it.
__device__ void block_add(double v, double* out) {
    __shared__ double part[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (blockDim.x >> 5) ? part[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) atomicAdd(out, v);
    }
}

// The largest v over the block into *out (atomically). For the bits of non-negative
// floats, unsigned order is float order, and a NaN's bits are above infinity's.
__device__ void block_max(unsigned v, unsigned* out) {
    __shared__ unsigned part[32];
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_down_sync(0xffffffffu, v, o));
    unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (blockDim.x >> 5) ? part[lane] : 0u;
        for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0) atomicMax(out, v);
    }
}
#endif

// y = x * scale[c] + shift[c] on [3][plane].
extern "C" __global__ void normalize(const float* x, float* y, unsigned plane,
                                     float s0, float s1, float s2, float t0, float t1, float t2) {
    LOOP(i, 3u * plane) {
        unsigned c = i / plane;
        float s = c == 0 ? s0 : (c == 1 ? s1 : s2);
        float t = c == 0 ? t0 : (c == 1 ? t1 : t2);
        y[i] = x[i] * s + t;
    }
}

// y = relu(y + bias[c]) on [C][plane], in place.
extern "C" __global__ void bias_relu(float* y, const float* bias, unsigned plane, unsigned n) {
    LOOP(i, n) {
        float v = y[i] + bias[i / plane];
        y[i] = v < 0.0f ? 0.0f : v;
    }
}

// g = g where a > 0, else 0 (the ReLU's backward pass; a is the ReLU's output).
extern "C" __global__ void relu_mask(float* g, const float* a, unsigned n) {
    LOOP(i, n) g[i] = a[i] > 0.0f ? g[i] : 0.0f;
}

// 2x2 stride-2 pooling of [C][h][w] into n = C * (h/2) * (w/2) outputs; odd sizes drop
// the last row or column.
extern "C" __global__ void pool(const float* x, float* y, unsigned h, unsigned w,
                                unsigned n, int use_max) {
    unsigned ho = h / 2, wo = w / 2;
    LOOP(i, n) {
        unsigned xo = i % wo, t = i / wo, yo = t % ho, c = t / ho;
        const float* p = x + (c * h + 2 * yo) * w + 2 * xo;
        float a = p[0], b = p[1], cc = p[w], d = p[w + 1];
        y[i] = use_max ? fmaxf(fmaxf(fmaxf(a, b), cc), d) : (a + b + cc + d) * 0.25f;
    }
}

// The gradient of pool: n = C * h * w outputs, each taking its share of its window's
// gradient g; max sends it all to the first largest of x in the window.
extern "C" __global__ void unpool(const float* g, const float* x, float* out, unsigned h,
                                  unsigned w, unsigned n, int use_max) {
    unsigned ho = h / 2, wo = w / 2;
    LOOP(i, n) {
        unsigned xx = i % w, t = i / w, yy = t % h, c = t / h;
        unsigned yo = yy / 2, xo = xx / 2;
        float v = 0.0f;
        if (yo < ho && xo < wo) {
            float gv = g[(c * ho + yo) * wo + xo];
            if (!use_max) {
                v = gv * 0.25f;
            } else {
                unsigned base = (c * h + 2 * yo) * w + 2 * xo;
                unsigned idx[4] = {base, base + 1, base + w, base + w + 1};
                unsigned best = idx[0];
                for (int k = 1; k < 4; ++k) if (x[idx[k]] > x[best]) best = idx[k];
                v = best == i ? gv : 0.0f;
            }
        }
        out[i] = v;
    }
}

// Content: g += coef * (a - t); costs[slot] += sum((a - t)^2) (the host divides by 4CHW).
extern "C" __global__ void content(const float* a, const float* t, float* g, unsigned n,
                                   float coef, double* costs, unsigned slot) {
    double sum = 0.0;
    LOOP(i, n) {
        float d = a[i] - t[i];
        g[i] += coef * d;
        sum += (double)d * (double)d;
    }
    block_add(sum, costs + slot);
}

// Style of one layer from its Gram gram and the target gs ([c][c]): with
// e = (gs - gram) / norm, costs[slot] += sum(e^2), and s = dG + dG^T where
// dG = -coef * e (coef = 2 beta lambda / norm), ready for s A.
extern "C" __global__ void style(const float* gram, const float* gs, float* s, unsigned c,
                                 float norm, float coef, double* costs, unsigned slot) {
    double sum = 0.0;
    LOOP(i, c * c) {
        unsigned r = i / c, k = i % c, j = k * c + r;
        float e = (gs[i] - gram[i]) / norm;
        float et = (gs[j] - gram[j]) / norm;
        s[i] = -(coef * e) - coef * et;
        sum += (double)e * (double)e;
    }
    block_add(sum, costs + slot);
}

// The image gradient's last step on [3][h][w]: g = g * scale[c], plus, when tv is set,
// tv_weight times the gradient of the total variation of the pixel-space image x, whose
// value goes to costs[slot] (each neighbour pair counted once, by its first pixel).
extern "C" __global__ void finish(float* g, const float* x, unsigned h, unsigned w,
                                  float s0, float s1, float s2, int tv, float tv_weight,
                                  double* costs, unsigned slot) {
    double sum = 0.0;
    unsigned plane = h * w;
    LOOP(i, 3u * plane) {
        unsigned c = i / plane, p = i % plane, y = p / w, xx = p % w;
        float v = g[i] * (c == 0 ? s0 : (c == 1 ? s1 : s2));
        if (tv) {
            float xc = x[i], t = 0.0f;
            if (y > 0) t += 2.0f * (xc - x[i - w]);
            if (xx > 0) t += 2.0f * (xc - x[i - 1]);
            if (y + 1 < h) {
                float d = x[i + w] - xc;
                t -= 2.0f * d;
                sum += (double)d * (double)d;
            }
            if (xx + 1 < w) {
                float d = x[i + 1] - xc;
                t -= 2.0f * d;
                sum += (double)d * (double)d;
            }
            v += tv_weight * t;
        }
        g[i] = v;
    }
    block_add(sum, costs + slot);
}

// Row sums of a [c][n] activation, in float64, into sums[c] (zeroed by the caller):
// a block per row at a time.
extern "C" __global__ void row_sums(const float* a, double* sums, unsigned c, unsigned n) {
    for (unsigned r = blockIdx.x; r < c; r += gridDim.x) {
        double sum = 0.0;
        for (unsigned i = threadIdx.x; i < n; i += blockDim.x) sum += (double)a[r * n + i];
        block_add(sum, sums + r);
        // block_add's shared partial sums are read before the next row writes them.
        __syncthreads();
    }
}

// The adjoint of the row sums: g[r][p] += ds[r] on [c][n].
extern "C" __global__ void add_rows(float* g, const float* ds, unsigned n, unsigned total) {
    LOOP(i, total) g[i] += ds[i / n];
}

// A region's mask on each plane: out[c][p] = a[c][p] * m[p] on [C][n].
extern "C" __global__ void mask_planes(const float* a, const float* m, float* out, unsigned n,
                                      unsigned total) {
    LOOP(i, total) out[i] = a[i] * m[i % n];
}

// g[c][p] += t[c][p] * m[p] on [C][n]: a guided Gram's adjoint, masked again.
extern "C" __global__ void add_masked(float* g, const float* t, const float* m, unsigned n,
                                     unsigned total) {
    LOOP(i, total) g[i] += t[i] * m[i % n];
}

// Replicate padding by one pixel: [3][h][w] into [3][h+2][w+2], each border pixel a copy
// of its nearest image pixel (crate::vgg::padding::replicate).
extern "C" __global__ void replicate_pad(const float* x, float* y, unsigned h, unsigned w) {
    unsigned hp = h + 2, wp = w + 2;
    LOOP(i, 3u * hp * wp) {
        unsigned px = i % wp, t = i / wp, py = t % hp, c = t / hp;
        unsigned sy = py == 0 ? 0 : (py > h ? h - 1 : py - 1);
        unsigned sx = px == 0 ? 0 : (px > w ? w - 1 : px - 1);
        y[i] = x[(c * h + sy) * w + sx];
    }
}

// The adjoint of replicate_pad: each image pixel sums the gradient gp ([3][h+2][w+2]) of
// the padded pixels that copy it (crate::vgg::padding::fold).
extern "C" __global__ void fold(const float* gp, float* g, unsigned h, unsigned w) {
    unsigned wp = w + 2, hp = h + 2;
    LOOP(i, 3u * h * w) {
        unsigned x = i % w, t = i / w, y = t % h, c = t / h;
        unsigned y0 = y == 0 ? 0 : y + 1, y1 = y + 1 == h ? hp - 1 : y + 1;
        unsigned x0 = x == 0 ? 0 : x + 1, x1 = x + 1 == w ? wp - 1 : x + 1;
        float sum = 0.0f;
        for (unsigned py = y0; py <= y1; ++py)
            for (unsigned px = x0; px <= x1; ++px)
                sum += gp[(c * hp + py) * wp + px];
        g[i] = sum;
    }
}

// One Adam step on [3][plane] from (x, m, v, avg) with the gradient g into (x2, m2, v2,
// avg2), then the clamp to [lo[c], hi[c]] and the EMA: AdamUpdate::apply and ::element
// (network/resident.rs), operation for operation.
extern "C" __global__ void adam(const float* x, const float* m, const float* v,
                                const float* avg, const float* g, float* x2, float* m2,
                                float* v2, float* avg2, unsigned plane, float b1, float b2,
                                float keep1, float keep2, float eps, float step,
                                float sqrt_bc2, int clamp, float lo0, float lo1, float lo2,
                                float hi0, float hi1, float hi2, int ema, float decay,
                                float keep) {
    LOOP(i, 3u * plane) {
        unsigned c = i / plane;
        float gi = g[i];
        float mi = m[i] * b1 + gi * keep1;
        float vi = v[i] * b2 + gi * gi * keep2;
        float denom = sqrtf(vi) / sqrt_bc2 + eps;
        float xi = x[i] - mi / denom * step;
        if (clamp) {
            float lo = c == 0 ? lo0 : (c == 1 ? lo1 : lo2);
            float hi = c == 0 ? hi0 : (c == 1 ? hi1 : hi2);
            xi = xi < lo ? lo : (xi > hi ? hi : xi);  // NaN stays NaN
        }
        x2[i] = xi;
        m2[i] = mi;
        v2[i] = vi;
        avg2[i] = ema ? avg[i] * decay + xi * keep : avg[i];
    }
}

// L-BFGS's vector arithmetic (optim/vector.rs), in PyTorch's order of operations.

// *out += sum(a * b), in float64.
extern "C" __global__ void dot(const float* a, const float* b, unsigned n, double* out) {
    double sum = 0.0;
    LOOP(i, n) sum += (double)a[i] * (double)b[i];
    block_add(sum, out);
}

// *sum += sum(|a|) in float64; *max_bits = the bits of max(|a|) if larger (zeroed first).
extern "C" __global__ void abs_stats(const float* a, unsigned n, double* sum,
                                     unsigned* max_bits) {
    double total = 0.0;
    unsigned largest = 0u;
    LOOP(i, n) {
        float v = fabsf(a[i]);
        total += (double)v;
        unsigned bits = __float_as_uint(v);
        largest = bits > largest ? bits : largest;
    }
    block_add(total, sum);
    block_max(largest, max_bits);
}

// out = y + x * a.
extern "C" __global__ void add_scaled(const float* y, const float* x, float a, float* out,
                                      unsigned n) {
    LOOP(i, n) out[i] = y[i] + x[i] * a;
}

// out = y + x * a with a from the two-loop recursion's dot products on the card, as
// VectorOps::two_loop (optim/vector.rs) takes it on the host: al = dots[i] * ro; the
// first loop's a = -al, the second's (second != 0) a = al - dots[j] * ro.
extern "C" __global__ void add_scaled_dots(const float* y, const float* x, const double* dots,
                                           unsigned i, unsigned j, int second, double ro,
                                           float* out, unsigned n) {
    double al = dots[i] * ro;
    float a = second ? (float)(al - dots[j] * ro) : (float)(-al);
    LOOP(k, n) out[k] = y[k] + x[k] * a;
}

// out = x * a.
extern "C" __global__ void scale(const float* x, float a, float* out, unsigned n) {
    LOOP(i, n) out[i] = x[i] * a;
}

// out = x clamped to [lo[c], hi[c]] on [3][plane] (HostOps::clamp, image::clamp_channels).
extern "C" __global__ void clamp_planes(const float* x, float* out, unsigned plane, float lo0,
                                        float lo1, float lo2, float hi0, float hi1, float hi2) {
    LOOP(i, 3u * plane) {
        unsigned c = i / plane;
        float lo = c == 0 ? lo0 : (c == 1 ? lo1 : lo2);
        float hi = c == 0 ? hi0 : (c == 1 ? hi1 : hi2);
        float v = x[i];
        out[i] = v < lo ? lo : (v > hi ? hi : v);  // NaN stays NaN
    }
}
