"""What a GGUF file says about itself (a model or a LoRA adapter: architecture, size,
quantization), and a model's KV cache."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
KV_CACHE_ELEMENT_BYTES = 2  # llama.cpp keeps K and V in f16 unless told otherwise
MAX_TEXT_CHARS = 64 * 1024  # a chat template or license longer than this is clipped
MAX_TYPE_CHARS = 63  # general.type and adapter.type are short words
MODEL = "model"  # general.type of a model; a file without general.type is one too
ADAPTER = "adapter"  # general.type of an adapter (LoRA: adapter.type "lora")


class GgufError(Exception):
    """The file is not a usable GGUF file; the message names the file and says why."""


@dataclass(frozen=True)
class GgufInfo:
    """The header's facts about one model or adapter; counts the header lacks are 0, texts
    are "". An adapter has no context length nor shape: those are 0; its `architecture` is
    the one of the models it is for."""

    architecture: str
    parameters: int  # the element count of all tensors
    quantization: str  # e.g. "Q4_1", "F16"
    context_length: int  # the context it was trained for
    chat_template: str
    license: str
    size_bytes: int
    name: str
    block_count: int
    embedding_length: int
    head_count: int
    head_count_kv: int
    key_length: int  # per head; 0: embedding_length // head_count
    value_length: int  # per head; 0: as key_length
    # general.type: "model" or "adapter" (not general.file_type, which names the quantization)
    file_type: str = MODEL
    adapter_type: str = ""  # adapter.type of an adapter, e.g. "lora"
    lora_alpha: float = 0.0  # adapter.lora.alpha; 0: not given

    @property
    def is_adapter(self) -> bool:
        return self.file_type == ADAPTER

    def metadata(self) -> dict[str, Any]:
        """A JSON-ready copy of every field."""
        return asdict(self)

    @classmethod
    def from_metadata(cls, document: dict[str, Any]) -> GgufInfo:
        """The inverse of `metadata()`; fields a document lacks (one stored by an older
        version) take their defaults, or their empty values."""
        values: dict[str, Any] = {}
        for name, kind in _FIELD_TYPES.items():
            value = document.get(name)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if isinstance(value, kind) and not isinstance(value, bool) and value != "":
                values[name] = value
            else:
                default = GgufInfo.__dataclass_fields__[name].default
                values[name] = kind() if default is MISSING else default
        return cls(**values)


_TYPES: dict[object, type] = {"int": int, int: int, "float": float, float: float}
_FIELD_TYPES: dict[str, type] = {
    name: _TYPES.get(field.type, str) for name, field in GgufInfo.__dataclass_fields__.items()
}


def head_dims(info: GgufInfo) -> tuple[int, int]:
    """(key, value) width of one attention head, from the header or embedding / heads."""
    fallback = info.embedding_length // info.head_count if info.head_count > 0 else 0
    key = info.key_length or fallback
    return key, info.value_length or key


def kv_cache_bytes(info: GgufInfo, context_length: int) -> int:
    """Bytes of an f16 K and V cache for `context_length` tokens; 0 when the header lacks the
    shape (block count, heads or widths)."""
    if context_length < 0:
        raise ValueError("context_length cannot be negative")
    key, value = head_dims(info)
    heads = info.head_count_kv or info.head_count
    return info.block_count * context_length * heads * (key + value) * KV_CACHE_ELEMENT_BYTES


def read_gguf_info(path: Path) -> GgufInfo:
    """Reads the header and tensor table (memory-mapped); GgufError on any defect."""
    size = _check_file(path)
    from gguf import GGUFReader  # numpy-heavy: loaded only when a model is read

    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # the reader raises many types on damaged files
        # gguf maps each tensor's data while it reads the tensor table, so a file cut short
        # inside its tensor data usually fails here, in numpy's words.
        raise GgufError(f"{path} is truncated or its GGUF header is damaged: {exc}") from exc
    try:
        return _info(reader, path, size)
    except GgufError:
        raise
    except Exception as exc:  # a field of an unexpected type or shape
        raise GgufError(f"{path} has a damaged GGUF header: {exc}") from exc


def _check_file(path: Path) -> int:
    try:
        if not path.exists():
            raise GgufError(f"{path} does not exist")
        if not path.is_file():
            raise GgufError(f"{path} is not a regular file")
        with path.open("rb") as handle:
            magic = handle.read(4)
            size = path.stat().st_size
    except OSError as exc:
        raise GgufError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if magic != GGUF_MAGIC:
        raise GgufError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    return size


def _info(reader: Any, path: Path, size: int) -> GgufInfo:
    if not reader.tensors:
        raise GgufError(f"{path} holds no tensors")
    needed = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    if needed > size:
        raise GgufError(f"{path} is truncated: it has {size} bytes, its tensors need {needed}")
    fields = reader.fields
    architecture = _text(fields, "general.architecture") or "unknown"
    file_type = _text(fields, "general.type")[:MAX_TYPE_CHARS] or MODEL
    adapter = file_type == ADAPTER

    def arch_int(key: str) -> int:
        return _integer(fields, f"{architecture}.{key}")

    return GgufInfo(
        architecture=architecture,
        parameters=sum(int(t.n_elements) for t in reader.tensors),
        quantization=_quantization(fields, reader.tensors),
        context_length=arch_int("context_length"),
        chat_template=_text(fields, "tokenizer.chat_template"),
        license=_text(fields, "general.license"),
        size_bytes=size,
        name=_text(fields, "general.name"),
        block_count=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv"),
        key_length=arch_int("attention.key_length"),
        value_length=arch_int("attention.value_length"),
        file_type=file_type,
        adapter_type=_text(fields, "adapter.type")[:MAX_TYPE_CHARS] if adapter else "",
        lora_alpha=_number(fields, "adapter.lora.alpha") if adapter else 0.0,
    )


def _value(fields: Any, key: str) -> object:
    field = fields.get(key)
    return None if field is None else field.contents()


def _text(fields: Any, key: str) -> str:
    value = _value(fields, key)
    if not isinstance(value, str):
        return ""
    return value[:MAX_TEXT_CHARS].replace("\x00", "")  # PostgreSQL text cannot hold NUL


def _integer(fields: Any, key: str) -> int:
    """An integer field; per-layer arrays (some architectures) give their largest entry."""
    value = _value(fields, key)
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
        return max(numbers, default=0)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


def _number(fields: Any, key: str) -> float:
    """A finite number; 0.0 when absent or anything else (JSON holds no NaN)."""
    value = _value(fields, key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number):
            return number
    return 0.0


def _quantization(fields: Any, tensors: Any) -> str:
    from gguf import GGMLQuantizationType, LlamaFileType

    file_type = _value(fields, "general.file_type")
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        try:
            name = LlamaFileType(file_type).name
        except ValueError:
            name = ""
        if name and name != "GUESSED":
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # No (known) file type: the tensor type holding the most bytes.
    weights: Counter[int] = Counter()
    for tensor in tensors:
        weights[int(tensor.tensor_type)] += int(tensor.n_bytes)
    dominant = weights.most_common(1)[0][0]
    try:
        return GGMLQuantizationType(dominant).name
    except ValueError:
        return f"type-{dominant}"
