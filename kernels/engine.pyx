"""Native int8 inference engine over a plan of uint8 NHWC ops (loops in engine_c.h, GIL released).

A plan (written by ``sfpn_edge.converters.native_export``, format in its docstring) lists
buffers ``{"h", "w", "c"}`` and ops ``conv`` (1x1 or 3x3, fused ReLU, requantized to uint8),
``dwconv`` (3x3 depthwise, channel multiplier), ``maxpool`` and a final ``conv_gap`` (1x1 conv +
ReLU + global average pool -> float descriptor). ``Int8Engine`` checks every index, channel range
and array shape against the buffers before any C code runs, so a wrong plan raises ValueError
instead of touching memory it does not own.
"""
import queue

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, uint8_t
from libc.stdlib cimport free, malloc

cnp.import_array()

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef extern from "engine_c.h" nogil:
    int SFPN_OP_CONV, SFPN_OP_DWCONV, SFPN_OP_MAXPOOL, SFPN_OP_CONV_GAP
    int SFPN_ENGINE_MAX_COUT, SFPN_ENGINE_MAX_MULT
    ctypedef struct sfpn_ebuf:
        int h, w, c
        size_t offset
    ctypedef struct sfpn_eop:
        int kind, src, dst, src_c0, dst_c0
        int cin, cout, kernel, stride, mult
        const int8_t *w_vnni
        const int8_t *w_port
        const int8_t *w_arm
        const int32_t *corr
        size_t arm_block
        const float *scale
        const float *bias
    ctypedef struct sfpn_isa:
        const char *name
        int (*available)()
        size_t (*pack_size)(const sfpn_ebuf *src, sfpn_eop *op)
        void (*pack)(const sfpn_ebuf *src, sfpn_eop *op, uint8_t *mem)
    const sfpn_isa *sfpn_isas[]
    ctypedef struct sfpn_eplan:
        int nbuf, nop, out_dim
        const sfpn_isa *isa
        const sfpn_ebuf *bufs
        const sfpn_eop *ops
        size_t dense
        float offset[3]
        uint8_t pad[4]
    int SFPN_ENGINE_MAX_THREADS
    ctypedef struct sfpn_team:
        pass
    int sfpn_cpu_has_vnni()
    const sfpn_isa *sfpn_engine_isa(int portable)
    const sfpn_isa *sfpn_engine_isa_named(const char *name)
    double sfpn_int8_peak(long rounds)
    void sfpn_engine_init_arena(const sfpn_eplan *pl, uint8_t *arena, size_t nbytes)
    void sfpn_engine_run(const sfpn_eplan *pl, const float *x, float *out, uint8_t *arena, float *sums,
                         int stop)
    int sfpn_team_start(sfpn_team *t, int n)
    void sfpn_team_stop(sfpn_team *t)
    void sfpn_team_run(sfpn_team *t, const sfpn_eplan *pl, const float *x, float *out, uint8_t *arena,
                       float *sums)

MAX_SIDE = 4096
MAX_CHANNELS = 4096
MAX_BUFFERS = 1024
MAX_OPS = 4096
MAX_ARENA = 1 << 30
# int32 accumulators hold 255 * 127 * (taps * cin) exactly up to this many products
MAX_REDUCTION = 65536
MAX_THREADS = SFPN_ENGINE_MAX_THREADS
_KINDS = {"conv": SFPN_OP_CONV, "dwconv": SFPN_OP_DWCONV, "maxpool": SFPN_OP_MAXPOOL,
          "conv_gap": SFPN_OP_CONV_GAP}


def cpu_has_vnni():
    """True when this CPU runs the AVX-512 VNNI kernels."""
    return bool(sfpn_cpu_has_vnni())


def isas():
    """Names of the code paths this CPU runs, fastest first (the last, "portable", runs everywhere)."""
    names, i = [], 0
    while True:
        if sfpn_isas[i].available():
            names.append(sfpn_isas[i].name.decode())
        if sfpn_isas[i].name == b"portable":
            return names
        i += 1


def int8_peak_macs(long rounds=20_000_000):
    """Best-case int8 multiply-adds per second on one core (register-only vpdpbusd chains; 0.0
    without VNNI): the ceiling a model's MACs / latency can be compared against."""
    if rounds < 1:
        raise ValueError(f"rounds must be positive, got {rounds}")
    cdef double peak
    with nogil:
        peak = sfpn_int8_peak(rounds)
    return peak


def _int(d, str key, str where, int lo, int hi):
    value = d.get(key) if isinstance(d, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{where}: {key!r} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def _array(arrays, str key, dtype, tuple shape):
    a = arrays.get(key)
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"array {key!r} must be {np.dtype(dtype).name} {shape}, got {got}")
    if dtype == np.float32 and not np.isfinite(a).all():
        raise ValueError(f"array {key!r} contains NaN or inf")
    return a


def _aligned(a):
    """A C-contiguous copy of ``a`` starting on a 64-byte boundary (one cache line per vector load)."""
    raw = np.zeros(a.nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _padded(a, int n):
    """``a`` zero-padded along axis 0 to ``n`` rows."""
    out = np.zeros((n,) + a.shape[1:], a.dtype)
    out[:len(a)] = a
    return out


def pack_conv_vnni(w):
    """int8 [N, taps, K] -> blocks of 64 output channels, each [taps][K / 4][width][4]."""
    n, taps, k = w.shape
    wp = _padded(w, (n + 15) // 16 * 16)
    blocks = []
    for n0 in range(0, len(wp), 64):
        blk = wp[n0:n0 + 64]
        blocks.append(blk.reshape(len(blk), taps, k // 4, 4).transpose(1, 2, 0, 3).ravel())
    return np.concatenate(blocks)


def pack_dw_vnni(w):
    """int8 [M, 9, S] -> [S / 16][tap quad 3][M][16][4] (tap 8 alone in quad 2, zeros after)."""
    m, _, s = w.shape
    w12 = np.zeros((m, 12, s), np.int8)
    w12[:, :9] = w
    return w12.reshape(m, 3, 4, s // 16, 16).transpose(3, 1, 0, 4, 2).ravel()


cdef class _Arena:
    """Activation memory for one image at a time (reused across calls: only interiors are
    rewritten), and the thread team that shares each image when the engine has threads > 1."""
    cdef uint8_t *arena
    cdef float *sums
    cdef sfpn_team *team

    def __dealloc__(self):
        if self.team != NULL:
            with nogil:
                sfpn_team_stop(self.team)
            free(self.team)
        free(self.arena)
        free(self.sums)


cdef class Int8Engine:
    """Run a checked int8 plan: ``run(x float32 [N, 3, H, W]) -> float32 [N, D]``.

    ``threads`` > 1 splits every image over that many threads (one team per concurrent caller);
    results are identical for any thread count. ``portable`` runs the portable loops; ``isa``
    (one of ``isas()``) asks for a code path by name; by default the fastest this CPU runs.
    Attribute ``isa``: the code path this engine runs ("avx512vnni", "neon-dotprod", "neon" or
    "portable"). An engine is built once: a
    second ``__init__`` raises RuntimeError (other threads may be running its plan).
    """
    cdef sfpn_eplan plan
    cdef sfpn_ebuf *bufs
    cdef sfpn_eop *ops
    cdef const sfpn_isa *table
    cdef size_t arena_bytes
    cdef int sums_len
    cdef object keep
    cdef object idle
    cdef readonly tuple input_shape
    cdef readonly int out_dim
    cdef readonly int threads
    cdef readonly str isa

    def __cinit__(self):
        self.bufs = NULL
        self.ops = NULL

    def __dealloc__(self):
        free(self.bufs)
        free(self.ops)

    def __init__(self, dict plan, dict arrays, bint portable=False, int threads=1, str isa=None):
        if self.plan.isa != NULL:
            raise RuntimeError("this Int8Engine is already built; create a new one for another plan")
        if isa is not None:
            self.table = sfpn_engine_isa_named(isa.encode())
            if self.table == NULL:
                raise ValueError(f"code path {isa!r} does not run on this CPU; this one runs {isas()}")
        else:
            self.table = sfpn_engine_isa(portable)
        if not 1 <= threads <= SFPN_ENGINE_MAX_THREADS:
            raise ValueError(f"threads must be in [1, {SFPN_ENGINE_MAX_THREADS}], got {threads}")
        self.threads = threads
        buffers, ops, inp = plan.get("buffers"), plan.get("ops"), plan.get("input")
        if not isinstance(buffers, list) or not 1 <= len(buffers) <= MAX_BUFFERS:
            raise ValueError(f"plan 'buffers' must be a list of 1..{MAX_BUFFERS} buffers")
        if not isinstance(ops, list) or not 1 <= len(ops) <= MAX_OPS:
            raise ValueError(f"plan 'ops' must be a list of 1..{MAX_OPS} ops")
        free(self.bufs)   # left by an __init__ that raised
        free(self.ops)
        self.bufs = <sfpn_ebuf *>malloc(sizeof(sfpn_ebuf) * len(buffers))
        self.ops = <sfpn_eop *>malloc(sizeof(sfpn_eop) * len(ops))
        if self.bufs == NULL or self.ops == NULL:
            raise MemoryError()
        self._buffers(buffers)
        self._input(inp)
        self.plan.nbuf = len(buffers)
        self.keep = []
        written = {0}
        for i, op in enumerate(ops):
            self._op(i, op, arrays, written, i == len(ops) - 1)
            written.add(self.ops[i].dst)
        self.plan.nop = len(ops)
        self.plan.bufs = self.bufs
        self.plan.ops = self.ops
        self.out_dim = self.plan.out_dim
        self.input_shape = (3, self.bufs[0].h, self.bufs[0].w)
        self.idle = queue.SimpleQueue()
        self.plan.isa = self.table   # last: marks the engine built
        self.isa = self.plan.isa.name.decode()

    cdef _buffers(self, list buffers):
        cdef size_t offset = 0
        for b, buf in enumerate(buffers):
            where = f"buffer {b}"
            h = _int(buf, "h", where, 1, MAX_SIDE)
            w = _int(buf, "w", where, 1, MAX_SIDE)
            c = _int(buf, "c", where, 4, MAX_CHANNELS)
            if (b == 0 and c != 4) or (b > 0 and c % 16):
                raise ValueError(f"{where}: the input buffer has 4 channels, the others a multiple of 16; got {c}")
            self.bufs[b].h, self.bufs[b].w, self.bufs[b].c, self.bufs[b].offset = h, w, c, offset
            offset += ((h + 2) * (w + 2) * c + 63) // 64 * 64
            if offset > MAX_ARENA:
                raise ValueError(f"the plan needs more than {MAX_ARENA} bytes of activations")
        self.arena_bytes = offset

    cdef _input(self, inp):
        offset = inp.get("offset") if isinstance(inp, dict) else None
        pad = inp.get("pad") if isinstance(inp, dict) else None
        off = np.asarray(offset if isinstance(offset, list) else [], np.float64)
        if off.shape != (3,) or not np.isfinite(off).all():
            raise ValueError(f"plan input 'offset' must be 3 finite numbers, got {offset!r}")
        if (not isinstance(pad, list) or len(pad) != 4
                or not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 255 for p in pad)):
            raise ValueError(f"plan input 'pad' must be 4 integers in [0, 255], got {pad!r}")
        for c in range(3):
            self.plan.offset[c] = off[c]
        for c in range(4):
            self.plan.pad[c] = pad[c]

    cdef _op(self, int i, op, dict arrays, set written, bint last):
        cdef sfpn_eop *o = &self.ops[i]
        where = f"op {i}"
        kind = op.get("op") if isinstance(op, dict) else None
        if kind not in _KINDS:
            raise ValueError(f"{where}: unknown op {kind!r}; expected one of {sorted(_KINDS)}")
        if (kind == "conv_gap") != last:
            raise ValueError(f"{where}: the plan must end with exactly one 'conv_gap' op")
        o.kind = _KINDS[kind]
        o.src = _int(op, "src", where, 0, self.plan.nbuf - 1)
        if o.src not in written:
            raise ValueError(f"{where}: reads buffer {o.src} before any op wrote it")
        o.dst = o.src if kind == "conv_gap" else _int(op, "dst", where, 1, self.plan.nbuf - 1)
        if kind != "conv_gap" and o.dst == o.src:
            raise ValueError(f"{where}: src and dst are the same buffer")
        cdef sfpn_ebuf *s = &self.bufs[o.src]
        cdef sfpn_ebuf *d = &self.bufs[o.dst]
        o.src_c0, o.dst_c0, o.kernel, o.stride, o.mult = 0, 0, 1, 1, 1
        o.w_vnni = o.w_port = o.w_arm = NULL
        o.corr = NULL
        o.scale = o.bias = NULL
        if kind == "maxpool":
            o.kernel = _int(op, "kernel", where, 1, MAX_SIDE)
            o.stride = _int(op, "stride", where, 1, MAX_SIDE)
            if s.c != d.c or s.h < o.kernel or s.w < o.kernel or \
                    d.h != (s.h - o.kernel) // o.stride + 1 or d.w != (s.w - o.kernel) // o.stride + 1:
                raise ValueError(f"{where}: maxpool {o.kernel}/{o.stride} of {s.h}x{s.w}x{s.c} cannot "
                                 f"produce buffer {o.dst} ({d.h}x{d.w}x{d.c})")
            o.cin = o.cout = s.c
            return
        if s.h != d.h or s.w != d.w:
            raise ValueError(f"{where}: src {s.h}x{s.w} and dst {d.h}x{d.w} differ in size")
        o.src_c0 = _int(op, "src_c0", where, 0, MAX_CHANNELS)
        if kind == "dwconv":
            o.cin = _int(op, "channels", where, 16, MAX_CHANNELS)
            o.mult = _int(op, "multiplier", where, 1, SFPN_ENGINE_MAX_MULT)
            o.cout = o.cin * o.mult
            o.kernel = 3
            o.dst_c0 = _int(op, "dst_c0", where, 0, MAX_CHANNELS)
            if o.cin % 16:
                raise ValueError(f"{where}: dwconv channels must be a multiple of 16, got {o.cin}")
            w = _array(arrays, f"op{i}.w", np.int8, (o.mult, 9, o.cin))
            self._weights(o, pack_dw_vnni(w), w)
        else:
            o.cin = _int(op, "cin", where, 4, MAX_CHANNELS)
            o.kernel = 1 if kind == "conv_gap" else _int(op, "kernel", where, 1, 3)
            if o.kernel == 2 or o.cin % 4 or o.cin * o.kernel * o.kernel > MAX_REDUCTION:
                raise ValueError(f"{where}: conv needs kernel 1 or 3 and cin a multiple of 4, got "
                                 f"kernel {o.kernel}, cin {o.cin}")
            if kind == "conv":
                o.cout = _int(op, "cout", where, 16, SFPN_ENGINE_MAX_COUT)
                o.dst_c0 = _int(op, "dst_c0", where, 0, MAX_CHANNELS)
                if o.cout % 16:
                    raise ValueError(f"{where}: conv cout must be a multiple of 16, got {o.cout}")
            else:
                o.cout = _int(op, "cout", where, 1, SFPN_ENGINE_MAX_COUT)
                self.plan.out_dim = o.cout
                self.sums_len = (o.cout + 15) // 16 * 16
                self.plan.dense = self.arena_bytes   # the conv_gap input, copied without borders
                self.arena_bytes += (s.h * s.w * o.cin + 63) // 64 * 64
            w = _array(arrays, f"op{i}.w", np.int8, (o.cout, o.kernel * o.kernel, o.cin))
            wp = _padded(w, (o.cout + 15) // 16 * 16)
            self._weights(o, pack_conv_vnni(w), wp.transpose(1, 2, 0))
        if o.src_c0 + o.cin > s.c:
            raise ValueError(f"{where}: input channels {o.src_c0}..{o.src_c0 + o.cin} exceed buffer {o.src} ({s.c})")
        if kind != "conv_gap" and o.dst_c0 + o.cout > d.c:
            raise ValueError(f"{where}: output channels {o.dst_c0}..{o.dst_c0 + o.cout} exceed buffer {o.dst} ({d.c})")
        n = (o.cout + 15) // 16 * 16
        scale = _aligned(_padded(_array(arrays, f"op{i}.scale", np.float32, (o.cout,)), n))
        bias = _aligned(_padded(_array(arrays, f"op{i}.bias", np.float32, (o.cout,)), n))
        self.keep += [scale, bias]
        o.scale = <const float *>cnp.PyArray_DATA(scale)
        o.bias = <const float *>cnp.PyArray_DATA(bias)
        if self.table.pack != NULL:   # NEON: weights repacked from the portable layout
            packed = _aligned(np.zeros(self.table.pack_size(s, o), np.uint8))
            self.keep.append(packed)
            self.table.pack(s, o, <uint8_t *>cnp.PyArray_DATA(packed))

    cdef _weights(self, sfpn_eop *o, vnni, port):
        vnni, port = _aligned(vnni), _aligned(port)   # C-order, 64-byte aligned copies of any layout
        self.keep += [vnni, port]
        o.w_vnni = <const int8_t *>cnp.PyArray_DATA(vnni)
        o.w_port = <const int8_t *>cnp.PyArray_DATA(port)

    def _arena(self):
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            pass
        cdef _Arena a = _Arena()
        a.team = NULL
        if posix_memalign(<void **>&a.arena, 64, self.arena_bytes) != 0:
            a.arena = NULL
        if posix_memalign(<void **>&a.sums, 64, sizeof(float) * self.sums_len) != 0:
            a.sums = NULL
        if a.arena == NULL or a.sums == NULL:
            raise MemoryError()
        sfpn_engine_init_arena(&self.plan, a.arena, self.arena_bytes)
        if self.threads > 1:
            a.team = <sfpn_team *>malloc(sizeof(sfpn_team))
            if a.team == NULL:
                raise MemoryError()
            if sfpn_team_start(a.team, self.threads) != 0:
                free(a.team)
                a.team = NULL
                raise RuntimeError(f"cannot start {self.threads} engine threads")
        return a

    def _check_x(self, x):
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise ValueError(f"x must be a float32 numpy array, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim != 4 or x.shape[1:] != self.input_shape or x.shape[0] == 0:
            raise ValueError(f"x must be [N, {', '.join(map(str, self.input_shape))}], got shape {x.shape}")
        if not x.flags.c_contiguous:
            raise ValueError("x must be C-contiguous (use np.ascontiguousarray)")
        if not np.isfinite(x).all():
            raise ValueError("x contains NaN or inf")

    def run(self, x):
        """Descriptors float32 [N, D] for ``x`` float32 [N, 3, H, W] (RGB minus mean, C-contiguous)."""
        self._check_x(x)
        out = np.empty((x.shape[0], self.out_dim), np.float32)
        cdef _Arena a = self._arena()
        cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
        cdef float *op = <float *>cnp.PyArray_DATA(out)
        cdef size_t image = x.shape[1] * x.shape[2] * x.shape[3]
        cdef Py_ssize_t n = x.shape[0], i
        try:
            with nogil:
                for i in range(n):
                    if a.team != NULL:
                        sfpn_team_run(a.team, &self.plan, xp + i * image, op + i * self.out_dim, a.arena, a.sums)
                    else:
                        sfpn_engine_run(&self.plan, xp + i * image, op + i * self.out_dim, a.arena, a.sums,
                                        self.plan.nop)
        finally:
            self.idle.put(a)
        return out

    def activations(self, x, int op):
        """uint8 [N, h, w, c]: the buffer op ``op`` writes, as it is right after that op (ops 0 .. op
        run on one thread; channels of a concat that later ops write are still zero). For
        calibration and debugging; ``op`` must not be the final conv_gap."""
        self._check_x(x)
        if not 0 <= op < self.plan.nop - 1:
            raise ValueError(f"op must be in [0, {self.plan.nop - 2}] (the last op writes no buffer), got {op}")
        cdef sfpn_ebuf b = self.bufs[self.ops[op].dst]
        out = np.empty((x.shape[0], b.h, b.w, b.c), np.uint8)
        cdef _Arena a = self._arena()
        cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
        cdef size_t image = x.shape[1] * x.shape[2] * x.shape[3]
        cdef Py_ssize_t i
        try:
            for i in range(x.shape[0]):
                with nogil:
                    sfpn_engine_run(&self.plan, xp + i * image, NULL, a.arena, a.sums, op + 1)
                padded = np.asarray(<uint8_t[:(b.h + 2) * (b.w + 2) * b.c]>(a.arena + b.offset))
                out[i] = padded.reshape(b.h + 2, b.w + 2, b.c)[1:-1, 1:-1]
        finally:
            self.idle.put(a)
        return out
