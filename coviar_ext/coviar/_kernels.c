/*
 * Per-pixel kernels of the compressed-domain reader `coviar` (CoViAR's C loader, Wu et al. 2018,
 * made safe): the motion-vector field of one frame, the accumulated map into the GOP's I-frame,
 * and the residual against a reference sampled through a map.
 *
 * Decoding is PyAV's; these kernels see only numpy arrays. The field and the residual can be
 * computed on a box of the frame only (a crop), with the same values as the whole-frame result
 * cropped: the records and the reference are those of the whole frame. Motion-vector records arrive as an
 * int32 array (n, 6) of (w, h, src_x, src_y, dst_x, dst_y), taken from FFmpeg's AVMotionVector side
 * data. Every array is checked (dtype, shape, contiguity) and every pixel access is
 * bounds-checked, so no record can write or read outside the frame. No global state; the GIL is
 * released around the loops.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>
#include <string.h>

/* Return `obj` as a C-contiguous array of `type` with `ndim` dims and the given trailing size
 * (last_dim < 0: any), or NULL with a ValueError naming `what`. New reference. */
static PyArrayObject *as_array(PyObject *obj, int type, int ndim, npy_intp last_dim,
                               const char *what) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array", what);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (PyArray_TYPE(arr) != type || PyArray_NDIM(arr) != ndim ||
        (last_dim >= 0 && PyArray_DIM(arr, ndim - 1) != last_dim) ||
        !PyArray_IS_C_CONTIGUOUS(arr)) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a C-contiguous %d-d array of %s with last dimension %zd", what,
                     ndim, type == NPY_INT32 ? "int32" : "uint8", (Py_ssize_t)last_dim);
        return NULL;
    }
    Py_INCREF(arr);
    return arr;
}

static PyArrayObject *new_int32(int ndim, npy_intp *dims) {
    return (PyArrayObject *)PyArray_ZEROS(ndim, dims, NPY_INT32, 0);
}

/* Visit the pixels of each record with a non-zero displacement whose dst and src both lie in the
 * frame and whose dst lies in the box [bx0, bx1) x [by0, by1) (the whole frame, or a crop): the
 * block dst ± w/2, dst ± h/2 (C division, as the original loader). The bounds test of each pixel
 * is hoisted: the offsets (ox, oy) that keep dst in the box and src in the frame form a product
 * of two ranges, clipped once per record. Within a record every pixel is visited once, so the
 * visiting order inside it does not matter; records are applied in order. */
static inline void clip_range(long half, long dst, long src, long size, long b0, long b1,
                              long *lo, long *hi) {
    *lo = -half;
    if (b0 - dst > *lo) *lo = b0 - dst;
    if (-src > *lo) *lo = -src;
    *hi = half;
    if (b1 - dst < *hi) *hi = b1 - dst;
    if (size - src < *hi) *hi = size - src;
}

#define FOR_RECORD_PIXELS(rec, n, width, height, bx0, bx1, by0, by1, BODY)                  \
    for (npy_intp i_ = 0; i_ < (n); ++i_) {                                                 \
        const int32_t *r_ = (rec) + 6 * i_;                                                 \
        const int w_ = r_[0], h_ = r_[1];                                                   \
        const long sx_ = r_[2], sy_ = r_[3], dx_ = r_[4], dy_ = r_[5];                      \
        if (dx_ - sx_ == 0 && dy_ - sy_ == 0) continue;                                     \
        if (w_ < 0 || h_ < 0 || w_ > 4096 || h_ > 4096) continue;                           \
        long x0_, x1_, y0_, y1_;                                                            \
        clip_range(w_ / 2, dx_, sx_, (width), (bx0), (bx1), &x0_, &x1_);                    \
        clip_range(h_ / 2, dy_, sy_, (height), (by0), (by1), &y0_, &y1_);                   \
        const int32_t val_x = (int32_t)(dx_ - sx_), val_y = (int32_t)(dy_ - sy_);          \
        (void)val_x;                                                                        \
        (void)val_y;                                                                        \
        for (long oy = y0_; oy < y1_; ++oy) {                                               \
            const long py = dy_ + oy, qy = sy_ + oy;                                        \
            (void)qy;                                                                       \
            for (long ox = x0_; ox < x1_; ++ox) {                                           \
                const long px = dx_ + ox, qx = sx_ + ox;                                    \
                (void)qx;                                                                   \
                BODY                                                                        \
            }                                                                               \
        }                                                                                   \
    }

/* Check that the box (top, left, box_h, box_w) lies in a height x width frame; else ValueError. */
static int check_box(Py_ssize_t top, Py_ssize_t left, Py_ssize_t box_h, Py_ssize_t box_w,
                     Py_ssize_t height, Py_ssize_t width) {
    if (top < 0 || left < 0 || box_h <= 0 || box_w <= 0 || top > height - box_h ||
        left > width - box_w) {
        PyErr_Format(PyExc_ValueError,
                     "box (top=%zd, left=%zd, height=%zd, width=%zd) is not inside the %zdx%zd "
                     "frame",
                     top, left, box_h, box_w, width, height);
        return 0;
    }
    return 1;
}

static PyObject *mv_field(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *rec_obj;
    Py_ssize_t height, width, top = 0, left = 0, box_h = -1, box_w = -1;
    if (!PyArg_ParseTuple(args, "Onn|nnnn", &rec_obj, &height, &width, &top, &left, &box_h,
                          &box_w))
        return NULL;
    if (height <= 0 || width <= 0 || height > 16384 || width > 16384) {
        PyErr_SetString(PyExc_ValueError, "frame size out of range");
        return NULL;
    }
    if (box_h < 0) box_h = height - top;
    if (box_w < 0) box_w = width - left;
    if (!check_box(top, left, box_h, box_w, height, width)) return NULL;
    PyArrayObject *rec = as_array(rec_obj, NPY_INT32, 2, 6, "records");
    if (!rec) return NULL;
    npy_intp dims[3] = {box_h, box_w, 2};
    PyArrayObject *out = new_int32(3, dims);
    if (!out) {
        Py_DECREF(rec);
        return NULL;
    }
    const int32_t *r = (const int32_t *)PyArray_DATA(rec);
    int32_t *f = (int32_t *)PyArray_DATA(out);
    const npy_intp n = PyArray_DIM(rec, 0);
    const long bx0 = left, bx1 = left + box_w, by0 = top, by1 = top + box_h;
    Py_BEGIN_ALLOW_THREADS
    FOR_RECORD_PIXELS(r, n, width, height, bx0, bx1, by0, by1, {
        int32_t *p = f + 2 * ((py - by0) * box_w + (px - bx0));
        p[0] = val_x;
        p[1] = val_y;
    })
    Py_END_ALLOW_THREADS
    Py_DECREF(rec);
    return (PyObject *)out;
}

static PyObject *accumulate(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *rec_obj, *old_obj;
    if (!PyArg_ParseTuple(args, "OO", &rec_obj, &old_obj)) return NULL;
    PyArrayObject *rec = as_array(rec_obj, NPY_INT32, 2, 6, "records");
    if (!rec) return NULL;
    PyArrayObject *old = as_array(old_obj, NPY_INT32, 3, 2, "map");
    if (!old) {
        Py_DECREF(rec);
        return NULL;
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_NewCopy(old, NPY_CORDER);
    if (!out) {
        Py_DECREF(rec);
        Py_DECREF(old);
        return NULL;
    }
    const long height = (long)PyArray_DIM(old, 0), width = (long)PyArray_DIM(old, 1);
    const int32_t *r = (const int32_t *)PyArray_DATA(rec);
    const int32_t *a_old = (const int32_t *)PyArray_DATA(old);
    int32_t *a_new = (int32_t *)PyArray_DATA(out);
    const npy_intp n = PyArray_DIM(rec, 0);
    /* new[dst] = old[src]: every record of this frame reads the previous frame's map. */
    Py_BEGIN_ALLOW_THREADS
    FOR_RECORD_PIXELS(r, n, width, height, 0, width, 0, height, {
        const int32_t *s = a_old + 2 * (qy * width + qx);
        int32_t *d = a_new + 2 * (py * width + px);
        d[0] = s[0];
        d[1] = s[1];
    })
    Py_END_ALLOW_THREADS
    Py_DECREF(rec);
    Py_DECREF(old);
    return (PyObject *)out;
}

static PyObject *residual(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cur_obj, *ref_obj, *map_obj;
    int relative;
    Py_ssize_t top = 0, left = 0;
    if (!PyArg_ParseTuple(args, "OOOp|nn", &cur_obj, &ref_obj, &map_obj, &relative, &top, &left))
        return NULL;
    PyArrayObject *cur = NULL, *ref = NULL, *map = NULL, *out = NULL;
    cur = as_array(cur_obj, NPY_UINT8, 3, 3, "current frame");
    if (!cur) goto done;
    ref = as_array(ref_obj, NPY_UINT8, 3, 3, "reference frame");
    if (!ref) goto done;
    map = as_array(map_obj, NPY_INT32, 3, 2, "map");
    if (!map) goto done;
    const npy_intp height = PyArray_DIM(cur, 0), width = PyArray_DIM(cur, 1);
    const npy_intp box_h = PyArray_DIM(map, 0), box_w = PyArray_DIM(map, 1);
    if (PyArray_DIM(ref, 0) != height || PyArray_DIM(ref, 1) != width) {
        PyErr_SetString(PyExc_ValueError, "frames must have the same height and width");
        goto done;
    }
    if (!check_box(top, left, box_h, box_w, height, width)) goto done;
    npy_intp dims[3] = {box_h, box_w, 3};
    out = new_int32(3, dims);
    if (!out) goto done;
    const uint8_t *c = (const uint8_t *)PyArray_DATA(cur);
    const uint8_t *rf = (const uint8_t *)PyArray_DATA(ref);
    const int32_t *m = (const int32_t *)PyArray_DATA(map);
    int32_t *o = (int32_t *)PyArray_DATA(out);
    npy_intp bad = -1;
    Py_BEGIN_ALLOW_THREADS
    /* Δ[p] = cur[p] − ref[src(p)], src = p − mv (relative) or the map itself (accumulated), for
     * p in the box; map and output are indexed from the box's corner. */
    for (npy_intp y = 0; y < box_h && bad < 0; ++y) {
        const npy_intp gy = top + y;
        for (npy_intp x = 0; x < box_w; ++x) {
            const npy_intp k = y * box_w + x, gx = left + x, g = gy * width + gx;
            const npy_intp sx = relative ? gx - m[2 * k] : m[2 * k];
            const npy_intp sy = relative ? gy - m[2 * k + 1] : m[2 * k + 1];
            if (sx < 0 || sx >= width || sy < 0 || sy >= height) {
                bad = g;
                break;
            }
            const uint8_t *s = rf + 3 * (sy * width + sx);
            o[3 * k] = (int32_t)c[3 * g] - s[0];
            o[3 * k + 1] = (int32_t)c[3 * g + 1] - s[1];
            o[3 * k + 2] = (int32_t)c[3 * g + 2] - s[2];
        }
    }
    Py_END_ALLOW_THREADS
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "map points outside the frame at pixel (x=%zd, y=%zd)",
                     (Py_ssize_t)(bad % width), (Py_ssize_t)(bad / width));
        Py_CLEAR(out);
    }
done:
    Py_XDECREF(cur);
    Py_XDECREF(ref);
    Py_XDECREF(map);
    return (PyObject *)out;
}

static PyMethodDef methods[] = {
    {"mv_field", mv_field, METH_VARARGS,
     "mv_field(records, height, width[, top, left, box_h, box_w]) -> int32 (box_h, box_w, 2): "
     "per-pixel (dst - src) of one frame, on the box (default: the whole frame)."},
    {"accumulate", accumulate, METH_VARARGS,
     "accumulate(records, map) -> new map: new[dst] = map[src], map = source pixel in the I-frame."},
    {"residual", residual, METH_VARARGS,
     "residual(cur, ref, map, relative[, top, left]) -> int32 (h, w, 3): cur - ref sampled at the "
     "source pixel, on the box of the map's size (h, w) at (top, left) of the frames."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Per-pixel kernels of coviar.", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    import_array();
    return PyModule_Create(&module);
}
