"""A GGUF whose tensors come from A, except those whose names match RULE, taken from B.

A and B are the same model at two levels (here Q4_K_M and F16), so the output is A with some
layers put back at B's precision: where a level loses accuracy. Measurement only, not product code.

    python results/quant-aware/hybrid.py A.gguf B.gguf '^blk\\.([0-9]|1[0-3])\\.' OUT.gguf
"""

from __future__ import annotations

import re
import sys

import gguf


def main(a_path: str, b_path: str, rule: str, out: str) -> int:
    first, second = gguf.GGUFReader(a_path), gguf.GGUFReader(b_path)
    replacements = {tensor.name: tensor for tensor in second.tensors}
    pattern = re.compile(rule)
    architecture = first.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(out, arch=architecture)
    for field in first.fields.values():  # A's metadata, as gguf-py's gguf_new_metadata copies it
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    chosen = [replacements[t.name] if pattern.search(t.name) else t for t in first.tensors]
    for tensor in chosen:
        writer.add_tensor_info(
            tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in chosen:
        writer.write_tensor_data(tensor.data, tensor_endianess=first.endianess)
    writer.close()
    print(f"taken from B: {sum(1 for t in first.tensors if pattern.search(t.name))} tensors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:5]))
