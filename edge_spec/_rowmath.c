/* Full-vocabulary row math over float32 logits, fused into one or two passes per row.
 *
 * numpy needs a pass (and a temporary) per elementary operation, so a divergence over a 151,936-token row
 * costs 4-5x one log-sum-exp pass there; here each row is read twice (max, then everything else) and the
 * exp/log calls are vectorised (on x86-64 Linux with GCC: glibc's libmvec, and an AVX2 clone chosen at load
 * time when the CPU has it). Sums accumulate in float32 over blocks of 512 values (omp simd reductions), the
 * blocks in double. -inf logits are clamped to LOW before exp, where exp is 0 in float32.
 *
 * Python API (arguments: C-contiguous float32 buffers of equal length; edge_spec.acceptance and
 * edge_spec.sampling pass numpy arrays):
 *   logsumexp(z, scale) -> float          log sum exp(scale * z)
 *   confidence(z) -> (top1, entropy)      softmax(z)'s top-1 probability and entropy (nats)
 *   divergence(kind, zp, zq) -> float     kind in "js", "js-sym", "kl", "tv" (see acceptance.divergence)
 *   sample_softmax(z, scale, u, skip)     the token drawn from softmax(scale * z) for uniform u in [0, 1),
 *                                         token `skip` excluded (-1: none); -1 when nothing weighs
 *   sample_residual(zp, zq, scale, lp, lq, u)
 *                                         the token drawn from max(0, p - q), p = exp(scale * zp - lp),
 *                                         q = exp(scale * zq - lq); -1 when the residual is all zero
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define BLOCK 512
#define EPS 1e-10f                    /* floor on probabilities inside logs */
#define LOG_EPS (-23.025850929940457f) /* log(EPS) */
#define LOW (-104.0f)                 /* exp(LOW) underflows to 0 in float32 */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CLONES __attribute__((target_clones("avx2", "default")))
/* glibc's libmvec has vector expf/logf (_ZGVdN8v_expf, ...); math.h declares them only under -ffast-math,
 * whose reassociation costs this kernel 1e-4 of precision, so they are declared here */
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) float logf(float);
#else
#define CLONES
#endif

typedef float (*term_fn)(float lp, float lq);

static float row_max(const float *z, Py_ssize_t n) {
    float m = z[0];
    for (Py_ssize_t i = 1; i < n; i++) m = z[i] > m ? z[i] : m;
    return m;
}

/* sum of exp(scale * (z - top)), top = max z */
static CLONES double sum_exp(const float *z, Py_ssize_t n, float top, float scale) {
    double total = 0.0;
    for (Py_ssize_t b = 0; b < n; b += BLOCK) {
        Py_ssize_t end = b + BLOCK < n ? b + BLOCK : n;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (Py_ssize_t i = b; i < end; i++) acc += expf(fmaxf(scale * (z[i] - top), LOW));
        total += acc;
    }
    return total;
}

/* sum of exp(t) and of t exp(t), t = max(z - top, LOW): a row's normaliser and its entropy's numerator */
static CLONES void sum_exp_t(const float *z, Py_ssize_t n, float top, double *sums) {
    double total = 0.0, weighted = 0.0;
    for (Py_ssize_t b = 0; b < n; b += BLOCK) {
        Py_ssize_t end = b + BLOCK < n ? b + BLOCK : n;
        float acc = 0.0f, acc_t = 0.0f;
#pragma omp simd reduction(+ : acc, acc_t)
        for (Py_ssize_t i = b; i < end; i++) {
            float t = fmaxf(z[i] - top, LOW), e = expf(t);
            acc += e;
            acc_t += e * t;
        }
        total += acc;
        weighted += acc_t;
    }
    sums[0] = total;
    sums[1] = weighted;
}

/* The sum over a row of a divergence's per-token terms; lp, lq = log p, log q (unfloored, >= LOW). */
#define TERM_SUM(name, ...)                                                                       \
    static CLONES double name(const float *zp, const float *zq, Py_ssize_t n, const float *shift) { \
        double total = 0.0;                                                                        \
        for (Py_ssize_t b = 0; b < n; b += BLOCK) {                                                \
            Py_ssize_t end = b + BLOCK < n ? b + BLOCK : n;                                        \
            float acc = 0.0f;                                                                      \
            _Pragma("omp simd reduction(+ : acc)")                                                 \
            for (Py_ssize_t i = b; i < end; i++) {                                                 \
                float lp = fmaxf((zp[i] - shift[0]) - shift[1], LOW);                              \
                float lq = fmaxf((zq[i] - shift[2]) - shift[3], LOW);                              \
                float p = expf(lp), q = expf(lq);                                                  \
                float fp = fmaxf(lp, LOG_EPS), fq = fmaxf(lq, LOG_EPS);                            \
                (void)p, (void)q, (void)fp, (void)fq;                                              \
                __VA_ARGS__                                                                        \
            }                                                                                      \
            total += acc;                                                                          \
        }                                                                                          \
        return total;                                                                              \
    }

/* 0.5 KL(m || p) + 0.5 KL(m || q), m = (p + q) / 2 */
TERM_SUM(js_sum, {
    float m = 0.5f * (p + q);
    acc += m * (logf(fmaxf(m, EPS)) - 0.5f * (fp + fq));
})
/* 0.5 KL(p || m) + 0.5 KL(q || m) */
TERM_SUM(js_sym_sum, {
    float m = 0.5f * (p + q), fm = logf(fmaxf(m, EPS));
    acc += 0.5f * (p * (fp - fm) + q * (fq - fm));
})
/* KL(q || p) */
TERM_SUM(kl_sum, { acc += q * (fq - fp); })
/* 0.5 sum |p - q| */
TERM_SUM(tv_sum, { acc += 0.5f * fabsf(p - q); })

/* Inverse-CDF draws. A row's weights: softmax, exp(scale * (zp - top)) unnormalised; or residual,
 * max(0, exp(scale * zp - lp) - exp(scale * zq - lq)) with lp, lq the rows' log normalisers. One vectorised
 * pass sums each block of BLOCK weights (float32 in the block, double across blocks); the block holding
 * u * total is then scanned token by token. */
typedef struct {
    const float *zp, *zq; /* zq NULL: softmax weights */
    float scale, top, lp, lq;
} Weights;

static inline float weight(const Weights *w, Py_ssize_t i) {
    if (!w->zq) return expf(fmaxf(w->scale * (w->zp[i] - w->top), LOW));
    return fmaxf(expf(fmaxf(w->scale * w->zp[i] - w->lp, LOW)) - expf(fmaxf(w->scale * w->zq[i] - w->lq, LOW)), 0.0f);
}

static CLONES void block_sums(const Weights *w, Py_ssize_t n, double *sums) {
    const float *zp = w->zp, *zq = w->zq;
    const float scale = w->scale, top = w->top, lp = w->lp, lq = w->lq;
    for (Py_ssize_t b = 0; b < n; b += BLOCK) {
        Py_ssize_t end = b + BLOCK < n ? b + BLOCK : n;
        float acc = 0.0f;
        if (!zq) {
#pragma omp simd reduction(+ : acc)
            for (Py_ssize_t i = b; i < end; i++) acc += expf(fmaxf(scale * (zp[i] - top), LOW));
        } else {
#pragma omp simd reduction(+ : acc)
            for (Py_ssize_t i = b; i < end; i++)
                acc += fmaxf(expf(fmaxf(scale * zp[i] - lp, LOW)) - expf(fmaxf(scale * zq[i] - lq, LOW)), 0.0f);
        }
        sums[b / BLOCK] = acc;
    }
}

/* The last token in [from, to) with weight, other than `skip`; -1 if none. */
static Py_ssize_t last_weighing(const Weights *w, Py_ssize_t from, Py_ssize_t to, Py_ssize_t skip) {
    for (Py_ssize_t i = to - 1; i >= from; i--)
        if (i != skip && weight(w, i) > 0.0f) return i;
    return -1;
}

/* The drawn token for uniform u in [0, 1), token `skip` weighing 0 (-1: none); -1 when no token weighs. */
static Py_ssize_t draw(const Weights *w, Py_ssize_t n, double u, Py_ssize_t skip, double *sums) {
    Py_ssize_t blocks = (n + BLOCK - 1) / BLOCK;
    block_sums(w, n, sums);
    if (skip >= 0) sums[skip / BLOCK] = fmax(sums[skip / BLOCK] - weight(w, skip), 0.0);
    double total = 0.0;
    for (Py_ssize_t b = 0; b < blocks; b++) total += sums[b];
    if (!(total > 0.0)) return -1;
    double target = u * total;
    Py_ssize_t b = 0;
    while (b + 1 < blocks && target >= sums[b]) target -= sums[b++];
    Py_ssize_t end = (b + 1) * BLOCK < n ? (b + 1) * BLOCK : n;
    double acc = 0.0;
    for (Py_ssize_t i = b * BLOCK; i < end; i++) {
        float wi = i == skip ? 0.0f : weight(w, i);
        acc += wi;
        if (wi > 0.0f && acc > target) return i;
    }
    for (; b >= 0; b--) { /* the target was lost to rounding: the last token with weight */
        Py_ssize_t token = last_weighing(w, b * BLOCK, (b + 1) * BLOCK < n ? (b + 1) * BLOCK : n, skip);
        if (token >= 0) return token;
    }
    return -1;
}

/* A float32 row from a buffer; 0 and a Python error if it is not one. */
static Py_ssize_t float_row(Py_buffer *buf, const char *name) {
    if (buf->len % sizeof(float) != 0 || buf->len == 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a non-empty float32 buffer", name);
        return 0;
    }
    return buf->len / (Py_ssize_t)sizeof(float);
}

static PyObject *py_logsumexp(PyObject *self, PyObject *args) {
    Py_buffer z;
    float scale;
    if (!PyArg_ParseTuple(args, "y*f", &z, &scale)) return NULL;
    Py_ssize_t n = float_row(&z, "z");
    double out = 0.0;
    if (n) {
        const float *data = (const float *)z.buf;
        float top = row_max(data, n);
        Py_BEGIN_ALLOW_THREADS
        /* a row of -inf only: -inf (compared by value, which -ffinite-math-only keeps) */
        out = top < -1e30f ? -HUGE_VAL : (double)scale * top + log(sum_exp(data, n, top, scale));
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&z);
    return n ? PyFloat_FromDouble(out) : NULL;
}

static PyObject *py_confidence(PyObject *self, PyObject *args) {
    Py_buffer z;
    if (!PyArg_ParseTuple(args, "y*", &z)) return NULL;
    Py_ssize_t n = float_row(&z, "z");
    double sums[2] = {0.0, 0.0};
    if (n) {
        const float *data = (const float *)z.buf;
        Py_BEGIN_ALLOW_THREADS sum_exp_t(data, n, row_max(data, n), sums);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&z);
    /* top-1 probability 1 / total; entropy -sum p log p = log total - sum e t / total */
    return n ? Py_BuildValue("(dd)", 1.0 / sums[0], log(sums[0]) - sums[1] / sums[0]) : NULL;
}

static PyObject *py_divergence(PyObject *self, PyObject *args) {
    const char *kind;
    Py_buffer zp, zq;
    if (!PyArg_ParseTuple(args, "sy*y*", &kind, &zp, &zq)) return NULL;
    double (*sum)(const float *, const float *, Py_ssize_t, const float *) =
        !strcmp(kind, "js")       ? js_sum
        : !strcmp(kind, "js-sym") ? js_sym_sum
        : !strcmp(kind, "kl")     ? kl_sum
        : !strcmp(kind, "tv")     ? tv_sum
                                  : NULL;
    Py_ssize_t n = float_row(&zp, "zp");
    double out = 0.0;
    if (!sum) {
        PyErr_Format(PyExc_ValueError, "unknown divergence %s", kind);
    } else if (n && zq.len != zp.len) {
        PyErr_SetString(PyExc_ValueError, "zp and zq must have the same length");
    } else if (n) {
        const float *p = (const float *)zp.buf, *q = (const float *)zq.buf;
        Py_BEGIN_ALLOW_THREADS float mp = row_max(p, n), mq = row_max(q, n);
        /* log p = (z - max) - log sum exp(z - max): exact near the top, where the mass is */
        float shift[4] = {mp, (float)log(sum_exp(p, n, mp, 1.0f)), mq, (float)log(sum_exp(q, n, mq, 1.0f))};
        out = sum(p, q, n, shift);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&zp);
    PyBuffer_Release(&zq);
    return PyErr_Occurred() ? NULL : PyFloat_FromDouble(out);
}

static PyObject *sample_result(Weights *w, Py_ssize_t n, double u, Py_ssize_t skip) {
    double *sums = PyMem_Malloc(sizeof(double) * (size_t)((n + BLOCK - 1) / BLOCK));
    if (!sums) return PyErr_NoMemory();
    Py_ssize_t token;
    Py_BEGIN_ALLOW_THREADS token = draw(w, n, u, skip, sums);
    Py_END_ALLOW_THREADS
    PyMem_Free(sums);
    return PyLong_FromSsize_t(token);
}

static PyObject *py_sample_softmax(PyObject *self, PyObject *args) {
    Py_buffer z;
    float scale;
    double u;
    Py_ssize_t skip;
    if (!PyArg_ParseTuple(args, "y*fdn", &z, &scale, &u, &skip)) return NULL;
    Py_ssize_t n = float_row(&z, "z");
    PyObject *out = NULL;
    if (n && skip >= n) {
        PyErr_SetString(PyExc_ValueError, "skip must be a token id or -1");
    } else if (n) {
        Weights w = {(const float *)z.buf, NULL, scale, row_max((const float *)z.buf, n), 0.0f, 0.0f};
        out = sample_result(&w, n, u, skip);
    }
    PyBuffer_Release(&z);
    return out;
}

static PyObject *py_sample_residual(PyObject *self, PyObject *args) {
    Py_buffer zp, zq;
    float scale, lp, lq;
    double u;
    if (!PyArg_ParseTuple(args, "y*y*fffd", &zp, &zq, &scale, &lp, &lq, &u)) return NULL;
    Py_ssize_t n = float_row(&zp, "zp");
    PyObject *out = NULL;
    if (n && zq.len != zp.len) {
        PyErr_SetString(PyExc_ValueError, "zp and zq must have the same length");
    } else if (n) {
        Weights w = {(const float *)zp.buf, (const float *)zq.buf, scale, 0.0f, lp, lq};
        out = sample_result(&w, n, u, -1);
    }
    PyBuffer_Release(&zp);
    PyBuffer_Release(&zq);
    return out;
}

static PyMethodDef methods[] = {
    {"logsumexp", py_logsumexp, METH_VARARGS, "log sum exp(scale * z) of a float32 row."},
    {"confidence", py_confidence, METH_VARARGS, "confidence(z) -> (top-1 probability, entropy in nats)"},
    {"divergence", py_divergence, METH_VARARGS, "divergence(kind, zp, zq) of two float32 logits rows."},
    {"sample_softmax", py_sample_softmax, METH_VARARGS, "sample_softmax(z, scale, u, skip) -> token"},
    {"sample_residual", py_sample_residual, METH_VARARGS, "sample_residual(zp, zq, scale, lp, lq, u) -> token"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rowmath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__rowmath(void) { return PyModule_Create(&module); }
