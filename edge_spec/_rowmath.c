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
 *   divergence(kind, zp, zq) -> float     kind in "js", "js-sym", "kl", "tv" (see acceptance.divergence)
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

static PyMethodDef methods[] = {
    {"logsumexp", py_logsumexp, METH_VARARGS, "log sum exp(scale * z) of a float32 row."},
    {"divergence", py_divergence, METH_VARARGS, "divergence(kind, zp, zq) of two float32 logits rows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rowmath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__rowmath(void) { return PyModule_Create(&module); }
