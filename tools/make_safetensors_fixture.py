#!/usr/bin/env python3
"""Writes tests/fixtures/safetensors/: a small file made by the Hugging Face `safetensors` library
with every dtype Marlin reads, and a JSON of what it holds (raw bytes as hex, and decoded values),
so that tests/io/safetensors_fixture_test.cpp can check that Marlin reads it exactly and writes
the same bytes back.

    pip install safetensors numpy && python3 tools/make_safetensors_fixture.py

bf16 and F8_E4M3 are passed to the library as raw bytes (no ml_dtypes or torch needed); their
expected values are decoded here from the bit patterns.
"""
import json
import math
import pathlib
import struct

import numpy as np
import safetensors
from safetensors import TensorSpec, serialize

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "safetensors"


def bf16_value(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


def fp8_e4m3_value(byte: int) -> float:
    """OCP E4M3 "fn": bias 7, no infinities, 0x7f/0xff NaN (not used here)."""
    sign = -1.0 if byte & 0x80 else 1.0
    exponent, mantissa = (byte >> 3) & 0xF, byte & 0x7
    if exponent == 0:
        return sign * mantissa * 2.0**-9
    return sign * (1 + mantissa / 8) * 2.0 ** (exponent - 7)


def main() -> None:
    rng = np.random.default_rng(20240601)
    arrays = {
        "f64.vector": rng.normal(size=5),
        "f32.matrix": rng.normal(size=(3, 4)).astype(np.float32),
        "f32.scalar": np.array(-3.25, dtype=np.float32),
        "f32.empty": np.zeros((0, 3), dtype=np.float32),
        "f16.matrix": rng.normal(size=(2, 3)).astype(np.float16),
        "i64.ids": np.array([-(2**62), -1, 0, 7, 2**62 + 5], dtype=np.int64),
        "i32.values": rng.integers(-(2**31), 2**31 - 1, size=6, dtype=np.int32),
        "u32.packed": rng.integers(2**31, 2**32 - 1, size=(2, 2), dtype=np.uint32),
        "i16.values": np.array([-32768, -2, 3, 32767], dtype=np.int16),
        "i8.values": np.array([-128, -1, 0, 1, 127], dtype=np.int8),
        "u8.values": np.array([0, 1, 128, 255, 42], dtype=np.uint8),
        "bool.mask": np.array([True, False, False, True, True], dtype=np.bool_),
    }
    # Raw bit patterns: bf16 of N(0, 1) values, and E4M3 codes spanning subnormals to +-448.
    bf16_bits = (rng.normal(size=(4, 2)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    fp8_codes = np.array([0x01, 0x07, 0x08, 0x38, 0x7E, 0x81, 0xB9, 0xFE], dtype=np.uint8)

    specs, expected, keep_alive = {}, {}, []

    def add(name, dtype_name, st_dtype, array, values):
        array = np.ascontiguousarray(array)
        keep_alive.append(array)
        specs[name] = TensorSpec(dtype=dtype_name, shape=list(array.shape),
                                 data_ptr=array.ctypes.data, data_len=array.nbytes)
        expected[name] = {"dtype": st_dtype, "shape": list(array.shape),
                          "hex": array.tobytes().hex(), "values": values}

    st_names = {np.float64: "F64", np.float32: "F32", np.float16: "F16", np.int64: "I64",
                np.int32: "I32", np.uint32: "U32", np.int16: "I16", np.int8: "I8", np.uint8: "U8",
                np.bool_: "BOOL"}
    for name, array in arrays.items():
        values = [float(v) if array.dtype.kind == "f" else int(v) for v in array.reshape(-1)]
        add(name, array.dtype.name, st_names[array.dtype.type], array, values)
    add("bf16.matrix", "bfloat16", "BF16", bf16_bits, [bf16_value(int(b)) for b in bf16_bits.reshape(-1)])
    add("f8.codes", "float8_e4m3fn", "F8_E4M3", fp8_codes, [fp8_e4m3_value(int(b)) for b in fp8_codes])
    assert all(math.isfinite(v) for entry in expected.values() for v in entry["values"])

    metadata = {"format": "pt"}  # one key: the library writes a multi-key map in hash order
    data = bytes(serialize(specs, metadata=metadata))

    # The library reads back what it wrote, byte for byte.
    for name, info in safetensors.deserialize(data):
        assert bytes(info["data"]).hex() == expected[name]["hex"], name

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "mixed.safetensors").write_bytes(data)
    (OUT / "mixed_expected.json").write_text(json.dumps(
        {"safetensors_version": safetensors.__version__, "metadata": metadata,
         "tensors": expected}, indent=1) + "\n")
    print(f"wrote {OUT}/mixed.safetensors ({len(data)} bytes, {len(expected)} tensors)")


if __name__ == "__main__":
    main()
