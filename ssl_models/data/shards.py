"""Images stored as ``.npy`` shards on disk, read a batch of rows at a time.

A dataset's images are a directory of shards ``00000.npy``, ``00001.npy``, ... each (n_i, C, H, W),
read in name order as one array of ``sum(n_i)`` rows. Shards let ingest decode in parallel (one
shard per task) and bound what a reader holds; DVC caches them file by file, so a shard that a
re-ingest leaves unchanged is stored once.

Rows are read with ``os.preadv`` straight into the batch's buffer, one call per run of consecutive
rows: the bytes pass through the page cache, which the kernel may drop at will, and never count in
the process's resident memory. A ``np.memmap`` would do the same reads with less code, but every
page it touches stays mapped, so a pool read at random grows the process's RSS towards the size
of the files (measured: a 64 MiB pool read once in random batches of 256 grew the RSS by
64 MiB through ``np.load(mmap_mode="r")``, by 3 MiB through this reader).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssl_models.data.errors import DataError

if TYPE_CHECKING:  # torch is imported where tensors are made: ingest and validate read arrays
    import torch
    from torch import Tensor

SHARD_SUFFIX = ".npy"


def shard_name(i: int) -> str:
    """The file name of shard ``i``: zero-padded, so name order is row order."""
    return f"{i:05d}{SHARD_SUFFIX}"


def shard_files(directory: str | Path) -> list[Path]:
    """The shards in ``directory`` in row order."""
    return sorted(p for p in Path(directory).iterdir() if p.suffix == SHARD_SUFFIX and not p.name.startswith("."))


def rows_per_shard(image_shape: Sequence[int], shard_mb: float) -> int:
    """How many images of ``image_shape`` (uint8) fill a shard of ``shard_mb`` MiB (at least one)."""
    return max(1, int(shard_mb * 2**20) // math.prod(image_shape))


def write_shards(directory: str | Path, images: np.ndarray, rows: int, first: int = 0) -> list[Path]:
    """Write ``images`` as shards of ``rows`` rows each, named from ``shard_name(first)`` on."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for k, start in enumerate(range(0, len(images), rows)):
        out.append(directory / shard_name(first + k))
        np.save(out[-1], np.ascontiguousarray(images[start : start + rows]))
    return out


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) of a C-ordered ``.npy`` file."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version}")
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npy shard ({e}); run `sslpipe stage ingest` again") from None
    if fortran or dtype.hasobject:
        raise DataError(f"{path}: a Fortran-ordered or object array; shards are C-ordered numeric arrays")
    return tuple(shape), dtype, offset


class ShardReader:
    """All shards of a directory as one read-only array of rows (numpy level).

    Supports ``len``, ``shape``, ``ndim``, ``dtype``, ``nbytes`` and ``reader[i]`` with an int, a
    slice or an integer array (returning a fresh array), so readers of a whole ``np.ndarray`` in
    chunks (``images[a:b]``) take it unchanged. Pickles as its paths (file handles are reopened in
    the process that reads), so it can be sent to worker processes.
    """

    def __init__(self, files: Sequence[str | Path]):
        self.files = [Path(f).absolute() for f in files]  # a worker process may run in another directory
        if not self.files:
            raise DataError("no image shards to read; run `sslpipe stage ingest` first")
        headers = [_header(p) for p in self.files]
        self.row_shape = headers[0][0][1:]
        self.dtype = headers[0][1]
        for path, (shape, dtype, _) in zip(self.files, headers):
            if shape[1:] != self.row_shape or dtype != self.dtype or len(shape) < 1:
                raise DataError(f"{path}: shard of {dtype} {shape} among shards of {self.dtype} (n, *{self.row_shape}); "
                                "run `sslpipe stage ingest` again")
        self._offsets = np.array([h[2] for h in headers], dtype=np.int64)
        counts = np.array([h[0][0] for h in headers], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])  # shard k holds rows [starts[k], starts[k+1])
        self.row_bytes = int(math.prod(self.row_shape)) * self.dtype.itemsize
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    @classmethod
    def open(cls, directory: str | Path) -> ShardReader:
        return cls(shard_files(directory))

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self._starts[-1]), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read(np.array([key]))[0]
        if isinstance(key, slice):
            return self.read(np.arange(*key.indices(len(self))))
        return self.read(np.asarray(key))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}}  # descriptors belong to the process that opened them

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (any order, repeats allowed), as a new (len(rows), *row_shape) array."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row {int(rows.max() if rows.max() >= n else rows.min())} out of range for {n} images")
        rows = np.where(rows < 0, rows + n, rows)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        buf = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        shard = np.searchsorted(self._starts, ordered, side="right") - 1
        # runs of consecutive rows in one shard: one read each
        breaks = np.flatnonzero((np.diff(ordered) != 1) | (np.diff(shard) != 0)) + 1
        flat = buf.reshape(-1).view(np.uint8)
        starts, ends = [0, *breaks.tolist()], [*breaks.tolist(), len(rows)]
        shard_of, first_row = shard.tolist(), ordered.tolist()
        for a, b in zip(starts, ends):
            if a == b:
                continue
            k = shard_of[a]
            offset = int(self._offsets[k]) + (first_row[a] - int(self._starts[k])) * self.row_bytes
            self._read_into(k, flat[a * self.row_bytes : b * self.row_bytes], offset)
        if np.array_equal(order, np.arange(len(rows))):
            return buf
        out = np.empty_like(buf)
        out[order] = buf
        return out

    def _read_into(self, k: int, target: np.ndarray, offset: int) -> None:
        fd = self._fd(k)
        view, done = memoryview(target), 0
        while done < len(view):  # a regular file returns short reads only at its end
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise DataError(f"{self.files[k]}: shorter than its header says; run `sslpipe stage ingest` again")
            done += got

    def _fd(self, k: int) -> int:
        if self._pid != os.getpid():  # a forked child: the parent's descriptors share its file offsets
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(k)
        if fd is None:
            if len(self._fds) >= 64:  # stay far below the usual limit of 1024 open files
                self.close()
                self._pid = os.getpid()
            fd = self._fds[k] = os.open(self.files[k], os.O_RDONLY)
        return fd


class ShardedImages:
    """A pool of uint8 images (N, C, H, W) read from shards a batch at a time, in place of a tensor.

    What the training engine and the evaluation helpers use of a tensor pool works: ``shape``,
    ``len``, ``pool[idx]`` with a LongTensor, a bool mask, a slice or an int (returning a uint8
    tensor), ``pool.split(n)`` and ``pool.tensor_split(n)`` (pools). Peak memory is the batch asked for, whatever N is; ``load()``
    reads the whole pool into a tensor, for callers that know it fits.

    Args:
        reader: every image of the dataset.
        rows: the reader's rows this pool holds, in order (default: all of them).
    """

    def __init__(self, reader: ShardReader, rows: np.ndarray | None = None):
        if reader.dtype != np.uint8:
            raise DataError(f"{reader.files[0].parent}: shards of {reader.dtype}; the image pool reads uint8 shards")
        self.reader = reader
        self.rows = np.arange(len(reader), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return torch.uint8

    @property
    def shape(self) -> torch.Size:
        import torch

        return torch.Size((len(self.rows), *self.reader.row_shape))

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.reader.row_bytes

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"ShardedImages({tuple(self.shape)}, {len(self.reader.files)} shards in {self.reader.files[0].parent})"

    def __getitem__(self, key: Any) -> Tensor:
        import torch

        if isinstance(key, (int, np.integer)):
            return torch.from_numpy(self.reader.read(self.rows[[key]]))[0]
        if isinstance(key, slice):
            return torch.from_numpy(self.reader.read(self.rows[key]))
        index = key.cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return torch.from_numpy(self.reader.read(self.rows[index]))

    def subset(self, positions: np.ndarray) -> ShardedImages:
        """The pool of the images at ``positions`` (a view: nothing is read)."""
        return ShardedImages(self.reader, self.rows[np.asarray(positions, dtype=np.int64)])

    def tensor_split(self, sections: int) -> tuple[ShardedImages, ...]:
        """``sections`` consecutive pools of nearly equal size, as ``Tensor.tensor_split`` cuts them
        (the first ``len % sections`` one image larger); views, nothing is read."""
        return tuple(self.subset(part) for part in np.array_split(np.arange(len(self)), sections))

    def split(self, size: int) -> Iterator[Tensor]:
        """Consecutive chunks of ``size`` images, as ``Tensor.split`` gives them (lazily)."""
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def load(self) -> Tensor:
        """The whole pool in memory."""
        import torch

        return torch.from_numpy(self.reader.read(self.rows))
