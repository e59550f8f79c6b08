"""The curated table of popular Ollama models the recommendations choose from: size on disk,
what each is good at, and roughly how much memory it takes once loaded.

Sources (README.md, "The table"): names, quantisations, sizes and context lengths as the Ollama
library's tag pages list them (ollama.com/library/<model>/tags, sizes in GB as shown there,
rounded as there); layer and key/value-head counts from each base model's published
configuration (its ``config.json``), used only for the KV-cache estimate.
"""

from __future__ import annotations

from attrs import frozen

DEFAULT_NUM_CTX = 4096  # the context Ollama loads a model with when the client names none
_KV_BYTES = 2  # f16 keys and values, Ollama's default KV cache type


@frozen(kw_only=True)
class ModelCard:
    """One Ollama tag. ``uses`` lists what it is good at, the main use first (chat, code,
    embedding, vision, reasoning). ``default`` is False for a non-default quantisation of a tag
    in the table (offered when a node is short of memory, never as an upgrade)."""

    name: str  # the Ollama tag, as ``ollama pull`` takes it (normalized: lower case, with a tag)
    family: str
    params_b: float  # parameters, billions
    quant: str
    size_gb: float  # on disk
    context: int  # the longest context the model was trained for
    uses: tuple[str, ...]
    layers: int = 0  # attention layers with a KV cache (0: an encoder, no cache)
    kv_heads: int = 0
    head_dim: int = 0
    default: bool = True

    @property
    def use(self) -> str:
        return self.uses[0]

    @property
    def kv_gb(self) -> float:
        """The KV cache at the context Ollama loads it with by default."""
        tokens = min(self.context, DEFAULT_NUM_CTX)
        return 2 * self.layers * self.kv_heads * self.head_dim * _KV_BYTES * tokens / 1e9

    @property
    def memory_gb(self) -> float:
        """Memory once loaded at the default context: weights, KV cache, and the runtime's
        compute buffers (taken as 0.25 GB plus 5 % of the weights)."""
        return round(self.size_gb * 1.05 + 0.25 + self.kv_gb, 2)


def _card(name: str, family: str, params_b: float, quant: str, size_gb: float, context: int,
          uses: tuple[str, ...], arch: tuple[int, int, int] = (0, 0, 0), *,
          default: bool = True) -> ModelCard:
    layers, kv_heads, head_dim = arch
    return ModelCard(name=name, family=family, params_b=params_b, quant=quant, size_gb=size_gb,
                     context=context, uses=uses, layers=layers, kv_heads=kv_heads,
                     head_dim=head_dim, default=default)


CHAT, CODE, EMBED, VISION, REASON = "chat", "code", "embedding", "vision", "reasoning"

# name, family, parameters (B), quantisation, GB on disk, context, uses, (layers, KV heads, head
# dimension). Sizes: the Ollama library's tag pages.
CARDS: tuple[ModelCard, ...] = (
    # Qwen 2.5: general chat, long context, good multilingual
    _card("qwen2.5:0.5b", "qwen2.5", 0.5, "Q4_K_M", 0.398, 32768, (CHAT,), (24, 2, 64)),
    _card("qwen2.5:1.5b", "qwen2.5", 1.5, "Q4_K_M", 0.986, 32768, (CHAT,), (28, 2, 128)),
    _card("qwen2.5:7b", "qwen2.5", 7.6, "Q4_K_M", 4.7, 32768, (CHAT, CODE), (28, 4, 128)),
    _card("qwen2.5:14b", "qwen2.5", 14.8, "Q4_K_M", 9.0, 32768, (CHAT, CODE), (48, 8, 128)),
    _card("qwen2.5:32b", "qwen2.5", 32.8, "Q4_K_M", 20.0, 32768, (CHAT, CODE), (64, 8, 128)),
    # Qwen 2.5 Coder: completion, fill-in-the-middle and code chat
    _card("qwen2.5-coder:1.5b", "qwen2.5-coder", 1.5, "Q4_K_M", 0.986, 32768, (CODE,),
          (28, 2, 128)),
    _card("qwen2.5-coder:7b", "qwen2.5-coder", 7.6, "Q4_K_M", 4.7, 32768, (CODE,), (28, 4, 128)),
    _card("qwen2.5-coder:14b", "qwen2.5-coder", 14.8, "Q4_K_M", 9.0, 32768, (CODE,),
          (48, 8, 128)),
    _card("qwen2.5-coder:32b", "qwen2.5-coder", 32.8, "Q4_K_M", 20.0, 32768, (CODE,),
          (64, 8, 128)),
    # Llama 3.x: the common default chat models
    _card("llama3.2:1b", "llama", 1.2, "Q8_0", 1.3, 131072, (CHAT,), (16, 8, 64)),
    _card("llama3.2:3b", "llama", 3.2, "Q4_K_M", 2.0, 131072, (CHAT,), (28, 8, 128)),
    _card("llama3.1:8b", "llama", 8.0, "Q4_K_M", 4.9, 131072, (CHAT,), (32, 8, 128)),
    _card("llama3.3:70b", "llama", 70.6, "Q4_K_M", 43.0, 131072, (CHAT,), (80, 8, 128)),
    _card("llama3.2-vision:11b", "llama", 10.7, "Q4_K_M", 7.8, 131072, (VISION, CHAT),
          (40, 8, 128)),
    # Qwen 3: chat with a thinking mode
    _card("qwen3:0.6b", "qwen3", 0.6, "Q4_K_M", 0.523, 40960, (CHAT, REASON), (28, 8, 128)),
    _card("qwen3:4b", "qwen3", 4.0, "Q4_K_M", 2.6, 40960, (CHAT, REASON), (36, 8, 128)),
    _card("qwen3:8b", "qwen3", 8.2, "Q4_K_M", 5.2, 40960, (CHAT, REASON), (36, 8, 128)),
    _card("qwen3:14b", "qwen3", 14.8, "Q4_K_M", 9.3, 40960, (CHAT, REASON), (40, 8, 128)),
    _card("qwen3:30b", "qwen3", 30.5, "Q4_K_M", 19.0, 40960, (CHAT, REASON), (48, 4, 128)),
    _card("qwen3:32b", "qwen3", 32.8, "Q4_K_M", 20.0, 40960, (CHAT, REASON), (64, 8, 128)),
    # Gemma 3: chat; 4B and up read images too
    _card("gemma3:1b", "gemma3", 1.0, "Q4_K_M", 0.815, 32768, (CHAT,), (26, 1, 256)),
    _card("gemma3:4b", "gemma3", 4.3, "Q4_K_M", 3.3, 131072, (CHAT, VISION), (34, 4, 256)),
    _card("gemma3:12b", "gemma3", 12.2, "Q4_K_M", 8.1, 131072, (CHAT, VISION), (48, 8, 256)),
    _card("gemma3:27b", "gemma3", 27.4, "Q4_K_M", 17.0, 131072, (CHAT, VISION), (62, 16, 128)),
    # DeepSeek-R1 distillations: step-by-step reasoning
    _card("deepseek-r1:7b", "deepseek-r1", 7.6, "Q4_K_M", 4.7, 131072, (REASON,), (28, 4, 128)),
    _card("deepseek-r1:14b", "deepseek-r1", 14.8, "Q4_K_M", 9.0, 131072, (REASON,),
          (48, 8, 128)),
    _card("deepseek-r1:32b", "deepseek-r1", 32.8, "Q4_K_M", 20.0, 131072, (REASON,),
          (64, 8, 128)),
    _card("deepseek-r1:70b", "deepseek-r1", 70.6, "Q4_K_M", 43.0, 131072, (REASON,),
          (80, 8, 128)),
    # others people run often
    _card("phi4:14b", "phi4", 14.7, "Q4_K_M", 9.1, 16384, (CHAT, REASON), (40, 10, 128)),
    _card("mistral:7b", "mistral", 7.2, "Q4_K_M", 4.4, 32768, (CHAT,), (32, 8, 128)),
    _card("mistral-small:24b", "mistral", 23.6, "Q4_K_M", 14.0, 32768, (CHAT,), (40, 8, 128)),
    # embeddings (encoders: no KV cache to speak of)
    _card("nomic-embed-text:latest", "nomic-bert", 0.137, "F16", 0.274, 2048, (EMBED,)),
    _card("mxbai-embed-large:latest", "bert", 0.335, "F16", 0.670, 512, (EMBED,)),
    _card("all-minilm:latest", "bert", 0.023, "F16", 0.046, 512, (EMBED,)),
    # smaller quantisations of large tags, for a node short of memory
    _card("llama3.3:70b-instruct-q3_K_M", "llama", 70.6, "Q3_K_M", 34.0, 131072, (CHAT,),
          (80, 8, 128), default=False),
    _card("llama3.3:70b-instruct-q2_K", "llama", 70.6, "Q2_K", 26.0, 131072, (CHAT,),
          (80, 8, 128), default=False),
    _card("qwen2.5:32b-instruct-q3_K_M", "qwen2.5", 32.8, "Q3_K_M", 16.0, 32768, (CHAT, CODE),
          (64, 8, 128), default=False),
    _card("qwen2.5:14b-instruct-q3_K_M", "qwen2.5", 14.8, "Q3_K_M", 7.3, 32768, (CHAT, CODE),
          (48, 8, 128), default=False),
)

CATALOGUE: dict[str, ModelCard] = {card.name.lower(): card for card in CARDS}


def card_for(model: str) -> ModelCard | None:
    """The table's row for a normalized model name (``llama3.2:3b``), or None."""
    return CATALOGUE.get(model.lower())
