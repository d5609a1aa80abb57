"""Typed run configuration, one small model per concern: model, data, strategy, train, eval, output.

Every group forbids unknown keys; `sftlab.config.load` turns pydantic's errors into one-line
messages with a "did you mean" suggestion. The key names listed in the README (`model.path`,
`data.train`, `train.lr`, ...) are a public contract: do not rename them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sftlab.config.types import Bool, Float, Int  # integers, booleans and numbers only: no `true` read as 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


class ModelConfig(_Strict):
    """Which weights to start from and how to load them."""

    path: str = Field(..., description="local model directory, an embedded default name (gemma-3-270m, minilm), or a .gguf file")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field("float32", description="dtype of the loaded weights; "
                                                                    "auto: bfloat16 where train.precision is (or resolves to) "
                                                                    "bf16, else float32, chosen when a run, plan or compare starts; "
                                                                    "trained bf16/fp16 weights get fp32 master copies in AdamW "
                                                                    "(with train.precision=bf16, bfloat16 is faster and lighter on CPUs "
                                                                    "with AMX or AVX-512 BF16; elsewhere 16-bit matmuls have no "
                                                                    "hardware and the run log warns)")
    tokenizer: str | None = Field(None, description="tokenizer directory when it differs from model.path")
    adapter: str | None = Field(None, description="a PEFT LoRA adapter directory to start from (a LoRA run's OUT/model): "
                                "strategy.kind lora trains that adapter further (its own rank and target modules), "
                                "the other kinds train the base with the adapter merged in. A model.path that is such "
                                "a directory becomes model.adapter, with model.path its base (adapter_config.json's "
                                "base_model_name_or_path) and model.tokenizer the adapter's tokenizer when it has one")
    trust_remote_code: Bool = Field(False, description="run model code shipped in the model directory (only for directories you trust)")
    attn_implementation: Literal["auto", "sdpa", "eager", "matmul"] = Field(
        "auto", description="attention kernel passed to transformers; matmul: sftlab's for training on the CPU "
        "(faster than sdpa; keeps a layer's attention probabilities for backward up to 64 MiB and recomputes "
        "larger ones there, a block of queries at a time; other calls, such as on a GPU or in generation, run sdpa); auto: matmul for models that dispatch "
        "through transformers' attention interface, transformers' default for the rest")
    fused_layers: Bool = Field(
        True, description="in training, run RMSNorm and gated-MLP modules (Llama, Mistral, Qwen2/3, Phi-3, Gemma) "
        "through autograd functions that keep only their inputs for backward and recompute the element-wise rest: "
        "the same results (up to float rounding) with about a third less activation memory on those models "
        "(sftlab.models.fused)")
    compiled_kernels: Bool | Literal["auto"] = Field(
        "auto", description="in CPU training with model.fused_layers, run the fused RMSNorm (forward and backward) "
        "and the gated MLP's backward as kernels compiled by torch.compile at setup (a C++ compiler is needed; "
        "W1 on 2 cores: 12-18 s the first time on a machine, about 3 s from the compile cache in $SFTLAB_HOME/inductor), "
        "else eagerly: the gated MLP's "
        "gradients are bit-identical with SiLU (with tanh GELU the gate's differs by one bf16 ulp in about 2 elements "
        "in 10,000), about 1 element in 100,000 of the RMSNorm's output and input gradient differs, by "
        "less than one bf16 ulp of its row's largest value (its row sums are added in another order); auto: on for models with a hidden size of 256 or more "
        "(sftlab.models.kernels)")

    @model_validator(mode="after")
    def _adapter_as_path(self) -> "ModelConfig":
        from sftlab.config.checks import split_adapter_path

        return split_adapter_path(self)


class DatasetSpec(_Strict):
    """One dataset in a mixture: a file or a registry name, with an optional sampling weight."""

    path: str = Field(..., description="file, directory or registry name of this dataset (a list item of data.train)")
    format: str | None = Field(None, description="overrides data.format for this dataset")
    weight: Float = Field(1.0, gt=0, description="sampling weight of this dataset in the mixture")
    columns: dict[str, str] | None = Field(None, description="overrides data.columns for this dataset")


class DataConfig(_Strict):
    """Where the examples come from and how they become token ids and labels."""

    train: str | list[str | DatasetSpec] = Field(..., description="file, registry name, or a list of them (mixed by weight)")
    validation: str | None = Field(None, description="file or registry name of the validation set")
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text", "label"] = Field(
        "auto", description="record format; auto detects it from the first record of each file")
    columns: dict[str, str] = Field(default_factory=dict, description="canonical field -> column name in the file")
    registry: str | None = Field(None, description="path to a dataset_info.json-style registry")
    val_ratio: Float = Field(0.0, ge=0.0, lt=1.0, description="hold out this share of train when data.validation is unset")
    split: Literal["random", "stratified"] = Field("random", description="how data.val_ratio holds out validation: random, or stratified by label")
    max_samples: Int | None = Field(None, gt=0, description="keep at most this many training examples (after mixing)")
    template: str = Field("auto", description="'auto' (tokenizer's own chat template, else chatml) or a built-in name")
    mask: Literal["assistant", "last_assistant", "each_assistant", "all"] = Field(
        "assistant", description="sft loss on every assistant turn, the last one only, or all tokens; "
        "each_assistant: every assistant turn, each in a sample of its own (the conversation up to it), for chat "
        "templates that render earlier turns otherwise than the last (Qwen3's gives only the last one a reasoning block), which "
        "assistant refuses as not prefix-stable; it costs more tokens. A turn after a conversation's last answer is an "
        "error under assistant and last_assistant (nothing would learn from it), in no sample under each_assistant")
    truncation: Literal["drop", "left"] = Field(
        "drop", description="over-long samples: drop them, or cut the prompt from the left keeping the answer (counted either way)")
    packing: Bool = Field(False, description="pack several samples per row; attention never crosses samples")
    group_by_length: Bool = Field(False, description="without packing: micro-batches of similar lengths (less padding): "
                                  "rows shuffled, then sorted by length within windows of 50 micro-batches; the longest "
                                  "batch first (W1 benchmark: 1.98x the tokens/s of plain padded batches)")
    pt_mode: Literal["concat", "document"] = Field("concat", description="pt: concatenate with EOS into blocks, or one document per row")
    labels: list[str] | None = Field(None, description="cls/label tasks: the label set (default: sorted labels seen in "
                                     "train); integers are read as their text, as labels in the data are")

    @field_validator("labels", mode="before")
    @classmethod
    def _label_set(cls, value):
        if not isinstance(value, list):
            return value
        names = [str(item) if isinstance(item, int) and not isinstance(item, bool) else item for item in value]
        for index, name in enumerate(names):
            if isinstance(name, str) and not name.strip():
                raise ValueError(f"item {index} is empty; a label needs a name")
            if isinstance(name, str) and name in names[:index]:
                raise ValueError(f"{name!r} is listed twice (items {names.index(name)} and {index}); each label once")
        return names
    balance: Literal["none", "oversample", "undersample", "class_weight"] = Field(
        "none", description="class balance of labelled training data (validation is never resampled): oversample "
        "or undersample the token rows that tokenisation kept (cls labels, or sft samples by their last answer; both "
        "refuse a data.labels class with no training sample), or class_weight (stage cls only: the head's training loss; validation loss stays unweighted; "
        "weights in data_stats.json)")
    cache_dir: str | None = Field(None, description="tokenisation cache (default ~/.cache/sftlab/tokenized)")
    cache_max_gb: Float | None = Field(20.0, ge=0, description="after writing a tokenisation cache entry, remove the "
                                       "least recently used token-row entries until the cache's entries total at most "
                                       "this many GB (10^9 bytes); never this run's entries nor one used in the last 10 "
                                       "minutes; 0 keeps only those; null never removes anything")
    num_workers: Int = Field(1, ge=1, description="processes for tokenisation (forked workers; 1 tokenises in the training process)")
    seed: Int = Field(0, description="seed of mixing, splitting and resampling")
    streaming: Bool = Field(False, description="pt: read data.train as a stream (corpora larger than memory); "
                            "needs train.max_steps")
    shuffle_buffer: Int = Field(10000, ge=1, description="data.streaming: documents held in the shuffle buffer")


class FreezeConfig(_Strict):
    """Which layers and modules train under strategy.kind=freeze."""

    layers: Literal["none", "all"] | str | list[Int] = Field("none", description="'last:N', 'first:N', a list of indices, 'all' or 'none'")
    modules: list[str] = Field(default_factory=list, description="globs on parameter names, e.g. lm_head, *.self_attn.*, *.bias, *norm*")

    @field_validator("layers", mode="wrap")
    @classmethod
    def _layer_spec(cls, value, handler):
        """The spec's syntax, with the grammar freeze uses (`sftlab.strategy.freeze.parse_layer_spec`); whether it
        fits the model (N, indices) is checked when the model is loaded."""
        from sftlab.strategy.freeze import parse_layer_spec

        if not isinstance(value, (str, list, tuple)):  # 3, a mapping: the union alone would say "expected 'none' or 'all'"
            parse_layer_spec(value)
        value = handler(value)
        parse_layer_spec(value)  # ValueError -> "strategy.freeze.layers: ..."
        return value


class LoraConfig(_Strict):
    """LoRA adapter settings (peft)."""

    rank: Int = Field(8, gt=0, description="LoRA rank r")
    alpha: Float = Field(16.0, gt=0, description="LoRA scaling alpha (update scaled by alpha/r, or alpha/sqrt(r) with rslora)")
    dropout: Float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names or globs that get adapters, or all-linear")
    rslora: Bool = Field(False, description="rank-stabilised LoRA scaling")
    dora: Bool = Field(False, description="weight-decomposed LoRA (DoRA)")
    modules_to_save: list[str] = Field(default_factory=list, description="modules trained in full beside the adapters, e.g. lm_head (a cls head is added automatically)")
    quantize_4bit: Bool = Field(False, description="QLoRA: load the base NF4-quantised with bitsandbytes (double quantisation; computing in bfloat16 on CUDA and on CPUs with bf16 instructions, else float32): on CUDA, or on a CPU with bitsandbytes >= 0.50; tested on CPU only")


class AutoConfig(_Strict):
    """Importance-based selection of the units to train (strategy.kind=auto)."""

    budget: Float = Field(0.05, gt=0, description="fraction of all parameters (0-1], or an absolute count if > 1")
    score: Literal["fisher", "grad_weight"] = Field(
        "fisher", description="importance: mean squared gradient (Fisher) or |gradient x weight|, per parameter")
    granularity: Literal["linear", "block", "layer"] = Field(
        "linear", description="unit that is chosen or not: each linear/norm/embedding module, attention/MLP block, or whole layer")
    batches: Int = Field(8, gt=0, description="calibration batches used for scoring")

    @field_validator("budget")
    @classmethod
    def _budget_shape(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError("budget above 1 must be a whole parameter count")
        return value


class StrategyConfig(_Strict):
    """Which parameters train: full, freeze, lora or auto (importance-based)."""

    kind: Literal["full", "freeze", "lora", "auto"] = Field("full", description="which parameters train")
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    auto: AutoConfig = Field(default_factory=AutoConfig)


class TrainConfig(_Strict):
    """The optimisation: stage, steps, batch, learning rate, precision."""

    stage: Literal["pt", "sft", "cls"] = Field("sft", description="pt: next-token on raw text; sft: chat with loss on answers; cls: classification head")
    max_steps: Int | None = Field(None, gt=0, description="optimizer steps; overrides train.epochs when set")
    epochs: Float = Field(1.0, gt=0, description="passes over the training data (fractions allowed)")
    batch_size: Int = Field(8, gt=0, description="samples (or packed rows) per micro-batch")
    grad_accum: Int = Field(1, gt=0, description="micro-batches per optimizer step; the loss is normalised by the supervised tokens of all of them")
    lr: Float = Field(1e-4, gt=0, description="peak learning rate of AdamW")
    weight_decay: Float = Field(0.0, ge=0, description="AdamW weight decay (betas 0.9, 0.999, eps 1e-8); not applied to one-dimensional parameters (biases, norms)")
    max_grad_norm: Float | None = Field(1.0, gt=0, description="gradient clipping; null turns it off")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="learning-rate schedule after warmup (transformers' linear, cosine and constant_with_warmup)")
    warmup_steps: Int = Field(0, ge=0, description="linear warmup steps (kept when longer than the run, as transformers does; the run log notes it)")
    max_length: Int = Field(512, gt=1, description="tokens per sample (or per packed row)")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32", description="bf16 = autocast on CPU or GPU; on a CPU without AMX or AVX-512 BF16 its matmuls run in "
        "software (5x slower than fp32 on AVX-512 CPUs without BF16, 100x on AVX2) and the run log and sftlab plan warn; "
        "fp16 = fp16 autocast with dynamic loss scaling, for GPUs without bf16 (T4, V100): needs model.dtype float32 "
        "(or auto) and one process or train.distributed ddp; a step whose gradients overflow fp16 is skipped (no update; "
        "it still counts: its data is used up and the schedule advances), the loss scale halves and its metrics.jsonl "
        "row says skipped; tested on CPU only, where its matmuls also run in software without AVX-512 FP16 or AMX-FP16 "
        "(the run log warns); auto = bf16 where the "
        "machine has it (a GPU with bf16, a CPU with AMX or AVX-512 BF16), else fp32 (never fp16), resolved when the run starts "
        "and recorded as such in the run's config.yaml")
    gradient_checkpointing: Bool | Literal["selective"] = Field(
        False, description="recompute activations in backward to save memory: true (each layer's forward, the least "
        "memory, one extra forward) or selective (keep the linear layers' matmul outputs, recompute the rest, attention "
        "included: on the W1 benchmark in bf16 11% less peak memory than false for 9-19% more step time, where true "
        "saves 27% for 13-24% more; docs/speed-work.md)")
    keep_freed_memory: Bool = Field(
        True, description="keep memory freed during training in the process for the next step (glibc malloc "
        "thresholds raised; restored after the run) instead of faulting fresh pages in for every large tensor: "
        "W1 bf16 steps 1.8-1.9 s instead of 1.9-2.4 s, same peak memory (docs/speed-work.md); no effect without glibc")
    allocator: Literal["auto", "jemalloc", "system"] = Field(
        "auto", description="malloc of the training process: auto = jemalloc where its shared library is found "
        "(sftlab train, and the demos, then re-run themselves with it preloaded), else the system malloc; jemalloc = required; "
        "system = never preload. On CPU, jemalloc trained at the same speed with less peak memory "
        "(docs/speed-work.md); the run log names the allocator in use")
    seed: Int = Field(0, description="seed of initialisation, data order and dropout")
    log_every_n_steps: Int = Field(1, gt=0, description="write a metrics.jsonl row every N optimizer steps")
    save_every_n_steps: Int | None = Field(None, gt=0, description="write checkpoints/step-N every N steps (Ctrl-C and SIGTERM always write one)")
    distributed: Literal["ddp", "fsdp", "zero2", "zero3"] = Field(
        "ddp", description="several processes (sftlab train --nproc N): ddp (data parallel) or fsdp (FSDP2 full shard), "
        "CPU or GPU; zero2/zero3 (DeepSpeed) need CUDA; ignored by a single process (docs/distributed.md)")
    dist_timeout_s: Int = Field(600, gt=0, description="seconds a process waits for the others before the run stops")


LOWER_IS_BETTER = {"loss", "eval_loss", "val_loss", "perplexity", "unparseable"}


class EvalConfig(_Strict):
    """Validation during training, early stopping and best-checkpoint selection."""

    every_n_steps: Int | None = Field(None, gt=0, description="validate every N optimizer steps (and always at the end)")
    batch_size: Int = Field(8, gt=0, description="validation batch size")
    metric: str = Field("loss", description="metric that picks the best checkpoint, e.g. loss, accuracy, macro_f1")
    mode: Literal["auto", "min", "max"] = Field(
        "auto", description="whether eval.metric is better lower or higher; auto: lower for loss, perplexity and "
        "unparseable, higher for every other metric (F1, accuracy, NDCG, ...); a min or max that contradicts a "
        "metric is refused")
    patience: Int | None = Field(None, gt=0, description="stop after this many evaluations without improvement")
    max_samples: Int | None = Field(None, gt=0, description="validate on at most this many samples")
    task: Literal["auto", "lm", "generation", "labels", "ranking"] = Field(
        "auto", description="task metrics computed at each evaluation; auto = implied by eval.metric (loss, perplexity "
        "and lm: only the loop's own)")
    label_method: Literal["likelihood", "generate"] = Field(
        "likelihood", description="generative label tasks: score each label's likelihood, or generate and parse")
    max_new_tokens: Int = Field(64, gt=0, description="generation length for eval.task=generation / label_method=generate")
    k: list[Int] = Field(default_factory=lambda: [1, 5, 10], description="cut-offs K for ranking metrics (HitRate@K, NDCG@K, ...)")
    data: str | None = Field(None, description="file evaluated by task metrics instead of the validation split "
                             "(ranking rows need one); relative to the working directory")

    @property
    def resolved_mode(self) -> str:
        """'min' for the metrics that are better lower (loss, perplexity, the share of unparseable answers), else
        'max' (a min default kept the worst F1 checkpoint as best/ and stopped runs as F1 improved)."""
        return "min" if self.metric in LOWER_IS_BETTER else "max"


class OutputConfig(_Strict):
    """Where the run writes its model, checkpoints, logs and report."""

    dir: str = Field("runs/latest", description="run directory: model/, best/, checkpoints/, config.yaml, metrics")
    tensorboard: Bool = Field(True, description="also write TensorBoard events")
    keep_checkpoints: Int = Field(1, ge=1, description="recent step checkpoints kept besides the best")


class RunConfig(_Strict):
    """A whole run: one YAML file, grouped by concern."""

    model: ModelConfig
    data: DataConfig
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.model.adapter and self.strategy.kind == "lora" and self.strategy.lora.quantize_4bit:
            raise ValueError("model.adapter: continuing an adapter on a 4-bit base (strategy.lora.quantize_4bit) "
                             "is not supported; merge it first (sftlab export --merge) and start a new adapter")
        if self.strategy.lora.quantize_4bit and self.strategy.kind != "lora":  # else the flag did nothing, silently
            raise ValueError(f"strategy.lora.quantize_4bit: 4-bit base weights (QLoRA) are for strategy.kind lora, "
                             f"not {self.strategy.kind}; set strategy.kind=lora or strategy.lora.quantize_4bit=false")
        if self.strategy.kind == "lora" and self.strategy.lora.quantize_4bit:
            from sftlab.config.checks import require_qlora_backend

            require_qlora_backend()
        if self.eval.mode not in ("auto", self.eval.resolved_mode):  # best/ and patience would follow the worst
            better = "lower" if self.eval.resolved_mode == "min" else "higher"
            raise ValueError(f"eval.mode={self.eval.mode}: eval.metric {self.eval.metric} is better {better}; leave "
                             f"eval.mode out (auto) or set it to {self.eval.resolved_mode}")
        if self.data.split == "stratified" and self.train.stage == "pt":
            raise ValueError("data.split=stratified needs labels; stage pt has none")
        from sftlab.config.checks import (check_balance_stage, check_distributed, check_fp16, check_group_by_length,
                                          check_streaming)

        check_balance_stage(self.data.balance, self.train.stage)

        check_fp16(self)
        check_distributed(self)
        check_streaming(self)
        check_group_by_length(self)
        return self
