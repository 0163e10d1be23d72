"""A GGUF whose tensors come from A, except those the rule takes from B (same model, other level)."""
import re, sys
import gguf
a_path, b_path, rule, out = sys.argv[1:5]
ra, rb = gguf.GGUFReader(a_path), gguf.GGUFReader(b_path)
btensors = {t.name: t for t in rb.tensors}
pat = re.compile(rule)
w = gguf.GGUFWriter(out, arch=ra.fields[gguf.Keys.General.ARCHITECTURE].contents())
for field in ra.fields.values():
    if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith('GGUF.'):
        continue
    vt = field.types[0]
    st = field.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
    w.add_key_value(field.name, field.contents(), vt, sub_type=st)
chosen = [btensors[t.name] if pat.search(t.name) else t for t in ra.tensors]
n = sum(1 for t in ra.tensors if pat.search(t.name))
for t in chosen:
    w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_ti_data_to_file()
for t in chosen:
    w.write_tensor_data(t.data, tensor_endianess=ra.endianess)
w.close()
print('taken from B:', n)
