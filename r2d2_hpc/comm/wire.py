"""The wire format of a message: a ``Layout`` packs named arrays into one flat byte buffer.

A message is a flat byte buffer: a fixed header, then each field's array at an
aligned offset. Fields may have *count* dimensions (:class:`Var`), e.g. the
number of steps in a chunk, up to a declared maximum; a buffer of
:attr:`Layout.nbytes` bytes holds the largest message, and only the used
``pack(...)`` bytes need to travel. The receiver reads the counts from the
header, so it needs no other size information.

Header (little-endian, ``16 + 8 * len(vars)`` bytes)::

    offset 0   uint32  magic        0x52324432 ("R2D2"), rejects foreign bytes
    offset 4   uint16  protocol     PROTOCOL_VERSION (this header format)
    offset 6   uint16  version      the layout's version (bumped when fields change)
    offset 8   uint32  type_id      the message type = its MPI tag
    offset 12  uint32  fingerprint  CRC32 of the declaration (names, dtypes, shapes, maxima)
    offset 16  int64[len(vars)]     the count of each variable dimension, in declaration order

Then field ``i`` starts at the header size rounded up to 8, each next field at
the previous end rounded up to 8 (or the dtype's alignment if larger), with the
*actual* counts, so a message with fewer steps is shorter. :meth:`Layout.unpack`
rejects, each with a message naming the cause and the fix, foreign bytes, a
different protocol, the wrong message type, an old or new layout version, a
layout declared with other shapes on the sender (ranks built from different
configs), counts above the maxima and truncated buffers.

The messages themselves are declared in :mod:`r2d2_hpc.comm.messages`.
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

#: Version of the header format above; bump when it changes.
PROTOCOL_VERSION = 1
#: First header word of every message: b"R2D2" read as a big-endian uint32.
MAGIC = 0x52324432
#: Field offsets are multiples of this (or of the dtype's alignment if larger).
ALIGN = 8

__all__ = ["ALIGN", "MAGIC", "PROTOCOL_VERSION", "Dim", "Field", "Layout", "MessageError", "Var",
           "aligned_empty"]

_FIXED_HEADER = np.dtype([("magic", "<u4"), ("protocol", "<u2"), ("version", "<u2"),
                          ("type_id", "<u4"), ("fingerprint", "<u4")])


class MessageError(ValueError):
    """A buffer is not a valid message of the expected layout, or arrays do not fit it."""


class Var(NamedTuple):
    """A count dimension: its size varies per message, from 0 to ``maximum``.

    Attributes:
      name: the count's name, e.g. ``"steps"``; fields sharing it share the count.
      maximum: the largest count a message may carry.
    """

    name: str
    maximum: int


Dim = Union[int, Var]


class Field:
    """One array of a message: a name, an explicit dtype and a shape.

    Args:
      name: a Python identifier, unique within the layout.
      dtype: anything ``np.dtype`` accepts; stored as an explicit ``np.dtype``.
      shape: ints and :class:`Var` count dimensions; ``()`` for a scalar.
    """

    __slots__ = ("name", "dtype", "shape")

    def __init__(self, name: str, dtype: Any, shape: Sequence[Dim] = ()) -> None:
        if not name.isidentifier():
            raise ValueError(f"field name {name!r} is not an identifier")
        self.name = name
        self.dtype = np.dtype(dtype)
        if self.dtype.hasobject or self.dtype.itemsize == 0:
            raise ValueError(f"field {name!r}: dtype {self.dtype} cannot travel as bytes")
        dims: List[Dim] = []
        for d in shape:
            if isinstance(d, Var):
                if d.maximum < 0:
                    raise ValueError(f"field {name!r}: count {d.name} has maximum {d.maximum} < 0")
                dims.append(d)
            else:
                if int(d) < 0:
                    raise ValueError(f"field {name!r}: dimension {d} < 0")
                dims.append(int(d))
        self.shape: Tuple[Dim, ...] = tuple(dims)

    def resolve(self, counts: Mapping[str, int]) -> Tuple[int, ...]:
        """The concrete shape for the given counts."""
        return tuple(counts[d.name] if isinstance(d, Var) else d for d in self.shape)

    def spec(self) -> str:
        """E.g. ``obs uint8[steps<=160, 84, 84]``."""
        dims = ", ".join(f"{d.name}<={d.maximum}" if isinstance(d, Var) else str(d)
                         for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"

    def __repr__(self) -> str:
        return f"Field({self.spec()})"


#: Field views cached per layout for (pool buffer, counts) pairs; cleared when full.
_VIEW_CACHE_SIZE = 512


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def aligned_empty(nbytes: int, align: int = 64) -> np.ndarray:
    """A ``<uint8>[nbytes]`` buffer whose address is a multiple of ``align``."""
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + nbytes]


class Layout:
    """The byte layout of one message type.

    Args:
      name: message name, e.g. ``"STEP_CHUNK"``.
      tag: MPI tag and header type id, in ``[0, 2**31)`` (keep it below 32767,
        the smallest tag bound MPI guarantees).
      fields: the message's fields, in byte order.
      version: layout version; bump it when the fields change.
      tag_names: names of the other message types by tag (error messages only).

    Attributes:
      vars: the count dimensions, in order of first appearance.
      header_nbytes: size of the header.
      nbytes: size of the largest message (every count at its maximum); the
        buffer size receivers post.
      min_nbytes: size of the smallest message (every count 0).
      fingerprint: CRC32 of the declaration, carried in the header.
    """

    def __init__(self, name: str, tag: int, fields: Sequence[Field], version: int = 1,
                 tag_names: Optional[Mapping[int, str]] = None) -> None:
        if not 0 <= tag < 32767:
            raise ValueError(f"{name}: tag {tag} outside [0, 32767)")
        if not 0 <= version < 2 ** 16:
            raise ValueError(f"{name}: version {version} outside [0, 65536)")
        names = [f.name for f in fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"{name}: duplicate field name(s) {dup}")
        self.name = name
        self.tag = int(tag)
        self.version = int(version)
        self._tag_names: Dict[int, str] = dict(tag_names or {})
        self.fields: Tuple[Field, ...] = tuple(fields)
        vars_: Dict[str, Var] = {}
        for f in self.fields:
            for d in f.shape:
                if isinstance(d, Var):
                    if d.name in vars_ and vars_[d.name] != d:
                        raise ValueError(f"{name}: count {d.name!r} declared with maxima "
                                         f"{vars_[d.name].maximum} and {d.maximum}")
                    vars_[d.name] = d
        self.vars: Tuple[Var, ...] = tuple(vars_.values())
        self._var_index = {v.name: i for i, v in enumerate(self.vars)}
        self.header_nbytes = _FIXED_HEADER.itemsize + 8 * len(self.vars)
        decl = f"{name}|{version}|" + "|".join(f"{f.spec()}:{f.dtype.str}" for f in self.fields)
        self.fingerprint = zlib.crc32(decl.encode("utf-8")) & 0xFFFFFFFF
        self._plans: Dict[Tuple[int, ...], Tuple[Tuple[Tuple[str, int, Tuple[int, ...], np.dtype], ...], int]] = {}
        self.nbytes = self._plan(tuple(v.maximum for v in self.vars))[1]
        self.min_nbytes = self._plan(tuple(0 for _ in self.vars))[1]
        # Fast paths (pack/unpack run once per message on the hot path): the
        # fixed header is the same bytes in every message of this layout; each
        # count is read from the first field that has it; field views into a
        # pool buffer (``pool_buffer``) are cached per (buffer, counts).
        fixed = np.zeros(1, _FIXED_HEADER)
        fixed["magic"], fixed["protocol"], fixed["version"] = MAGIC, PROTOCOL_VERSION, version
        fixed["type_id"], fixed["fingerprint"] = self.tag, self.fingerprint
        self._fixed_header = fixed.view(np.uint8).copy()
        self._fixed_header_bytes = self._fixed_header.tobytes()  # compared per message
        source: Dict[str, Tuple[str, int]] = {}
        for f in self.fields:
            for k, d in enumerate(f.shape):
                if isinstance(d, Var):
                    source.setdefault(d.name, (f.name, k))
        self._count_sources: Tuple[Tuple[str, int], ...] = tuple(source[v.name]
                                                                for v in self.vars)
        self._maxima: Tuple[int, ...] = tuple(v.maximum for v in self.vars)
        self._pooled: Dict[int, np.ndarray] = {}
        self._view_cache: Dict[Tuple[int, Tuple[int, ...]], Tuple[Dict[str, np.ndarray], int]] = {}

    # ------------------------------------------------------------------ sizes
    def _plan(self, counts: Tuple[int, ...]):
        """(per field (name, offset, shape, dtype), total bytes) for the counts."""
        plan = self._plans.get(counts)
        if plan is None:
            named = {v.name: c for v, c in zip(self.vars, counts)}
            offset = self.header_nbytes
            entries = []
            for f in self.fields:
                offset = _round_up(offset, max(ALIGN, f.dtype.alignment))
                shape = f.resolve(named)
                entries.append((f.name, offset, shape, f.dtype))
                offset += math.prod(shape) * f.dtype.itemsize
            plan = (tuple(entries), offset)
            if len(self._plans) > 4096:  # bound the cache; plans are cheap to rebuild
                self._plans.clear()
            self._plans[counts] = plan
        return plan

    def _count_tuple(self, counts: Mapping[str, int]) -> Tuple[int, ...]:
        unknown = sorted(set(counts) - set(self._var_index))
        if unknown:
            raise MessageError(f"{self.name}: unknown count(s) {unknown}; its counts are "
                               f"{[v.name for v in self.vars]}")
        out = []
        for v in self.vars:
            if v.name not in counts:
                raise MessageError(f"{self.name}: count {v.name!r} not given")
            c = int(counts[v.name])
            if not 0 <= c <= v.maximum:
                raise MessageError(f"{self.name}: count {v.name}={c} outside [0, {v.maximum}]"
                                   f"; split the data over several messages or raise the maximum")
            out.append(c)
        return tuple(out)

    def size(self, **counts: int) -> int:
        """Bytes a message with these counts occupies (header included)."""
        return self._plan(self._count_tuple(counts))[1]

    def offsets(self, **counts: int) -> Dict[str, int]:
        """Byte offset of every field in a message with these counts."""
        return {name: off for name, off, _, _ in self._plan(self._count_tuple(counts))[0]}

    def new_buffer(self) -> np.ndarray:
        """A zeroed, 64-byte aligned ``<uint8>[nbytes]`` buffer for one message."""
        buf = aligned_empty(self.nbytes)
        buf[:] = 0
        return buf

    # ------------------------------------------------------------- writing
    def _as_bytes(self, buf: Any) -> np.ndarray:
        arr = buf if isinstance(buf, np.ndarray) else np.frombuffer(buf, dtype=np.uint8)
        if arr.dtype != np.uint8 or arr.ndim != 1 or not arr.flags.c_contiguous:
            raise MessageError(f"{self.name}: a message buffer must be a contiguous 1-D uint8 "
                               f"array, got {arr.dtype}{list(arr.shape)}")
        return arr

    def _views(self, buf: np.ndarray, counts: Tuple[int, ...]) -> Tuple[Dict[str, np.ndarray], int]:
        pooled = self._pooled.get(id(buf)) is buf
        if pooled:
            hit = self._view_cache.get((id(buf), counts))
            if hit is not None:
                return hit
        entries, total = self._plan(counts)
        out = {}
        for name, off, shape, dtype in entries:
            nb = math.prod(shape) * dtype.itemsize
            out[name] = buf[off:off + nb].view(dtype).reshape(shape)
        if pooled:
            if len(self._view_cache) >= _VIEW_CACHE_SIZE:
                self._view_cache.clear()
            self._view_cache[(id(buf), counts)] = (out, total)
        return out, total

    def pool_buffer(self) -> np.ndarray:
        """A long-lived 64-byte aligned ``<uint8>[nbytes]`` buffer for a send or
        receive pool: pack/unpack cache its field views per counts (the
        per-message Python cost on the hot path). Hand it back with
        :meth:`drop_pool_buffer` when the pool closes."""
        buf = aligned_empty(self.nbytes)
        self._pooled[id(buf)] = buf
        return buf

    def drop_pool_buffer(self, buf: np.ndarray) -> None:
        """Forgets a :meth:`pool_buffer` and its cached views."""
        if self._pooled.get(id(buf)) is buf:
            del self._pooled[id(buf)]
            self._view_cache = {k: v for k, v in self._view_cache.items() if k[0] != id(buf)}

    def _write_header(self, arr: np.ndarray, ct: Tuple[int, ...]) -> None:
        arr[:_FIXED_HEADER.itemsize] = self._fixed_header
        if ct:
            arr[_FIXED_HEADER.itemsize:self.header_nbytes].view("<i8")[:] = ct

    def prepare(self, buf: Any, **counts: int) -> Tuple[Dict[str, np.ndarray], int]:
        """Writes the header for these counts and returns writable field views.

        For zero-copy producers: fill the views in place, then send the first
        ``nbytes`` bytes. :meth:`pack` is ``prepare`` plus copies.

        Args:
          buf: a ``<uint8>[>= nbytes]`` buffer (e.g. :meth:`new_buffer`).
          **counts: one value per count dimension, ``0 <= count <= maximum``.

        Returns:
          (views by field name, number of bytes the message occupies).
        """
        return self._prepare_counts(self._as_bytes(buf), self._count_tuple(counts))

    def _prepare_counts(self, arr: np.ndarray, ct: Tuple[int, ...]
                        ) -> Tuple[Dict[str, np.ndarray], int]:
        """``prepare`` for a checked byte buffer and count tuple."""
        total = self._plan(ct)[1]
        if arr.size < total:
            raise MessageError(f"{self.name}: buffer of {arr.size} bytes is too small for "
                               f"{total} bytes; allocate Layout.nbytes = {self.nbytes}")
        self._write_header(arr, ct)
        return self._views(arr, ct)

    def counts_of(self, arrays: Mapping[str, Any]) -> Dict[str, int]:
        """The count of every count dimension, read from the arrays' shapes.

        Raises:
          MessageError: if a field is missing or unknown, an array's shape does not
            match its declaration, fields disagree on a count or one exceeds its maximum.
        """
        names = {f.name for f in self.fields}
        missing = [f.name for f in self.fields if f.name not in arrays]
        unknown = sorted(set(arrays) - names)
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing field(s) {missing}")
            if unknown:
                parts.append(f"unknown field(s) {unknown}")
            raise MessageError(f"{self.name}: {'; '.join(parts)}; its fields are "
                               f"{[f.name for f in self.fields]}")
        counts: Dict[str, int] = {}
        for f in self.fields:
            shape = np.shape(arrays[f.name])
            if len(shape) != len(f.shape):
                raise MessageError(f"{self.name}.{f.name}: expected {f.spec()}, got an array "
                                   f"of shape {tuple(shape)}")
            for got, d in zip(shape, f.shape):
                if isinstance(d, Var):
                    if got > d.maximum:
                        raise MessageError(
                            f"{self.name}.{f.name}: count {d.name}={got} exceeds its maximum "
                            f"{d.maximum} ({f.spec()}); split the data over several messages")
                    if counts.setdefault(d.name, got) != got:
                        raise MessageError(
                            f"{self.name}.{f.name}: count {d.name}={got} disagrees with "
                            f"{d.name}={counts[d.name]} of an earlier field")
                elif got != d:
                    raise MessageError(f"{self.name}.{f.name}: expected {f.spec()}, got an "
                                       f"array of shape {tuple(shape)}")
        return counts

    def pack(self, buf: Any, /, **arrays: Any) -> int:
        """Copies one message into ``buf``: header, then every field.

        Values are cast to the field dtypes with numpy's ``same_kind`` rule
        (float64 -> float32 and int64 -> int32 are allowed; float -> int,
        int -> bool and signed -> unsigned arrays are not, so pass uint8 frames
        as uint8).

        Args:
          buf: a ``<uint8>[>= nbytes]`` buffer.
          **arrays: one array (or scalar for ``()`` fields) per field, no more.

        Returns:
          The number of bytes used; send ``buf[:returned]``.

        Raises:
          MessageError: see :meth:`counts_of`; also for values that cannot be cast.
        """
        ct = self._fast_counts(arrays)
        if ct is None:  # the checked path: names every mismatch
            ct = self._count_tuple(self.counts_of(arrays))
        views, total = self._prepare_counts(self._as_bytes(buf), ct)
        for f in self.fields:
            value = arrays[f.name]
            if type(value) is np.ndarray and value.dtype == f.dtype:
                views[f.name][...] = value  # same dtype: a plain copy
                continue
            try:
                np.copyto(views[f.name], value, casting="same_kind")
            except TypeError as exc:
                raise MessageError(f"{self.name}.{f.name}: cannot store "
                                   f"{np.asarray(value).dtype} values in {f.spec()}"
                                   ) from exc
        return total

    def _fast_counts(self, arrays: Mapping[str, Any]) -> Optional[Tuple[int, ...]]:
        """The counts when every field is present with exactly its planned shape,
        else None (then ``counts_of`` finds and names the problem)."""
        if len(arrays) != len(self.fields):
            return None
        counts = []
        for (name, k), m in zip(self._count_sources, self._maxima):
            shape = getattr(arrays.get(name), "shape", ())
            if len(shape) <= k or shape[k] > m:
                return None
            counts.append(shape[k])
        ct = tuple(counts)
        for name, _, shape, _ in self._plan(ct)[0]:
            value = arrays.get(name)
            got = getattr(value, "shape", None)
            if got is None:  # a Python number fits a scalar field only
                if shape or not isinstance(value, (int, float)):
                    return None
            elif got != shape:
                return None
        return ct

    # ------------------------------------------------------------- reading
    def read_counts(self, buf: Any, nbytes: Optional[int] = None) -> Dict[str, int]:
        """Validates the header and returns the message's counts.

        Args:
          buf: the received bytes.
          nbytes: how many bytes arrived (e.g. ``status.Get_count(MPI.BYTE)``);
            None means all of ``buf``.

        Raises:
          MessageError: naming the cause and the fix (see the module docstring).
        """
        arr = self._as_bytes(buf)
        n = arr.size if nbytes is None else int(nbytes)
        fast = self._fast_read_counts(arr, n)
        if fast is not None:
            return {v.name: c for v, c in zip(self.vars, fast)}
        if n < _FIXED_HEADER.itemsize:
            raise MessageError(f"{self.name}: got {n} bytes, fewer than a message header "
                               f"({_FIXED_HEADER.itemsize}); the sender did not send an "
                               f"r2d2_hpc message")
        head = arr[:_FIXED_HEADER.itemsize].view(_FIXED_HEADER)[0]
        if int(head["magic"]) != MAGIC:
            raise MessageError(f"{self.name}: not an r2d2_hpc message (magic "
                               f"0x{int(head['magic']):08x}, expected 0x{MAGIC:08x}); some code "
                               f"sends raw bytes with tag {self.tag}")
        if int(head["protocol"]) != PROTOCOL_VERSION:
            raise MessageError(f"{self.name}: sender speaks message protocol "
                               f"{int(head['protocol'])}, this rank {PROTOCOL_VERSION}; run the "
                               f"same r2d2_hpc version on every rank")
        tid = int(head["type_id"])
        if tid != self.tag:
            other = self._tag_names.get(tid, "an unknown message")
            raise MessageError(f"expected a {self.name} message (type id {self.tag}), got "
                               f"{other} (type id {tid}); a sender used the wrong layout "
                               f"for this tag")
        if int(head["version"]) != self.version:
            raise MessageError(f"{self.name}: sender's layout version is "
                               f"{int(head['version'])}, this rank's is {self.version}; run the "
                               f"same r2d2_hpc version on every rank")
        if int(head["fingerprint"]) != self.fingerprint:
            raise MessageError(f"{self.name}: the sender declared this message with other "
                               f"fields, shapes or maxima (fingerprint "
                               f"0x{int(head['fingerprint']):08x}, here 0x{self.fingerprint:08x}: "
                               f"{self.describe()}); every rank must build its messages from "
                               f"the same config")
        if n < self.header_nbytes:
            raise MessageError(f"{self.name}: truncated header ({n} of {self.header_nbytes} "
                               f"bytes)")
        raw = arr[_FIXED_HEADER.itemsize:self.header_nbytes].view("<i8")
        counts = {v.name: int(c) for v, c in zip(self.vars, raw)}
        for v in self.vars:
            if not 0 <= counts[v.name] <= v.maximum:
                raise MessageError(f"{self.name}: header count {v.name}={counts[v.name]} "
                                   f"outside [0, {v.maximum}]; corrupt message")
        need = self._plan(tuple(counts[v.name] for v in self.vars))[1]
        if n < need:
            raise MessageError(f"{self.name}: truncated message, {n} bytes arrived but its "
                               f"counts {counts} need {need}; send the whole packed length")
        return counts

    def _fast_read_counts(self, arr: np.ndarray, n: int) -> Optional[Tuple[int, ...]]:
        """The counts of a well-formed message, else None (``read_counts`` then
        diagnoses it)."""
        if n < self.header_nbytes or \
                arr[:_FIXED_HEADER.itemsize].tobytes() != self._fixed_header_bytes:
            return None
        ct = tuple(arr[_FIXED_HEADER.itemsize:self.header_nbytes].view("<i8").tolist())
        for c, m in zip(ct, self._maxima):
            if not 0 <= c <= m:
                return None
        if n < self._plan(ct)[1]:
            return None
        return ct

    def unpack(self, buf: Any, nbytes: Optional[int] = None) -> Dict[str, np.ndarray]:
        """Validates the header and returns views of every field into ``buf``.

        Args:
          buf: the received bytes (a uint8 array or a bytes-like object).
          nbytes: how many bytes arrived; None means all of ``buf``.

        Returns:
          Field name -> array view (0-d for scalar fields), valid while ``buf`` is.

        Raises:
          MessageError: see :meth:`read_counts`.
        """
        arr = self._as_bytes(buf)
        n = arr.size if nbytes is None else int(nbytes)
        ct = self._fast_read_counts(arr, n)
        if ct is None:
            counts = self.read_counts(arr, n)
            ct = tuple(counts[v.name] for v in self.vars)
        return self._views(arr, ct)[0]

    def describe(self) -> str:
        """One line: name, tag, version and every field's dtype and shape."""
        return (f"{self.name}(tag {self.tag}, v{self.version}): "
                + ", ".join(f.spec() for f in self.fields))

    def __repr__(self) -> str:
        return f"Layout({self.describe()})"
