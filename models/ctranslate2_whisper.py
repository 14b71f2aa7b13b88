"""Load a CTranslate2 Whisper model's encoder into transformers' ``WhisperEncoder``.

SAVE-2 uses Whisper's encoder as its audio encoder and must be trainable/differentiable in
PyTorch, but the only Whisper weights available offline are the CTranslate2 conversion that
faster-whisper uses (see ``models.bundled``). This module reads CTranslate2's ``model.bin``
directly (no ctranslate2 import needed) and maps the encoder weights, strictly, onto the
Hugging Face module.

``model.bin`` layout (little-endian; ``ctranslate2/specs/model_spec.py:_serialize`` writes it,
``src/models/model.cc`` reads it)::

    u32 binary_version
    [v>=2] string spec_name, u32 spec_revision
    u32 num_variables, then per variable:
        string name; u8 rank; u32 dims[rank]
        v>=4: u8 dtype_id; u32 num_bytes      v<4: u8 item_size; u32 num_elements
        raw row-major bytes
    [v>=3] u32 num_aliases, then per alias: string alias, string target
    string = u16 length (including the trailing NUL), bytes, NUL
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

__all__ = [
    "CT2FormatError",
    "CT2MappingError",
    "ct2_encoder_state_dict",
    "read_ct2_model_bin",
    "whisper_config_from_ct2",
    "whisper_encoder_from_ct2",
    "whisper_encoder_from_ct2_variables",
]

logger = logging.getLogger(__name__)

SUPPORTED_BINARY_VERSIONS = range(1, 7)
# Order of CTranslate2's DataType enum (include/ctranslate2/types.h, _dtype_to_type_id).
_DTYPE_IDS = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),  # numpy has no bfloat16: read raw bits, widen to float32
}
# Binary versions < 4 stored an item size instead of a dtype (model.cc get_dtype_from_item_size).
_LEGACY_ITEM_SIZE = {4: "float32", 2: "int16", 1: "int8"}

# Whisper's attention head size is 64 for every released size; the encoder spec stores
# num_heads anyway, this table is only the fallback for files without it.
_KNOWN_HEADS = {(384, 4): 6, (512, 6): 8, (768, 12): 12, (1024, 24): 16, (1280, 32): 20}


class CT2FormatError(ValueError):
    """``model.bin`` is truncated, of an unsupported version, or otherwise unreadable."""


class CT2MappingError(ValueError):
    """The CTranslate2 variables do not map one-to-one onto ``WhisperEncoder``'s parameters."""


@dataclass(frozen=True)
class _Entry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    num_bytes: int


def read_ct2_model_bin(
    path: str | Path,
    *,
    prefixes: Sequence[str] | None = None,
    dequantize: bool = True,
) -> tuple[dict[str, np.ndarray], dict]:
    """Read CTranslate2 variables (weights and scalar attributes) without ctranslate2.

    ``prefixes`` limits what is loaded (e.g. ``("encoder/",)`` skips the 100 MB decoder).
    Aliases (duplicated tensors that CTranslate2 stores once) are resolved to the same array.
    float16/float32 keep their dtype; bfloat16 is widened to float32. With ``dequantize``, an
    int8/int16 ``X`` that has an ``X_scale`` becomes float32 ``X / X_scale`` and ``X_scale``
    is dropped, which is what CTranslate2 itself does when asked for a float compute type.

    Returns ``(variables, info)`` where info holds ``binary_version``, ``spec``,
    ``spec_revision``, ``aliases`` (alias -> target), ``dtypes`` (name -> stored dtype) and
    ``dequantized`` (names converted from int8/int16).
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        reader = _Reader(f, size, path)
        version = reader.u32()
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise CT2FormatError(
                f"{path}: binary version {version} is not supported "
                f"(supported: {SUPPORTED_BINARY_VERSIONS.start}..{SUPPORTED_BINARY_VERSIONS.stop - 1})"
            )
        spec, revision = (reader.string(), reader.u32()) if version >= 2 else ("", 1)
        entries: dict[str, _Entry] = {}
        for _ in range(reader.u32()):
            entry = reader.entry(version)
            if entry.name in entries:
                raise CT2FormatError(f"{path}: variable {entry.name!r} is stored twice")
            entries[entry.name] = entry
        aliases: dict[str, str] = {}
        if version >= 3:
            for _ in range(reader.u32()):
                alias, target = reader.string(), reader.string()
                aliases[alias] = target
        if f.tell() != size:
            raise CT2FormatError(f"{path}: {size - f.tell()} unexpected trailing bytes")

        for alias, target in aliases.items():
            if target not in entries:
                raise CT2FormatError(f"{path}: alias {alias!r} points to unknown variable {target!r}")

        def wanted(name: str) -> bool:
            return prefixes is None or any(name.startswith(p) for p in prefixes)

        names = [n for n in (*entries, *aliases) if wanted(n)]
        arrays: dict[str, np.ndarray] = {}
        for name in names:
            real = aliases.get(name, name)
            if real not in arrays:
                arrays[real] = reader.array(entries[real])

    variables = {name: arrays[aliases.get(name, name)] for name in names}
    dtypes = {name: entries[aliases.get(name, name)].dtype for name in names}
    dequantized: list[str] = []
    if dequantize:
        for name in sorted(variables):
            scale_name = f"{name}_scale"
            if scale_name in variables and dtypes[name] in ("int8", "int16"):
                if f"{name}_zero" in variables:
                    raise CT2FormatError(f"{path}: {name!r} is AWQ-quantised (has _zero); not supported")
                variables[name] = _dequantize(name, variables[name], variables.pop(scale_name))
                dequantized.append(name)
    info = {
        "binary_version": version,
        "spec": spec,
        "spec_revision": revision,
        "aliases": {a: t for a, t in aliases.items() if wanted(a)},
        "dtypes": dtypes,
        "dequantized": dequantized,
    }
    return variables, info


def _dequantize(name: str, value: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Invert CTranslate2's quantisation: int8 has one scale per output row, int16 one in all."""
    scale = np.asarray(scale, dtype=np.float32)
    if scale.ndim == 0:
        return value.astype(np.float32) / scale
    if value.ndim == 0 or scale.shape != value.shape[:1]:
        raise CT2FormatError(f"{name}: scale shape {scale.shape} does not match weight shape {value.shape}")
    return value.astype(np.float32) / scale.reshape((-1,) + (1,) * (value.ndim - 1))


class _Reader:
    def __init__(self, f: BufferedReader, size: int, path: Path) -> None:
        self.f, self.size, self.path = f, size, path

    def _read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise CT2FormatError(f"{self.path}: truncated at byte {self.f.tell()} (file has {self.size})")
        return data

    def u8(self) -> int:
        return self._read(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self._read(4))[0]

    def string(self) -> str:
        n = struct.unpack("<H", self._read(2))[0]
        data = self._read(n)
        if n == 0 or data[-1] != 0:
            raise CT2FormatError(f"{self.path}: malformed string near byte {self.f.tell()}")
        return data[:-1].decode("utf-8")

    def entry(self, version: int) -> _Entry:
        name = self.string()
        rank = self.u8()
        shape = struct.unpack(f"<{rank}I", self._read(4 * rank))
        if version >= 4:
            type_id = self.u8()
            if type_id >= len(_DTYPE_IDS):
                raise CT2FormatError(f"{self.path}: {name!r} has unknown dtype id {type_id}")
            dtype = _DTYPE_IDS[type_id]
            num_bytes = self.u32()
        else:
            item_size = self.u8()
            if item_size not in _LEGACY_ITEM_SIZE:
                raise CT2FormatError(f"{self.path}: {name!r} has unknown item size {item_size}")
            dtype = _LEGACY_ITEM_SIZE[item_size]
            num_bytes = self.u32() * item_size
        expected = math.prod(shape) * _NUMPY_DTYPES[dtype].itemsize
        if num_bytes != expected:
            raise CT2FormatError(
                f"{self.path}: {name!r} {dtype}{list(shape)} should have {expected} bytes, "
                f"header says {num_bytes}"
            )
        offset = self.f.tell()
        if offset + num_bytes > self.size:
            raise CT2FormatError(f"{self.path}: truncated inside {name!r}")
        self.f.seek(num_bytes, 1)
        return _Entry(name, tuple(shape), dtype, offset, num_bytes)

    def array(self, entry: _Entry) -> np.ndarray:
        here = self.f.tell()
        self.f.seek(entry.offset)
        raw = np.empty(math.prod(entry.shape), dtype=_NUMPY_DTYPES[entry.dtype])
        if self.f.readinto(raw.data.cast("B")) != entry.num_bytes:
            raise CT2FormatError(f"{self.path}: truncated inside {entry.name!r}")
        self.f.seek(here)
        if entry.dtype == "bfloat16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.reshape(entry.shape)


# --------------------------------------------------------------------------- mapping

_LAYER_RE = re.compile(r"^encoder/layer_(\d+)/")
# Scalar attributes of the encoder spec that configure rather than carry weights.
_ENCODER_ATTRIBUTES = ("encoder/num_heads",)


def whisper_config_from_ct2(
    variables: Mapping[str, np.ndarray], num_heads: int | None = None
) -> WhisperConfig:
    """Derive the encoder dims from the weights themselves so any Whisper size loads."""
    try:
        conv1 = variables["encoder/conv1/weight"]
        positions = variables["encoder/position_encodings/encodings"]
        fc1 = variables["encoder/layer_0/ffn/linear_0/weight"]
    except KeyError as e:
        raise CT2MappingError(f"not a CTranslate2 Whisper encoder: missing variable {e.args[0]!r}") from None
    d_model, num_mel_bins, _ = conv1.shape
    layers = sorted({int(m.group(1)) for k in variables if (m := _LAYER_RE.match(k))})
    if layers != list(range(len(layers))):
        raise CT2MappingError(f"encoder layer indices are not contiguous from 0: {layers}")
    if num_heads is None:
        if "encoder/num_heads" in variables:
            num_heads = int(variables["encoder/num_heads"])
        else:
            num_heads = _KNOWN_HEADS.get((d_model, len(layers)), d_model // 64)
    if d_model % num_heads:
        raise CT2MappingError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
    return WhisperConfig(
        num_mel_bins=int(num_mel_bins),
        d_model=int(d_model),
        encoder_layers=len(layers),
        encoder_attention_heads=int(num_heads),
        encoder_ffn_dim=int(fc1.shape[0]),
        max_source_positions=int(positions.shape[0]),
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
    )


def ct2_encoder_state_dict(
    variables: Mapping[str, np.ndarray], config: WhisperConfig
) -> dict[str, torch.Tensor]:
    """Map CTranslate2 encoder variables to ``WhisperEncoder`` state-dict keys, strictly.

    Every ``encoder/*`` variable must be consumed and every encoder parameter filled with the
    exact shape; ``decoder/*`` and other non-encoder variables are ignored on purpose.
    Raises ``CT2MappingError`` naming the offending keys otherwise.
    """
    d = config.d_model
    hf_shapes = {k: tuple(v.shape) for k, v in _encoder_shapes(config).items()}
    encoder_vars = {k: v for k, v in variables.items() if k.startswith("encoder/")}
    used: set[str] = set()
    state: dict[str, torch.Tensor] = {}
    missing: list[str] = []

    def take(ct2_name: str) -> np.ndarray | None:
        if ct2_name not in encoder_vars:
            missing.append(ct2_name)
            return None
        used.add(ct2_name)
        return np.asarray(encoder_vars[ct2_name])

    def put(hf_name: str, ct2_name: str, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        value = take(ct2_name)
        if value is not None:
            state[hf_name] = _tensor(transform(value) if transform else value)

    for conv in ("conv1", "conv2"):
        put(f"{conv}.weight", f"encoder/{conv}/weight")
        put(f"{conv}.bias", f"encoder/{conv}/bias")
    put("embed_positions.weight", "encoder/position_encodings/encodings")
    put("layer_norm.weight", "encoder/layer_norm/gamma")
    put("layer_norm.bias", "encoder/layer_norm/beta")
    for i in range(config.encoder_layers):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        put(f"{dst}.self_attn_layer_norm.weight", f"{src}/self_attention/layer_norm/gamma")
        put(f"{dst}.self_attn_layer_norm.bias", f"{src}/self_attention/layer_norm/beta")
        qkv_w = take(f"{src}/self_attention/linear_0/weight")
        qkv_b = take(f"{src}/self_attention/linear_0/bias")
        if qkv_w is not None:
            if qkv_w.shape != (3 * d, d):
                raise CT2MappingError(
                    f"{src}/self_attention/linear_0/weight: expected fused qkv shape {(3 * d, d)}, "
                    f"got {qkv_w.shape}"
                )
            for proj, w in zip(("q_proj", "k_proj", "v_proj"), np.split(qkv_w, 3), strict=True):
                state[f"{dst}.self_attn.{proj}.weight"] = _tensor(w)
        if qkv_b is not None:
            if qkv_b.shape != (3 * d,):
                raise CT2MappingError(
                    f"{src}/self_attention/linear_0/bias: expected shape {(3 * d,)}, got {qkv_b.shape}"
                )
            q_b, k_b, v_b = np.split(qkv_b, 3)
            # Whisper's key projection has no bias; CTranslate2 fills zeros when fusing. A
            # non-zero key bias would not change the output either (q.b is the same for every
            # key, softmax ignores it), so dropping it is exact; it is only unexpected.
            if np.any(k_b != 0):
                logger.warning("%s: non-zero key bias dropped (softmax-invariant)", src)
            state[f"{dst}.self_attn.q_proj.bias"] = _tensor(q_b)
            state[f"{dst}.self_attn.v_proj.bias"] = _tensor(v_b)
        put(f"{dst}.self_attn.out_proj.weight", f"{src}/self_attention/linear_1/weight")
        put(f"{dst}.self_attn.out_proj.bias", f"{src}/self_attention/linear_1/bias")
        put(f"{dst}.final_layer_norm.weight", f"{src}/ffn/layer_norm/gamma")
        put(f"{dst}.final_layer_norm.bias", f"{src}/ffn/layer_norm/beta")
        put(f"{dst}.fc1.weight", f"{src}/ffn/linear_0/weight")
        put(f"{dst}.fc1.bias", f"{src}/ffn/linear_0/bias")
        put(f"{dst}.fc2.weight", f"{src}/ffn/linear_1/weight")
        put(f"{dst}.fc2.bias", f"{src}/ffn/linear_1/bias")

    used.update(a for a in _ENCODER_ATTRIBUTES if a in encoder_vars)
    errors = []
    if missing:
        errors.append(f"missing CTranslate2 variable(s): {', '.join(missing)}")
    unused = sorted(set(encoder_vars) - used)
    if unused:
        errors.append(f"unexpected CTranslate2 encoder variable(s): {', '.join(unused)}")
    unfilled = sorted(set(hf_shapes) - set(state))
    if unfilled and not missing:
        errors.append(f"WhisperEncoder parameter(s) not filled: {', '.join(unfilled)}")
    extra = sorted(set(state) - set(hf_shapes))
    if extra:
        errors.append(f"mapped to unknown WhisperEncoder parameter(s): {', '.join(extra)}")
    wrong = [
        f"{k}: CTranslate2 {tuple(v.shape)} vs WhisperEncoder {hf_shapes[k]}"
        for k, v in state.items()
        if k in hf_shapes and tuple(v.shape) != hf_shapes[k]
    ]
    if wrong:
        errors.append("shape mismatch: " + "; ".join(wrong))
    if errors:
        raise CT2MappingError("cannot map CTranslate2 Whisper encoder: " + " | ".join(errors))
    return state


def whisper_encoder_from_ct2_variables(
    variables: Mapping[str, np.ndarray],
    *,
    num_heads: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> WhisperEncoder:
    """Build an eval-mode ``WhisperEncoder`` from already-read CTranslate2 variables."""
    config = whisper_config_from_ct2(variables, num_heads=num_heads)
    state = ct2_encoder_state_dict(variables, config)
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    encoder.load_state_dict(state, strict=True, assign=True)
    # embed_positions is frozen in Whisper (sinusoids); keep that after assign= replaced it.
    encoder.embed_positions.requires_grad_(False)
    return encoder.to(dtype).eval()  # type: ignore[arg-type]  # transformers' to() is typed for devices only


def whisper_encoder_from_ct2(
    model_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    *,
    num_heads: int | None = None,
) -> WhisperEncoder:
    """Load the encoder of a CTranslate2 Whisper model (a faster-whisper folder) into PyTorch.

    ``model_dir`` is a folder with ``model.bin`` (or the file itself, or a ``bundled:`` name
    from ``models.bundled``). The result matches CTranslate2's own encoder output; input is
    the usual log-mel ``[batch, n_mels, 2 * max_source_positions]``.
    """
    from models.bundled import BUNDLED_PREFIX, resolve_whisper_model

    if isinstance(model_dir, str) and model_dir.startswith(BUNDLED_PREFIX):
        model_dir = resolve_whisper_model(model_dir)
    path = Path(model_dir)
    model_bin = path if path.is_file() else path / "model.bin"
    if not model_bin.is_file():
        raise FileNotFoundError(f"no CTranslate2 model.bin at {model_bin}")
    variables, info = read_ct2_model_bin(model_bin, prefixes=("encoder/",))
    if info["spec"] and info["spec"] != "WhisperSpec":
        raise CT2MappingError(f"{model_bin} is a {info['spec']}, not a WhisperSpec model")
    if num_heads is None and "encoder/num_heads" not in variables:
        num_heads = _num_heads_from_config(model_bin.parent / "config.json")
    return whisper_encoder_from_ct2_variables(variables, num_heads=num_heads, dtype=dtype)


def _num_heads_from_config(config_path: Path) -> int | None:
    """Older conversions may lack ``encoder/num_heads``; some configs record it."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in ("encoder_attention_heads", "num_encoder_heads", "n_audio_head"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def _encoder_shapes(config: WhisperConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return WhisperEncoder(config).state_dict()


def _tensor(value: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
