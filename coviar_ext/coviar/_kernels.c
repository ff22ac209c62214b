/*
 * Per-pixel kernels of the compressed-domain reader `coviar` (CoViAR's C loader, Wu et al. 2018,
 * made safe): the motion-vector field of one frame, the accumulated map into the GOP's I-frame,
 * the residual against a reference sampled through a map, and a per-channel lookup table that
 * turns int32 values into bytes (e.g. pytorch-coviar's clip(v + 128, 0, 255)).
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

/* The output array: `out_obj` checked (C-contiguous, writeable, of `type` and shape dims) when it
 * is not None, else a new zero-filled one. New reference, or NULL with an exception. */
static PyArrayObject *output(PyObject *out_obj, int type, npy_intp *dims) {
    if (out_obj == NULL || out_obj == Py_None)
        return (PyArrayObject *)PyArray_ZEROS(3, dims, type, 0);
    PyArrayObject *out = as_array(out_obj, type, 3, dims[2], "output");
    if (!out) return NULL;
    if (PyArray_DIM(out, 0) != dims[0] || PyArray_DIM(out, 1) != dims[1] ||
        !PyArray_ISWRITEABLE(out)) {
        PyErr_Format(PyExc_ValueError, "output must be a writeable (%zd, %zd, %zd) array",
                     (Py_ssize_t)dims[0], (Py_ssize_t)dims[1], (Py_ssize_t)dims[2]);
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* A uint8 lookup table (channels, odd length), or NULL with a ValueError. New reference. */
static PyArrayObject *lookup_table(PyObject *obj, npy_intp channels) {
    PyArrayObject *table = as_array(obj, NPY_UINT8, 2, -1, "table");
    if (!table) return NULL;
    if (PyArray_DIM(table, 0) != channels || PyArray_DIM(table, 1) % 2 == 0) {
        PyErr_Format(PyExc_ValueError, "table must be (%zd, odd length)", (Py_ssize_t)channels);
        Py_DECREF(table);
        return NULL;
    }
    return table;
}

/* table[c, clip(v + len / 2, 0, len - 1)] */
static inline uint8_t look(const uint8_t *table, npy_intp len, npy_intp c, int32_t v) {
    npy_intp k = (npy_intp)v + len / 2;
    k = k < 0 ? 0 : (k >= len ? len - 1 : k);
    return table[c * len + k];
}

/* Whether every channel of the table (channels, len) is the same clipped shift,
 * table[c, i] = clip(i - len / 2 + shift, 0, 255) (pytorch-coviar's residual bytes are shift 128),
 * which the residual computes arithmetically; sets *shift. */
static int clipped_shift(const uint8_t *table, npy_intp len, npy_intp channels, int *shift) {
    const int s = table[len / 2];
    if (s == 0 || s == 255) return 0; /* the shift is not recoverable from a clipped value */
    for (npy_intp c = 0; c < channels; ++c)
        for (npy_intp i = 0; i < len; ++i) {
            const npy_intp v = i - len / 2 + s;
            if (table[c * len + i] != (v < 0 ? 0 : (v > 255 ? 255 : v))) return 0;
        }
    *shift = s;
    return 1;
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
    PyObject *rec_obj, *out_obj = Py_None;
    Py_ssize_t height, width, top = 0, left = 0, box_h = -1, box_w = -1;
    if (!PyArg_ParseTuple(args, "Onn|nnnnO", &rec_obj, &height, &width, &top, &left, &box_h,
                          &box_w, &out_obj))
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
    PyArrayObject *out = output(out_obj, NPY_INT32, dims);
    if (!out) {
        Py_DECREF(rec);
        return NULL;
    }
    const int32_t *r = (const int32_t *)PyArray_DATA(rec);
    int32_t *f = (int32_t *)PyArray_DATA(out);
    const npy_intp n = PyArray_DIM(rec, 0);
    const long bx0 = left, bx1 = left + box_w, by0 = top, by1 = top + box_h;
    Py_BEGIN_ALLOW_THREADS
    if (out_obj != Py_None) memset(f, 0, (size_t)box_h * box_w * 2 * sizeof(int32_t));
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
    PyObject *rec_obj, *old_obj, *out_obj = Py_None;
    if (!PyArg_ParseTuple(args, "OO|O", &rec_obj, &old_obj, &out_obj)) return NULL;
    PyArrayObject *rec = NULL, *old = NULL, *out = NULL;
    rec = as_array(rec_obj, NPY_INT32, 2, 6, "records");
    if (!rec) goto fail;
    old = as_array(old_obj, NPY_INT32, 3, 2, "map");
    if (!old) goto fail;
    if (out_obj == Py_None) {
        out = (PyArrayObject *)PyArray_NewCopy(old, NPY_CORDER);
    } else {
        out = output(out_obj, NPY_INT32, PyArray_DIMS(old));
        if (out && PyArray_DATA(out) == PyArray_DATA(old)) {
            PyErr_SetString(PyExc_ValueError, "output must not be the map itself");
            Py_CLEAR(out);
        }
        if (out && PyArray_CopyInto(out, old) < 0) Py_CLEAR(out);
    }
    if (!out) goto fail;
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
fail:
    Py_XDECREF(rec);
    Py_XDECREF(old);
    return NULL;
}

static PyObject *residual(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cur_obj, *ref_obj, *map_obj, *out_obj = Py_None, *table_obj = Py_None;
    int relative;
    Py_ssize_t top = 0, left = 0;
    if (!PyArg_ParseTuple(args, "OOOp|nnOO", &cur_obj, &ref_obj, &map_obj, &relative, &top,
                          &left, &out_obj, &table_obj))
        return NULL;
    PyArrayObject *cur = NULL, *ref = NULL, *map = NULL, *out = NULL, *table = NULL;
    cur = as_array(cur_obj, NPY_UINT8, 3, 3, "current frame");
    if (!cur) goto done;
    ref = as_array(ref_obj, NPY_UINT8, 3, 3, "reference frame");
    if (!ref) goto done;
    map = as_array(map_obj, NPY_INT32, 3, 2, "map");
    if (!map) goto done;
    if (table_obj != Py_None && !(table = lookup_table(table_obj, 3))) goto done;
    const npy_intp height = PyArray_DIM(cur, 0), width = PyArray_DIM(cur, 1);
    const npy_intp box_h = PyArray_DIM(map, 0), box_w = PyArray_DIM(map, 1);
    if (PyArray_DIM(ref, 0) != height || PyArray_DIM(ref, 1) != width) {
        PyErr_SetString(PyExc_ValueError, "frames must have the same height and width");
        goto done;
    }
    if (!check_box(top, left, box_h, box_w, height, width)) goto done;
    npy_intp dims[3] = {box_h, box_w, 3};
    out = output(out_obj, table ? NPY_UINT8 : NPY_INT32, dims);
    if (!out) goto done;
    const uint8_t *c = (const uint8_t *)PyArray_DATA(cur);
    const uint8_t *rf = (const uint8_t *)PyArray_DATA(ref);
    const int32_t *m = (const int32_t *)PyArray_DATA(map);
    int32_t *o = table ? NULL : (int32_t *)PyArray_DATA(out);
    uint8_t *o8 = table ? (uint8_t *)PyArray_DATA(out) : NULL;
    const uint8_t *t = table ? (const uint8_t *)PyArray_DATA(table) : NULL;
    const npy_intp len = table ? PyArray_DIM(table, 1) : 0;
    int shift = 0;
    const int shifted = t && clipped_shift(t, len, 3, &shift);
    npy_intp bad = -1;
    Py_BEGIN_ALLOW_THREADS
    /* Δ[p] = cur[p] − ref[src(p)], src = p − mv (relative) or the map itself (accumulated), for
     * p in the box; map and output are indexed from the box's corner. With a table, the output
     * holds table[c, Δ + len / 2] (clipped to the table) instead of Δ. A row is done in runs of
     * pixels with the same displacement p − src, so that each run reads both frames
     * contiguously (vectorised). */
    for (npy_intp y = 0; y < box_h && bad < 0; ++y) {
        const npy_intp gy = top + y;
        const int32_t *row = m + 2 * y * box_w;
        npy_intp x = 0;
        while (x < box_w) {
            const npy_intp dx = relative ? row[2 * x] : left + x - row[2 * x];
            const npy_intp dy = relative ? row[2 * x + 1] : gy - row[2 * x + 1];
            npy_intp e = x + 1;
            if (relative) { /* the same vector: compare the (x, y) pair as one 64-bit word */
                uint64_t first, next;
                memcpy(&first, row + 2 * x, sizeof first);
                while (e < box_w && (memcpy(&next, row + 2 * e, sizeof next), next == first)) ++e;
            } else { /* the same displacement: the map advances by one pixel in x */
                while (e < box_w && row[2 * e] == row[2 * x] + (e - x) &&
                       row[2 * e + 1] == row[2 * x + 1])
                    ++e;
            }
            const npy_intp sy = gy - dy, sx0 = left + x - dx, sx1 = left + e - 1 - dx;
            if (sy < 0 || sy >= height || sx0 < 0 || sx1 >= width) {
                const npy_intp first = (sy < 0 || sy >= height || sx0 < 0) ? x : x + width - sx0;
                bad = gy * width + left + first;
                break;
            }
            const npy_intp n = 3 * (e - x), k = 3 * (y * box_w + x);
            const uint8_t *cp = c + 3 * (gy * width + left + x), *rp = rf + 3 * (sy * width + sx0);
            if (shifted) {
                uint8_t *op = o8 + k;
                const int16_t sh = (int16_t)shift;
                for (npy_intp i = 0; i < n; ++i) { /* int16 lanes: twice as many per vector */
                    const int16_t v = (int16_t)((int16_t)cp[i] - (int16_t)rp[i] + sh);
                    const int16_t lo = v < 0 ? 0 : v;
                    op[i] = (uint8_t)(lo > 255 ? 255 : lo);
                }
            } else if (t) {
                for (npy_intp i = 0; i < n; i += 3)
                    for (int ch = 0; ch < 3; ++ch)
                        o8[k + i + ch] = look(t, len, ch, (int32_t)cp[i + ch] - rp[i + ch]);
            } else {
                int32_t *op = o + k;
                for (npy_intp i = 0; i < n; ++i) op[i] = (int32_t)cp[i] - (int32_t)rp[i];
            }
            x = e;
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
    Py_XDECREF(table);
    return (PyObject *)out;
}

static PyObject *lookup(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *a_obj, *table_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OOO", &a_obj, &table_obj, &out_obj)) return NULL;
    PyArrayObject *a = NULL, *table = NULL, *out = NULL;
    PyObject *ret = NULL;
    a = as_array(a_obj, NPY_INT32, 3, -1, "values");
    if (!a) goto done;
    const npy_intp channels = PyArray_DIM(a, 2);
    if (!(table = lookup_table(table_obj, channels))) goto done;
    if (!(out = output(out_obj, NPY_UINT8, PyArray_DIMS(a)))) goto done;
    const int32_t *v = (const int32_t *)PyArray_DATA(a);
    const uint8_t *t = (const uint8_t *)PyArray_DATA(table);
    uint8_t *o = (uint8_t *)PyArray_DATA(out);
    const npy_intp n = channels ? PyArray_SIZE(a) / channels : 0, len = PyArray_DIM(table, 1);
    Py_BEGIN_ALLOW_THREADS
    for (npy_intp i = 0; i < n; ++i)
        for (npy_intp c = 0; c < channels; ++c) o[i * channels + c] = look(t, len, c, v[i * channels + c]);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    Py_XDECREF(a);
    Py_XDECREF(table);
    Py_XDECREF(out);
    return ret;
}

static PyMethodDef methods[] = {
    {"mv_field", mv_field, METH_VARARGS,
     "mv_field(records, height, width[, top, left, box_h, box_w, out]) -> int32 (box_h, box_w, "
     "2): per-pixel (dst - src) of one frame, on the box (default: the whole frame), written "
     "into `out` when given."},
    {"accumulate", accumulate, METH_VARARGS,
     "accumulate(records, map[, out]) -> new map (into `out` when given, not `map` itself): "
     "new[dst] = map[src], map = source pixel in the I-frame."},
    {"residual", residual, METH_VARARGS,
     "residual(cur, ref, map, relative[, top, left, out, table]) -> int32 (h, w, 3): cur - ref "
     "sampled at the source pixel, on the box of the map's size (h, w) at (top, left) of the "
     "frames; with a uint8 table (3, L), uint8 table[c, clip(v + L // 2, 0, L - 1)] instead; "
     "written into `out` when given."},
    {"lookup", lookup, METH_VARARGS,
     "lookup(values, table, out) -> None: out[..., c] = table[c, clip(v + L // 2, 0, L - 1)] "
     "for int32 values (h, w, C), a uint8 table (C, L) (L odd) and a uint8 out (h, w, C)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Per-pixel kernels of coviar.", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    import_array();
    return PyModule_Create(&module);
}
