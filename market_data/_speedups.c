/* C versions of the two hottest pure functions: depth levels from JSON text to integer units, and
 * the book payload's JSON.
 *
 * Each one either returns exactly what the Python code returns for the same input, or None, and
 * then the Python code runs (see market_data/speedups.py). They take only what the wire normally
 * carries: lists of [price, quantity] ASCII decimal strings, and books whose numbers print the
 * same as orjson prints them. Anything else (an error to report, a number too long for 64 bits,
 * a float that needs more than 15 digits) is left to Python, which stays the reference: the tests
 * compare both on random and malformed input.
 *
 * No state, no I/O; the GIL is held throughout.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define DECIMALS 8     /* market_data.events.DECIMALS: a unit is 1e-8 */
#define MAX_DIGITS 18  /* 10^18 - 1 fits in int64 */
#define MAX_SIGNIFICANT 15  /* a decimal of up to 15 digits survives the round trip via a double */
#define MAX_TEXT 640  /* the least sys.set_int_max_str_digits() limit: int() takes any shorter */

/* The units of a plain non-negative decimal string ("7.6110" -> 761100000), as
 * sources.parse.to_units; -1 for anything else, or for units of more than MAX_DIGITS digits. */
static int64_t
units_of(PyObject *text)
{
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_COMPACT_ASCII(text)) {
        return -1;
    }
    const char *s = (const char *)PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (n > MAX_TEXT) {  /* Python's int() may refuse it (leading zeros count there) */
        return -1;
    }
    int64_t value = 0;
    int any = 0, digits = 0, frac = 0, dot = 0;  /* digits: from the first non-zero one */
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            any = 1;
            if (dot) {
                if (frac == DECIMALS) {  /* past the eighth decimal: only zeros are exact */
                    if (c != '0') {
                        return -1;
                    }
                    continue;
                }
                frac++;
            }
            if ((value || c != '0') && ++digits > MAX_DIGITS) {
                return -1;
            }
            value = value * 10 + (c - '0');
        }
        else if (c == '.' && !dot) {
            dot = 1;
        }
        else {
            return -1;
        }
    }
    if (!any || digits + (DECIMALS - frac) > MAX_DIGITS) {
        return -1;
    }
    for (; frac < DECIMALS; frac++) {
        value *= 10;
    }
    return value;
}

PyDoc_STRVAR(levels_doc,
"levels(raw, /)\n--\n\n"
"A list of [price, quantity, ...] decimal strings as a tuple of (price, quantity) units, or\n"
"None when any entry is not that (Python then reports it).");

static PyObject *
levels(PyObject *module, PyObject *raw)
{
    if (!PyList_CheckExact(raw)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t n = PyList_GET_SIZE(raw);
    PyObject *out = PyTuple_New(n);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = PyList_GET_ITEM(raw, i);
        if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) < 2) {
            goto defer;
        }
        int64_t price = units_of(PyList_GET_ITEM(entry, 0));
        int64_t qty = units_of(PyList_GET_ITEM(entry, 1));
        if (price < 0 || qty < 0) {
            goto defer;
        }
        PyObject *level = PyTuple_New(2);
        if (level == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, level);  /* owned by out from here, also on failure */
        PyObject *p = PyLong_FromLongLong(price), *q = p ? PyLong_FromLongLong(qty) : NULL;
        if (q == NULL) {
            Py_XDECREF(p);
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(level, 0, p);
        PyTuple_SET_ITEM(level, 1, q);
    }
    return out;
defer:
    Py_DECREF(out);
    Py_RETURN_NONE;
}

static const char PAIRS[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Writes the decimal digits of v at out, two at a time; returns how many. */
static int
write_digits(char *out, uint64_t v)
{
    char tmp[20], *t = tmp + sizeof(tmp);
    while (v >= 100) {
        t -= 2;
        memcpy(t, PAIRS + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10) {
        t -= 2;
        memcpy(t, PAIRS + 2 * v, 2);
    }
    else {
        *--t = (char)('0' + v);
    }
    int n = (int)(tmp + sizeof(tmp) - t);
    memcpy(out, t, n);
    return n;
}

static int
write_int(char *out, long long v)
{
    if (v < 0) {
        out[0] = '-';
        return 1 + write_digits(out + 1, (uint64_t)0 - (uint64_t)v);
    }
    return write_digits(out, (uint64_t)v);
}

#define SCALE 100000000  /* 10^DECIMALS */

/* Writes units / 1e8 as orjson writes that float ("50000.1", "0.00001", "1.5e-7", "0.0");
 * returns the length, or -1 when the float needs more than MAX_SIGNIFICANT digits (its shortest
 * form might then not be the decimal itself). */
static int
write_units(char *out, int64_t units)
{
    char *o = out;
    if (units < 1000) {  /* below 1e-5 orjson writes an exponent: "1e-8", "9.99e-6" */
        if (units == 0) {
            memcpy(o, "0.0", 3);
            return 3;
        }
        char d[3];
        int n = write_digits(d, (uint64_t)units), sig = n;
        while (d[sig - 1] == '0') {
            sig--;
        }
        *o++ = d[0];
        if (sig > 1) {
            *o++ = '.';
            memcpy(o, d + 1, sig - 1);
            o += sig - 1;
        }
        memcpy(o, "e-", 2);
        o += 2;
        *o++ = (char)('0' + DECIMALS - (n - 1));
        return (int)(o - out);
    }
    uint64_t whole = (uint64_t)units / SCALE;
    uint32_t frac = (uint32_t)((uint64_t)units % SCALE);
    int whole_digits = write_digits(o, whole);  /* "0" for 0 */
    o += whole_digits;
    *o++ = '.';
    if (frac == 0) {
        *o++ = '0';  /* at most 11 significant digits */
        return (int)(o - out);
    }
    char *frac_start = o;
    memcpy(o, PAIRS + 2 * (frac / 1000000), 2);
    memcpy(o + 2, PAIRS + 2 * (frac / 10000 % 100), 2);
    memcpy(o + 4, PAIRS + 2 * (frac / 100 % 100), 2);
    memcpy(o + 6, PAIRS + 2 * (frac % 100), 2);
    o += 8;
    while (o[-1] == '0') {
        o--;
    }
    /* With a whole part, every written digit is significant; without, at most 8 are. */
    if (whole && whole_digits + (o - frac_start) > MAX_SIGNIFICANT) {
        return -1;
    }
    return (int)(o - out);
}

/* True, with the value at out, when v is an int (not a subclass, not bool) within 64 bits. */
static int
as_int(PyObject *v, long long *out)
{
    int overflow;
    if (!PyLong_CheckExact(v)) {
        return 0;
    }
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);  /* cannot fail on an exact int */
    return !overflow;
}

#define LEVEL_MAX 48  /* "[" + 2 numbers of at most 21 characters + "," + "]" + "," */

/* Writes a JSON array of levels; returns the end, or NULL to defer. */
static char *
write_levels(char *o, PyObject *levels)
{
    Py_ssize_t n = PyTuple_GET_SIZE(levels);
    *o++ = '[';
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *level = PyTuple_GET_ITEM(levels, i);
        if (!PyTuple_CheckExact(level) || PyTuple_GET_SIZE(level) != 2) {
            return NULL;
        }
        long long p, q;
        if (!as_int(PyTuple_GET_ITEM(level, 0), &p) || !as_int(PyTuple_GET_ITEM(level, 1), &q)
            || p < 0 || q < 0) {
            return NULL;
        }
        if (i) {
            *o++ = ',';
        }
        *o++ = '[';
        int w = write_units(o, p);
        if (w < 0) {
            return NULL;
        }
        o += w;
        *o++ = ',';
        w = write_units(o, q);
        if (w < 0) {
            return NULL;
        }
        o += w;
        *o++ = ']';
    }
    *o++ = ']';
    return o;
}

/* The keys, brackets and two 64-bit integers of at most 20 characters: 109 characters. */
#define FIXED_MAX 128
#define STACK_BUFFER 8192
#define PUT(lit) (memcpy(o, lit, sizeof(lit) - 1), o += sizeof(lit) - 1)

PyDoc_STRVAR(book_json_doc,
"book_json(symbol, bids, asks, last_update_id, timestamp, /)\n--\n\n"
"The orderbook payload's JSON, byte for byte as orjson.dumps(sinks.payload.book_dict(...)), or\n"
"None when some value is not one this writer takes (Python then encodes it).");

static PyObject *
book_json(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "book_json expected 5 arguments, got %zd", nargs);
        return NULL;
    }
    PyObject *symbol = args[0], *bids = args[1], *asks = args[2];
    long long last_update_id, timestamp;
    if (!PyUnicode_CheckExact(symbol) || !PyUnicode_IS_COMPACT_ASCII(symbol)
        || !PyTuple_CheckExact(bids) || !PyTuple_CheckExact(asks)
        || !as_int(args[3], &last_update_id) || !as_int(args[4], &timestamp)) {
        Py_RETURN_NONE;
    }
    const char *sym = (const char *)PyUnicode_DATA(symbol);
    Py_ssize_t sym_len = PyUnicode_GET_LENGTH(symbol);
    for (Py_ssize_t i = 0; i < sym_len; i++) {
        if (sym[i] < 0x20 || sym[i] > 0x7e || sym[i] == '"' || sym[i] == '\\') {
            Py_RETURN_NONE;  /* needs escaping */
        }
    }
    Py_ssize_t size = FIXED_MAX + sym_len
                      + (PyTuple_GET_SIZE(bids) + PyTuple_GET_SIZE(asks)) * LEVEL_MAX;
    char stack[STACK_BUFFER];  /* a top-20 book needs about 2 KiB */
    char *start = size <= STACK_BUFFER ? stack : PyMem_Malloc(size), *o = start;
    if (start == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *result = NULL;
    PUT("{\"symbol\":\"");
    memcpy(o, sym, sym_len);
    o += sym_len;
    PUT("\",\"bids\":");
    if ((o = write_levels(o, bids)) == NULL) {
        goto done;
    }
    PUT(",\"asks\":");
    if ((o = write_levels(o, asks)) == NULL) {
        goto done;
    }
    PUT(",\"last_update_id\":");
    o += write_int(o, last_update_id);
    PUT(",\"timestamp\":");
    o += write_int(o, timestamp);
    *o++ = '}';
    result = PyBytes_FromStringAndSize(start, o - start);
done:
    if (start != stack) {
        PyMem_Free(start);
    }
    if (o == NULL) {  /* deferred */
        Py_RETURN_NONE;
    }
    return result;
}

static PyMethodDef methods[] = {
    {"levels", levels, METH_O, levels_doc},
    {"book_json", (PyCFunction)(void (*)(void))book_json, METH_FASTCALL, book_json_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "market_data._speedups",
    .m_doc = "C versions of the depth level parser and the book payload writer.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "DECIMALS", DECIMALS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
