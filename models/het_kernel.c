/* The multiclass HET head's estimators fused into one pass over the draws, per example.

   Per example b, per draw s (z_s = u_s / tau, with 1/tau already folded into mu, d, V):

       z_s    = mu + V eps_R,s + d * eps_K,s                       (K,)
       log p_s = z_s,y - logsumexp_k z_s,k
       L      = logsumexp_s log p_s                                (log S is subtracted by the caller)
       dL/dz_s = w_s (onehot_y - softmax(z_s)),   w_s = exp(log p_s - L)
       dL/dmu = sum_s dL/dz_s,  dL/dd = sum_s dL/dz_s * eps_K,s,  dL/dV = sum_s dL/dz_s eps_R,s^T

   and for the predictive, sums over s of p_s = softmax(z_s) (shifted by p0), of (p_s - p0)^2
   and of the entropy H[p_s] = log sum_k e_k - sum_k e_k t_k / sum_k e_k, t = z - max z,
   e = exp(t). This is models/het_fast.py's _MulticlassLogLikelihood / moments, written so
   that each draw is formed, exponentiated and accumulated while it sits in L1: one thread
   owns one example at a time (examples handed out by an atomic counter, so a thread slowed
   by a competing process simply takes fewer), draws go in blocks of NS = 8 so each V load
   feeds 8 FMAs. L is only known after the last draw, so the sums use exp(log p_s - m) with m
   a running reference (the first block's max, raised and the sums rescaled when a block
   exceeds it by RESCALE_MARGIN nats) and are divided by sum_s exp(log p_s - m) = exp(L - m)
   at the end: nothing underflows when every log p_s is far below -100.

   Noise is read from eps tensors (a batch stride of 0 when shared), or, when they are NULL,
   drawn in the kernel by a counter-based generator (het_normals below), so per-example noise
   never exists as a B x S x (K + R) tensor.

   Portable C (GCC vector extensions, no intrinsics), one OpenMP parallel region per call on
   torch's own threads (see run). Compiled at first use by models/het_kernel.py for the
   machine it runs on. */

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VW 8 /* floats per vector */
#define NS 8 /* draws per block */
#define RESCALE_MARGIN 30.0f
#define PAD_LOGIT -1e30f
#define CLASS_MAJOR_MAX 24 /* up to this many classes, draws go across the vector lanes */

typedef float vf __attribute__((vector_size(VW * 4)));

static inline vf splat(float x) { return (vf){0} + x; }
static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }

static inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* exp(x), 8 at a time, for x in [-87, 88]; 0 below -87 (exp(-87) is about 1.6e-38), so a
   padding lane (u = PAD_LOGIT) contributes exactly 0 to sum e and to sum e (u - max u), where
   a clamped exp(-87) times u - max u = -1e30 added 1.6e-8 nats per lane to the entropy;
   above 88, exp(88). Cody-Waite reduction x = n ln2 + r, a degree-6 minimax polynomial
   (Cephes expf), 2^n through the exponent bits. */
typedef int32_t vi __attribute__((vector_size(VW * 4)));

static inline vf vmax(vf a, vf b) {
    vi gt = a > b;
    return (vf)(((vi)a & gt) | ((vi)b & ~gt));
}

static inline vf exp_vec(vf x) {
    vi keep = x >= splat(-87.0f); /* all ones where exp(x) is kept (false for NaN, as before) */
    x = vmax(x, splat(-87.0f));
    x = -vmax(-x, splat(-88.0f));
    vf t = x * 1.44269504088896341f;
    vf n = (t + 12582912.0f) - 12582912.0f; /* round to nearest */
    vf r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi two_n = (__builtin_convertvector(n, vi) + 127) << 23;
    return (vf)((vi)(p * (vf)two_n) & keep);
}

static inline float hsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < VW; i++) s += v[i];
    return s;
}

static inline float hmax(vf v) {
    float m = v[0];
    for (int i = 1; i < VW; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* log(x) for normal x > 0, 8 at a time: as log_pos below. */
static inline vf log_vec(vf x) {
    vi ix = (vi)x + (0x3f800000 - 0x3f3504f3);
    vi e = (ix >> 23) - 0x7f;
    vf m = (vf)((ix & 0x007fffff) + 0x3f3504f3);
    vf s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    vf q = splat(2.0f / 9.0f);
    q = q * s2 + 2.0f / 7.0f;
    q = q * s2 + 2.0f / 5.0f;
    q = q * s2 + 2.0f / 3.0f;
    q = q * s2 + 2.0f;
    return __builtin_convertvector(e, vf) * 0.69314718056f + s * q;
}

/* -- counter-based normals: SplitMix64 + Box-Muller -----------------------------------
   The same family as the ONNX "mc" sampler (models/export_sampler.py), NOT the same
   stream; the two never need to agree (the kernel's per-example draws are checked against
   het_normals below, the graph's against its numpy twin counter_normals):
     kernel (draw_normals): key = the seed itself (SeededNoise's 64 bits, not mixed);
       example b's draw s is counter c = b S + s, pair j of its H = ceil((K + R) / 2) uses
       word mix64(key + golden (c H + j)), counters from 0; u1 = (w >> 40 + 1) / 2^24 in
       (0, 1] from the top 24 bits, u2 = (w >> 16 & 0xffffff) / 2^24 from bits 16..39;
       sin and cos by polynomials.
     ONNX sampler (_sampler_nodes): key = mix64(seed) (or a RandomUniform draw); one noise
       matrix shared by the batch, row s pair c uses word mix64(key + golden (s H + c + 1)),
       counters from 1; u1 = (w >> 40 + 1/2) / 2^24 in (0, 1), u2 = (w & 0xffffff) / 2^24
       from the low 24 bits; onnxruntime's Sin, Cos and Log. */

#define GOLDEN 0x9E3779B97F4A7C15ULL

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* log(x) for normal x > 0: x = 2^e m with m in [sqrt(1/2), sqrt(2)) by integer arithmetic
   on the bits (as musl's logf), log m = 2 atanh(s), s = (m - 1) / (m + 1), by its series. */
static inline float log_pos(float x) {
    union { float f; int32_t i; } v = {.f = x};
    int32_t ix = v.i + (0x3f800000 - 0x3f3504f3);
    int32_t e = (ix >> 23) - 0x7f;
    v.i = (ix & 0x007fffff) + 0x3f3504f3;
    float m = v.f;
    float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float q = 2.0f / 9.0f;
    q = q * s2 + 2.0f / 7.0f;
    q = q * s2 + 2.0f / 5.0f;
    q = q * s2 + 2.0f / 3.0f;
    q = q * s2 + 2.0f;
    return (float)e * 0.69314718056f + s * q;
}

/* The K + R normals of draw c (c = b * S + s, example b's draw s): with n = K + R and
   H = ceil(n / 2) pairs, pair j's bits = SplitMix64(key + golden * (c * H + j)) give
   u1 = ((bits >> 40) + 1) / 2^24 in (0, 1] and u2 = (bits >> 16 & 0xffffff) / 2^24 in
   [0, 1), and Box-Muller, r = sqrt(-2 log u1), theta = 2 pi u2:
       out[j] = r cos(theta),  out[H + j] = r sin(theta)   (the last sine unused if n is odd)
   eps_K is out[0, K), eps_R out[K, n). Lanes are independent and the stores contiguous, so
   the loop vectorises; out needs room for n + 1 floats. */
static void draw_normals(uint64_t key, uint64_t c, int64_t n, float *out) {
    int64_t H = (n + 1) / 2;
    float *sines = out + H;
    uint64_t first = key + GOLDEN * (c * (uint64_t)H);
    for (int64_t j = 0; j < H; j++) {
        uint64_t bits = mix64(first + GOLDEN * (uint64_t)j);
        int32_t hi = (int32_t)(bits >> 40), mid = (int32_t)((bits >> 16) & 0xffffff);
        float u1 = ((float)hi + 1.0f) * (1.0f / 16777216.0f);
        float a = (float)mid * (4.0f / 16777216.0f); /* theta in quarter turns, [0, 4) */
        float r = sqrtf(-2.0f * log_pos(u1));
        /* theta = q pi/2 + x, |x| <= pi/4: Taylor polynomials, then rotate by q quarters */
        float q = (a + 12582912.0f) - 12582912.0f;
        float x = (a - q) * 1.57079632679f, x2 = x * x;
        float sn = x + x * x2 * (-1.0f / 6 + x2 * (1.0f / 120 + x2 * (-1.0f / 5040 + x2 * (1.0f / 362880))));
        float cs = 1.0f + x2 * (-0.5f + x2 * (1.0f / 24 + x2 * (-1.0f / 720 + x2 * (1.0f / 40320))));
        int32_t qi = (int32_t)q;
        float cc = (qi & 1) ? sn : cs, ss = (qi & 1) ? cs : sn;
        out[j] = r * ((qi == 1 || qi == 2) ? -cc : cc);
        sines[j] = r * ((qi == 2 || qi == 3) ? -ss : ss);
    }
}

/* The noise of examples [b0, b1) as tensors (b1 - b0, S, K) and (b1 - b0, S, R): what the
   kernel draws when given no eps tensors. row: scratch of K + R + 1 floats. */
void het_normals(uint64_t key, int64_t b0, int64_t b1, int64_t S, int64_t K, int64_t R,
                 float *eps_r, float *eps_k, float *row) {
    for (int64_t b = b0; b < b1; b++)
        for (int64_t s = 0; s < S; s++) {
            int64_t i = (b - b0) * S + s;
            draw_normals(key, (uint64_t)(b * S + s), K + R, row);
            memcpy(eps_k + i * K, row, K * 4);
            if (R) memcpy(eps_r + i * R, row + K, R * 4);
        }
}

/* -- one call's job ------------------------------------------------------------------ */

typedef struct {
    int64_t B, K, R, S;
    const float *mu, *scale, *factors; /* (B,K), (B,K), (B,K,R) or NULL */
    const float *eps_r, *eps_k;        /* (S,R)/(S,K) per example, NULL: generated */
    int64_t eps_r_stride, eps_k_stride; /* per example; 0 when shared */
    uint64_t key;                       /* the generator's key when eps_* are NULL */
    const int64_t *y;                   /* loglik: labels */
    const float *shift;                 /* moments: p0 (B,K) or NULL */
    float *out0, *out1, *out2, *out3;   /* see het_loglik / het_moments */
    const float *noise_cm;              /* shared noise, class-major: per block of 8 draws
                                           (K + R) x 8, or NULL */
    int mode;                           /* 0 loglik, 1 loglik + grads, 2 moments */
    int64_t next;                       /* next example to take */
    int failed;
} job_t;

typedef struct { /* a thread's buffers, K padded to Kp */
    int64_t Kp;
    float *mu, *d, *vt, *dvt, *acc0, *acc1, *acc2, *u, *ek, *er;
    void *base;           /* the one allocation */
    float *row;           /* one draw's noise, K + R (+ 1) */
    vf *cm_par, *cm_acc;  /* class-major: mu, d, V splat (K (R + 2)), their sums */
} bufs_t;

static int bufs_alloc(bufs_t *t, const job_t *J) {
    int64_t Kp = round_up(J->K, VW), R = J->R;
    int64_t cm = J->K <= CLASS_MAJOR_MAX ? J->K * (R + 3) * VW : 0; /* moments: 3 K */
    int64_t n = Kp * (5 + 2 * R + 2 * NS) + NS * (R + 1) + round_up(J->K + R + 1, VW) + 2 * cm;
    float *p = aligned_alloc(64, (size_t)round_up(n * 4, 64));
    if (!p) return -1;
    memset(p, 0, (size_t)n * 4);
    t->base = p;
    t->cm_par = (vf *)p; p += cm;
    t->cm_acc = (vf *)p; p += cm;
    t->Kp = Kp;
    t->mu = p; p += Kp;
    t->d = p; p += Kp;
    t->acc0 = p; p += Kp;
    t->acc1 = p; p += Kp;
    t->acc2 = p; p += Kp;
    t->vt = p; p += Kp * R;
    t->dvt = p; p += Kp * R;
    t->u = p; p += Kp * NS;
    t->ek = p; p += Kp * NS;
    t->er = p; p += NS * (R + 1);
    t->row = p;
    return 0;
}

/* Load example b's mu, d and V^T into the padded buffers (padding: mu = PAD_LOGIT, rest 0). */
static void load_example(const job_t *J, bufs_t *t, int64_t b) {
    int64_t K = J->K, R = J->R, Kp = t->Kp;
    memcpy(t->mu, J->mu + b * K, K * 4);
    memcpy(t->d, J->scale + b * K, K * 4);
    for (int64_t k = K; k < Kp; k++) t->mu[k] = PAD_LOGIT;
    const float *v = J->factors ? J->factors + b * K * R : NULL;
    for (int64_t r = 0; r < R; r++)
        for (int64_t k = 0; k < K; k++) t->vt[r * Kp + k] = v[k * R + r];
}

/* The noise of draws [s0, s0 + ns) of example b into t->ek (NS x Kp) and t->er (NS x R),
   rows past ns zero. */
static void load_noise(const job_t *J, bufs_t *t, int64_t b, int64_t s0, int ns) {
    int64_t K = J->K, R = J->R, Kp = t->Kp;
    for (int j = 0; j < ns; j++) {
        if (J->eps_k) {
            memcpy(t->ek + j * Kp, J->eps_k + b * J->eps_k_stride + (s0 + j) * K, K * 4);
            if (R) memcpy(t->er + j * R, J->eps_r + b * J->eps_r_stride + (s0 + j) * R, R * 4);
        } else {
            draw_normals(J->key, (uint64_t)(b * J->S + s0 + j), K + R, t->row);
            memcpy(t->ek + j * Kp, t->row, K * 4);
            if (R) memcpy(t->er + j * R, t->row + K, R * 4);
        }
    }
    for (int j = ns; j < NS; j++) {
        memset(t->ek + j * Kp, 0, K * 4);
        memset(t->er + j * R, 0, R * 4);
    }
}

/* u_j = mu + d * ek_j + V er_j for the NS draws of the block; returns nothing, rows in t->u. */
static void form_draws(const job_t *J, bufs_t *t) {
    int64_t Kp = t->Kp, R = J->R;
    const float *er = t->er;
    for (int64_t k = 0; k < Kp; k += VW) {
        vf m = vload(t->mu + k), d = vload(t->d + k);
        vf a[NS];
        for (int j = 0; j < NS; j++) a[j] = m + d * vload(t->ek + j * Kp + k);
        for (int64_t r = 0; r < R; r++) {
            vf v = vload(t->vt + r * Kp + k);
            for (int j = 0; j < NS; j++) a[j] += v * er[j * R + r];
        }
        for (int j = 0; j < NS; j++) vstore(t->u + j * Kp + k, a[j]);
    }
}

/* One padded row u of Kp logits: e = exp(u - max u) in place; returns sum e, sets *row_max
   and, when ent is given, *ent = sum e (u - max u). */
static float exp_row(float *u, int64_t Kp, float *row_max, float *ent) {
    vf m = splat(PAD_LOGIT);
    for (int64_t k = 0; k < Kp; k += VW) m = vmax(m, vload(u + k));
    float mx = hmax(m);
    vf sum = splat(0.0f), sum_et = splat(0.0f);
    for (int64_t k = 0; k < Kp; k += VW) {
        vf tk = vload(u + k) - mx, e = exp_vec(tk);
        vstore(u + k, e);
        sum += e;
        if (ent) sum_et += e * tk;
    }
    if (ent) *ent = hsum(sum_et);
    *row_max = mx;
    return hsum(sum);
}

static void scale_sums(bufs_t *t, int64_t R, float c) {
    int64_t n = t->Kp * (2 + R);
    float *p = t->acc0; /* acc0, acc1 adjacent; dvt separate */
    for (int64_t i = 0; i < 2 * t->Kp; i++) p[i] *= c;
    for (int64_t i = 0; i < n - 2 * t->Kp; i++) t->dvt[i] *= c;
}

/* out0: L_b = logsumexp_s log p_s (B,); grads (mode 1): out1 dL/dmu (B,K), out2 dL/dd (B,K),
   out3 dL/dV (B,K,R). */
static void loglik_example(const job_t *J, bufs_t *t, int64_t b) {
    int64_t K = J->K, R = J->R, S = J->S, Kp = t->Kp;
    int grad = J->mode == 1;
    int64_t y = J->y[b];
    load_example(J, t, b);
    if (grad) {
        memset(t->acc0, 0, 2 * Kp * 4);
        memset(t->dvt, 0, Kp * R * 4);
    }
    float ref = 0.0f, total = 0.0f; /* m and sum_s exp(log p_s - m) */
    int have_ref = 0;
    for (int64_t s0 = 0; s0 < S; s0 += NS) {
        int ns = S - s0 < NS ? (int)(S - s0) : NS;
        load_noise(J, t, b, s0, ns);
        form_draws(J, t);
        float logp[NS], inv_sum[NS], block_max = -INFINITY;
        for (int j = 0; j < ns; j++) {
            float *u = t->u + j * Kp, mx;
            float uy = u[y];
            float sum = exp_row(u, Kp, &mx, NULL);
            logp[j] = uy - mx - logf(sum);
            inv_sum[j] = 1.0f / sum;
            block_max = logp[j] > block_max ? logp[j] : block_max;
        }
        if (!have_ref) {
            ref = block_max;
            have_ref = 1;
        } else if (block_max > ref + RESCALE_MARGIN) {
            float c = expf(ref - block_max);
            total *= c;
            if (grad) scale_sums(t, R, c);
            ref = block_max;
        }
        float w[NS], coef[NS];
        for (int j = 0; j < NS; j++) {
            w[j] = j < ns ? expf(logp[j] - ref) : 0.0f;
            coef[j] = j < ns ? -w[j] * inv_sum[j] : 0.0f;
            total += w[j];
        }
        if (!grad) continue;
        /* dz_j = coef_j e_j + w_j onehot_y: the dense part here, the onehot part after */
        const float *er = t->er;
        for (int64_t k = 0; k < Kp; k += VW) {
            vf dz[NS], sum_dz = splat(0.0f), sum_dz_ek = splat(0.0f);
            for (int j = 0; j < NS; j++) {
                dz[j] = vload(t->u + j * Kp + k) * coef[j];
                sum_dz += dz[j];
                sum_dz_ek += dz[j] * vload(t->ek + j * Kp + k);
            }
            vstore(t->acc0 + k, vload(t->acc0 + k) + sum_dz);
            vstore(t->acc1 + k, vload(t->acc1 + k) + sum_dz_ek);
            for (int64_t r = 0; r < R; r++) {
                vf a = vload(t->dvt + r * Kp + k);
                for (int j = 0; j < NS; j++) a += dz[j] * er[j * R + r];
                vstore(t->dvt + r * Kp + k, a);
            }
        }
        for (int j = 0; j < ns; j++) {
            t->acc0[y] += w[j];
            t->acc1[y] += w[j] * t->ek[j * Kp + y];
            for (int64_t r = 0; r < R; r++) t->dvt[r * Kp + y] += w[j] * er[j * R + r];
        }
    }
    J->out0[b] = ref + logf(total);
    if (!grad) return;
    float inv = 1.0f / total;
    for (int64_t k = 0; k < K; k++) {
        J->out1[b * K + k] = t->acc0[k] * inv;
        J->out2[b * K + k] = t->acc1[k] * inv;
    }
    for (int64_t k = 0; k < K; k++)
        for (int64_t r = 0; r < R; r++) J->out3[(b * K + k) * R + r] = t->dvt[r * Kp + k] * inv;
}

/* out0: sum_s (p_s - p0) (B,K); out1 (if given): sum_s (p_s - p0)^2 (B,K); out2 (if given):
   sum_s H[p_s] (B,). p0 = shift, or 0 when shift is NULL. */
static void moments_example(const job_t *J, bufs_t *t, int64_t b) {
    int64_t K = J->K, S = J->S, Kp = t->Kp;
    load_example(J, t, b);
    float *p0 = t->acc1; /* the shift, padded with zeros */
    memset(t->acc0, 0, Kp * 4);
    memset(p0, 0, Kp * 4);
    if (J->shift) memcpy(p0, J->shift + b * K, K * 4);
    float *sum_sq = J->out1 ? t->acc2 : NULL;
    if (sum_sq) memset(sum_sq, 0, Kp * 4);
    double ent_total = 0.0;
    for (int64_t s0 = 0; s0 < S; s0 += NS) {
        int ns = S - s0 < NS ? (int)(S - s0) : NS;
        load_noise(J, t, b, s0, ns);
        form_draws(J, t);
        for (int j = 0; j < ns; j++) {
            float *u = t->u + j * Kp, mx, et;
            float sum = exp_row(u, Kp, &mx, J->out2 ? &et : NULL);
            float inv = 1.0f / sum;
            if (J->out2) ent_total += logf(sum) - et * inv;
            if (sum_sq) {
                for (int64_t k = 0; k < Kp; k++) {
                    float p = u[k] * inv - p0[k];
                    t->acc0[k] += p;
                    sum_sq[k] += p * p;
                }
            } else {
                for (int64_t k = 0; k < Kp; k++) t->acc0[k] += u[k] * inv - p0[k];
            }
        }
    }
    memcpy(J->out0 + b * K, t->acc0, K * 4);
    if (sum_sq) memcpy(J->out1 + b * K, sum_sq, K * 4);
    if (J->out2) J->out2[b] = (float)ent_total;
}

/* -- few classes: class-major, the 8 draws of a block across the vector lanes ---------- */

/* Draws [s0, s0 + ns) of example b transposed into t->ek (K x 8) and t->er (R x 8); lanes
   past ns zero. */
static void load_noise_cm(const job_t *J, bufs_t *t, int64_t b, int64_t s0, int ns) {
    int64_t K = J->K, R = J->R;
    if (J->noise_cm) { /* shared: transposed once per call */
        const float *block = J->noise_cm + s0 * (K + R);
        t->ek = (float *)block;
        t->er = (float *)block + K * VW;
        return;
    }
    for (int j = 0; j < VW; j++) {
        const float *ek, *er;
        if (j >= ns) {
            memset(t->row, 0, (K + R) * 4);
            ek = t->row;
            er = t->row + K;
        } else if (J->eps_k) {
            ek = J->eps_k + b * J->eps_k_stride + (s0 + j) * K;
            er = R ? J->eps_r + b * J->eps_r_stride + (s0 + j) * R : NULL;
        } else {
            draw_normals(J->key, (uint64_t)(b * J->S + s0 + j), K + R, t->row);
            ek = t->row;
            er = t->row + K;
        }
        for (int64_t k = 0; k < K; k++) t->ek[k * VW + j] = ek[k];
        for (int64_t r = 0; r < R; r++) t->er[r * VW + j] = er[r];
    }
}

/* z[k] = mu_k + d_k eps_K[k] + sum_r V_kr eps_R[r], 8 draws per vector, into t->u (K x 8);
   returns the max over k. */
static vf form_draws_cm(const job_t *J, bufs_t *t) {
    int64_t K = J->K, R = J->R;
    const vf *par = t->cm_par, *ek = (const vf *)t->ek, *er = (const vf *)t->er;
    vf *u = (vf *)t->u, mx = splat(PAD_LOGIT);
    for (int64_t k = 0; k < K; k++) {
        const vf *pk = par + k * (R + 2);
        vf z = pk[0] + pk[1] * ek[k];
        for (int64_t r = 0; r < R; r++) z += pk[2 + r] * er[r];
        u[k] = z;
        mx = vmax(mx, z);
    }
    return mx;
}

static void load_example_cm(const job_t *J, bufs_t *t, int64_t b) {
    int64_t K = J->K, R = J->R;
    for (int64_t k = 0; k < K; k++) {
        vf *pk = t->cm_par + k * (R + 2);
        pk[0] = splat(J->mu[b * K + k]);
        pk[1] = splat(J->scale[b * K + k]);
        for (int64_t r = 0; r < R; r++) pk[2 + r] = splat(J->factors[(b * K + k) * R + r]);
    }
}

static inline vf lanes_below(int ns) {
    vf m;
    for (int j = 0; j < VW; j++) m[j] = j < ns ? 1.0f : 0.0f;
    return m;
}

static void loglik_example_cm(const job_t *J, bufs_t *t, int64_t b) {
    int64_t K = J->K, R = J->R, S = J->S, W = R + 2;
    int grad = J->mode == 1;
    int64_t y = J->y[b];
    load_example_cm(J, t, b);
    vf *acc = t->cm_acc, *u = (vf *)t->u;
    if (grad) memset(acc, 0, K * W * sizeof(vf));
    float ref = 0.0f;
    vf total = splat(0.0f);
    int have_ref = 0;
    for (int64_t s0 = 0; s0 < S; s0 += VW) {
        int ns = S - s0 < VW ? (int)(S - s0) : VW;
        load_noise_cm(J, t, b, s0, ns);
        const vf *ek = (const vf *)t->ek, *er = (const vf *)t->er;
        vf mx = form_draws_cm(J, t), sum = splat(0.0f);
        vf uy = u[y];
        for (int64_t k = 0; k < K; k++) {
            u[k] = exp_vec(u[k] - mx);
            sum += u[k];
        }
        vf logp = uy - mx - log_vec(sum), live = lanes_below(ns);
        float block_max = -INFINITY;
        for (int j = 0; j < ns; j++) block_max = logp[j] > block_max ? logp[j] : block_max;
        if (!have_ref) {
            ref = block_max;
            have_ref = 1;
        } else if (block_max > ref + RESCALE_MARGIN) {
            float c = expf(ref - block_max);
            total *= c;
            if (grad)
                for (int64_t i = 0; i < K * W; i++) acc[i] *= c;
            ref = block_max;
        }
        vf w = exp_vec(logp - ref) * live;
        total += w;
        if (!grad) continue;
        vf coef = -w / sum;
        for (int64_t k = 0; k < K; k++) {
            vf dz = u[k] * coef + (k == y ? w : splat(0.0f));
            vf *ak = acc + k * W;
            ak[0] += dz;
            ak[1] += dz * ek[k];
            for (int64_t r = 0; r < R; r++) ak[2 + r] += dz * er[r];
        }
    }
    float tot = hsum(total);
    J->out0[b] = ref + logf(tot);
    if (!grad) return;
    float inv = 1.0f / tot;
    for (int64_t k = 0; k < K; k++) {
        const vf *ak = acc + k * W;
        J->out1[b * K + k] = hsum(ak[0]) * inv;
        J->out2[b * K + k] = hsum(ak[1]) * inv;
        for (int64_t r = 0; r < R; r++) J->out3[(b * K + k) * R + r] = hsum(ak[2 + r]) * inv;
    }
}

static void moments_example_cm(const job_t *J, bufs_t *t, int64_t b) {
    int64_t K = J->K, S = J->S;
    load_example_cm(J, t, b);
    vf *sum_p = t->cm_acc, *sum_sq = t->cm_acc + K, *u = (vf *)t->u;
    vf *shift = t->cm_acc + 2 * K, ent = splat(0.0f);
    for (int64_t k = 0; k < K; k++) {
        sum_p[k] = sum_sq[k] = splat(0.0f);
        shift[k] = splat(J->shift ? J->shift[b * K + k] : 0.0f);
    }
    for (int64_t s0 = 0; s0 < S; s0 += VW) {
        int ns = S - s0 < VW ? (int)(S - s0) : VW;
        load_noise_cm(J, t, b, s0, ns);
        vf mx = form_draws_cm(J, t), sum = splat(0.0f), sum_et = splat(0.0f);
        for (int64_t k = 0; k < K; k++) {
            vf tk = u[k] - mx, e = exp_vec(tk);
            u[k] = e;
            sum += e;
            sum_et += e * tk;
        }
        vf live = lanes_below(ns), inv = live / sum;
        if (J->out2) ent += (log_vec(sum) - sum_et / sum) * live;
        for (int64_t k = 0; k < K; k++) {
            vf p = (u[k] * inv - shift[k]) * live;
            sum_p[k] += p;
            sum_sq[k] += p * p;
        }
    }
    for (int64_t k = 0; k < K; k++) {
        J->out0[b * K + k] = hsum(sum_p[k]);
        if (J->out1) J->out1[b * K + k] = hsum(sum_sq[k]);
    }
    if (J->out2) J->out2[b] = hsum(ent);
}

static void *work(void *arg) {
    job_t *J = arg;
    bufs_t t;
    if (bufs_alloc(&t, J)) {
        __atomic_store_n(&J->failed, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    for (;;) {
        int64_t b = __atomic_fetch_add(&J->next, 1, __ATOMIC_RELAXED);
        if (b >= J->B) break;
        int cm = J->K <= CLASS_MAJOR_MAX;
        if (J->mode == 2) (cm ? moments_example_cm : moments_example)(J, &t, b);
        else (cm ? loglik_example_cm : loglik_example)(J, &t, b);
    }
    free(t.base);
    return NULL;
}

/* Shared noise for the class-major path, transposed once: block i of 8 draws holds
   eps_K as K x 8 then eps_R as R x 8, lanes past S zero. */
static float *transpose_shared_noise(const job_t *J) {
    int64_t K = J->K, R = J->R, S = J->S, Sp = round_up(S, VW);
    float *out = aligned_alloc(64, (size_t)round_up(Sp * (K + R) * 4, 64));
    if (!out) return NULL;
    memset(out, 0, (size_t)(Sp * (K + R) * 4));
    for (int64_t s = 0; s < S; s++) {
        float *block = out + (s / VW) * VW * (K + R);
        int64_t j = s % VW;
        for (int64_t k = 0; k < K; k++) block[k * VW + j] = J->eps_k[s * K + k];
        for (int64_t r = 0; r < R; r++) block[(K + r) * VW + j] = J->eps_r[s * R + r];
    }
    return out;
}

/* work(arg) on num_threads threads (at most max_threads), the calling thread among them.
   num_threads > 0: an OpenMP parallel region. Loaded after torch, this library binds to
   the libgomp torch already loaded (same soname), so the region runs on torch's own
   intra-op threads: no second pool competing with torch's spinning workers on a busy
   machine. num_threads < 0: |num_threads| plain pthreads, for a forked child, where
   libgomp's pool (inherited from the parent) must not be used. */
static void parallel(void *(*work)(void *), void *arg, int num_threads, int64_t max_threads) {
    int use_openmp = num_threads > 0;
    num_threads = num_threads < 0 ? -num_threads : num_threads;
    if (num_threads > max_threads) num_threads = (int)max_threads;
    if (num_threads < 1) num_threads = 1;
    if (num_threads == 1) {
        work(arg);
    } else if (use_openmp) {
#pragma omp parallel num_threads(num_threads)
        work(arg);
    } else {
        pthread_t threads[64];
        if (num_threads > 64) num_threads = 64;
        int started = 0;
        for (int i = 1; i < num_threads; i++)
            if (pthread_create(&threads[started], NULL, work, arg) == 0) started++;
        work(arg); /* the calling thread works too; the work of a failed start is taken here */
        for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    }
}

static int run(job_t *J, int num_threads) {
    float *noise_cm = NULL;
    if (J->K <= CLASS_MAJOR_MAX && J->eps_k && J->eps_k_stride == 0 &&
        (J->R == 0 || J->eps_r_stride == 0)) {
        noise_cm = transpose_shared_noise(J);
        if (!noise_cm) return -1;
        J->noise_cm = noise_cm;
    }
    parallel(work, J, num_threads, J->B);
    free(noise_cm);
    return J->failed && J->next <= J->B ? -1 : 0;
}

int het_loglik(int64_t B, int64_t K, int64_t R, int64_t S, const float *mu, const float *scale,
               const float *factors, const float *eps_r, int64_t eps_r_stride,
               const float *eps_k, int64_t eps_k_stride, uint64_t key, const int64_t *y,
               float *loglik, float *g_mu, float *g_scale, float *g_factors, int num_threads) {
    job_t J = {.B = B, .K = K, .R = R, .S = S, .mu = mu, .scale = scale,
               .factors = R ? factors : NULL, .eps_r = eps_r, .eps_k = eps_k,
               .eps_r_stride = eps_r_stride, .eps_k_stride = eps_k_stride, .key = key, .y = y,
               .out0 = loglik, .out1 = g_mu, .out2 = g_scale, .out3 = g_factors,
               .mode = g_mu ? 1 : 0};
    return run(&J, num_threads);
}

int het_moments(int64_t B, int64_t K, int64_t R, int64_t S, const float *mu, const float *scale,
                const float *factors, const float *eps_r, int64_t eps_r_stride,
                const float *eps_k, int64_t eps_k_stride, uint64_t key, const float *shift,
                float *sum_p, float *sum_sq, float *sum_entropy, int num_threads) {
    job_t J = {.B = B, .K = K, .R = R, .S = S, .mu = mu, .scale = scale,
               .factors = R ? factors : NULL, .eps_r = eps_r, .eps_k = eps_k,
               .eps_r_stride = eps_r_stride, .eps_k_stride = eps_k_stride, .key = key,
               .shift = shift, .out0 = sum_p, .out1 = sum_sq, .out2 = sum_entropy, .mode = 2};
    return run(&J, num_threads);
}

/* -- the head's dense layers: BLAS GEMM blocks handed out dynamically -------------------

   The dense layers y_l = h W_l^T + b_l (l < L; h (B, D), W_l (N_l, D), y_l (B, N_l), all
   row-major) of models/het_fast.py's _DenseLayers, forward and backward, as GEMMs cut into
   blocks of rows or columns of their output. The blocks go to the threads by an atomic
   counter, as the examples above do, and each block's sgemm runs on the thread that took
   it, on one BLAS thread (the BLAS's local thread count is set to 1 around the work). A
   BLAS's own 2-thread GEMM splits the work statically: beside a busy process, one thread
   then waits for the one on the busy core. The sgemm is the one torch carries (found by
   models/het_kernel.py), so a block's arithmetic is torch's own.

   BLAS is column-major: a row-major (r, c) matrix is its (c, r) transpose, so

       forward   y_l^T (N_l x B)  = W_l (N_l x D) h^T (D x B) + b_l   blocks of N_l rows
       backward  dh^T  (D x B)    = sum_l W_l^T (D x N_l) g_l^T      blocks of D rows, the
                                                                     layers summed per block
                 dW_l^T (D x N_l) = h^T (D x B) g_l (B x N_l)        blocks of N_l columns

   (db_l = sum_b g_l is torch's). Block sizes: blocking = {task_fmas, align, min_units,
   parallel_fmas}: a block of at least task_fmas multiply-adds and min_units rows or
   columns, a multiple of align; a pass of fewer than parallel_fmas multiply-adds runs on
   the calling thread alone (a parallel region waits at its end for every thread it woke:
   beside a busy process, that is the busy core's next time slice, far more than the work).

   Internally, a pass is a list of sgemm calls (G_FIELDS int64 each: BLAS's arguments,
   pointers as integers, bias 0 for none: C's n columns then start as bias[0, m) and the
   sgemm adds onto them) in groups (GR_FIELDS each): the calls of a group share the extent
   cut (their m, or their n with GR_COLUMNS) and block i of every call of a group is one
   task, run in order by one thread (so the calls may accumulate into one block). */

typedef void (*sgemm_t)(const char *, const char *, const int *, const int *, const int *,
                        const float *, const float *, const int *, const float *, const int *,
                        const float *, float *, const int *);
typedef int (*set_local_threads_t)(int);

enum { G_TRANSA, G_TRANSB, G_M, G_N, G_K, G_A, G_LDA, G_B, G_LDB, G_ACCUMULATE, G_C, G_LDC,
       G_BIAS, G_FIELDS };
enum { GR_FIRST, GR_COUNT, GR_COLUMNS, GR_BLOCK, GR_FIELDS };

typedef struct {
    sgemm_t sgemm;
    set_local_threads_t set_local_threads; /* MKL_Set_Num_Threads_Local */
    int64_t *gemms, *groups, num_gemms, num_groups;
    int64_t *task_end; /* task_end[g]: tasks of groups [0, g] */
    int64_t next, fmas;
} gemm_job_t;

static void gemm_block(const gemm_job_t *J, const int64_t *f, int columns, int64_t start,
                       int64_t stop) {
    int64_t lda = f[G_LDA], ldb = f[G_LDB], ldc = f[G_LDC];
    const float *a = (const float *)(intptr_t)f[G_A], *b = (const float *)(intptr_t)f[G_B];
    const float *bias = (const float *)(intptr_t)f[G_BIAS];
    float *c = (float *)(intptr_t)f[G_C];
    int64_t m = f[G_M], n = f[G_N];
    if (columns) { /* op(B) columns [start, stop): B's columns, or its rows if transposed */
        b += f[G_TRANSB] ? start : start * ldb;
        c += start * ldc;
        n = stop - start;
    } else { /* op(A) rows [start, stop): A's rows, or its columns if transposed */
        a += f[G_TRANSA] ? start * lda : start;
        c += start;
        if (bias) bias += start;
        m = stop - start;
    }
    int mi = (int)m, ni = (int)n, ki = (int)f[G_K], ldai = (int)lda, ldbi = (int)ldb;
    int ldci = (int)ldc;
    float alpha = 1.0f, beta = f[G_ACCUMULATE] ? 1.0f : 0.0f;
    if (m <= 0 || n <= 0) return;
    if (bias) {
        for (int64_t j = 0; j < n; j++) memcpy(c + j * ldc, bias, (size_t)m * 4);
        beta = 1.0f;
    }
    if (ki <= 0) {
        if (beta == 0.0f)
            for (int64_t j = 0; j < n; j++) memset(c + j * ldc, 0, (size_t)m * 4);
        return;
    }
    J->sgemm(f[G_TRANSA] ? "T" : "N", f[G_TRANSB] ? "T" : "N", &mi, &ni, &ki, &alpha, a, &ldai,
             b, &ldbi, &beta, c, &ldci);
}

static void *gemm_work(void *arg) {
    gemm_job_t *J = arg;
    int previous = J->set_local_threads(1);
    int64_t total = J->num_groups ? J->task_end[J->num_groups - 1] : 0;
    for (;;) {
        int64_t t = __atomic_fetch_add(&J->next, 1, __ATOMIC_RELAXED), g = 0;
        if (t >= total) break;
        while (J->task_end[g] <= t) g++;
        const int64_t *gr = J->groups + g * GR_FIELDS;
        const int64_t *first = J->gemms + gr[GR_FIRST] * G_FIELDS;
        int columns = (int)gr[GR_COLUMNS];
        int64_t extent = first[columns ? G_N : G_M], block = gr[GR_BLOCK];
        int64_t start = (t - (g ? J->task_end[g - 1] : 0)) * block;
        int64_t stop = start + block < extent ? start + block : extent;
        for (int64_t i = 0; i < gr[GR_COUNT]; i++)
            gemm_block(J, first + i * G_FIELDS, columns, start, stop);
    }
    J->set_local_threads(previous);
    return NULL;
}

static int gemm_job_alloc(gemm_job_t *J, void *sgemm, void *set_local_threads, int64_t L) {
    memset(J, 0, sizeof *J);
    J->sgemm = (sgemm_t)sgemm;
    J->set_local_threads = (set_local_threads_t)set_local_threads;
    J->gemms = malloc((size_t)(2 * L + 1) * G_FIELDS * 8);
    J->groups = malloc((size_t)(L + 2) * GR_FIELDS * 8);
    J->task_end = malloc((size_t)(L + 2) * 8);
    return J->gemms && J->groups && J->task_end ? 0 : -1;
}

static void add_gemm(gemm_job_t *J, int ta, int tb, int64_t m, int64_t n, int64_t k,
                         const float *a, int64_t lda, const float *b, int64_t ldb, int accumulate,
                         float *c, int64_t ldc, const float *bias) {
    int64_t *f = J->gemms + J->num_gemms++ * G_FIELDS;
    int64_t v[G_FIELDS] = {ta, tb, m, n, k, (intptr_t)a, lda, (intptr_t)b, ldb, accumulate,
                           (intptr_t)c, ldc, (intptr_t)bias};
    memcpy(f, v, sizeof v);
    J->fmas += m * n * k;
}

/* Rows (columns) per block of a group, see blocking above; extent >= 1. */
static int64_t block_size(const int64_t *blocking, int64_t extent, int64_t fmas_per_unit) {
    int64_t per = fmas_per_unit > 0 ? fmas_per_unit : 1;
    int64_t size = (blocking[0] + per - 1) / per, align = blocking[1] > 0 ? blocking[1] : 1;
    size = round_up(size > 0 ? size : 1, align);
    if (size < blocking[2]) size = blocking[2];
    return size < extent ? size : extent;
}

static void add_group(gemm_job_t *J, int64_t first, int columns, const int64_t *blocking,
                      int64_t fmas_per_unit) {
    const int64_t *f = J->gemms + first * G_FIELDS;
    int64_t extent = f[columns ? G_N : G_M];
    if (extent <= 0 || J->num_gemms == first) return;
    int64_t *gr = J->groups + J->num_groups++ * GR_FIELDS;
    gr[GR_FIRST] = first;
    gr[GR_COUNT] = J->num_gemms - first;
    gr[GR_COLUMNS] = columns;
    gr[GR_BLOCK] = block_size(blocking, extent, fmas_per_unit);
}

static int gemm_job_run(gemm_job_t *J, const int64_t *blocking, int num_threads) {
    int64_t total = 0;
    for (int64_t g = 0; g < J->num_groups; g++) {
        const int64_t *gr = J->groups + g * GR_FIELDS;
        const int64_t *f = J->gemms + gr[GR_FIRST] * G_FIELDS;
        total += (f[gr[GR_COLUMNS] ? G_N : G_M] + gr[GR_BLOCK] - 1) / gr[GR_BLOCK];
        J->task_end[g] = total;
    }
    parallel(gemm_work, J, J->fmas >= blocking[3] ? num_threads : 1, total);
    return 0;
}

static void gemm_job_free(gemm_job_t *J) {
    free(J->gemms);
    free(J->groups);
    free(J->task_end);
}

/* y[l] = h W[l]^T + bias[l] (bias[l] NULL: none). -1: out of memory. */
int het_dense_forward(void *sgemm, void *set_local_threads, int64_t B, int64_t D, int64_t L,
                      const int64_t *N, const float *const *W, const float *const *bias,
                      const float *h, float *const *y, const int64_t *blocking,
                      int num_threads) {
    gemm_job_t J;
    int rc = gemm_job_alloc(&J, sgemm, set_local_threads, L);
    if (rc == 0) {
        for (int64_t l = 0; l < L; l++) {
            int64_t first = J.num_gemms;
            add_gemm(&J, 1, 0, N[l], B, D, W[l], D, h, D, 0, y[l], N[l], bias[l]);
            add_group(&J, first, 0, blocking, B * D);
        }
        rc = gemm_job_run(&J, blocking, num_threads);
    }
    gemm_job_free(&J);
    return rc;
}

/* From g[l] = dloss/dy[l]: grad_h = sum_l g[l] W[l] (grad_h NULL: skipped) and
   grad_W[l] = g[l]^T h (grad_W[l] NULL: skipped). -1: out of memory. */
int het_dense_backward(void *sgemm, void *set_local_threads, int64_t B, int64_t D, int64_t L,
                       const int64_t *N, const float *const *W, const float *const *g,
                       const float *h, float *grad_h, float *const *grad_W,
                       const int64_t *blocking, int num_threads) {
    gemm_job_t J;
    int rc = gemm_job_alloc(&J, sgemm, set_local_threads, L);
    if (rc == 0) {
        if (grad_h) {
            int64_t total = 0;
            for (int64_t l = 0; l < L; l++) {
                add_gemm(&J, 0, 0, D, B, N[l], W[l], D, g[l], N[l], l > 0, grad_h, D, NULL);
                total += N[l];
            }
            add_group(&J, 0, 0, blocking, B * total);
        }
        for (int64_t l = 0; l < L; l++) {
            if (!grad_W[l]) continue;
            int64_t first = J.num_gemms;
            add_gemm(&J, 0, 1, D, N[l], B, h, D, g[l], N[l], 0, grad_W[l], D, NULL);
            add_group(&J, first, 1, blocking, B * D);
        }
        rc = gemm_job_run(&J, blocking, num_threads);
    }
    gemm_job_free(&J);
    return rc;
}
