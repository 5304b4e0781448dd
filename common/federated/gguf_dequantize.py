"""An F32 copy of a quantized GGUF model, to check exporters against torch without quant noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.files import atomic_output

# Fields the writer sets itself, or that would lie about an all-F32 file.
_SKIPPED = ("general.architecture", "general.file_type", "general.quantization_version")


def dequantized_copy(base_gguf: Path, target: Path) -> Path:
    """Write ``target``: ``base_gguf`` with every tensor dequantized to F32 and the same
    metadata (tokenizer included); atomically (temp file + rename). Returns ``target``."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
    from gguf.quants import dequantize

    reader = GGUFReader(base_gguf, "r")
    architecture = reader.fields["general.architecture"].contents()
    with atomic_output(target) as temp:
        writer = GGUFWriter(temp, str(architecture))
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name in _SKIPPED:
                continue
            vtype = field.types[0]
            sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
            if len(field.types) > 2:
                raise ValueError(f"{base_gguf}: nested array {field.name} is not supported")
            writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)
            if field.name == "general.alignment":
                writer.data_alignment = int(field.contents())
        writer.add_file_type(LlamaFileType.ALL_F32)
        for tensor in reader.tensors:
            shape = tuple(int(d) for d in reversed(tensor.shape))  # numpy order
            n_bytes = int(np.prod(shape)) * 4
            writer.add_tensor_info(tensor.name, shape, np.dtype(np.float32), n_bytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:  # one tensor in memory at a time
            data = dequantize(tensor.data, tensor.tensor_type)
            shape = tuple(int(d) for d in reversed(tensor.shape))
            writer.write_tensor_data(np.ascontiguousarray(data, dtype=np.float32).reshape(shape))
        writer.close()
    return target
