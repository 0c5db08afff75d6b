"""Vectorised shortest round-trip formatting of float64 arrays, as Go's ``'f', -1``.

:func:`format_value` (``repr`` digits, positional notation)
costs about half a microsecond per value; a range result of 50,000 series by
20 steps has a million of them. :func:`format_cells` produces the same text
for a whole array with a handful of numpy passes:

1. whole numbers below 2**53 are their integer digits;
2. for other values, the shortest precision ``p`` (1..17) whose correctly
   rounded ``p``-digit decimal ``D`` reads back as the value (the property is
   monotonic in ``p``: try 16, 15, then binary search below). ``v * 10**k`` is
   formed exactly as a double-double (Dekker's product with an exact power of
   ten), and half an ulp of ``v`` times ``10**k`` is exact, so the distance of
   ``D`` from it decides round-tripping to ~1e-15; decisions within 1e-9 of a
   tie are left to the slow path;
3. digits through a 4-digit lookup table, laid out by a per (exponent, sign,
   digit count) column map.

NaN, infinities, fractions below 1e-7, whole numbers of 2**53 and above, and
undecided values go through :func:`format_value` one by
one; the bytes are the same either way (``tests/test_promql_fastpaths.py``
compares them on random and awkward values).

This module is also the one place a float becomes text anywhere in the agent
(one spelling of NaN and the infinities per output format):

=========================  =========================  ===============================
format                     function                   NaN / +Inf / -Inf
=========================  =========================  ===============================
API sample values, text    :func:`format_value`       ``NaN`` ``+Inf`` ``-Inf``
JSON API numbers           :func:`json_number`        ``"NaN"`` ``"+Inf"`` ``"-Inf"``
CSV, joins, /federate      :func:`text_number`        ``NaN`` ``+Inf`` ``-Inf``
JSON-lines export          :func:`jsonl_number`       ``null`` ``"+Inf"`` ``"-Inf"``
PromQL annotations         :func:`go_g`               ``NaN`` ``+Inf`` ``-Inf``
OpenMetrics labels         :func:`openmetrics_float`  ``NaN`` ``+Inf`` ``-Inf``
PromQL number literals     :func:`promql_literal`     ``NaN`` ``Inf`` ``-Inf``
=========================  =========================  ===============================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal

import numpy as np

WIDTH = 27  # "-" + "0." + 7 zeros + 17 digits (E >= -8), or "-" + 16 integer digits
E_MIN, E_MAX = -8, 15  # the exponents laid out in bulk
_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's splitter
_P10 = np.array([10.0**i for i in range(23)])  # exact doubles
_P10_HI = _SPLIT * _P10 - (_SPLIT * _P10 - _P10)
_P10_LO = _P10 - _P10_HI
_TABLE = np.frombuffer("".join(f"{i:04d}" for i in range(10_000)).encode(), np.uint8).reshape(
    10_000, 4
)
_TABLE32 = _TABLE.copy().view(np.uint32).ravel()
_TINY = 1e-9
_EXTRA = np.frombuffer(b"-0.\0", dtype=np.uint8)  # src columns 17..20 beside 17 digits


def _layouts() -> np.ndarray:
    """Per (exponent, sign, digit count): which source column each output byte copies."""
    table = np.full(((E_MAX - E_MIN + 1) * 2 * 18, WIDTH), 20, dtype=np.intp)
    for e in range(E_MIN, E_MAX + 1):
        for neg in (0, 1):
            for nd in range(1, 18):
                cols = [17] if neg else []
                if e >= 0:
                    cols += list(range(e + 1))
                    if nd > e + 1:
                        cols += [19, *range(e + 1, nd)]
                else:
                    cols += [18, 19] + [18] * (-e - 1) + list(range(nd))
                table[((e - E_MIN) * 2 + neg) * 18 + nd, : len(cols)] = cols
    return table


_I10 = np.array([10**i for i in range(19)], dtype=np.int64)


_LAYOUT = _layouts()


def _rows(m: np.ndarray) -> np.ndarray:
    """A C-contiguous 2-d uint8 array as one opaque item per row (fast row gathers)."""
    return m.view(f"V{m.shape[1]}").ravel()


def _try(
    a: np.ndarray,
    ah: np.ndarray,
    al: np.ndarray,
    e: np.ndarray,
    p: int | np.ndarray,
    gap: np.ndarray,
    pow2: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(D, reads_back, unsure)``: the correctly rounded ``p``-digit decimal of ``a``.

    ``a * 10**k`` is formed exactly as ``hi + lo`` (Dekker's product of the
    split ``ah + al`` and an exact power of ten), so the distance of the
    nearest integer ``D`` from it is known to ~1e-15; ``gap`` (half an ulp
    of ``a``, exact) scaled by ``10**k`` stays exact. ``unsure`` marks ties
    and ``k`` beyond the exact powers.
    """
    k = p - 1 - e
    bad_k = (k < 0) | (k > 22)
    np.clip(k, 0, 22, out=k)
    b = _P10[k]
    hi = a * b
    lo = ah * _P10_HI[k]
    lo -= hi
    lo += ah * _P10_LO[k]
    t = al * _P10_HI[k]
    lo += t
    np.multiply(al, _P10_LO[k], out=t)
    lo += t
    d0 = np.rint(hi)
    hi -= d0
    hi += lo  # hi is now a * 10**k - d0
    adj = np.rint(hi)
    hi -= adj  # a * 10**k - D
    d = d0.astype(np.int64)
    d += adj.astype(np.int64)  # in integers: d0 may be past 2**53
    below = hi > 0  # D < a * 10**k: the gap below a counts
    below &= pow2  # ... which is half as wide under a power of two
    dist = np.abs(hi, out=hi)
    unsure = np.abs(dist - 0.5) <= _TINY
    unsure |= bad_k
    b *= gap  # half an ulp of a, scaled: exact
    b[below] *= 0.5
    ok = dist < b
    b -= dist
    unsure |= np.abs(b, out=b) <= _TINY
    return d, ok, unsure


def _shortest(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(D, ndigits, E, unsure)`` of positive, finite, non-integer ``a`` (|a| < 2**52)."""
    n = len(a)
    e = np.floor(np.log10(a)).astype(np.int64)
    # log10 may round across a power of ten: 10**e <= a < 10**(e+1) exactly.
    # (Powers below 1 are not doubles; a exact power is never a non-integer's problem
    # except for 10**-k, handled as unsure by the digit count check below.)
    mant, ex = np.frexp(a)
    gap = np.ldexp(np.ones(n), ex - 54)  # half an ulp: exact
    pow2 = mant == 0.5
    ah = _SPLIT * a - (_SPLIT * a - a)
    al = a - ah
    ndig = np.full(n, 17, dtype=np.int64)
    d, ok, unsure = _try(a, ah, al, e, 16, gap, pow2)
    best = d
    ok &= ~unsure
    ndig[ok] = 16
    need17 = np.flatnonzero(~ok & ~unsure)
    if need17.size:
        d, _, uns = _try(
            a[need17], ah[need17], al[need17], e[need17], 17, gap[need17], pow2[need17]
        )
        best[need17] = d
        unsure[need17[uns]] = True
    active = np.flatnonzero(ok)
    lo = np.maximum(e + 1, 0)  # a non-integer needs a fraction digit
    if active.size:
        sub = (a[active], ah[active], al[active], e[active])
        d, ok15, uns = _try(*sub, 15, gap[active], pow2[active])
        unsure[active[uns]] = True
        good = ok15 & ~uns
        lo[active[~ok15 & ~uns]] = 15
        active = active[good]
        best[active] = d[good]
        ndig[active] = 15
        active = active[ndig[active] - lo[active] > 1]
    while active.size:
        p = (lo[active] + ndig[active]) // 2
        sub = (a[active], ah[active], al[active], e[active])
        d, ok, uns = _try(*sub, p, gap[active], pow2[active])
        unsure[active[uns]] = True
        good = ok & ~uns
        idx = active[good]
        ndig[idx] = p[good]
        best[idx] = d[good]
        bad = ~ok & ~uns
        lo[active[bad]] = p[bad]
        active = active[~uns]
        active = active[ndig[active] - lo[active] > 1]
    # D must have exactly ndig digits; otherwise log10 was off: redo those slowly.
    top = _P10[np.minimum(ndig, 22)]
    unsure |= (best >= top) | (best * 10 < top)
    return best, ndig, e, unsure


def _digit_matrix(d: np.ndarray, ndig: np.ndarray) -> np.ndarray:
    """The ``ndig`` digits of ``d`` left-aligned in 17 ASCII columns, '0'-padded."""
    d = d * _I10[17 - ndig]  # now always 17 digits (< 10**17)
    out = np.empty((len(d), 5), dtype=np.uint32)
    rest = d
    for col in (4, 3, 2, 1, 0):
        rest, chunk = np.divmod(rest, 10_000)
        out[:, col] = _TABLE32[chunk]
    return out.view(np.uint8)[:, 3:]


def format_cells(values: np.ndarray, slow: Callable[[float], str] | None = None) -> np.ndarray:
    """``slow(v)`` of every value as ASCII bytes in a NUL-padded ``(n, WIDTH)`` uint8 array.

    ``slow`` (default :func:`format_value`) is used for what the bulk path
    leaves out; its output must fit ``WIDTH`` bytes or it widens the array.
    """
    if slow is None:
        slow = format_value
    v = np.ascontiguousarray(values, dtype=np.float64).ravel()
    n = len(v)
    out = np.zeros((n, WIDTH), dtype=np.uint8)
    a = np.abs(v)
    with np.errstate(all="ignore"):
        floor = np.floor(a)
        whole = (a == floor) & (a < 2.0**53)  # never NaN or infinite
        bulk = whole | (np.isfinite(a) & (a >= 1e-7) & (a != floor))
    idx = np.flatnonzero(bulk)
    if idx.size:
        w = whole[idx]
        digits = np.empty(idx.size, dtype=np.int64)
        ndig = np.empty(idx.size, dtype=np.int64)
        e = np.empty(idx.size, dtype=np.int64)
        unsure = np.zeros(idx.size, dtype=bool)
        wi = np.flatnonzero(w)
        if wi.size:
            ints = a[idx[wi]].astype(np.int64)
            nd = np.searchsorted(_I10, ints, "right")
            digits[wi], ndig[wi], e[wi] = ints, np.maximum(nd, 1), np.maximum(nd, 1) - 1
        fi = np.flatnonzero(~w)
        if fi.size:
            with np.errstate(all="ignore"):
                digits[fi], ndig[fi], e[fi], unsure[fi] = _shortest(a[idx[fi]])
        np.clip(e, E_MIN, E_MAX, out=e)  # unsure rows may stray; they are redone below
        np.clip(ndig, 1, 17, out=ndig)
        src = np.empty((idx.size, 21), dtype=np.uint8)
        src[:, :17] = _digit_matrix(digits, ndig)
        src[:, 17:] = _EXTRA
        key = ((e - E_MIN) * 2 + np.signbit(v[idx])) * 18 + ndig
        order = np.argsort(key.astype(np.int16), kind="stable")  # a radix sort
        skey = key[order]
        cuts = np.flatnonzero(skey[1:] != skey[:-1]) + 1
        starts = np.concatenate(([0], cuts)).tolist()
        ends = [*cuts.tolist(), len(skey)]
        ssrc = _rows(src)[order].view(np.uint8).reshape(src.shape)
        sout = np.empty((idx.size, WIDTH), dtype=np.uint8)
        for a0, b0 in zip(starts, ends, strict=True):
            sout[a0:b0] = ssrc[a0:b0][:, _LAYOUT[skey[a0]]]
        placed = np.empty_like(sout)
        _rows(placed)[order] = _rows(sout)
        _rows(out)[idx] = _rows(placed)
        redo = idx[unsure]
        bulk[redo] = False
    rest = np.flatnonzero(~bulk)
    if rest.size:
        texts = [slow(x).encode() for x in v[rest].tolist()]
        wide = max(len(t) for t in texts)
        if wide > WIDTH:
            grown = np.zeros((n, wide), dtype=np.uint8)
            grown[:, :WIDTH] = out
            out = grown
        out[rest] = 0
        cells = np.array(texts, dtype=f"S{out.shape[1]}").view(np.uint8)
        out[rest] = cells.reshape(len(rest), out.shape[1])
    return out


def pack(cells: np.ndarray) -> bytes:
    """The non-NUL bytes of ``cells`` in order (rows joined without separators)."""
    flat = cells.ravel()
    return flat[flat != 0].tobytes()


# --- one value at a time ---------------------------------------------------------------


def format_value(v: float) -> str:
    """Prometheus's text form of a float sample value (Go's ``FormatFloat(v, 'f', -1, 64)``)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    text = repr(float(v))
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    if text.endswith(".0"):
        text = text[:-2]
    return text


def format_values(values: np.ndarray) -> list[str]:
    """:func:`format_value` of every element, with the common cases at ``repr`` speed.

    Shortest round-trip ``repr`` is what Go prints too, except for the
    ``.0`` of whole numbers (dropped here) and exponents, NaN and infinities
    (left to :func:`format_value`; all of them contain an ``e`` or ``n``).
    """
    out = list(map(repr, values.tolist()))
    for i, r in enumerate(out):
        if r[-2:] == ".0":
            out[i] = r[:-2]
        elif "e" in r or "n" in r:
            out[i] = format_value(float(r))
    return out


def special_text(v: float) -> str | None:
    """Prometheus's spelling of NaN and the infinities; None for a finite value."""
    if v != v:
        return "NaN"
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    return None


def json_number(v: float) -> float | str:
    """A number in a JSON API answer: a JSON number, or NaN/Inf as Prometheus's strings."""
    return special_text(v) or float(v)


def jsonl_number(v: float) -> float | str | None:
    """A value in the JSON-lines export (VictoriaMetrics' format): NaN is ``null``.

    VictoriaMetrics writes NaN as ``null`` and its importer (like ours) reads
    it back as NaN; the infinities are ``"+Inf"``/``"-Inf"`` (JSON has none).
    """
    if v != v:
        return None
    return special_text(v) or float(v)


def text_number(v: float) -> str:
    """A CSV cell or /federate value: shortest round-trip ``repr`` (``1.0``, ``1e-10``), exact."""
    return special_text(v) or repr(float(v))


def go_g(v: float) -> str:
    """Go's ``%g`` of the values PromQL puts in annotations (``repr`` without a trailing ``.0``)."""
    special = special_text(v)
    if special is not None:
        return special
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def openmetrics_float(v: float) -> str:
    """OpenMetrics float text (``0.5``, ``1.0``, ``+Inf``), used for quantile labels."""
    special = special_text(v)
    if special is not None:
        return special
    text = repr(float(v))
    return text if ("." in text or "e" in text) else text + ".0"


def promql_literal(v: float) -> str:
    """``v`` as a PromQL number literal (``NaN``, ``Inf``, ``-Inf``, ``0.5``)."""
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return repr(float(v))
