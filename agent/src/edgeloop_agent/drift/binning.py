"""Assign every value of a (rows x columns) batch to its histogram bin in one pass.

Each column has its own sorted edges, so a per-column ``np.searchsorted`` would cost
one numpy call per feature per batch. Instead every float is mapped to an int64 key
that (a) orders like the float itself and (b) carries its column index in the top
bits, so all columns' edges fit in one sorted array and one ``searchsorted`` serves
the whole batch:

* IEEE-754 bits reinterpreted as int64 order positive floats correctly; flipping the
  63 magnitude bits of negative ones makes the whole line monotone.
* shifting right by ``s = bit_length(n_columns)`` bits frees room for the column
  index, at the price of merging runs of ``2**s`` adjacent floats into one key. Only
  a value sharing a key with an edge is then ambiguous, and it is settled by one
  float comparison with that edge, so bins are exactly ``(e[i-1], e[i]]``.

Per column the slots are: ``[-inf / negative NaN] [bin 0] ... [bin K] [+inf / NaN]``.
The two outer slots are the missing values; they come out of the same
``searchsorted`` via two pseudo-edges, so there is no separate NaN pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_MAG = np.int64(0x7FFF_FFFF_FFFF_FFFF)
_SENTINEL = np.iinfo(np.int64).max


def _ordered_bits(values: np.ndarray) -> np.ndarray:
    b = values.view(np.int64)
    t = b >> 63
    t &= _MAG
    t ^= b
    return t


class FlatBinner:
    """Histogram slot ids for all columns of a float batch, from one ``searchsorted``."""

    def __init__(self, edges: Sequence[np.ndarray]) -> None:
        n_cols = len(edges)
        if n_cols == 0:
            raise ValueError("edges: need at least one column")
        self.n_columns = n_cols
        # One spare column's worth of key space keeps every key below the sentinel.
        self._shift = n_cols.bit_length()
        width = 1 << (64 - self._shift)
        self._col_add = np.array(
            [(1 << (63 - self._shift)) + c * width - (1 << 63) for c in range(n_cols)],
            dtype=np.int64,
        )
        inf_key = int(_ordered_bits(np.array([np.inf]))[0] >> self._shift)
        ninf_key = int(_ordered_bits(np.array([-np.inf]))[0] >> self._shift)

        keys: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        offsets = [0]
        for c, e in enumerate(edges):
            e = np.asarray(e, dtype=np.float64)
            if e.ndim != 1 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
                raise ValueError(f"edges[{c}]: must be 1-D, finite and strictly increasing")
            e = e + 0.0  # -0.0 -> +0.0, as the profile does
            k = (_ordered_bits(e) >> self._shift) + self._col_add[c]
            keys.append(
                np.concatenate([[ninf_key + self._col_add[c]], k, [inf_key - 1 + self._col_add[c]]])
            )
            vals.append(np.concatenate([[-np.inf], e, [np.inf]]))
            offsets.append(offsets[-1] + e.size + 3)
        self._keys = np.concatenate([*keys, [_SENTINEL]]).astype(np.int64)
        self._vals = np.concatenate([*vals, [np.inf]])
        self.slot_offsets = np.asarray(offsets, dtype=np.int64)
        self.n_slots = int(offsets[-1])
        self.low_slots = self.slot_offsets[:-1].copy()
        self.high_slots = self.slot_offsets[1:] - 1
        # searchsorted index -> slot: column c's edges start at offsets[c] - c.
        self._slot_add = np.arange(n_cols, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return int(self._keys.nbytes + self._vals.nbytes + self.slot_offsets.nbytes)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Slot ids, shape ``(n_rows, n_columns)`` int64, for a C-contiguous float64 batch."""
        if values.ndim != 2 or values.shape[1] != self.n_columns:
            raise ValueError(
                f"values: expected shape (n_rows, {self.n_columns}), got {values.shape}"
            )
        values = np.ascontiguousarray(values, dtype=np.float64)
        key = _ordered_bits(values)
        key >>= self._shift
        key += self._col_add
        idx = np.searchsorted(self._keys, key)
        amb = self._keys[idx] == key
        if amb.any():
            self._settle_ties(idx, key, values, amb)
        idx += self._slot_add
        return idx

    def _settle_ties(
        self, idx: np.ndarray, key: np.ndarray, values: np.ndarray, amb: np.ndarray
    ) -> None:
        # Values sharing a key with edges: count those edges that are truly below them.
        flat_idx = idx.reshape(-1)
        flat_key = key.reshape(-1)
        flat_val = values.reshape(-1)
        sel = np.flatnonzero(amb)
        while sel.size:
            sel = sel[self._vals[flat_idx[sel]] < flat_val[sel]]
            flat_idx[sel] += 1
            sel = sel[self._keys[flat_idx[sel]] == flat_key[sel]]
