"""drawcli's own safetensors reader and writer (drawcli/runs/safetensors.py): round trips, files that
go both ways with the `safetensors` package, and one-line refusals of every malformed file."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from drawcli.core.errors import DrawError
from drawcli.runs import safetensors as st


def tensors() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 4, generator=g),
        "b": torch.randn(5, generator=g, dtype=torch.float64),
        "half": torch.randn(2, 3, generator=g).half(),
        "brain": torch.randn(7, generator=g).bfloat16(),
        "ints": torch.arange(-3, 3, dtype=torch.int64),
        "i32": torch.arange(4, dtype=torch.int32).reshape(2, 2),
        "i16": torch.tensor([-2, 9], dtype=torch.int16),
        "i8": torch.tensor([-1, 1], dtype=torch.int8),
        "bytes": torch.arange(6, dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous: written row-major all the same
    }


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def raw_file(header, data: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def test_a_round_trip_keeps_every_dtype_shape_and_bit(tmp_path):
    path = tmp_path / "t.safetensors"
    st.write(path, tensors(), {"format": "pt", "note": "ü"})
    got, metadata = st.read(path)
    assert same(got, tensors()) and metadata == {"format": "pt", "note": "ü"}
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert length % 8 == 0 and raw[8:9] == b"{"  # the data starts 8-byte aligned


def test_files_go_both_ways_with_the_safetensors_package(tmp_path):
    reference = pytest.importorskip("safetensors.torch")
    ours = tmp_path / "ours.safetensors"
    st.write(ours, tensors(), {"format": "pt"})
    theirs_read = reference.load_file(str(ours))
    assert same(theirs_read, {k: v.contiguous() for k, v in tensors().items()})
    from safetensors import safe_open  # the package's metadata reader agrees too

    with safe_open(str(ours), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    theirs = tmp_path / "theirs.safetensors"
    reference.save_file({k: v.contiguous() for k, v in tensors().items()}, str(theirs), metadata={"format": "pt", "x": "1"})
    got, metadata = st.read(theirs)
    assert same(got, tensors()) and metadata == {"format": "pt", "x": "1"}
    # A model's state_dict saved by the package loads as drawcli's own file would.
    model_file = tmp_path / "model.safetensors"
    state = torch.nn.Linear(3, 2).state_dict()
    reference.save_file(state, str(model_file))
    assert same(st.read(model_file)[0], state)


F4 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("content, message", [
    (b"\x01\x02", "truncated: 2 bytes, fewer than the 8 of the header length"),
    (raw_file({"a": F4}, b"\0" * 8, length=10**6), "header length 1000000 runs past the end of the file"),
    (raw_file({"a": F4}, b"\0" * 8, length=2**40), "header length 1099511627776 is over the format's limit"),
    (raw_file({"a": F4}, b"\0" * 4), "the tensors need 8 bytes of data, the file holds 4: truncated"),
    (raw_file({"a": F4}, b"\0" * 12), "4 bytes after the last tensor belong to no tensor"),
    (raw_file(b'{"a": \xff}'), "the header is not UTF-8"),
    (raw_file(b'{"a": {"dtype": "F32",'), "the header is not valid JSON"),
    (raw_file(b"[1, 2]"), "the header is not a JSON object"),
    (raw_file(b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}',
              b"\0" * 16), "the header names 'a' twice"),
    (raw_file({"a": {"dtype": "F48", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "tensor 'a': unknown dtype 'F48'"),
    (raw_file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
     "tensor 'a': shape (3,) of F32 is 12 bytes, its offsets hold 8"),
    (raw_file({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8), "shape must be a list of whole numbers"),
    (raw_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8), "data_offsets must be [begin, end]"),
    (raw_file({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "tensor 'a': expected dtype, shape and data_offsets"),
    (raw_file({"a": F4, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
     "tensor 'b' overlaps the one before it"),
    (raw_file({"a": F4, "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, b"\0" * 16),
     "bytes 8..12 of the data belong to no tensor"),
    (raw_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b""), "the tensors need 8 bytes of data, the file holds 0"),
    (raw_file({"__metadata__": {"v": 1}, "a": F4}, b"\0" * 8), "__metadata__ must map strings to strings"),
])
def test_a_malformed_file_is_refused_in_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(DrawError) as e:
        st.read(path)
    text = str(e.value)
    assert text.startswith(f"{path}: not a valid safetensors file: ") and message in text and "\n" not in text


def test_a_tampered_header_or_a_cut_file_is_refused(tmp_path):
    path = tmp_path / "t.safetensors"
    st.write(path, {"w": torch.ones(4, 4)})
    raw = path.read_bytes()
    path.write_bytes(raw[:-5])
    with pytest.raises(DrawError, match=r"t.safetensors: not a valid safetensors file: the tensors need 64 bytes of data, the file holds 59: truncated"):
        st.read(path)
    path.write_bytes(raw.replace(b'"shape":[4,4]', b'"shape":[4,5]'))
    with pytest.raises(DrawError, match=r"tensor 'w': shape \(4, 5\) of F32 is 80 bytes, its offsets hold 64"):
        st.read(path)
    with pytest.raises(DrawError, match="nosuch.safetensors: not found"):
        st.read(tmp_path / "nosuch.safetensors")


def test_the_writer_refuses_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(DrawError, match="has no safetensors name"):
        st.encode({"c": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(DrawError, match="must map strings to strings"):
        st.encode({"a": torch.zeros(1)}, {"n": 1})
    with pytest.raises(DrawError, match="cannot write a tensor named '__metadata__'"):
        st.encode({"__metadata__": torch.zeros(1)})
