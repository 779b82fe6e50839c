/* The native statistics kernel: (l1, l2², sum, min, max, zeros) of many tensors in one pass
 * over each, without copying them. A CPython extension built once at install time (see
 * pyproject.toml); `service.diagnostics.stats.native` calls it.
 *
 * Each tensor is cut into pieces of at most PIECE elements; the pieces of all tensors are
 * handed out a few at a time (dynamically: pieces differ in size) to the OpenMP threads of
 * torch's own team, and their partial rows are combined per tensor. Within a piece, blocks of
 * BLOCK elements are reduced with vectorised accumulators, then added to the piece's.
 *
 * Portable: built for the baseline of the target architecture, with an AVX2 clone of the
 * loops on x86-64 chosen at load time (function multi-versioning), never -march=native.
 *
 * The blocks' min/max skip NaN; a tensor's min and max become NaN where its l1 is NaN (l1 is
 * NaN exactly where an element is), as torch.amin does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define PIECE (1 << 15)
#define BLOCK 1024
#define PARALLEL_MIN_ELEMENTS (1 << 16)
#define COLUMNS 8

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

typedef struct {
    double l1, l2, sum, lo, hi, zeros;
} Partial;

/* Sums in double (float32 sums of cancelling values lose the mean); min, max and the zero
 * count in the tensor's type, which is exact. */
#define PIECE_KERNEL(NAME, T)                                                                     \
    CLONES static Partial NAME(const T *x, int64_t n) {                                           \
        Partial p = {0, 0, 0, INFINITY, -INFINITY, 0};                                            \
        for (int64_t start = 0; start < n; start += BLOCK) {                                      \
            int64_t end = start + BLOCK < n ? start + BLOCK : n;                                  \
            double a = 0, b = 0, c = 0;                                                           \
            T z = 0, lo = INFINITY, hi = -INFINITY;                                               \
            _Pragma("omp simd reduction(+ : a, b, c, z) reduction(min : lo) reduction(max : hi)") \
            for (int64_t i = start; i < end; i++) {                                               \
                T v = x[i];                                                                       \
                double w = v;                                                                     \
                a += fabs(w);                                                                     \
                b += w * w;                                                                       \
                c += w;                                                                           \
                z += v == 0 ? 1 : 0;                                                              \
                lo = lo < v ? lo : v;                                                             \
                hi = hi > v ? hi : v;                                                             \
            }                                                                                     \
            p.l1 += a;                                                                            \
            p.l2 += b;                                                                            \
            p.sum += c;                                                                           \
            p.zeros += z;                                                                         \
            p.lo = lo < p.lo ? lo : p.lo;                                                         \
            p.hi = hi > p.hi ? hi : p.hi;                                                         \
        }                                                                                         \
        return p;                                                                                 \
    }

PIECE_KERNEL(piece_f32, float)
PIECE_KERNEL(piece_f64, double)

typedef Partial (*PieceKernel)(const void *, int64_t, int64_t);

static Partial at_f32(const void *base, int64_t offset, int64_t n) {
    return piece_f32((const float *)base + offset, n);
}

static Partial at_f64(const void *base, int64_t offset, int64_t n) {
    return piece_f64((const double *)base + offset, n);
}

static Partial piece(PieceKernel kernel, const int64_t *addresses, const int64_t *numels,
                     const int64_t *owner, const int64_t *start, int64_t j) {
    int64_t left = numels[owner[j]] - start[j];
    return kernel((const void *)addresses[owner[j]], start[j], left < PIECE ? left : PIECE);
}

/* out: count rows of (l1, l2², sum, min, max, zeros, -1, numel), the layout of
 * service/diagnostics/stats/rows.py (-1: the NaN/Inf count is derived from l1 by the caller).
 * Returns 0, or -1 if out of memory. Runs without the GIL. */
static int rows(PieceKernel kernel, int64_t count, const int64_t *addresses,
                const int64_t *numels, double *out, int threads) {
    int64_t pieces = 0, total = 0;
    for (int64_t t = 0; t < count; t++) {
        pieces += numels[t] > 0 ? (numels[t] + PIECE - 1) / PIECE : 1;
        total += numels[t];
    }
    int64_t *owner = malloc(sizeof(int64_t) * pieces);
    int64_t *start = malloc(sizeof(int64_t) * pieces);
    Partial *partials = malloc(sizeof(Partial) * pieces);
    if (owner == NULL || start == NULL || partials == NULL) {
        free(owner);
        free(start);
        free(partials);
        return -1;
    }
    for (int64_t t = 0, j = 0; t < count; t++) {
        int64_t offset = 0;
        do {
            owner[j] = t;
            start[j++] = offset;
            offset += PIECE;
        } while (offset < numels[t]);
    }
    /* As many threads as torch's intra-op ones. Serial calls must not enter libgomp at all:
     * a thread that does gets an OpenMP team of its own (see service/runtime.py). */
    if (threads > 1 && total >= PARALLEL_MIN_ELEMENTS) {
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads)
        for (int64_t j = 0; j < pieces; j++)
            partials[j] = piece(kernel, addresses, numels, owner, start, j);
    } else {
        for (int64_t j = 0; j < pieces; j++)
            partials[j] = piece(kernel, addresses, numels, owner, start, j);
    }
    for (int64_t t = 0; t < count; t++) {
        double *row = out + COLUMNS * t;
        row[0] = row[1] = row[2] = row[5] = 0;
        row[3] = INFINITY;
        row[4] = -INFINITY;
        row[6] = -1;
        row[7] = (double)numels[t];
    }
    for (int64_t j = 0; j < pieces; j++) {
        double *row = out + COLUMNS * owner[j];
        const Partial *p = &partials[j];
        row[0] += p->l1;
        row[1] += p->l2;
        row[2] += p->sum;
        row[3] = p->lo < row[3] ? p->lo : row[3];
        row[4] = p->hi > row[4] ? p->hi : row[4];
        row[5] += p->zeros;
    }
    for (int64_t t = 0; t < count; t++) {
        double *row = out + COLUMNS * t;
        if (isnan(row[0])) row[3] = row[4] = NAN;
    }
    free(owner);
    free(start);
    free(partials);
    return 0;
}

/* rows(double: bool, addresses: int64 buffer, numels: int64 buffer, out: writable float64
 * buffer of 8 per tensor, threads: int) -> None. The caller keeps every tensor alive and
 * contiguous for the duration of the call. */
static PyObject *py_rows(PyObject *self, PyObject *args) {
    int is_double, threads;
    Py_buffer addresses, numels, out;
    if (!PyArg_ParseTuple(args, "py*y*w*i", &is_double, &addresses, &numels, &out, &threads))
        return NULL;
    PyObject *result = NULL;
    int64_t count = addresses.len / (Py_ssize_t)sizeof(int64_t);
    if (addresses.len % sizeof(int64_t) || numels.len != addresses.len ||
        out.len != count * COLUMNS * (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "rows: buffers of mismatched sizes");
        goto done;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = rows(is_double ? at_f64 : at_f32, count, addresses.buf, numels.buf, out.buf,
                  threads);
    Py_END_ALLOW_THREADS
    if (status) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&addresses);
    PyBuffer_Release(&numels);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"rows", py_rows, METH_VARARGS, "Statistics rows of float32 or float64 tensors."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernel", "The native statistics kernel.", -1, methods,
};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
