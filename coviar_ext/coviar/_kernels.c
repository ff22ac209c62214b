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

/* The block of one record (w, h, src_x, src_y, dst_x, dst_y): the pixels dst ± w/2, dst ± h/2
 * (C division, as the original loader), each taking its value from src + the same offset. */
typedef struct {
    long sx, sy, dx, dy; /* source and destination centres */
    long x0, x1, y0, y1; /* the offsets kept: [x0, x1) x [y0, y1) */
} Block;

static inline void clip_range(long half, long dst, long src, long size, long b0, long b1,
                              long *lo, long *hi) {
    *lo = -half;
    if (b0 - dst > *lo) *lo = b0 - dst;
    if (-src > *lo) *lo = -src;
    *hi = half;
    if (b1 - dst < *hi) *hi = b1 - dst;
    if (size - src < *hi) *hi = size - src;
}

/* The block of record q with its offsets clipped so that dst lies in the box [bx0, bx1) x
 * [by0, by1) (the whole frame, or a crop) and src in the width x height frame: the bounds test
 * of every pixel, hoisted (the offsets kept form a product of two ranges). 0 when the record
 * moves nothing: zero displacement, an absurd block size, or no pixel left. Every kernel that
 * reads records visits them in order through this, so a pixel ends with the last record that
 * covers it, as in FFmpeg's field. */
static inline int record_block(const int32_t *q, long width, long height, long bx0, long bx1,
                               long by0, long by1, Block *b) {
    if ((q[4] == q[2] && q[5] == q[3]) || q[0] < 0 || q[1] < 0 || q[0] > 4096 || q[1] > 4096)
        return 0;
    b->sx = q[2], b->sy = q[3], b->dx = q[4], b->dy = q[5];
    clip_range(q[0] / 2, b->dx, b->sx, width, bx0, bx1, &b->x0, &b->x1);
    clip_range(q[1] / 2, b->dy, b->sy, height, by0, by1, &b->y0, &b->y1);
    return b->x1 > b->x0 && b->y1 > b->y0;
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
    PyObject *rec_obj, *out_obj = Py_None, *table_obj = Py_None;
    Py_ssize_t height, width, top = 0, left = 0, box_h = -1, box_w = -1;
    if (!PyArg_ParseTuple(args, "Onn|nnnnOO", &rec_obj, &height, &width, &top, &left, &box_h,
                          &box_w, &out_obj, &table_obj))
        return NULL;
    if (height <= 0 || width <= 0 || height > 16384 || width > 16384) {
        PyErr_SetString(PyExc_ValueError, "frame size out of range");
        return NULL;
    }
    if (box_h < 0) box_h = height - top;
    if (box_w < 0) box_w = width - left;
    if (!check_box(top, left, box_h, box_w, height, width)) return NULL;
    PyArrayObject *rec = NULL, *out = NULL, *table = NULL;
    if (!(rec = as_array(rec_obj, NPY_INT32, 2, 6, "records"))) goto done;
    if (table_obj != Py_None && !(table = lookup_table(table_obj, 2))) goto done;
    npy_intp dims[3] = {box_h, box_w, 2};
    if (!(out = output(out_obj, table ? NPY_UINT8 : NPY_INT32, dims))) goto done;
    const int32_t *r = (const int32_t *)PyArray_DATA(rec);
    const npy_intp n = PyArray_DIM(rec, 0);
    const long bx0 = left, bx1 = left + box_w, by0 = top, by1 = top + box_h;
    Py_BEGIN_ALLOW_THREADS
    /* Zero displacement where no record writes (its bytes with a table), then each record's
     * block: (dst - src), or its bytes table[c, v + len / 2]. */
    const uint8_t *t = table ? (const uint8_t *)PyArray_DATA(table) : NULL;
    const npy_intp len = table ? PyArray_DIM(table, 1) : 0;
    uint8_t *f8 = (uint8_t *)PyArray_DATA(out);
    int32_t *f32 = (int32_t *)PyArray_DATA(out);
    if (t) {
        const uint8_t zero[2] = {look(t, len, 0, 0), look(t, len, 1, 0)};
        for (npy_intp k = 0; k < box_h * box_w; ++k) memcpy(f8 + 2 * k, zero, 2);
    } else if (out_obj != Py_None) {
        memset(f32, 0, (size_t)box_h * box_w * 2 * sizeof(int32_t));
    }
    Block b;
    for (npy_intp i = 0; i < n; ++i) {
        if (!record_block(r + 6 * i, width, height, bx0, bx1, by0, by1, &b)) continue;
        const int32_t vx = (int32_t)(b.dx - b.sx), vy = (int32_t)(b.dy - b.sy);
        const uint8_t pair[2] = {t ? look(t, len, 0, vx) : 0, t ? look(t, len, 1, vy) : 0};
        for (long oy = b.y0; oy < b.y1; ++oy) {
            const npy_intp row = 2 * ((b.dy + oy - by0) * box_w + (b.dx - bx0));
            for (long ox = b.x0; ox < b.x1; ++ox) {
                if (t) {
                    memcpy(f8 + row + 2 * ox, pair, 2);
                } else {
                    f32[row + 2 * ox] = vx;
                    f32[row + 2 * ox + 1] = vy;
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
done:
    Py_XDECREF(rec);
    Py_XDECREF(table);
    if (PyErr_Occurred()) Py_CLEAR(out);
    return (PyObject *)out;
}

/* The pixels the records move into the box, new[dst] = old[src] on the map `a` (2 int32 a
 * pixel), row by row of each block (contiguous in the source and the destination): with `moved`
 * NULL, their count (in int32); else, `scatter` 0: the sources read into `moved` in record
 * order, 1: the destinations written from it in the same order. Rows are short (a block):
 * copied inline. */
static size_t move_blocks(const int32_t *r, npy_intp n, int32_t *a, long width, long height,
                          const long box[4], int32_t *moved, int scatter) {
    size_t total = 0;
    Block b;
    for (npy_intp i = 0; i < n; ++i) {
        if (!record_block(r + 6 * i, width, height, box[0], box[1], box[2], box[3], &b))
            continue;
        const long len = 2 * (b.x1 - b.x0);
        for (long oy = b.y0; oy < b.y1; ++oy, total += (size_t)len) {
            if (!moved) continue;
            int32_t *src = a + 2 * ((b.sy + oy) * width + b.sx + b.x0);
            int32_t *dst = a + 2 * ((b.dy + oy) * width + b.dx + b.x0);
            int32_t *k = moved + total;
            if (scatter)
                for (long j = 0; j < len; ++j) dst[j] = k[j];
            else
                for (long j = 0; j < len; ++j) k[j] = src[j];
        }
    }
    return total;
}

static PyObject *accumulate(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *rec_obj, *map_obj;
    Py_ssize_t top = 0, left = 0, box_h = -1, box_w = -1;
    if (!PyArg_ParseTuple(args, "OO|nnnn", &rec_obj, &map_obj, &top, &left, &box_h, &box_w))
        return NULL;
    PyArrayObject *rec = NULL, *map = NULL;
    int32_t *moved = NULL;
    PyObject *ret = NULL;
    if (!(rec = as_array(rec_obj, NPY_INT32, 2, 6, "records"))) goto done;
    if (!(map = as_array(map_obj, NPY_INT32, 3, 2, "map"))) goto done;
    if (!PyArray_ISWRITEABLE(map)) {
        PyErr_SetString(PyExc_ValueError, "map is read-only");
        goto done;
    }
    const long height = (long)PyArray_DIM(map, 0), width = (long)PyArray_DIM(map, 1);
    if (box_h < 0) box_h = height - top;
    if (box_w < 0) box_w = width - left;
    if (!check_box(top, left, box_h, box_w, height, width)) goto done;
    const long box[4] = {left, left + box_w, top, top + box_h};
    const int32_t *r = (const int32_t *)PyArray_DATA(rec);
    int32_t *a = (int32_t *)PyArray_DATA(map);
    const npy_intp n = PyArray_DIM(rec, 0);
    const size_t total = move_blocks(r, n, a, width, height, box, NULL, 0);
    moved = PyMem_RawMalloc(total ? total * sizeof(int32_t) : 1);
    if (!moved) {
        PyErr_NoMemory();
        goto done;
    }
    /* new[dst] = old[src], every record reading the previous frame's map: in place, in two
     * passes over the moved pixels only (read all sources, then write all destinations in
     * record order, so a later record's block wins as it would over a copy). */
    Py_BEGIN_ALLOW_THREADS
    move_blocks(r, n, a, width, height, box, moved, 0);
    move_blocks(r, n, a, width, height, box, moved, 1);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    PyMem_RawFree(moved);
    Py_XDECREF(rec);
    Py_XDECREF(map);
    return ret;
}

static PyObject *source_box(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *rec_obj;
    Py_ssize_t height, width, top, left, box_h, box_w;
    if (!PyArg_ParseTuple(args, "Onnnnnn", &rec_obj, &height, &width, &top, &left, &box_h,
                          &box_w))
        return NULL;
    if (!check_box(top, left, box_h, box_w, height, width)) return NULL;
    PyArrayObject *rec = as_array(rec_obj, NPY_INT32, 2, 6, "records");
    if (!rec) return NULL;
    const int32_t *r = (const int32_t *)PyArray_DATA(rec);
    const npy_intp n = PyArray_DIM(rec, 0);
    long x0 = left, x1 = left + box_w, y0 = top, y1 = top + box_h;
    Block b;
    for (npy_intp i = 0; i < n; ++i) {
        if (!record_block(r + 6 * i, width, height, left, left + box_w, top, top + box_h, &b))
            continue;
        if (b.sx + b.x0 < x0) x0 = b.sx + b.x0;
        if (b.sx + b.x1 > x1) x1 = b.sx + b.x1;
        if (b.sy + b.y0 < y0) y0 = b.sy + b.y0;
        if (b.sy + b.y1 > y1) y1 = b.sy + b.y1;
    }
    Py_DECREF(rec);
    return Py_BuildValue("nnnn", (Py_ssize_t)y0, (Py_ssize_t)x0, (Py_ssize_t)(y1 - y0),
                         (Py_ssize_t)(x1 - x0));
}

/* One row segment of a residual: n bytes (whole pixels) of cur minus ref, as int32 or through
 * the table (arithmetically when it is a clipped shift). */
typedef struct {
    int32_t *i32;       /* int32 output, or NULL */
    uint8_t *u8;        /* uint8 output through the table, or NULL */
    const uint8_t *table;
    npy_intp len;
    int shifted, shift; /* the table is clip(v + shift, 0, 255) in every channel */
} Sink;

static inline void diff_row(const Sink *o, npy_intp k, const uint8_t *cp, const uint8_t *rp,
                            npy_intp n) {
    if (o->shifted) {
        uint8_t *op = o->u8 + k;
        const int16_t sh = (int16_t)o->shift;
        for (npy_intp i = 0; i < n; ++i) { /* int16 lanes: twice as many per vector */
            const int16_t v = (int16_t)((int16_t)cp[i] - (int16_t)rp[i] + sh);
            const int16_t lo = v < 0 ? 0 : v;
            op[i] = (uint8_t)(lo > 255 ? 255 : lo);
        }
    } else if (o->u8) {
        for (npy_intp i = 0; i < n; i += 3)
            for (int ch = 0; ch < 3; ++ch)
                o->u8[k + i + ch] = look(o->table, o->len, ch, (int32_t)cp[i + ch] - rp[i + ch]);
    } else {
        int32_t *op = o->i32 + k;
        for (npy_intp i = 0; i < n; ++i) op[i] = (int32_t)cp[i] - (int32_t)rp[i];
    }
}

/* The residual output `out_obj` (given, or new when None) of the box (box_h, box_w) and its
 * sink; NULL with an exception. */
static PyArrayObject *residual_out(PyObject *out_obj, PyObject *table_obj, npy_intp box_h,
                                   npy_intp box_w, PyArrayObject **table, Sink *o) {
    if (table_obj != Py_None && !(*table = lookup_table(table_obj, 3))) return NULL;
    npy_intp dims[3] = {box_h, box_w, 3};
    PyArrayObject *out = output(out_obj, *table ? NPY_UINT8 : NPY_INT32, dims);
    if (!out) return NULL;
    memset(o, 0, sizeof *o);
    if (*table) {
        o->u8 = (uint8_t *)PyArray_DATA(out);
        o->table = (const uint8_t *)PyArray_DATA(*table);
        o->len = PyArray_DIM(*table, 1);
        o->shifted = clipped_shift(o->table, o->len, 3, &o->shift);
    } else {
        o->i32 = (int32_t *)PyArray_DATA(out);
    }
    return out;
}

static PyObject *residual_mv(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cur_obj, *ref_obj, *rec_obj, *out_obj, *table_obj = Py_None;
    Py_ssize_t top, left;
    if (!PyArg_ParseTuple(args, "OOOnnO|O", &cur_obj, &ref_obj, &rec_obj, &top, &left, &out_obj,
                          &table_obj))
        return NULL;
    PyArrayObject *cur = NULL, *ref = NULL, *rec = NULL, *out = NULL, *table = NULL;
    if (!(cur = as_array(cur_obj, NPY_UINT8, 3, 3, "current frame"))) goto done;
    if (!(ref = as_array(ref_obj, NPY_UINT8, 3, 3, "reference frame"))) goto done;
    if (!(rec = as_array(rec_obj, NPY_INT32, 2, 6, "records"))) goto done;
    const npy_intp height = PyArray_DIM(cur, 0), width = PyArray_DIM(cur, 1);
    if (PyArray_DIM(ref, 0) != height || PyArray_DIM(ref, 1) != width) {
        PyErr_SetString(PyExc_ValueError, "frames must have the same height and width");
        goto done;
    }
    if (!PyArray_Check(out_obj) || PyArray_NDIM((PyArrayObject *)out_obj) != 3) {
        PyErr_SetString(PyExc_ValueError, "output must be a 3-d array (the box)");
        goto done;
    }
    const npy_intp box_h = PyArray_DIM((PyArrayObject *)out_obj, 0);
    const npy_intp box_w = PyArray_DIM((PyArrayObject *)out_obj, 1);
    if (!check_box(top, left, box_h, box_w, height, width)) goto done;
    Sink o;
    if (!(out = residual_out(out_obj, table_obj, box_h, box_w, &table, &o))) goto done;
    const uint8_t *c = (const uint8_t *)PyArray_DATA(cur);
    const uint8_t *rf = (const uint8_t *)PyArray_DATA(ref);
    const int32_t *r = (const int32_t *)PyArray_DATA(rec);
    const npy_intp n = PyArray_DIM(rec, 0);
    Py_BEGIN_ALLOW_THREADS
    /* The residual against the previous frame through the field of `records`, without
     * building the field: every pixel of the box first as if its vector were zero, then each
     * record's block (`record_block`) rewritten with its source, records in order, so
     * that a pixel ends with the last record that covers it, as the field does. Rows are
     * contiguous in both frames (vectorised). */
    for (npy_intp y = 0; y < box_h; ++y) {
        const npy_intp g = 3 * ((top + y) * width + left);
        diff_row(&o, 3 * y * box_w, c + g, rf + g, 3 * box_w);
    }
    Block b;
    for (npy_intp i = 0; i < n; ++i) {
        if (!record_block(r + 6 * i, width, height, left, left + box_w, top, top + box_h, &b))
            continue;
        for (long oy = b.y0; oy < b.y1; ++oy) {
            const npy_intp k = 3 * ((b.dy + oy - top) * box_w + (b.dx + b.x0 - left));
            diff_row(&o, k, c + 3 * ((b.dy + oy) * width + b.dx + b.x0),
                     rf + 3 * ((b.sy + oy) * width + b.sx + b.x0), 3 * (b.x1 - b.x0));
        }
    }
    Py_END_ALLOW_THREADS
done:
    Py_XDECREF(cur);
    Py_XDECREF(ref);
    Py_XDECREF(rec);
    Py_XDECREF(table);
    return (PyObject *)out;
}

static PyObject *residual(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cur_obj, *ref_obj, *map_obj, *out_obj = Py_None, *table_obj = Py_None;
    Py_ssize_t top = 0, left = 0;
    if (!PyArg_ParseTuple(args, "OOO|nnOO", &cur_obj, &ref_obj, &map_obj, &top, &left, &out_obj,
                          &table_obj))
        return NULL;
    PyArrayObject *cur = NULL, *ref = NULL, *map = NULL, *out = NULL, *table = NULL;
    cur = as_array(cur_obj, NPY_UINT8, 3, 3, "current frame");
    if (!cur) goto done;
    ref = as_array(ref_obj, NPY_UINT8, 3, 3, "reference frame");
    if (!ref) goto done;
    map = as_array(map_obj, NPY_INT32, 3, 2, "map");
    if (!map) goto done;
    const npy_intp height = PyArray_DIM(ref, 0), width = PyArray_DIM(ref, 1);
    /* The box: the output's size when given, else the map's. The map covers the box, or the
     * whole frame (then read at the box's place); so does the current frame. */
    const int given = out_obj != Py_None && PyArray_Check(out_obj) &&
                      PyArray_NDIM((PyArrayObject *)out_obj) == 3;
    const npy_intp box_h = given ? PyArray_DIM((PyArrayObject *)out_obj, 0) : PyArray_DIM(map, 0);
    const npy_intp box_w = given ? PyArray_DIM((PyArrayObject *)out_obj, 1) : PyArray_DIM(map, 1);
    if (!check_box(top, left, box_h, box_w, height, width)) goto done;
    const int cur_whole = PyArray_DIM(cur, 0) == height && PyArray_DIM(cur, 1) == width;
    if (!cur_whole && (PyArray_DIM(cur, 0) != box_h || PyArray_DIM(cur, 1) != box_w)) {
        PyErr_SetString(PyExc_ValueError,
                        "the current frame must have the reference's size or the box's");
        goto done;
    }
    const int whole = PyArray_DIM(map, 0) == height && PyArray_DIM(map, 1) == width;
    if (!whole && (PyArray_DIM(map, 0) != box_h || PyArray_DIM(map, 1) != box_w)) {
        PyErr_SetString(PyExc_ValueError, "map must cover the box or the whole frame");
        goto done;
    }
    Sink o;
    if (!(out = residual_out(out_obj, table_obj, box_h, box_w, &table, &o))) goto done;
    const uint8_t *c = (const uint8_t *)PyArray_DATA(cur);
    const uint8_t *rf = (const uint8_t *)PyArray_DATA(ref);
    const npy_intp map_w = whole ? width : box_w;
    const int32_t *m = (const int32_t *)PyArray_DATA(map) + (whole ? 2 * (top * width + left) : 0);
    npy_intp bad = -1;
    uint8_t *gathered = PyMem_RawMalloc((size_t)(3 * box_w + 1));
    const npy_intp last = height * width - 1; /* the frame's last pixel: no 4th byte */
    if (!gathered) {
        PyErr_NoMemory();
        Py_CLEAR(out);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    /* Δ[p] = cur[p] − ref[map[p]] for p in the box (the map holds the source pixel (x, y) of
     * each pixel in the reference); map and output are indexed from the box's corner. With a
     * table, the output holds table[c, Δ + len / 2] (clipped to the table) instead of Δ. Row by
     * row: each pixel's source gathered into a row buffer, then the row's difference at once
     * (vectorised). An accumulated map is fragmented (a few pixels a run on lab-filmed faces),
     * where this beats differencing run by run (benchmarks/loader.py). */
    for (npy_intp y = 0; y < box_h && bad < 0; ++y) {
        const npy_intp gy = top + y;
        const int32_t *row = m + 2 * y * map_w;
        for (npy_intp x = 0; x < box_w; ++x) {
            const uint32_t sx = (uint32_t)row[2 * x], sy = (uint32_t)row[2 * x + 1];
            if (sx >= (uint32_t)width || sy >= (uint32_t)height) { /* negatives wrap: too big */
                bad = gy * width + left + x;
                break;
            }
            const npy_intp i = (npy_intp)sy * width + sx;
            if (i < last) { /* 4 bytes moved as one word, the 4th overwritten next */
                uint32_t v;
                memcpy(&v, rf + 3 * i, 4);
                memcpy(gathered + 3 * x, &v, 4);
            } else {
                memcpy(gathered + 3 * x, rf + 3 * i, 3);
            }
        }
        if (bad < 0) {
            const npy_intp at = cur_whole ? gy * width + left : y * box_w;
            diff_row(&o, 3 * y * box_w, c + 3 * at, gathered, 3 * box_w);
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(gathered);
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

/* FFmpeg's AVMotionVector (libavutil/motion_vector.h), as exported by `flags2 +export_mvs`. */
typedef struct {
    int32_t source;
    uint8_t w, h;
    int16_t src_x, src_y, dst_x, dst_y;
    uint64_t flags;
    int32_t motion_x, motion_y;
    uint16_t motion_scale;
} MotionVector;

static PyObject *records(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *ret = NULL;
    if (view.len % (Py_ssize_t)sizeof(MotionVector)) {
        PyErr_Format(PyExc_ValueError, "motion-vector side data of %zd bytes is not a whole "
                     "number of %zu-byte records", view.len, sizeof(MotionVector));
        goto done;
    }
    const npy_intp n = view.len / (Py_ssize_t)sizeof(MotionVector);
    npy_intp kept = 0;
    MotionVector mv;
    for (npy_intp i = 0; i < n; ++i) {
        memcpy(&mv, (const char *)view.buf + i * sizeof mv, sizeof mv);
        kept += mv.source < 0;
    }
    npy_intp dims[2] = {kept, 6};
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(2, dims, NPY_INT32, 0);
    if (!out) goto done;
    int32_t *o = (int32_t *)PyArray_DATA(out);
    for (npy_intp i = 0; i < n; ++i) { /* past references only (there are no B-frames) */
        memcpy(&mv, (const char *)view.buf + i * sizeof mv, sizeof mv);
        if (mv.source >= 0) continue;
        o[0] = mv.w, o[1] = mv.h, o[2] = mv.src_x, o[3] = mv.src_y, o[4] = mv.dst_x;
        o[5] = mv.dst_y;
        o += 6;
    }
    ret = (PyObject *)out;
done:
    PyBuffer_Release(&view);
    return ret;
}

static PyMethodDef methods[] = {
    {"mv_field", mv_field, METH_VARARGS,
     "mv_field(records, height, width[, top, left, box_h, box_w, out, table]) -> int32 (box_h, "
     "box_w, 2): per-pixel (dst - src) of one frame, on the box (default: the whole frame), "
     "written into `out` when given; with a uint8 table (2, L), its bytes instead."},
    {"accumulate", accumulate, METH_VARARGS,
     "accumulate(records, map[, top, left, box_h, box_w]) -> None: the map composed with one "
     "frame in place, new[dst] = old[src] (map: the source pixel in the I-frame of each pixel), "
     "for dst in the box (default: the whole frame); outside it the map is left as it was."},
    {"source_box", source_box, METH_VARARGS,
     "source_box(records, height, width, top, left, box_h, box_w) -> (top, left, h, w): the "
     "smallest box holding the box and every pixel that the records move into it read from: "
     "what the previous map must hold for accumulate on the box."},
    {"residual", residual, METH_VARARGS,
     "residual(cur, ref, map[, top, left, out, table]) -> int32 (h, w, 3): cur - ref sampled "
     "at the source pixel (x, y) that the map gives, on the box of out's size (or the map's) "
     "at (top, left) of the frames, the map and cur each covering the box or the whole frame; "
     "with a uint8 table (3, L), uint8 table[c, clip(v + L // 2, 0, L - 1)] instead; written "
     "into `out` when given."},
    {"residual_mv", residual_mv, METH_VARARGS,
     "residual_mv(cur, ref, records, top, left, out[, table]) -> out: the residual against the "
     "previous frame through the records' field (as residual(cur, ref, p - mv_field(records), "
     "top, left, out, table)), on the box of out's size at (top, left)."},
    {"records", records, METH_O,
     "records(side_data) -> int32 (n, 6): (w, h, src_x, src_y, dst_x, dst_y) of the "
     "AVMotionVector records of a frame's motion-vector side data whose source is a past frame."},
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
