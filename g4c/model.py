"""Open a GGUF (memory-mapped), parse its config once, validate every tensor against it.

A 7 GB file is never read whole: tensors are numpy memmap views of the file, and a
`Weight` dequantizes only the rows it is asked for.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFValueType

from . import quants
from .config import LayerSpec, MetaValue, ModelConfig
from .errors import G4CError, GGUFFormatError

# a layer's tensors by role, as every runtime loads them
LAYER_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
LAYER_NORMS = ("attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm")


@dataclass(frozen=True)
class Weight:
    """One tensor: GGUF name and type, shape as GGUF lists it (fastest dim first), raw rows."""

    name: str
    qtype: QT
    shape: tuple[int, ...]
    raw: np.ndarray  # uint8 (n_rows, row_bytes), a view of the memory map

    @property
    def n_cols(self) -> int:
        return self.shape[0]

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Dequantized float32 rows [start, stop) of shape (rows, n_cols)."""
        return quants.dequantize(self.raw[start:stop], self.qtype, self.n_cols)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Dequantized float32 rows at the given indices (embedding lookup)."""
        return quants.dequantize(self.raw[np.asarray(ids)], self.qtype, self.n_cols)

    def dequantize(self) -> np.ndarray:
        return self.rows().reshape(self.n_rows, self.n_cols)

    def vector(self) -> np.ndarray:
        return self.rows().reshape(-1)


def _decode_field(field) -> MetaValue:
    types = field.types
    if not types:
        raise GGUFFormatError(f"key {field.name} has no type")
    if types[0] == GGUFValueType.ARRAY:
        sub = types[-1]
        type_name = f"ARRAY[{sub.name}]"
        if sub == GGUFValueType.STRING:
            value = [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        elif len(types) > 2:
            raise GGUFFormatError(f"key {field.name}: nested arrays are not supported")
        else:
            value = [field.parts[i][0].item() for i in field.data] if field.data else []
            if sub == GGUFValueType.BOOL:
                value = [bool(v) for v in value]
        return MetaValue(value, type_name)
    if types[0] == GGUFValueType.STRING:
        return MetaValue(bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace"), "STRING")
    value = field.parts[field.data[0]][0].item()
    if types[0] == GGUFValueType.BOOL:
        value = bool(value)
    return MetaValue(value, types[0].name)


# smallest encodings: a key/value is a u64 length, one byte of name, a u32 type and a byte of
# value; a tensor info a u64 length, one byte of name, u32 n_dims, one u64 dim, u32 type, u64 offset
MIN_KV_BYTES = 8 + 1 + 4 + 1
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8
SUPPORTED_VERSIONS = (2, 3)
# limits the GGUF spec sets (ggml docs/gguf.md): name lengths, dims per tensor, the default alignment
MAX_KEY_BYTES = 65535
MAX_TENSOR_NAME_BYTES = 64
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
# the suite decodes no nested array (_decode_field refuses them), but both the walk below and
# gguf's reader recurse once per level: a deeper nest is refused before either recursion runs away
MAX_ARRAY_DEPTH = 8

# what os.stat says a path is, for the error on anything but a regular file
SPECIAL_FILES = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                 (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))


def _regular_file_size(path: str) -> int:
    """The size of the regular file at path, asked of os.stat before anything opens it: opening
    a FIFO blocks until a writer comes, and /dev/zero never ends."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise GGUFFormatError(f"{path}: no such file") from None
    except OSError as e:
        raise GGUFFormatError(f"{path}: cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise GGUFFormatError(f"{path} is a directory, not a GGUF file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for is_kind, name in SPECIAL_FILES if is_kind(st.st_mode)), "special file")
        raise GGUFFormatError(f"{path} is not a regular file ({kind})")
    return st.st_size


def check_header(path: str) -> None:
    """Refuse a path that is not a regular file, a wrong fixed header, or any length, count, dim
    or offset that cannot fit the file, before gguf's reader trusts them: it loops over (and
    builds a view for) every claimed array entry, and adds offsets modulo 2^64."""
    size = _regular_file_size(path)
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            if len(head) < 24:
                raise GGUFFormatError(f"{path}: file of {size} bytes is too short for a GGUF header (24 bytes)")
            if head[:4] != b"GGUF":
                raise GGUFFormatError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
            version = int.from_bytes(head[4:8], "little")
            if version not in SUPPORTED_VERSIONS:
                raise GGUFFormatError(f"{path}: GGUF version {version} is not supported (supported: 2, 3)")
            n_tensors = int.from_bytes(head[8:16], "little")
            n_kv = int.from_bytes(head[16:24], "little")
            need = 24 + n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_INFO_BYTES
            if need > size:
                raise GGUFFormatError(
                    f"{path}: header claims {n_tensors} tensors and {n_kv} key/values, which need at least "
                    f"{need} bytes; the file has {size} (corrupt counts or a truncated file)"
                )
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                walk = _HeaderWalk(path, buf)
                walk.key_values(n_kv)
                walk.tensors(n_tensors)
    except OSError as e:
        raise GGUFFormatError(f"{path}: cannot read it ({e.strerror})") from None


# bytes of each GGUF scalar value type (gguf.GGUFValueType: 8 is a string, 9 an array)
SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY, UINT32 = 8, 9, 4
U32, U64 = struct.Struct("<I"), struct.Struct("<Q")


class _HeaderWalk:
    """Walks the key/value and tensor-info sections of a memory-mapped GGUF, checking every
    length, count, dim and offset against the bytes left before reading on. It copies only
    fixed-size fields and names (bounded by the spec) and checks a count before looping over
    it, so its time and memory grow with what fits in the file, never with what a corrupt
    field claims."""

    def __init__(self, path: str, buf):
        self.path, self.buf, self.end, self.pos = path, buf, len(buf), 24
        self.alignment = DEFAULT_ALIGNMENT

    def error(self, what: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.path}: {what}")

    def take(self, n: int, what: str) -> int:
        """Advance past n bytes, returning where they start; refuse them if the file ends first."""
        if n > self.end - self.pos:
            raise self.error(f"{what} at byte {self.pos} needs {n} bytes; {self.end - self.pos} are left "
                             "(a corrupt length or count, or a truncated file)")
        self.pos += n
        return self.pos - n

    def u32(self, what: str) -> int:
        return U32.unpack_from(self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return U64.unpack_from(self.buf, self.take(8, what))[0]

    def name(self, limit: int, what: str) -> str:
        n = self.u64(f"{what}: name length")
        start = self.take(n, f"{what}: name")
        if n > limit:
            raise self.error(f"{what}: name of {n} bytes at byte {start}, over the GGUF limit of {limit}")
        raw = self.buf[start:self.pos]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what}: name {raw[:64]!r} at byte {start} is not UTF-8") from None

    def key_values(self, n_kv: int) -> None:
        for i in range(n_kv):
            key = self.name(MAX_KEY_BYTES, f"key/value {i}")
            vtype = self.u32(f"key {key!r}: value type")
            if key == "general.alignment":
                self.alignment_value(vtype)
            else:
                self.value(vtype, f"key {key!r}")

    def alignment_value(self, vtype: int) -> None:
        # gguf's reader, as llama.cpp, takes only a u32 power of two
        if vtype != UINT32:
            raise self.error(f"key 'general.alignment' has value type {vtype}, expected UINT32 ({UINT32})")
        self.alignment = self.u32("key 'general.alignment'")
        if self.alignment == 0 or self.alignment & (self.alignment - 1):
            raise self.error(f"key 'general.alignment' = {self.alignment} is not a power of two")

    def value(self, vtype: int, what: str) -> None:
        if vtype in SCALAR_BYTES:
            self.take(SCALAR_BYTES[vtype], what)
        elif vtype == STRING:
            self.take(self.u64(f"{what}: string length"), f"{what}: string")
        elif vtype == ARRAY:
            self.array(what, 1)
        else:
            raise self.error(f"{what}: value type {vtype} is not a GGUF type")

    def array(self, what: str, depth: int) -> None:
        etype = self.u32(f"{what}: array type")
        count = self.u64(f"{what}: array count")
        if etype in SCALAR_BYTES:
            self.take(count * SCALAR_BYTES[etype], f"{what}: {count} array entries")
        elif etype == STRING:
            # a string takes at least its 8-byte length: this bounds the loop before it starts
            if count * 8 > self.end - self.pos:
                self.take(count * 8, f"{what}: {count} strings")
            for i in range(count):
                self.take(self.u64(f"{what}[{i}]: string length"), f"{what}[{i}]: string")
        elif etype == ARRAY:
            if depth == MAX_ARRAY_DEPTH:
                raise self.error(f"{what}: arrays nested more than {MAX_ARRAY_DEPTH} deep")
            # an array takes at least its u32 type and u64 count
            if count * 12 > self.end - self.pos:
                self.take(count * 12, f"{what}: {count} arrays")
            for i in range(count):
                self.array(f"{what}[{i}]", depth + 1)
        else:
            raise self.error(f"{what}: array of value type {etype}, which is not a GGUF type")

    def tensors(self, n_tensors: int) -> None:
        infos = [self.tensor_info(i) for i in range(n_tensors)]
        data_start = self.pos + -self.pos % self.alignment
        for name, dims, qtype, offset in infos:
            block, type_bytes = GGML_QUANT_SIZES[qtype]
            if dims[0] % block:
                raise self.error(f"tensor {name} row length {dims[0]} is not a multiple of the "
                                 f"{qtype.name} block size {block}")
            # Python integers: a product of dims past 2^64 cannot wrap into a small size here
            n_bytes = math.prod(dims) // block * type_bytes
            at = data_start + offset
            if at + n_bytes > self.end:
                raise self.error(f"tensor {name} ({qtype.name} {list(dims)}) needs {n_bytes} bytes at data offset "
                                 f"{offset} (byte {at}: the data section starts at {data_start}, alignment "
                                 f"{self.alignment}); the file has {self.end} (truncated, or a corrupt offset or dims)")

    def tensor_info(self, i: int) -> tuple[str, tuple[int, ...], QT, int]:
        name = self.name(MAX_TENSOR_NAME_BYTES, f"tensor info {i}")
        if not name.isprintable():  # tensor names go into one-line messages as they are, keys as repr
            raise self.error(f"tensor info {i}: name {name!r} holds a control character")
        n_dims = self.u32(f"tensor {name}: n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self.error(f"tensor {name}: n_dims = {n_dims}, expected 1 to {MAX_DIMS}")
        dims = struct.unpack_from(f"<{n_dims}Q", self.buf, self.take(8 * n_dims, f"tensor {name}: dims"))
        if 0 in dims:
            raise self.error(f"tensor {name}: dims {list(dims)} hold a 0 (an empty tensor: corrupt dims)")
        raw_type = self.u32(f"tensor {name}: type")
        try:
            qtype = QT(raw_type)
        except ValueError:
            raise self.error(f"tensor {name}: GGML type {raw_type} is not a known GGML type") from None
        return name, dims, qtype, self.u64(f"tensor {name}: data offset")


class Model:
    """A validated, memory-mapped Gemma GGUF: `config` plus `weight(name)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        check_header(self.path)
        try:
            reader = GGUFReader(self.path, "r")
        except Exception as e:  # what the walk leaves to the reader: duplicate keys or tensor names
            raise GGUFFormatError(f"{self.path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
        self.version = int(reader.fields["GGUF.version"].parts[-1][0]) if "GGUF.version" in reader.fields else None
        meta: dict[str, MetaValue] = {}
        for name, field in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            try:
                meta[name] = _decode_field(field)
            except GGUFFormatError as e:
                raise GGUFFormatError(f"{self.path}: {e}") from None
        self.metadata = meta
        self._weights: dict[str, Weight] = {}
        self._unsupported: dict[str, QT] = {}
        for t in reader.tensors:
            shape = tuple(int(n) for n in t.shape)
            try:
                lay = quants.layout(t.tensor_type, what=f"{self.path}: tensor {t.name}")
            except G4CError:
                # kept out of _weights: an error only if the forward needs this tensor
                self._unsupported[t.name] = t.tensor_type
                continue
            # check_header has checked row lengths against block sizes and every tensor's bytes
            # against the file's size, so this view has exactly the bytes the reader mapped
            n_rows = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
            raw = np.asarray(t.data).view(np.uint8).reshape(n_rows, lay.row_bytes(shape[0]))
            self._weights[t.name] = Weight(t.name, lay.qtype, shape, raw)
        self.tensor_names = {t.name for t in reader.tensors}
        self.tensor_order = [t.name for t in reader.tensors]
        self.config = ModelConfig.from_gguf(self.path, meta, self.tensor_names)
        self._validate()

    # -- tensors -------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.tensor_names

    def weight(self, name: str) -> Weight:
        w = self._weights.get(name)
        if w is None:
            if name in self._unsupported:
                quants.layout(self._unsupported[name], what=f"{self.path}: tensor {name}")
            raise GGUFFormatError(f"{self.path}: required tensor {name} is missing")
        return w

    def layer_weight(self, layer: int, name: str) -> Weight:
        return self.weight(f"blk.{layer}.{name}.weight")

    def layer_matrices(self) -> list[Weight]:
        """Every layer's projection matrices present in the file, layer by layer (no attn_v on
        k_eq_v layers)."""
        return [self.layer_weight(s.index, m) for s in self.config.layers for m in LAYER_MATRICES
                if self.has(f"blk.{s.index}.{m}.weight")]

    def norm_vectors(self) -> dict[tuple[int, str], np.ndarray]:
        """(layer, norm name) -> float32 weight vector, for every norm of every layer."""
        return {(s.index, n): self.layer_weight(s.index, n).vector() for s in self.config.layers for n in LAYER_NORMS}

    def output_scales(self) -> dict[int, float]:
        """layer -> its scalar layer_output_scale, for the layers that have one."""
        return {s.index: float(self.layer_weight(s.index, "layer_output_scale").vector()[0])
                for s in self.config.layers if s.has_output_scale}

    @property
    def output_weight(self) -> Weight:
        return self.weight("token_embd.weight" if self.config.tied_output else "output.weight")

    @cached_property
    def rope_freqs(self) -> np.ndarray | None:
        return self.weight("rope_freqs.weight").vector() if self.config.has_rope_freqs else None

    def weights(self) -> list[Weight]:
        return [self._weights[n] for n in self.tensor_order if n in self._weights]

    def check_finite(self, progress: bool = False) -> None:
        """Dequantize every tensor (in chunks) and raise on the first NaN or infinity, naming
        the tensor, row and column. Off by default: it reads the whole file."""
        weights = self.weights()
        if progress:
            from tqdm import tqdm

            weights = tqdm(weights, desc="checking weights", unit="tensor")
        for w in weights:
            step = max(1, (64 << 20) // (4 * w.n_cols))
            for a in range(0, w.n_rows, step):
                block = w.rows(a, a + step)
                bad = ~np.isfinite(block)
                if bad.any():
                    r, c = np.argwhere(bad)[0]
                    raise GGUFFormatError(
                        f"{self.path}: tensor {w.name} has a non-finite weight {block[r, c]} at row {a + r} column {c}"
                    )

    @property
    def weight_bytes(self) -> int:
        return sum(w.nbytes for w in self._weights.values())

    # -- validation ----------------------------------------------------------------------
    def expected_shapes(self) -> dict[str, tuple[tuple[int, ...], bool]]:
        """tensor name -> (GGUF shape, required) implied by the config."""
        c = self.config
        E, V = c.n_embd, self.n_vocab
        out: dict[str, tuple[tuple[int, ...], bool]] = {
            "token_embd.weight": ((E, V), True),
            "output_norm.weight": ((E,), True),
            "output.weight": ((E, V), False),
        }
        if c.family == "gemma4":
            full = next((s for s in c.layers if not s.sliding), None)
            n_rot = full.n_rot if full else c.head_dim_full
            out["rope_freqs.weight"] = ((n_rot // 2,), False)
        for s in c.layers:
            out.update(self._layer_shapes(s))
        return out

    def _layer_shapes(self, s: LayerSpec) -> dict[str, tuple[tuple[int, ...], bool]]:
        c = self.config
        E, H, d, kv = c.n_embd, c.n_head, s.head_dim, s.n_head_kv
        p = f"blk.{s.index}."
        shapes = {
            "attn_norm": ((E,), True),
            "attn_q": ((E, H * d), True),
            "attn_k": ((E, kv * d), True),
            "attn_v": ((E, kv * d), False),
            "attn_q_norm": ((d,), True),
            "attn_k_norm": ((d,), True),
            "attn_output": ((H * d, E), True),
            "post_attention_norm": ((E,), True),
            "ffn_norm": ((E,), True),
            "ffn_gate": ((E, s.n_ff), True),
            "ffn_up": ((E, s.n_ff), True),
            "ffn_down": ((s.n_ff, E), True),
            "post_ffw_norm": ((E,), True),
            "layer_output_scale": ((1,), False),
        }
        return {f"{p}{k}.weight": v for k, v in shapes.items()}

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab or int(self.weight("token_embd.weight").shape[1])

    def _validate(self) -> None:
        c = self.config
        if "token_embd.weight" not in self.tensor_names:
            raise GGUFFormatError(f"{self.path}: required tensor token_embd.weight is missing")
        embd_rows = self.weight("token_embd.weight").n_rows
        if c.n_vocab and c.n_vocab != embd_rows:
            raise GGUFFormatError(
                f"{self.path}: {c.arch}.vocab_size = {c.n_vocab} but token_embd.weight has {embd_rows} rows"
            )
        for name, (shape, required) in self.expected_shapes().items():
            if name not in self.tensor_names:
                if required:
                    raise GGUFFormatError(f"{self.path}: required tensor {name} is missing")
                continue
            w = self._weights.get(name)
            actual = w.shape if w is not None else None
            if actual is not None and tuple(actual) != shape:
                raise GGUFFormatError(
                    f"{self.path}: tensor {name} has shape {list(actual)}, expected {list(shape)} from the metadata"
                )
        if c.has_rope_freqs and self.weight("rope_freqs.weight").qtype != QT.F32:
            raise GGUFFormatError(
                f"{self.path}: tensor rope_freqs.weight must be F32 (its 1e30 entries overflow "
                f"{self.weight('rope_freqs.weight').qtype.name})"
            )
