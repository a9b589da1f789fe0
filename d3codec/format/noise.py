"""The sampling noise of format 1.1 (spec/FORMAT.md §5.4): a counter-based generator, defined exactly.

Format 1.0 archives are sampled from torch's CPU Mersenne Twister, whose normal draws no other
implementation (nor a later torch) is bound to reproduce. From 1.1, every noise value is a pure
function of its coordinates, computed with 64-bit integer and IEEE float64 operations whose results
are fixed by the standard (+, −, ×, ÷, √, and exact scalings), so any reader reproduces it bit for
bit: tests/spec_reader.py does with numpy alone.

- Words: ``hash(v1, …, vn)`` folds unsigned 64-bit values through SplitMix64's finaliser
  (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014):
  h ← 0, then h ← mix((h xor v) + γ) for each v, γ = 0x9E3779B97F4A7C15, all modulo 2^64.
- Normals: Marsaglia's polar method (Marsaglia & Bray 1964). Attempt t of a value draws two words,
  each mapped exactly to v ∈ [−1, 1); the first attempt with 0 < s = v1² + v2² < 1 gives
  v1 · √(−2 ln s / s), rounded to float32. The natural logarithm is this module's own
  :func:`log_unit` (frexp, then the atanh series to 25th order), not the C library's, so that no
  platform's ``log`` decides a bit.
- Keys: a value's words are ``hash(seed, stream, a, b, c, t, half)``; each method names what
  a, b, c are (d3codec.methods.d3, d3codec.methods.d2m).

Everything here is numpy; torch only receives the float32 result.
"""

from __future__ import annotations

import numpy as np

GAMMA = 0x9E3779B97F4A7C15
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
MAX_ATTEMPTS = 64  # no value needs more with probability above (1 − π/4)^64 ≈ 10^-43; then it is 0
SQRT_HALF = float.fromhex("0x1.6a09e667f3bcdp-1")  # 0.7071067811865476, float64 nearest √½
LN2 = float.fromhex("0x1.62e42fefa39efp-1")  # 0.6931471805599453, float64 nearest ln 2
ATANH_TERMS = 13  # c_k = 1 / (2k + 1), k = 0 … 12: the series to f^25
CHUNK = 1 << 20  # values computed at once (bounds the temporary arrays)

# the streams: which draw a key belongs to
D3_PRIOR_ORDER, D3_LATENT, D2M_NOISE = 1, 2, 3

_U64 = np.uint64


def mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 words (wrapping arithmetic)."""
    x = (x ^ (x >> _U64(30))) * _U64(MIX1)
    x = (x ^ (x >> _U64(27))) * _U64(MIX2)
    return x ^ (x >> _U64(31))


def absorb(h: np.ndarray, v) -> np.ndarray:
    """One step of the fold: mix((h xor v) + γ), modulo 2^64."""
    return mix((h ^ np.asarray(v, dtype=np.uint64)) + _U64(GAMMA))


def hash_words(*values) -> np.ndarray:
    """hash(v1, …, vn) for uint64 values or arrays (broadcast against each other)."""
    with np.errstate(over="ignore"):
        h = np.zeros(1, dtype=np.uint64)
        for v in values:
            h = absorb(h, v)
    return h


def to_signed_unit(word: np.ndarray) -> np.ndarray:
    """A word's top 53 bits as v = (⌊w / 2^11⌋ − 2^52) · 2^-52 ∈ [−1, 1): float64, exact."""
    return ((word >> _U64(11)).astype(np.int64) - (1 << 52)).astype(np.float64) * 2.0**-52


def log_unit(s: np.ndarray) -> np.ndarray:
    """ln s for float64 s in (0, 1), by operations IEEE 754 rounds the same everywhere.

    s = m · 2^e (frexp, 0.5 ≤ m < 1; m ← 2m, e ← e − 1 when m < √½); f = (m − 1) / (m + 1);
    p = Horner in g = f · f over c_12 … c_0 (p ← p · g + c_k), c_k = 1 / (2k + 1) as float64;
    q = f · p; ln s = e · LN2 + (q + q). Error below 2 ulp; what matters is that it is fixed.
    """
    m, e = np.frexp(s)
    small = m < SQRT_HALF
    m = np.where(small, m * 2.0, m)
    e = np.where(small, e - 1, e).astype(np.float64)
    f = (m - 1.0) / (m + 1.0)
    g = f * f
    p = np.full_like(f, 1.0 / (2 * (ATANH_TERMS - 1) + 1))
    for k in range(ATANH_TERMS - 2, -1, -1):
        p = p * g + 1.0 / (2 * k + 1)
    q = f * p
    return e * LN2 + (q + q)


def normal_from_keys(keys: np.ndarray) -> np.ndarray:
    """Standard normal float32 values, one per uint64 key (the hash of a value's coordinates): attempt t
    uses the words hash-continued by (t, 0) and (t, 1), i.e. absorb(absorb(key, t), half)."""
    out = np.zeros(keys.shape, dtype=np.float32)
    flat_keys, flat_out = keys.reshape(-1), out.reshape(-1)
    with np.errstate(over="ignore"):
        pending = np.arange(flat_keys.size)
        for t in range(MAX_ATTEMPTS):
            if pending.size == 0:
                break
            h = absorb(flat_keys[pending], t)
            v1, v2 = to_signed_unit(absorb(h, 0)), to_signed_unit(absorb(h, 1))
            s = v1 * v1 + v2 * v2
            ok = (s > 0.0) & (s < 1.0)
            s_ok = s[ok]
            flat_out[pending[ok]] = (v1[ok] * np.sqrt((-2.0 * log_unit(s_ok)) / s_ok)).astype(np.float32)
            pending = pending[~ok]
    return out


def check_seed(seed: int) -> int:
    """The seed as an unsigned 64-bit integer. Raises: ValueError outside 0 ≤ seed < 2^64."""
    if type(seed) is not int and not isinstance(seed, np.integer):
        raise ValueError(f"the sampling seed must be an integer, not {seed!r}")
    if not 0 <= int(seed) < 1 << 64:
        raise ValueError(f"the sampling seed must be 0 ≤ seed < 2^64, not {seed}")
    return int(seed)


def normal(seed: int, stream: int, shape: tuple[int, int, int], first: int = 0) -> np.ndarray:
    """Standard normal noise (A, N, Z) float32: value [a, j, d] keyed by hash(seed, stream, a, first + j, d).

    ``first`` offsets the second coordinate (sample index), so a draw can be computed in pieces.
    Raises: ValueError for a seed outside [0, 2^64).
    """
    seed = check_seed(seed)
    a_count, n, z = shape
    out = np.empty(shape, dtype=np.float32)
    with np.errstate(over="ignore"):
        base = hash_words(seed, stream)
        per = max(1, CHUNK // max(1, z))  # samples per piece
        for a in range(a_count):
            h_a = absorb(base, a)
            for lo in range(0, n, per):
                j = np.arange(first + lo, first + min(n, lo + per), dtype=np.uint64)
                h_aj = absorb(h_a, j)[:, None]  # (n', 1)
                keys = absorb(h_aj, np.arange(z, dtype=np.uint64)[None, :])  # (n', Z)
                out[a, lo : lo + len(j)] = normal_from_keys(keys)
    return out


def normal_at(seed: int, stream: int, a: np.ndarray, b: np.ndarray, z: int) -> np.ndarray:
    """Standard normal noise (B, Z) float32 at chosen coordinates: value [i, d] keyed by
    hash(seed, stream, a[i], b[i], d), the value :func:`normal` gives at [a[i], b[i], d]; ``a`` and ``b``
    (B,) non-negative integers. What a lazy reader computes for the images it is asked for.
    Raises: ValueError for a seed outside [0, 2^64)."""
    seed = check_seed(seed)
    a, b = np.asarray(a, dtype=np.uint64).reshape(-1), np.asarray(b, dtype=np.uint64).reshape(-1)
    out = np.empty((len(a), z), dtype=np.float32)
    per = max(1, CHUNK // max(1, z))  # values per piece, as in normal
    with np.errstate(over="ignore"):
        base = hash_words(seed, stream)
        for lo in range(0, len(a), per):
            h_ab = absorb(absorb(base, a[lo : lo + per]), b[lo : lo + per])[:, None]  # (B', 1)
            out[lo : lo + per] = normal_from_keys(absorb(h_ab, np.arange(z, dtype=np.uint64)[None, :]))
    return out


def permutation(seed: int, stream: int, a: int, size: int) -> np.ndarray:
    """A random order of 0 … size − 1 for index ``a``: the indices sorted by hash(seed, stream, a, p),
    ascending, ties (p ≠ p' with equal hashes) in index order. Returns (size,) int64."""
    seed = check_seed(seed)
    keys = hash_words(seed, stream, a, np.arange(size, dtype=np.uint64))
    return np.argsort(keys, kind="stable")
