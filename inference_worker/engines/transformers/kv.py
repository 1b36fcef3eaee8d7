"""The KV cache of the running batch.

Row ``i`` of every layer's key and value buffers (``[rows, kv_heads, length, head_dim]``) holds one request: its
prompt (copied in from the request's own prefill) and the tokens generated since, at positions
``[0, length_i)``. A decode step writes each row's new key and value at that row's own position and attends over
``[0, max length]`` with a mask that hides each row's unused tail, so requests of any lengths decode together and a
request joins or leaves the batch without touching the others (a leaving row is replaced by the last one).

Buffers grow by doubling up to what admission reserved (never past ``KV_CACHE_MAX_BYTES``) and are freed when the
batch empties, so KV memory returns to zero when the worker is idle.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _RowLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False

    def __init__(self, owner: RowCache, index: int) -> None:
        super().__init__()
        self.owner = owner
        self.index = index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:  # pragma: no cover
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.owner
        keys, values = o.keys[self.index], o.values[self.index]
        assert keys is not None and values is not None and o.step is not None
        rows, positions, view = o.step
        keys[rows, :, positions] = key_states[:, :, 0]
        values[rows, :, positions] = value_states[:, :, 0]
        n = key_states.shape[0]
        return keys[:n, :, :view], values[:n, :, :view]

    def get_seq_length(self) -> int:
        return self.owner.step[2] - 1 if self.owner.step is not None else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1


class RowCache(Cache):
    """Per-row KV memory of the running batch (see the module docstring). Used by the scheduler thread only."""

    def __init__(self, *, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        super().__init__(layers=[_RowLayer(self, i) for i in range(num_layers)])
        self.num_layers = num_layers
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.bytes_per_token = 2 * num_layers * kv_heads * head_dim * (torch.finfo(dtype).bits // 8)
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.capacity_rows = 0
        self.capacity_len = 0
        self.lengths: list[int] = []  # tokens held by each row
        self.step: tuple[torch.Tensor, torch.Tensor, int] | None = None  # rows, write positions, visible length

    # ---- size ------------------------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return len(self.lengths)

    def allocated_bytes(self) -> int:
        return self.capacity_rows * self.capacity_len * self.bytes_per_token

    def ensure(self, rows: int, length: int, *, max_rows: int, max_len: int) -> None:
        """Make room for ``rows`` rows of ``length`` tokens, growing by doubling but never past the maxima."""
        if rows <= self.capacity_rows and length <= self.capacity_len:
            return
        new_rows = self.capacity_rows
        if rows > new_rows:
            new_rows = min(max(rows, 2 * new_rows, 1), max(max_rows, rows))
        new_len = self.capacity_len
        if length > new_len:
            new_len = min(max(length, 2 * new_len, 64), max(max_len, length))
        self._reallocate(new_rows, new_len)

    def _reallocate(self, rows: int, length: int) -> None:
        shape = (rows, self.kv_heads, length, self.head_dim)
        used_rows, used_len = self.rows, max(self.lengths, default=0)
        for i in range(self.num_layers):
            for buffers in (self.keys, self.values):
                fresh = torch.zeros(shape, dtype=self.dtype, device=self.device)
                old = buffers[i]
                if old is not None and used_rows and used_len:
                    fresh[:used_rows, :, :used_len] = old[:used_rows, :, :used_len]
                buffers[i] = fresh
        self.capacity_rows, self.capacity_len = rows, length

    def release(self) -> None:
        """Free the buffers (the batch is empty)."""
        assert not self.lengths, "release() with rows still in the batch"
        self.keys = [None] * self.num_layers
        self.values = [None] * self.num_layers
        self.capacity_rows = self.capacity_len = 0

    # ---- rows ------------------------------------------------------------------------------------------------
    def add_row(self, prefill: Cache) -> int:
        """Copy a request's prefill cache (batch 1) into a new last row; ``ensure`` room first."""
        length = prefill.get_seq_length()
        row = self.rows
        assert row < self.capacity_rows and length <= self.capacity_len
        layers: list[Any] = list(prefill.layers)
        for i, layer in enumerate(layers):
            keys, values = self.keys[i], self.values[i]
            assert keys is not None and values is not None
            keys[row, :, :length] = layer.keys[0]
            values[row, :, :length] = layer.values[0]
        self.lengths.append(length)
        return row

    def remove_row(self, row: int) -> int | None:
        """Drop a row; the last row moves into its place. Returns the index that moved there (or None)."""
        last = self.rows - 1
        moved = None
        if row != last:
            length = self.lengths[last]
            for buffers in (self.keys, self.values):
                for b in buffers:
                    assert b is not None
                    b[row, :, :length] = b[last, :, :length]
            self.lengths[row] = length
            moved = last
        self.lengths.pop()
        return moved

    # ---- one decode step -------------------------------------------------------------------------------------
    def begin_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Set up a decode step of every row; returns the attention mask and each row's position."""
        n = self.rows
        positions = torch.tensor(self.lengths, dtype=torch.long, device=self.device)
        view = max(self.lengths) + 1
        assert view <= self.capacity_len, "ensure() room for the step first"
        self.step = (torch.arange(n, device=self.device), positions, view)
        visible = torch.arange(view, device=self.device)[None, :] <= positions[:, None]
        return visible[:, None, None, :], positions

    def end_step(self) -> None:
        self.step = None
        self.lengths = [length + 1 for length in self.lengths]
