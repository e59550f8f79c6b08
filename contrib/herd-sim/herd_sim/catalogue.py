"""The models a simulated node can hold (``CATALOGUE``) and the machines it can pretend to be
(``PROFILES``).

Sizes, context lengths, parameter counts and quantisations are those of the real Ollama library
tags (rounded where the library rounds), so memory arithmetic and load times look like the real
thing. Digests are *not* the real ones: they are derived from the name so that every run, every
process and every node agrees on them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import attrs

__all__ = [
    "CATALOGUE",
    "PROFILES",
    "REFERENCE_SIZE_BYTES",
    "ModelSpec",
    "NodeProfile",
    "canonical_name",
    "full_name",
    "is_valid_name",
    "lookup",
]

GIB = 1024**3
GB = 1000**3

_CAPABILITIES = frozenset({"completion", "tools", "thinking", "vision", "embedding", "insert"})


# --- names ---------------------------------------------------------------------------------------

_PART = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}"
_NAME_RE = re.compile(
    rf"^(?:(?P<host>[A-Za-z0-9_][A-Za-z0-9_.\-:]{{0,349}})/)?"
    rf"(?:(?P<ns>[A-Za-z0-9_][A-Za-z0-9_\-]{{0,79}})/)?"
    rf"(?P<model>{_PART})(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.\-]{{0,79}}))?$"
)
_DEFAULT_HOST = "registry.ollama.ai"
_DEFAULT_NS = "library"


def is_valid_name(name: str) -> bool:
    """Whether ``name`` parses as ``[host/][namespace/]model[:tag]`` (Ollama's ``model.ParseName``)."""
    return bool(name) and _NAME_RE.match(name) is not None


def full_name(name: str) -> str:
    """``registry.ollama.ai/library/llama3.2:latest`` for ``llama3.2``: the form Ollama prints in
    its "does not support tools" error."""
    match = _NAME_RE.match(name)
    if match is None:
        return name
    host = match["host"] or _DEFAULT_HOST
    ns = match["ns"] or _DEFAULT_NS
    if match["host"] and not match["ns"]:
        # "namespace/model": one slash means namespace, not host (Ollama parses right to left)
        host, ns = _DEFAULT_HOST, match["host"]
    return f"{host}/{ns}/{match['model']}:{match['tag'] or 'latest'}"


def canonical_name(name: str) -> str:
    """The short lower-case key a model is stored under: ``llama3.2`` -> ``llama3.2:latest``;
    ``registry.ollama.ai/library/qwen3:8B`` -> ``qwen3:8b``. Matching is case-insensitive."""
    full = full_name(name).lower()
    prefix = f"{_DEFAULT_HOST}/{_DEFAULT_NS}/"
    return full.removeprefix(prefix)


def lookup(name: str, names: Iterable[str]) -> str | None:
    """The member of ``names`` that ``name`` designates (tag defaults to latest, any case)."""
    if not is_valid_name(name):
        return None
    wanted = canonical_name(name)
    for candidate in names:
        if canonical_name(candidate) == wanted:
            return candidate
    return None


def _as_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _digest(name: str) -> str:
    # sha256 of the canonical name: stable across processes (unlike hash()) and 64 hex like Ollama's
    return hashlib.sha256(f"herd-sim/{canonical_name(name)}".encode()).hexdigest()


@attrs.frozen
class ModelSpec:
    """One model tag as ``/api/tags`` and ``/api/show`` describe it."""

    name: str
    size_bytes: int
    context_length: int
    family: str
    parameter_size: str
    quantization_level: str
    capabilities: tuple[str, ...] = attrs.field(converter=_as_tuple)
    embedding_length: int = 4096
    digest: str = attrs.field()
    # the raw parameter count for model_info["general.parameter_count"]
    parameter_count: int = 0
    block_count: int = 32

    @digest.default
    def _default_digest(self) -> str:
        return _digest(self.name)

    @capabilities.validator
    def _check_capabilities(self, _attribute: object, value: tuple[str, ...]) -> None:
        unknown = set(value) - _CAPABILITIES
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}")

    @property
    def size_gb(self) -> float:
        """Size in (decimal) gigabytes, the unit ``load_gbps`` is expressed in."""
        return self.size_bytes / GB

    @property
    def is_embedding(self) -> bool:
        return "embedding" in self.capabilities

    @property
    def architecture(self) -> str:
        """``general.architecture`` in ``model_info`` (the prefix of ``<arch>.context_length``)."""
        return self.family


def _spec(name: str, size: int, ctx: int, family: str, params: str, quant: str,
          caps: Iterable[str], emb: int, count: int, blocks: int) -> ModelSpec:
    return ModelSpec(name=name, size_bytes=size, context_length=ctx, family=family,
                     parameter_size=params, quantization_level=quant, capabilities=tuple(caps),
                     embedding_length=emb, parameter_count=count, block_count=blocks)


_TEXT_TOOLS = ("completion", "tools")

CATALOGUE: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _spec("llama3.2:3b", 2_019_393_189, 131072, "llama", "3.2B", "Q4_K_M", _TEXT_TOOLS, 3072,
              3_212_749_888, 28),
        _spec("llama3.2:1b", 1_321_098_329, 131072, "llama", "1.2B", "Q8_0", _TEXT_TOOLS, 2048,
              1_235_814_432, 16),
        _spec("qwen3:8b", 5_225_388_164, 40960, "qwen3", "8.2B", "Q4_K_M",
              ("completion", "tools", "thinking"), 4096, 8_190_735_360, 36),
        _spec("qwen2.5:7b", 4_683_087_332, 32768, "qwen2", "7.6B", "Q4_K_M", _TEXT_TOOLS, 3584,
              7_615_616_512, 28),
        _spec("llama3.1:8b", 4_920_753_328, 131072, "llama", "8.0B", "Q4_K_M", _TEXT_TOOLS, 4096,
              8_030_261_312, 32),
        _spec("qwen2.5:14b", 8_988_110_976, 32768, "qwen2", "14.8B", "Q4_K_M", _TEXT_TOOLS, 5120,
              14_770_033_664, 48),
        _spec("qwen2.5-coder:14b", 8_988_124_069, 32768, "qwen2", "14.8B", "Q4_K_M",
              ("completion", "tools", "insert"), 5120, 14_770_033_664, 48),
        _spec("qwen3:32b", 20_201_253_588, 40960, "qwen3", "32.8B", "Q4_K_M",
              ("completion", "tools", "thinking"), 5120, 32_762_123_264, 64),
        _spec("llama3.3:70b", 42_520_413_916, 131072, "llama", "70.6B", "Q4_K_M", _TEXT_TOOLS,
              8192, 70_553_706_496, 80),
        _spec("deepseek-r1:7b", 4_683_075_271, 131072, "qwen2", "7.6B", "Q4_K_M",
              ("completion", "thinking"), 3584, 7_615_616_512, 28),
        _spec("gemma3:4b", 3_338_801_804, 131072, "gemma3", "4.3B", "Q4_K_M",
              ("completion", "vision"), 2560, 4_299_915_632, 34),
        _spec("nomic-embed-text:latest", 274_302_450, 2048, "nomic-bert", "137M", "F16",
              ("embedding",), 768, 136_727_040, 12),
        _spec("all-minilm:latest", 45_960_996, 512, "bert", "23M", "F16", ("embedding",), 384,
              22_565_376, 6),
    )
}

# tokens_per_s in a profile is the speed for a model of this size; other models scale by size
REFERENCE_SIZE_BYTES = CATALOGUE["llama3.2:3b"].size_bytes

# --- hardware profiles ---------------------------------------------------------------------------


def _known_models(_instance: object, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    unknown = [m for m in value if lookup(m, CATALOGUE) is None]
    if unknown:
        raise ValueError(f"{attribute.name}: not in the catalogue: {', '.join(unknown)}")


@attrs.frozen
class NodeProfile:
    """One simulated machine: its memory, speed and Ollama settings, and the models it holds.

    ``memory_gb`` is in GiB (what a machine sold as "32 GB" has). ``tokens_per_s`` is the decode
    speed for a ~3B model (``llama3.2:3b``); a model twice that size decodes at half the speed.
    ``load_gbps`` is how many GB of weights it loads per second. ``num_parallel``,
    ``max_loaded_models``, ``keep_alive`` and ``default_num_ctx`` are ``OLLAMA_NUM_PARALLEL``,
    ``OLLAMA_MAX_LOADED_MODELS`` (0: memory is the only limit), ``OLLAMA_KEEP_ALIVE`` and
    ``OLLAMA_CONTEXT_LENGTH``. ``models`` are on disk, ``loaded`` are in memory at start.
    """

    name: str
    memory_gb: float
    tokens_per_s: float
    load_gbps: float
    num_parallel: int = 1
    max_loaded_models: int = 0
    keep_alive: str = "5m"
    default_num_ctx: int = 4096
    models: tuple[str, ...] = attrs.field(default=(), converter=_as_tuple, validator=_known_models)
    loaded: tuple[str, ...] = attrs.field(default=(), converter=_as_tuple, validator=_known_models)
    version: str = "0.12.3"
    chip: str = "Virtual CPU"
    cores: int = 8
    # beyond the brief: OLLAMA_MAX_QUEUE, memory the OS and apps keep (None: 15 %, at most 4 GiB),
    # and download speed for /api/pull in GB/s
    max_queue: int = 512
    reserved_gb: float | None = None
    pull_gbps: float = 0.1
    # how much each extra request running on a model slows every one of them: 0.25 is a machine
    # whose batching pays (4 at once give 2.3x the tokens per second), 1.0 one where it does not
    parallel_slowdown: float = 0.25
    # whether /api/tags lists each model's capabilities, as newer Ollama versions do; False is an
    # older Ollama, where only /api/show says what a model can do
    tags_capabilities: bool = True

    def __attrs_post_init__(self) -> None:
        if self.num_parallel < 1:
            raise ValueError("num_parallel must be at least 1")
        if self.tokens_per_s <= 0 or self.load_gbps <= 0 or self.pull_gbps <= 0:
            raise ValueError("tokens_per_s, load_gbps and pull_gbps must be positive")
        if self.parallel_slowdown < 0:
            raise ValueError("parallel_slowdown must not be negative")
        on_disk = {canonical_name(m) for m in self.models}
        missing = [m for m in self.loaded if canonical_name(m) not in on_disk]
        if missing:
            raise ValueError(f"loaded models must also be in models: {', '.join(missing)}")
        need = sum(CATALOGUE[lookup(m, CATALOGUE) or m].size_bytes for m in self.loaded)
        if need > self.usable_bytes:
            raise ValueError(f"profile {self.name!r}: loaded models do not fit in memory")

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * GIB)

    @property
    def reserved_bytes(self) -> int:
        """Memory the simulated OS keeps for itself; models cannot use it."""
        if self.reserved_gb is not None:
            return int(self.reserved_gb * GIB)
        return int(min(self.memory_gb * 0.15, 4.0) * GIB)

    @property
    def usable_bytes(self) -> int:
        return self.memory_bytes - self.reserved_bytes


_ALL_CHAT = ("llama3.2:3b", "llama3.2:1b", "qwen3:8b", "qwen2.5:7b", "llama3.1:8b",
             "deepseek-r1:7b", "gemma3:4b")

PROFILES: dict[str, NodeProfile] = {
    p.name: p
    for p in (
        NodeProfile(
            name="large", memory_gb=128, tokens_per_s=95.0, load_gbps=6.0, num_parallel=4,
            models=(*_ALL_CHAT, "qwen2.5-coder:14b", "qwen3:32b", "llama3.3:70b",
                    "nomic-embed-text:latest", "all-minilm:latest"),
            loaded=("qwen3:32b", "llama3.2:3b", "nomic-embed-text:latest"),
            chip="Apple M3 Max", cores=16,
        ),
        NodeProfile(
            name="medium", memory_gb=32, tokens_per_s=60.0, load_gbps=3.0, num_parallel=2,
            models=(*_ALL_CHAT, "qwen2.5-coder:14b", "nomic-embed-text:latest"),
            loaded=("llama3.2:3b",),
            chip="Apple M2 Pro", cores=12,
        ),
        NodeProfile(
            name="small", memory_gb=16, tokens_per_s=38.0, load_gbps=2.0, num_parallel=1,
            models=("llama3.2:3b", "llama3.2:1b", "qwen2.5:7b", "qwen3:8b",
                    "nomic-embed-text:latest", "all-minilm:latest"),
            loaded=("llama3.2:1b",),
            chip="Apple M1", cores=8,
        ),
        NodeProfile(
            name="tiny", memory_gb=8, tokens_per_s=12.0, load_gbps=0.5, num_parallel=1,
            models=("llama3.2:1b", "llama3.2:3b", "all-minilm:latest"),
            loaded=(),
            chip="Intel N100", cores=4,
        ),
    )
}
