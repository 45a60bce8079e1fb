"""The safetensors format, read and written strictly, without the ``safetensors`` package and without pickle.

A file is: an 8-byte little-endian unsigned header length N; N bytes of UTF-8 JSON (an object that
maps each tensor's name to ``{"dtype", "shape", "data_offsets": [begin, end]}``, plus an optional
``"__metadata__"`` object of strings to strings); then the tensors' raw little-endian bytes, row-major,
the offsets counted from the end of the header. (The format's public description: the
huggingface/safetensors repository's README.)

:func:`read` refuses, in one line naming the file, anything a valid writer does not make: a header
length past the end of the file, a header that is not UTF-8 JSON, a name given twice, an unknown
dtype, a shape whose size disagrees with its offsets, offsets out of range, overlapping or leaving
bytes that belong to no tensor. :func:`encode` writes what the ``safetensors`` package writes
(header padded with spaces to a multiple of 8 bytes, tensors in order of name), so files go both
ways (tests/test_safetensors.py checks it against the package).

This module imports torch only inside the functions that need it.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from drawcli.core.errors import DrawError

if TYPE_CHECKING:
    import torch

METADATA = "__metadata__"
HEADER_MAX = 100 * 2**20  # the reference implementation's limit on the JSON header
# safetensors dtype name -> (torch dtype name, bytes per element)
DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
    "U8": ("uint8", 1), "BOOL": ("bool", 1),
}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def refuse_duplicates(message: str):
    """A json.loads object_pairs_hook that refuses a key given twice: DrawError(message with {key})."""

    def pairs_hook(pairs: list) -> dict:
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                raise DrawError(message.format(key=repr(key)))
            seen[key] = value
        return seen

    return pairs_hook


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_header(raw: bytes, size: int) -> tuple[dict[str, tuple[str, tuple[int, ...], int, int]], dict[str, str], int]:
    """Check a whole file's bytes (``size`` of them, ``raw`` holding at least the header); returns
    ({name: (dtype, shape, begin, end)}, metadata, where the data starts). A DrawError without the path."""
    if size < 8:
        raise DrawError(f"truncated: {size} bytes, fewer than the 8 of the header length")
    (length,) = struct.unpack("<Q", raw[:8])
    if length > HEADER_MAX:
        raise DrawError(f"header length {length} is over the format's limit of {HEADER_MAX} bytes (not a safetensors file?)")
    if 8 + length > size:
        raise DrawError(f"header length {length} runs past the end of the file ({size} bytes): truncated or not a safetensors file")
    header = raw[8:8 + length]
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DrawError(f"the header is not UTF-8 (byte {e.start})") from None
    if not text.startswith("{"):
        raise DrawError("the header is not a JSON object")
    try:
        entries = json.loads(text, object_pairs_hook=refuse_duplicates("the header names {key} twice"))
    except json.JSONDecodeError as e:
        raise DrawError(f"the header is not valid JSON ({e.msg} at byte {e.pos})") from None
    if not isinstance(entries, dict):
        raise DrawError("the header is not a JSON object")
    metadata = entries.pop(METADATA, None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise DrawError(f"{METADATA} must map strings to strings")
    tensors = {}
    for name, entry in entries.items():
        if not name:
            raise DrawError("a tensor has an empty name")
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise DrawError(f"tensor {name!r}: expected dtype, shape and data_offsets, got {got}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise DrawError(f"tensor {name!r}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
            raise DrawError(f"tensor {name!r}: shape must be a list of whole numbers >= 0, got {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets) or offsets[0] > offsets[1]:
            raise DrawError(f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
        nbytes = math.prod(shape) * DTYPES[dtype][1]
        if offsets[1] - offsets[0] != nbytes:
            raise DrawError(f"tensor {name!r}: shape {tuple(shape)} of {dtype} is {nbytes} bytes, its offsets hold {offsets[1] - offsets[0]}")
        tensors[name] = (dtype, tuple(shape), offsets[0], offsets[1])
    data = size - 8 - length
    at = 0
    for name, (_, _, begin, end) in sorted(tensors.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin < at:
            raise DrawError(f"tensor {name!r} overlaps the one before it (bytes {begin}..{end}, the previous one ends at {at})")
        if begin > at:
            raise DrawError(f"bytes {at}..{begin} of the data belong to no tensor")
        at = end
    if at > data:
        raise DrawError(f"the tensors need {at} bytes of data, the file holds {data}: truncated")
    if at < data:
        raise DrawError(f"{data - at} bytes after the last tensor belong to no tensor")
    return tensors, metadata, 8 + length


def read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (on the CPU, in the file's dtypes) and the metadata of a safetensors file.
    Any problem is one DrawError line naming the file."""
    import torch

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DrawError(f"{path}: not found") from None
    except OSError as e:
        raise DrawError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        entries, metadata, start = parse_header(raw, len(raw))
    except DrawError as e:
        raise DrawError(f"{path}: not a valid safetensors file: {e}") from None
    buffer = bytearray(raw[start:])  # writable, so that torch.frombuffer does not warn
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        torch_dtype = getattr(torch, DTYPES[dtype][0])
        count = math.prod(shape)
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=torch_dtype)
            continue
        flat = torch.frombuffer(buffer, dtype=torch_dtype, count=count, offset=begin)
        if sys.byteorder != "little" and DTYPES[dtype][1] > 1:
            flat = flat.view(torch.uint8).view(-1, DTYPES[dtype][1]).flip(1).contiguous().view(torch_dtype).view(-1)
        tensors[name] = flat.reshape(shape).clone()
    return tensors, metadata


def encode(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file's bytes for ``tensors`` (any device; written from CPU copies) and ``metadata``."""
    import torch

    names = {torch_name: st for st, (torch_name, _) in DTYPES.items()}
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise DrawError(f"safetensors {METADATA} must map strings to strings")
        header[METADATA] = dict(metadata)
    blobs, at = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(name, str) or not name or name == METADATA:
            raise DrawError(f"cannot write a tensor named {name!r} in a safetensors file")
        dtype = names.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise DrawError(f"cannot write tensor {name!r}: dtype {t.dtype} has no safetensors name here")
        t = t.detach().to("cpu").contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        if sys.byteorder != "little" and t.element_size() > 1:
            width = t.element_size()
            data = b"".join(data[i:i + width][::-1] for i in range(0, len(data), width))
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [at, at + len(data)]}
        blobs.append(data)
        at += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the reference writer does
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def write(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (drawcli/core/files.py)."""
    from drawcli.core.files import replace_atomically

    data = encode(tensors, metadata)
    replace_atomically(Path(path), lambda tmp: tmp.write_bytes(data), what="safetensors file ")
