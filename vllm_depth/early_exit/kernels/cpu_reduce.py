"""The CPU exit check's reduction over full logits, as one native function.

On the CPU the engine checks exits on the logits vLLM's LM-head GEMM made (they
are reused as the step's).  Per row the softmax criterion needs the best logit
``t1`` and ``sum(exp(logit - t1))``, the margin criterion also the second best:
two passes over the row (three for the margin).  As torch ops that is four ops and an fp32 copy of
``[tokens x vocab]`` (at 16 tokens in bf16 about 2 ms, as much as the GEMM);
compiled with torch.compile it is one fused loop, but each compiled call costs
about 0.25 ms of Python when the caches are cold, as they are after decoder
layers.  This is those passes in C (GCC vector extensions), reading the logits in their own dtype
(fp32 or bf16), rows in parallel with OpenMP, called through ctypes.

The C source below is compiled with the system's C compiler (``CC``, else
``cc``) at first use, for this machine's CPU, and cached under
``kernels/`` of the plugin's cache (``$VDEPTH_CACHE``, else ``~/.cache/vllm-depth``) by a hash of the source,
the flags and the CPU's feature flags.  Where it cannot be built, ``load()``
returns None and says why once; the caller then runs torch ops.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from vllm_depth.paths import cache_dir

log = logging.getLogger(__name__)

CHUNK_LEN = 8192  # logits per chunk: they stay in L2 between its passes; one row's chunks run in parallel
MAX_PARTS = 4096  # chunks per call (a stack array in C): the caller splits larger batches

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* GCC vector extensions: 16 lanes, lowered to whatever this CPU has (AVX-512: one register). */
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(64)));
#define LANES 16
#define BLOCK 64 /* vectors summed in fp32 before the block's sum goes into a double */

static inline vf splat(float x) { return (vf){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
static inline vf pick(vf a, vf b, vi mask) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); } /* mask ? a : b */

static inline vf load_f32(const void *p, long i) {
    vf v;
    memcpy(&v, (const float *)p + i, sizeof v);
    return v;
}

static inline vf load_bf16(const void *p, long i) {
    vh h;
    memcpy(&h, (const uint16_t *)p + i, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
}

static inline float one_f32(const void *p, long i) { return ((const float *)p)[i]; }

static inline float one_bf16(const void *p, long i) {
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* exp(x) for x <= 0: Cephes' expf (x = n ln2 + r, a degree-6 polynomial in r, relative error
   about 1e-7); 0 below -87.3, where 2^n leaves the normal floats. */
static inline vf exp_nonpos(vf x) {
    const vf lo = splat(-87.3f), magic = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    vi under = x < lo;
    vf xc = pick(lo, x, under);
    vf n = (xc * splat(1.44269504088896341f) + magic) - magic;
    vf r = xc - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
    vf p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * (r * r) + r + splat(1.0f);
    vf scale = (vf)((__builtin_convertvector(n, vi) + 127) << 23);
    return pick(splat(0.0f), p * scale, under);
}

static inline float exp_one(float x) {
    vf v = exp_nonpos(splat(x));
    return v[0];
}

/* One chunk of a row: its best logit, the sum of exp(logit - best) (fp32 within blocks of BLOCK
   vectors, the blocks summed in double), and with ``margin`` the number of entries equal to the
   best and the best entry below it. */
typedef struct { float m, s, ties, below; } part;

#define CHUNK(NAME, LOAD, ONE)                                                                 \
static part NAME(const void *x, long V, int margin) {                                          \
    long VL = V / LANES * LANES;                                                               \
    vf mx = splat(-INFINITY);                                                                  \
    for (long i = 0; i < VL; i += LANES) {                                                     \
        vf v = LOAD(x, i);                                                                     \
        mx = pick(v, mx, v > mx);                                                              \
    }                                                                                          \
    float m = -INFINITY;                                                                       \
    for (int l = 0; l < LANES; l++) m = mx[l] > m ? mx[l] : m;                                 \
    for (long i = VL; i < V; i++) { float v = ONE(x, i); m = v > m ? v : m; }                  \
    vf vm = splat(m);                                                                          \
    double total = 0.0;                                                                        \
    for (long i0 = 0; i0 < VL; i0 += BLOCK * LANES) {                                          \
        long i1 = i0 + BLOCK * LANES < VL ? i0 + BLOCK * LANES : VL;                           \
        vf acc = splat(0.0f);                                                                  \
        for (long i = i0; i < i1; i += LANES) acc += exp_nonpos(LOAD(x, i) - vm);              \
        for (int l = 0; l < LANES; l++) total += acc[l];                                       \
    }                                                                                          \
    for (long i = VL; i < V; i++) total += exp_one(ONE(x, i) - m);                             \
    part p = {m, (float)total, 0.0f, -INFINITY};                                               \
    if (margin) {                                                                              \
        vf below = splat(-INFINITY), ties = splat(0.0f);                                       \
        for (long i = 0; i < VL; i += LANES) {                                                 \
            vf v = LOAD(x, i);                                                                 \
            below = pick(v, below, (v < vm) & (v > below));                                    \
            ties += pick(splat(1.0f), splat(0.0f), v == vm);                                   \
        }                                                                                      \
        for (int l = 0; l < LANES; l++) {                                                      \
            p.below = below[l] > p.below ? below[l] : p.below;                                 \
            p.ties += ties[l];                                                                 \
        }                                                                                      \
        for (long i = VL; i < V; i++) {                                                        \
            float v = ONE(x, i);                                                               \
            p.below = (v < m && v > p.below) ? v : p.below;                                    \
            p.ties += v == m ? 1.0f : 0.0f;                                                    \
        }                                                                                      \
    }                                                                                          \
    return p;                                                                                  \
}

CHUNK(chunk_f32, load_f32, one_f32)
CHUNK(chunk_bf16, load_bf16, one_bf16)

#define CHUNK_LEN @CHUNK_LEN@
#define MAX_PARTS @MAX_PARTS@

/* The exit confidence of each row r < T of a [T, V] matrix of logits (row stride ``stride``
   elements, fp32 or bf16 bits): out[r] = the softmax's max probability, or with ``margin`` the
   top-1 minus the top-2 probability (0 on a tie for the top).  ``rest`` (or NULL): per row a
   reduced head's "other" logit, in the softmax's mass but never a top token.  Returns 0, or -1
   when T x chunks exceeds MAX_PARTS (the caller splits the rows). */
int exit_confidence(const void *logits, int bf16, long T, long V, long stride, int margin, const float *rest,
                    float *out) {
    long C = (V + CHUNK_LEN - 1) / CHUNK_LEN;
    if (T * C > MAX_PARTS) return -1;
    part parts[MAX_PARTS];
    #pragma omp parallel for schedule(static) if (T * C > 1)
    for (long j = 0; j < T * C; j++) {
        long r = j / C, c0 = (j % C) * CHUNK_LEN;
        long n = V - c0 < CHUNK_LEN ? V - c0 : CHUNK_LEN;
        parts[j] = bf16 ? chunk_bf16((const uint16_t *)logits + r * stride + c0, n, margin)
                        : chunk_f32((const float *)logits + r * stride + c0, n, margin);
    }
    for (long r = 0; r < T; r++) {
        const part *p = parts + r * C;
        float m = -INFINITY;
        for (long c = 0; c < C; c++) m = p[c].m > m ? p[c].m : m;
        double total = 0.0;
        float ties = 0.0f, second = -INFINITY;
        for (long c = 0; c < C; c++) {
            if (p[c].m > -INFINITY) total += (double)p[c].s * exp((double)p[c].m - (double)m);
            if (p[c].m == m) {
                ties += p[c].ties;
                second = p[c].below > second ? p[c].below : second;
            } else {
                second = p[c].m > second ? p[c].m : second;
            }
        }
        double top = m; /* the softmax's shift: the best logit, or the "other" logit when larger */
        if (rest != NULL && rest[r] > m) {
            top = rest[r];
            total *= exp((double)m - top);
        }
        if (rest != NULL) total += exp((double)rest[r] - top);
        double p1 = exp((double)m - top) / total;
        if (!margin) {
            out[r] = (float)p1;
        } else {
            double t2 = ties > 1.0f ? m : second;
            out[r] = (float)(p1 - exp(t2 - top) / total);
        }
    }
    return 0;
}

/* Cosine similarity of rows of a and b (dot and squared norms in 16 fp32 lanes). */
#define COSINE(NAME, LOAD_A, ONE_A, LOAD_B, ONE_B)                                             \
static float NAME(const void *a, const void *b, long H) {                                      \
    long HL = H / LANES * LANES;                                                               \
    vf dot = splat(0.0f), na = splat(0.0f), nb = splat(0.0f);                                  \
    for (long i = 0; i < HL; i += LANES) {                                                     \
        vf x = LOAD_A(a, i), y = LOAD_B(b, i);                                                 \
        dot += x * y;                                                                          \
        na += x * x;                                                                           \
        nb += y * y;                                                                           \
    }                                                                                          \
    double d = 0.0, sa = 0.0, sb = 0.0;                                                        \
    for (int l = 0; l < LANES; l++) { d += dot[l]; sa += na[l]; sb += nb[l]; }                 \
    for (long i = HL; i < H; i++) {                                                            \
        float x = ONE_A(a, i), y = ONE_B(b, i);                                                \
        d += (double)x * y;                                                                    \
        sa += (double)x * x;                                                                   \
        sb += (double)y * y;                                                                   \
    }                                                                                          \
    double n = sqrt(sa) * sqrt(sb);                                                            \
    return (float)(d / (n > 1e-8 ? n : 1e-8));                                                 \
}

COSINE(cos_ff, load_f32, one_f32, load_f32, one_f32)
COSINE(cos_fb, load_f32, one_f32, load_bf16, one_bf16)
COSINE(cos_bf, load_bf16, one_bf16, load_f32, one_f32)
COSINE(cos_bb, load_bf16, one_bf16, load_bf16, one_bf16)

/* Cosine similarity of row r of a and of b (fp32 or bf16 bits each, row strides sa / sb), r < T. */
void exit_saturation(const void *a, int a_bf16, long sa, const void *b, int b_bf16, long sb, long T, long H,
                     float *out) {
    for (long r = 0; r < T; r++) {
        const char *pa = (const char *)a + r * sa * (a_bf16 ? 2 : 4);
        const char *pb = (const char *)b + r * sb * (b_bf16 ? 2 : 4);
        out[r] = a_bf16 ? (b_bf16 ? cos_bb(pa, pb, H) : cos_bf(pa, pb, H))
                        : (b_bf16 ? cos_fb(pa, pb, H) : cos_ff(pa, pb, H));
    }
}
"""

SOURCE = SOURCE.replace("@CHUNK_LEN@", str(CHUNK_LEN)).replace("@MAX_PARTS@", str(MAX_PARTS))
_IS_BF16 = {torch.float32: False, torch.bfloat16: True}  # the dtypes the native functions read
_DTYPES = tuple(_IS_BF16)
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC"]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _cache_dir() -> Path:
    return cache_dir() / "kernels"


def _build(path: Path, compiler: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src, lib = Path(tmp) / "exit_reduce.c", Path(tmp) / "exit_reduce.so"
        src.write_text(SOURCE)
        subprocess.run([compiler, *FLAGS, str(src), "-o", str(lib)], check=True, capture_output=True, text=True)
        os.replace(lib, path)  # atomic: engines building at once each leave a whole library


@functools.cache
def load():
    """The compiled ``(exit_confidence, exit_saturation)`` (ctypes), or None where they cannot be
    built (said once)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.system() != "Linux":
        log.warning("exit check: no C compiler (CC, cc): the CPU reduction over the logits runs as torch ops")
        return None
    key = hashlib.sha256("\0".join([SOURCE, compiler, *FLAGS, _cpu_flags()]).encode()).hexdigest()[:16]
    path = _cache_dir() / f"exit_reduce-{key}.so"
    try:
        if not path.exists():
            _build(path, compiler)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or e
        log.warning("exit check: building the CPU reduction failed (%s); it runs as torch ops", detail)
        return None
    confidence_fn, saturation_fn = lib.exit_confidence, lib.exit_saturation
    confidence_fn.restype = ctypes.c_int
    confidence_fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                              ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    saturation_fn.restype = None
    saturation_fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p, ctypes.c_int,
                              ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_void_p]
    return confidence_fn, saturation_fn


def confidence(logits: torch.Tensor, rest: torch.Tensor | None, margin: bool) -> torch.Tensor | None:
    """The exit confidence of each row of CPU ``logits`` (fp32 or bf16, unit stride along the
    vocabulary): max probability, or top-1 minus top-2 probability (``margin``); ``rest``: a reduced
    head's "other" logit per row.  None where the native function is unavailable or does not take
    these logits (the caller runs torch ops)."""
    if logits.dtype not in _DTYPES or logits.dim() != 2 or logits.stride(1) != 1:
        return None
    lib = load()
    if lib is None:
        return None
    t, v = logits.shape
    rows = max(1, MAX_PARTS // -(-v // CHUNK_LEN))  # rows per call
    if t > rows:  # a very large batch: in parts
        return torch.cat([confidence(logits[i : i + rows], None if rest is None else rest[i : i + rows], margin)
                          for i in range(0, t, rows)])
    out = torch.empty(t, dtype=torch.float32)
    r = None if rest is None else rest.reshape(-1).float().contiguous()
    bf16 = int(logits.dtype == torch.bfloat16)
    if lib[0](logits.data_ptr(), bf16, t, v, logits.stride(0), int(margin), None if r is None else r.data_ptr(),
          out.data_ptr()) != 0:
        raise RuntimeError(f"exit_confidence refused {t} rows of {v}")
    return out


def saturation(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor | None:
    """Cosine similarity of each row of ``prev`` and ``cur`` (CPU, fp32 or bf16, unit stride along
    the hidden size), or None where the native function is unavailable or does not take them."""
    values = saturation_values(prev, cur)
    return None if values is None else torch.tensor(values, dtype=torch.float32)


@functools.cache
def _out_buffer(rows: int):
    return (ctypes.c_float * rows)()


def saturation_values(prev: torch.Tensor, cur: torch.Tensor) -> list[float] | None:
    """``saturation`` as a list of floats (the fp32 values), what the engine compares with its
    thresholds: the native call writes into a reused buffer and no tensor is made (right after
    decoder layers each torch op, ``torch.empty`` included, costs several microseconds, and so
    does each tensor attribute read: they are read once here)."""
    a16, b16 = _IS_BF16.get(prev.dtype), _IS_BF16.get(cur.dtype)
    shape, sa, sb = cur.shape, prev.stride(), cur.stride()
    if a16 is None or b16 is None or len(shape) != 2 or prev.shape != shape or sa[1] != 1 or sb[1] != 1:
        return None
    lib = load()
    if lib is None:
        return None
    t, h = shape
    out = _out_buffer(t)
    lib[1](prev.data_ptr(), a16, sa[0], cur.data_ptr(), b16, sb[0], t, h, out)
    return out[:]
