"""Every setting and limit of the worker, read from the environment (and mirrored by CLI flags) in one place.

Each field's ``validation_alias`` is its environment variable; ``python -m inference_worker --help`` lists them
with their defaults, and the README's configuration table documents them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from adapters.config import StoreSettings, default_demo_dir
from wire import limits
from wire.prompts import DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT
from wire.protocol import ParseLimits

from .images import ImageLimits
from .validation import RequestLimits

MiB = 1024 * 1024


def is_off(value: Any) -> bool:
    """Whether a port setting's value turns it off (HTTP_PORT=off, or empty)."""
    return isinstance(value, str) and value.strip().lower() in ("", "off", "none", "false")


def _env(name: str, *more: str) -> AliasChoices:
    return AliasChoices(name, *more)


class Settings(StoreSettings):
    model_config = SettingsConfigDict(
        populate_by_name=True, extra="ignore", case_sensitive=False, validate_default=True
    )

    # ---- model -------------------------------------------------------------------------------------------------
    model_name: str = Field(
        "Qwen/Qwen3-VL-2B-Instruct",
        validation_alias=_env("INFERENCE_MODEL_NAME"),
        description="Hugging Face hub id or local directory of the base model (Qwen3-VL or a text-only causal LM).",
    )
    hf_home: Path | None = Field(
        None, validation_alias=_env("HF_HOME"), description="Hugging Face cache directory (model downloads)."
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto",
        validation_alias=_env("DEVICE"),
        description="auto|cuda|mps|cpu; an unavailable device falls back to CPU.",
    )
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        validation_alias=_env("TORCH_DTYPE"),
        description="auto picks bfloat16 on CUDA that supports it (else float16), float16 on MPS, float32 on CPU.",
    )
    demo: bool = Field(
        False,
        validation_alias=_env("INFERENCE_DEMO"),
        description="Serve the offline demo: a tiny random Qwen3-VL and adapters demo-a/demo-b (meaningless output).",
    )
    demo_dir: Path = Field(
        default_factory=default_demo_dir,
        validation_alias=_env("INFERENCE_DEMO_DIR"),
        description="Where the demo checkpoint and its adapter store are built once and reused.",
    )

    # ---- server ------------------------------------------------------------------------------------------------
    host: str = Field("0.0.0.0", validation_alias=_env("INFERENCE_HOST"), description="Interface to listen on.")
    port: int = Field(
        8765, ge=0, le=65535, validation_alias=_env("INFERENCE_PORT"), description="Port (0: any free port)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias=_env("LOG_LEVEL"), description="Log level."
    )
    auth_token: SecretStr | None = Field(
        None,
        validation_alias=_env("INFERENCE_AUTH_TOKEN"),
        description="Shared secret; when set, clients must send it (Authorization: Bearer, or ?token=).",
    )
    max_connections: int = Field(
        32,
        ge=1,
        validation_alias=_env("MAX_CONNECTIONS"),
        description="Open WebSocket connections; beyond, handshakes get HTTP 503. Bounds the worker's total memory "
        "for connections (docs/security.md).",
    )
    ws_max_queue: int = Field(
        1,
        ge=0,
        validation_alias=_env("WS_MAX_QUEUE"),
        description="Received frames buffered per connection before the worker stops reading from it.",
    )
    ws_compression: bool = Field(
        False,
        validation_alias=_env("WS_COMPRESSION"),
        description="Offer permessage-deflate. Off: a compressed frame can inflate ~1000x, and raises the memory "
        "one connection can cost (docs/security.md).",
    )

    # ---- the HTTP API (inference_worker/http) ---------------------------------------------------------------------
    http_port: int | None = Field(
        8000,
        ge=0,
        le=65535,
        validation_alias=_env("HTTP_PORT"),
        description="Port of the HTTP API (the original /infer, OpenAI-compatible /v1, /docs) on INFERENCE_HOST; "
        "0: any free port; off (or empty): no HTTP API.",
    )
    http_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=_env("HTTP_CORS_ORIGINS"),
        description="Origins (separated by ',') whose browser pages may call the HTTP API; empty: CORS is off.",
    )
    infer_timeout_s: float = Field(
        25.0,
        gt=0,
        validation_alias=_env("INFER_TIMEOUT_S"),
        description="Deadline of one POST /infer or /inference, drawing included; overrun ends the generation "
        "and answers 504.",
    )
    infer_prompt: str = Field(
        DEFAULT_PROMPT,
        min_length=1,
        validation_alias=_env("INFER_PROMPT"),
        description="The prompt of POST /infer and /inference when the form gives none (default: the playground's "
        "diagram-description prompt).",
    )
    infer_system_prompt: str | None = Field(
        DEFAULT_SYSTEM_PROMPT,
        validation_alias=_env("INFER_SYSTEM_PROMPT"),
        description="The system prompt of POST /infer and /inference (empty: none).",
    )
    max_choices: int = Field(
        8, ge=1, validation_alias=_env("MAX_CHOICES"),
        description="Largest n of one chat completion (each choice is a row of the batch).",
    )

    # ---- adapters ----------------------------------------------------------------------------------------------
    default_adapter: str | None = Field(
        None,
        validation_alias=_env("INFERENCE_DEFAULT_ADAPTER"),
        description="Adapter active on new connections; if missing or broken the worker warns and serves the base.",
    )
    adapter_local_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        validation_alias=_env("ADAPTER_LOCAL_ROOTS"),
        description="Directories (separated by ':' or ',') from which adapters may be loaded by absolute path.",
    )
    max_loaded_adapters: int = Field(
        8, ge=1, validation_alias=_env("MAX_LOADED_ADAPTERS"), description="Adapters kept in memory (LRU)."
    )

    # ---- generation limits -------------------------------------------------------------------------------------
    max_new_tokens: int = Field(
        limits.MAX_NEW_TOKENS, ge=1, validation_alias=_env("MAX_NEW_TOKENS"),
        description="Cap on max_tokens of any request."
    )
    default_max_tokens: int = Field(
        limits.DEFAULT_MAX_TOKENS, ge=1, validation_alias=_env("DEFAULT_MAX_TOKENS"),
        description="max_tokens when a request gives none."
    )
    max_prompt_tokens: int = Field(
        16384, ge=1, validation_alias=_env("MAX_PROMPT_TOKENS"), description="Longest prompt (image tokens included)."
    )
    engine: Literal["transformers", "vllm", "ray"] = Field(
        "transformers",
        validation_alias=_env("INFERENCE_ENGINE"),
        description="The engine behind the protocol: transformers (in-process, continuous batching), vllm "
        "(vLLM's AsyncLLM in-process: paged attention, fused LoRA kernels; needs the worker to run in .venv-vllm, "
        "make venv-vllm) or ray (this process holds no model: requests go to the replicas of a Ray Serve "
        "deployment, python -m inference_worker.ray).",
    )
    max_batch_rows: int | None = Field(
        None,
        ge=1,
        validation_alias=_env("MAX_BATCH_ROWS"),
        description="Requests decoded together in one batch (one row each). Unset: 8 on CPU and MPS, 32 on CUDA.",
    )
    cpu_weight_layout: Literal["auto", "natural", "transposed"] = Field(
        "auto",
        validation_alias=_env("CPU_WEIGHT_LAYOUT"),
        description="On CPU: natural (weights as loaded; fastest with 1-3 running rows, e.g. one A/B pair) or "
        "transposed (MLP and output weights stored transposed; fastest with 4+ rows, slower with 2-3). auto: "
        "transposed when MAX_BATCH_ROWS is 4 or more, else natural. No effect on CUDA or MPS.",
    )
    kv_cache_max_bytes: int | None = Field(
        None,
        ge=1024 * 1024,
        validation_alias=_env("KV_CACHE_MAX_BYTES"),
        description="Bound of the running batch's KV cache: rows × the longest row's prompt + max_tokens × the "
        "model's KV bytes per token; admission waits beyond it. Unset: 2 GiB on CPU and MPS; on CUDA half the "
        "GPU memory free once the model is loaded.",
    )
    vision_cache_max_bytes: int = Field(
        256 * MiB,
        ge=0,
        validation_alias=_env("VISION_CACHE_MAX_BYTES"),
        description="Vision encodings kept for reuse (an A/B pair encodes its image once); 0 turns it off.",
    )
    temperature_max: float = Field(
        limits.TEMPERATURE_MAX, gt=0, validation_alias=_env("TEMPERATURE_MAX"),
        description="Largest temperature a request may ask for."
    )
    repetition_penalty_max: float = Field(
        limits.REPETITION_PENALTY_MAX,
        ge=1.0,
        validation_alias=_env("REPETITION_PENALTY_MAX"),
        description="Largest repetition_penalty a request may ask for.",
    )
    max_queue_size: int = Field(
        32, ge=0, validation_alias=_env("MAX_QUEUE_SIZE"),
        description="Requests waiting for a batch row beyond MAX_BATCH_ROWS; beyond that they get busy at once."
    )
    max_sessions_per_connection: int = Field(
        8, ge=1, validation_alias=_env("MAX_SESSIONS_PER_CONNECTION"), description="Unfinished generates per socket."
    )
    generation_timeout_s: float = Field(
        600.0,
        gt=0,
        validation_alias=_env("GENERATION_TIMEOUT_S"),
        description="Deadline of one generate, queueing included; overrun ends it with deadline_exceeded.",
    )
    max_stop_strings: int = Field(8, ge=0, validation_alias=_env("MAX_STOP_STRINGS"), description="Stop strings.")
    max_stop_length: int = Field(
        64, ge=1, validation_alias=_env("MAX_STOP_LENGTH"), description="Characters per stop string."
    )
    max_chat_messages: int = Field(
        256, ge=1, validation_alias=_env("MAX_CHAT_MESSAGES"), description="Chat messages per request."
    )
    max_content_parts: int = Field(
        256,
        ge=1,
        validation_alias=_env("MAX_CONTENT_PARTS"),
        description="Content parts (text and image) per request, all messages together.",
    )

    # ---- the vLLM engine (INFERENCE_ENGINE=vllm) -----------------------------------------------------------------
    vllm_max_model_len: int | None = Field(
        None,
        ge=16,
        validation_alias=_env("VLLM_MAX_MODEL_LEN"),
        description="vLLM: longest sequence (prompt + max_tokens). Unset: MAX_PROMPT_TOKENS + MAX_NEW_TOKENS, capped "
        "by the model's own maximum.",
    )
    vllm_max_loras: int = Field(
        4,
        ge=1,
        validation_alias=_env("VLLM_MAX_LORAS"),
        description="vLLM: distinct adapters in one batch (vLLM's max_loras); requests with further adapters wait.",
    )
    vllm_max_lora_rank: int = Field(
        64,
        ge=1,
        validation_alias=_env("VLLM_MAX_LORA_RANK"),
        description="vLLM: largest adapter rank (memory is reserved for it per slot); a higher rank is refused at "
        "load. vLLM accepts 1, 8, 16, 32, 64, 128, 256, 320, 512.",
    )
    vllm_gpu_memory_utilization: float = Field(
        0.85,
        gt=0,
        le=1,
        validation_alias=_env("VLLM_GPU_MEMORY_UTILIZATION"),
        description="vLLM on CUDA: the share of GPU memory vLLM may take (weights, activations, KV cache).",
    )
    vllm_cpu_kvcache_space: int = Field(
        1,
        ge=1,
        validation_alias=_env("VLLM_CPU_KVCACHE_SPACE"),
        description="vLLM on CPU: GiB of KV cache (vLLM's own VLLM_CPU_KVCACHE_SPACE; its default reserves most "
        "of the machine's memory).",
    )
    vllm_enforce_eager: bool = Field(
        False,
        validation_alias=_env("VLLM_ENFORCE_EAGER"),
        description="vLLM: no CUDA graphs and no torch.compile (faster start, slower decoding).",
    )
    vllm_tower_lora: bool = Field(
        False,
        validation_alias=_env("VLLM_TOWER_LORA"),
        description="vLLM: serve adapters that adapt the vision tower (vLLM's experimental "
        "enable_tower_connector_lora); off: loading one is refused with adapter_incompatible.",
    )

    # ---- Ray Serve (INFERENCE_ENGINE=ray, python -m inference_worker.ray) ------------------------------------------
    ray_address: str = Field(
        "auto",
        validation_alias=_env("RAY_ADDRESS"),
        description="Ray cluster to join: auto (the cluster this machine belongs to), ray://host:10001 or host:6379, "
        "or local (python -m inference_worker.ray only: start a one-machine cluster of its own).",
    )
    ray_app_name: str = Field(
        "inference-worker",
        validation_alias=_env("RAY_APP_NAME"),
        description="Name of the Ray Serve application that holds the replicas; fronts find it by this name.",
    )
    ray_replicas: int = Field(
        1, ge=1, validation_alias=_env("RAY_REPLICAS"),
        description="Model replicas, when autoscaling is off (RAY_MAX_REPLICAS unset)."
    )
    ray_min_replicas: int = Field(
        1, ge=0, validation_alias=_env("RAY_MIN_REPLICAS"),
        description="Autoscaling lower bound (used when RAY_MAX_REPLICAS is set)."
    )
    ray_max_replicas: int | None = Field(
        None,
        ge=1,
        validation_alias=_env("RAY_MAX_REPLICAS"),
        description="Autoscaling upper bound; set, Ray Serve scales between RAY_MIN_REPLICAS and it to keep "
        "RAY_TARGET_ONGOING_REQUESTS per replica. Unset: RAY_REPLICAS fixed replicas.",
    )
    ray_target_ongoing_requests: float | None = Field(
        None,
        gt=0,
        validation_alias=_env("RAY_TARGET_ONGOING_REQUESTS"),
        description="Autoscaling target of requests per replica. Unset: the replica's batch rows (MAX_BATCH_ROWS).",
    )
    ray_max_ongoing_requests: int | None = Field(
        None,
        ge=1,
        validation_alias=_env("RAY_MAX_ONGOING_REQUESTS"),
        description="Requests one replica holds at once (running and waiting in its engine); more wait in the "
        "front. Unset: twice the replica's batch rows.",
    )
    ray_cpus_per_replica: float = Field(
        1.0, ge=0, validation_alias=_env("RAY_CPUS_PER_REPLICA"),
        description="CPUs Ray reserves for each replica (fractions allowed)."
    )
    ray_gpus_per_replica: float = Field(
        0.0, ge=0, validation_alias=_env("RAY_GPUS_PER_REPLICA"),
        description="GPUs Ray reserves for each replica (fractions allowed; 0 on CPU-only clusters)."
    )
    ray_adapters_per_replica: int | None = Field(
        None,
        ge=1,
        validation_alias=_env("RAY_ADAPTERS_PER_REPLICA"),
        description="Adapters one replica keeps loaded (LRU; Ray Serve's max_num_models_per_replica). Unset: "
        "MAX_LOADED_ADAPTERS.",
    )
    ray_health_check_period_s: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("RAY_HEALTH_CHECK_PERIOD_S"),
        description="How often Ray Serve checks each replica; a dead one is replaced after about this long.",
    )
    ray_status_period_s: float = Field(
        1.0,
        gt=0,
        validation_alias=_env("RAY_STATUS_PERIOD_S"),
        description="How often replicas report their adapters and load, and the front reads them (status, "
        "/metrics, readiness: a front is ready while a replica reported within 3 periods).",
    )

    # ---- messages and images -----------------------------------------------------------------------------------
    max_message_bytes: int = Field(
        16 * MiB,
        ge=1024,
        validation_alias=_env("MAX_MESSAGE_BYTES"),
        description="Largest WebSocket frame (a bigger one closes the connection with 1009) and HTTP request body "
        "(413, refused before it is parsed).",
    )
    max_frame_json_items: int = Field(
        65536,
        ge=1024,
        validation_alias=_env("MAX_FRAME_JSON_ITEMS"),
        description="A frame with more '{', '[' and ',' characters (strings included) is refused before parsing; "
        "a valid request has a few thousand at most.",
    )
    max_images_per_request: int = Field(
        4, ge=0, validation_alias=_env("MAX_IMAGES_PER_REQUEST"), description="Images in one generate."
    )
    image_max_bytes: int = Field(
        limits.IMAGE_MAX_BYTES, ge=1, validation_alias=_env("IMAGE_MAX_BYTES"), description="Encoded size of one image."
    )
    image_max_source_pixels: int = Field(
        36_000_000,
        ge=1,
        validation_alias=_env("IMAGE_MAX_SOURCE_PIXELS"),
        description="Width×height read from the header; more is refused before decoding (decompression bombs).",
    )
    image_min_pixels: int = Field(
        64 * 64, ge=1, validation_alias=_env("IMAGE_MIN_PIXELS"), description="Images are resized to at least this."
    )
    image_max_pixels: int = Field(
        1024 * 32 * 32,
        ge=1,
        validation_alias=_env("IMAGE_MAX_PIXELS"),
        description="Images are resized to at most this many pixels (1024 vision tokens for Qwen3-VL).",
    )

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        validation_alias=_env("SHUTDOWN_GRACE_S"),
        description="On SIGTERM, running generations get this long to finish before they end with an error.",
    )
    shutdown_notice_s: float = Field(
        5.0,
        ge=0,
        validation_alias=_env("SHUTDOWN_NOTICE_S"),
        description="On SIGTERM, /ready and new handshakes answer 503 for at least this long before the port "
        "closes, so that load balancers stop sending connections first.",
    )
    ws_ping_interval_s: float | None = Field(
        20.0, validation_alias=_env("WS_PING_INTERVAL_S"), description="WebSocket keepalive ping interval."
    )
    ws_ping_timeout_s: float | None = Field(
        20.0, validation_alias=_env("WS_PING_TIMEOUT_S"), description="Close a connection whose pong is this late."
    )

    @field_validator("adapter_local_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p for p in value.replace(",", os.pathsep).split(os.pathsep) if p.strip()]
        return value

    @field_validator("http_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("http_port", mode="before")
    @classmethod
    def _port_off(cls, value: Any) -> Any:
        return None if is_off(value) else value

    @field_validator("default_adapter", "auth_token", "infer_system_prompt", "max_batch_rows", "kv_cache_max_bytes",
                     "ray_max_replicas", "ray_target_ongoing_requests", "ray_max_ongoing_requests",
                     "ray_adapters_per_replica", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_max_tokens > self.max_new_tokens:
            self.default_max_tokens = self.max_new_tokens
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError("IMAGE_MIN_PIXELS must not exceed IMAGE_MAX_PIXELS")
        if self.ray_max_replicas is not None and self.ray_min_replicas > self.ray_max_replicas:
            raise ValueError("RAY_MIN_REPLICAS must not exceed RAY_MAX_REPLICAS")
        return self

    # ---- derived -----------------------------------------------------------------------------------------------
    @property
    def store_dir(self) -> Path:
        """The local store directory: ADAPTER_STORE_DIR, else the demo's store in demo mode, else ./adapter_store."""
        if self.adapter_store_dir is None and self.demo:
            return self.demo_dir / "adapters"
        return self.local_store_dir()

    def request_limits(self) -> RequestLimits:
        return RequestLimits(
            max_new_tokens=self.max_new_tokens,
            default_max_tokens=self.default_max_tokens,
            max_prompt_tokens=self.max_prompt_tokens,
            max_stop_length=self.max_stop_length,
            max_images_per_request=self.max_images_per_request,
            temperature_max=self.temperature_max,
            repetition_penalty_max=self.repetition_penalty_max,
        )

    def parse_limits(self) -> ParseLimits:
        return ParseLimits(
            max_messages=self.max_chat_messages,
            max_content_parts=self.max_content_parts,
            max_stop_strings=self.max_stop_strings,
            max_frame_json_items=self.max_frame_json_items,
        )

    @property
    def adapters_per_replica(self) -> int:
        """RAY_ADAPTERS_PER_REPLICA, or MAX_LOADED_ADAPTERS."""
        return self.ray_adapters_per_replica or self.max_loaded_adapters

    def batch_rows_for(self, device: str) -> int:
        """MAX_BATCH_ROWS, or its default for the device the model runs on."""
        if self.max_batch_rows is not None:
            return self.max_batch_rows
        return 32 if device == "cuda" else 8

    def weight_layout_for(self, device: str) -> str:
        """CPU_WEIGHT_LAYOUT resolved for the device and the batch bound: natural or transposed."""
        if self.cpu_weight_layout != "auto":
            return self.cpu_weight_layout
        return "transposed" if device == "cpu" and self.batch_rows_for(device) >= 4 else "natural"

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.image_max_bytes, max_source_pixels=self.image_max_source_pixels)

    @classmethod
    def env_name(cls, field: str) -> str:
        alias = cls.model_fields[field].validation_alias
        assert isinstance(alias, AliasChoices)
        return str(alias.choices[0])
