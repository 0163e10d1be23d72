"""Read a GGUF file's scalar key-values (strings, numbers) without llama.cpp or llama-cpp-python.

A router file's metadata must be checked before llama-cpp-python opens the file: `Llama(...)`
compiles every `tokenizer.chat_template*` with Jinja2, whose constant folding evaluates an
expression such as `{{ 'x' * 10**10 }}` while loading, before any caller sees the metadata.
Neither llama-cpp-python nor the runtime's dependencies offer a GGUF reader that stops at the
header (gguf-py's `GGUFReader` maps every tensor and takes seconds on a 49k-token vocabulary;
a vocab-only llama.cpp load builds the vocabulary, ~170 ms), so this reads the key-value section
itself: about 20 ms for SmolLM2, most of it stepping over the tokenizer's arrays (skipped, never
decoded). Values come back as strings, the way `Llama.metadata` gives them.

Every read is bounds-checked against the file, so a truncated or crafted header is a
`GgufHeaderError` naming the key, never an over-read or a huge allocation.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # llama.cpp reads these; version 1 (32-bit lengths) is long gone

# GGUF value types (gguf.h `enum gguf_type`): the fixed-size scalars, by struct format.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING = 8
_ARRAY = 9
_U64 = struct.Struct("<Q")


class GgufHeaderError(ValueError):
    """A file that is not a readable GGUF (bad magic, version, truncated or inconsistent header)."""


class _Cursor:
    def __init__(self, data: mmap.mmap, where: str) -> None:
        self.data = data
        self.where = where
        self.position = 0

    def take(self, size: int, what: str) -> int:
        start = self.position
        if size < 0 or start + size > len(self.data):
            raise GgufHeaderError(
                f"{self.where}: truncated GGUF header ({what} runs past the end of the file)"
            )
        self.position += size
        return start

    def unpack(self, layout: str, what: str) -> tuple[int | float | bool, ...]:
        return struct.unpack_from(layout, self.data, self.take(struct.calcsize(layout), what))

    def u64(self, what: str) -> int:
        return _U64.unpack_from(self.data, self.take(8, what))[0]

    def string(self, what: str) -> str:
        size = self.u64(what)
        start = self.take(size, what)
        try:
            return self.data[start : start + size].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GgufHeaderError(f"{self.where}: {what} is not UTF-8 ({exc.reason})") from None

    def skip_array(self, key: str) -> None:
        kind, count = self.unpack("<IQ", f"array {key}")
        if kind in _SCALARS:
            self.take(struct.calcsize(_SCALARS[int(kind)]) * int(count), f"array {key}")
        elif kind == _STRING:
            # Each element is at least its 8-byte length: a count the file cannot hold is refused
            # before looping, so a crafted count costs nothing.
            if int(count) * 8 > len(self.data) - self.position:
                raise GgufHeaderError(
                    f"{self.where}: truncated GGUF header (array {key} holds {count} strings)"
                )
            # The hot loop (the tokenizer's ~100k strings): locals only, one bounds check at the end.
            data, position, unpack = self.data, self.position, _U64.unpack_from
            try:
                for _ in range(int(count)):
                    position += 8 + unpack(data, position)[0]
            except struct.error:
                position = len(data) + 1
            self.take(position - self.position, f"array {key}")
        else:
            raise GgufHeaderError(f"{self.where}: {key}: unsupported array element type {kind}")


def _scalar_text(value: int | float | bool) -> str:
    """As llama.cpp's `gguf_kv_to_str` writes it (and so as `Llama.metadata` holds it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:f}"
    return str(value)


def read_gguf_metadata(path: str | Path) -> dict[str, str]:
    """The file's scalar key-values as strings (arrays such as the tokenizer's are skipped)."""
    where = str(path)
    with Path(path).open("rb") as handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise GgufHeaderError(f"{where}: not a GGUF file (empty)") from None
    with data:
        cursor = _Cursor(data, where)
        if data[:4] != MAGIC:
            raise GgufHeaderError(f"{where}: not a GGUF file (no GGUF magic)")
        cursor.take(4, "magic")
        version, _tensors, count = cursor.unpack("<IQQ", "header")
        if version not in VERSIONS:
            raise GgufHeaderError(
                f"{where}: GGUF version {version} is not supported (llama.cpp reads 2 and 3)"
            )
        values: dict[str, str] = {}
        seen: set[str] = set()
        for index in range(int(count)):
            key = cursor.string(f"key #{index}")
            if key in seen:  # llama.cpp refuses these too; two readers must never disagree on a value
                raise GgufHeaderError(f"{where}: duplicate key {key!r}")
            seen.add(key)
            (kind,) = cursor.unpack("<I", f"type of {key}")
            if kind == _STRING:
                values[key] = cursor.string(key)
            elif kind == _ARRAY:
                cursor.skip_array(key)
            elif kind in _SCALARS:
                values[key] = _scalar_text(cursor.unpack(_SCALARS[kind], key)[0])
            else:
                raise GgufHeaderError(f"{where}: {key}: unknown value type {kind}")
        return values
