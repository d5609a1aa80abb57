"""Find and load what to generate with: a model dir, a PEFT adapter dir, or a run dir, plus extra adapters.

    served = load_served("runs/exp1", adapters={"legal": "runs/legal/model"})
    with served.activate("legal"):      # or None for the plain base model
        ...

A run dir holds `model/` (a full model, or an adapter whose adapter_config.json names its local base)
and `config.yaml`. Prompts are rendered, and answers stopped, with the template the model was trained with
(`sftlab.models.trained`): the model or adapter dir's `sftlab_template.json` (RUN/model, RUN/best, a checkpoint,
a merged export), else the run's `config.yaml` (`data.template`), else auto.
Nothing is downloaded: bases are resolved with `sftlab.models.load.resolve_model_path`. An extra adapter whose
recorded base is not on this machine (nothing at that path: a hub id, another machine's directory) runs on the served
base, with a `note:` line on stderr; one whose recorded local base differs is refused. An adapter trained with added
tokens gets its base's token embeddings resized to its own (`sftlab.models.adapter_vocab`); where that is an extra
adapter holding its tokenizer, that tokenizer and the adapter's template serve.

A model with its own code (config.json's or tokenizer_config.json's `auto_map`: ChatGLM, Baichuan, InternLM, ...)
loads only with `trust_remote_code=True` (the commands' `--trust-remote-code`, never on by default); without it, a
one-line error names that flag. Errors about a model or tokenizer directory name the argument that gave it (`key`:
`MODEL`, `--model`), or for an adapter's base its adapter_config.json's base_model_name_or_path.

A classification LoRA adapter (adapter_config.json's task_type SEQ_CLS) generates no text: `load_served` refuses it in
one line naming its labels, and `load_classifier_adapter` loads it on its base's classification head with the label
names it trained with (`sftlab.models.trained.trained_labels`), for label evaluation.

A QLoRA adapter served as the model (its dir holds `sftlab_qlora.json`), or evaluated as a classifier, runs on its
base loaded in 4-bit as it trained (`sftlab.models.nf4.load_as_trained`, with `trust_remote_code` passed on); extra
adapters on that base must record the same quantisation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.models.trained import run_model_dir, trained_settings


@dataclass
class ModelSource:
    """Where the weights of one served model live."""

    name: str
    model_dir: Path
    base_dir: Path
    adapter_dir: Path | None = None
    template: str = "auto"
    task_type: str | None = None  # an adapter's adapter_config.json task_type (SEQ_CLS: a classifier)
    base_key: str = "MODEL"  # what errors about base_dir name: the argument, or the adapter's base_model_name_or_path
    recorded_base: str | None = None  # the adapter's base_model_name_or_path where it is not here: base_dir replaces it


@dataclass
class ServedModel:
    """A loaded base model, its tokenizer and the adapters attached to it, by served name."""

    model: object
    tokenizer: object
    default_name: str
    adapters: dict[str, str | None] = field(default_factory=dict)
    template: str = "auto"
    base_dir: Path | None = None

    @property
    def names(self) -> list[str]:
        return list(self.adapters)

    def activate(self, name: str | None):
        """Context in which the model computes with adapter `name` (None: the base without adapters)."""
        if name is None:
            if hasattr(self.model, "disable_adapter"):
                return self.model.disable_adapter()
            return contextlib.nullcontext()
        if self.model.active_adapter != name:  # switching walks every module: only do it on a change
            self.model.set_adapter(name)
        return contextlib.nullcontext()

    @property
    def max_context(self) -> int:
        config = self.model.config
        return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048))


def describe_source(path: str | Path, name: str | None = None, key: str = "MODEL",
                    served_base: Path | None = None) -> ModelSource:
    """Classify `path` as a model dir, an adapter dir or a run dir (with model/ inside); errors name `key`. An
    adapter whose recorded base is not on this machine (nothing at that path: a hub id such as `Qwen/Qwen2.5-0.5B`,
    another machine's `/home/alice/models/qwen`) takes `served_base`, the base the user gave it (`--adapter` of a
    served MODEL), and keeps the recorded one in `recorded_base`; without `served_base`, or where the recorded path
    exists but is no model directory, the error names its adapter_config.json's base_model_name_or_path."""
    from sftlab.io import read_json
    from sftlab.models.load import adapter_base, resolve_model_path

    given = Path(path).expanduser()
    model_dir = run_model_dir(given) or resolve_model_path(str(path), key)
    template = trained_settings(model_dir).template or "auto"
    label = name or (given.name if given.is_dir() else model_dir.name)
    adapter_config = model_dir / "adapter_config.json"
    if adapter_config.is_file():
        base = adapter_base(adapter_config)
        base_key = f"{adapter_config}: base_model_name_or_path"
        recorded = None
        try:
            base_dir = resolve_model_path(base, base_key)
        except SftlabError:
            if served_base is None or Path(base).expanduser().exists():  # there, but not a model directory
                raise
            base_dir, recorded = served_base, base
        check_adapter_weights(model_dir)
        raw = read_json(adapter_config)
        task = raw.get("task_type") if isinstance(raw, dict) else None
        return ModelSource(label, model_dir, base_dir, adapter_dir=model_dir, template=template,
                           task_type=task if isinstance(task, str) else None, base_key=base_key,
                           recorded_base=recorded)
    if not (model_dir / "config.json").is_file():
        raise SftlabError(f"{path}: not a model directory (no config.json or adapter_config.json), nor a run dir with model/")
    return ModelSource(label, model_dir, model_dir, template=template, base_key=key)


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapter_weights(adapter_dir: Path) -> Path:
    """The adapter's weights file; a one-line SftlabError when there is none or a safetensors file is cut short (an
    adapter copied or saved incompletely), before PEFT would fail with a traceback."""
    from sftlab.models.weights import safetensors_complete

    found = [adapter_dir / name for name in ADAPTER_WEIGHTS if (adapter_dir / name).is_file()]
    if not found:
        raise SftlabError(f"{adapter_dir}: adapter_config.json but no {ADAPTER_WEIGHTS[0]}; the adapter was not saved "
                          "completely (an interrupted run or copy?)")
    weights = found[0]
    if weights.suffix == ".safetensors" and not safetensors_complete(weights):
        raise SftlabError(f"{weights}: not a complete safetensors file ({weights.stat().st_size} bytes); the adapter "
                          "was not saved completely (an interrupted run or copy?)")
    return weights


def load_served(path: str | Path, adapters: dict[str, str] | None = None, dtype: str = "float32",
                name: str | None = None, key: str = "MODEL", trust_remote_code: bool = False,
                trust_key: str = "--trust-remote-code") -> ServedModel:
    """Load the model at `path` in `dtype` (or `serving_dtype`'s choice for auto) and attach every adapter in
    `adapters` (served name -> dir) to its base; errors about `path` name `key`, the argument or option that gave
    it (`MODEL` for the commands whose model is positional, `--model` for the policy commands). Code shipped with
    the model runs only with `trust_remote_code`; without it, the error names `trust_key` (the command's flag)."""
    dtype = serving_dtype(dtype)
    source = describe_source(path, name, key)
    extra = _extra_adapters(source, adapters or {})
    for served in (source, *extra.values()):
        _refuse_classifier(served)
    record = _four_bit_record(source, extra, dtype)
    _note_substituted_bases(extra, key)
    load = _Loader(source, key, trust_remote_code, trust_key)
    tokenizer = load.tokenizer()
    served_adapters: dict[str, str | None] = {source.name: None}
    attach = [(source.name, source.adapter_dir)] if source.adapter_dir else []
    attach += [(label, adapter.adapter_dir) for label, adapter in extra.items()]
    fit = [directory for _, directory in attach]  # the base's embeddings resized to an adapter's added tokens
    checked = None if extra else tokenizer  # with --adapters, checked once the vocabulary's adapter is known
    if record is None:
        model = load.model(dtype, "sft", tokenizer=checked, adapters=fit)
    else:
        from sftlab.models.nf4 import load_as_trained

        model = load_as_trained(source.base_dir, record, trust_remote_code=trust_remote_code,
                                key=source.base_key, trust_key=trust_key, tokenizer=checked, adapters=fit)
    template = source.template
    if extra:
        tokenizer, template = _vocabulary_tokenizer(model, tokenizer, template, extra, trust_remote_code, trust_key,
                                                    source.base_dir)
    if attach:
        from peft import PeftModel

        from sftlab.models.adapter_vocab import quiet_saved_copies

        if record is None:
            _note_four_bit_adapters(attach)
        # PEFT's own names are ours, not the served ones: a served name is a directory name, and PEFT refuses names
        # with a dot (`exp1.v2`) or equal to a module attribute (`train`, `half`) as module keys
        internal = {label: f"sftlab_adapter_{index}" for index, (label, _) in enumerate(attach)}
        first_name, first_dir = attach[0]
        with quiet_saved_copies():
            model = PeftModel.from_pretrained(model, str(first_dir), adapter_name=internal[first_name],
                                              is_trainable=False)
            for label, directory in attach[1:]:
                model.load_adapter(str(directory), adapter_name=internal[label], is_trainable=False)
        served_adapters.update(internal)
    model.eval()
    return ServedModel(model, tokenizer, source.name, served_adapters, template, source.base_dir)


def _extra_adapters(source: ModelSource, adapters: dict[str, str]) -> dict[str, ModelSource]:
    """The `--adapter` sources of a served model: each a PEFT adapter directory on the served base, under a name
    the served model does not use."""
    extra = {label: describe_source(value, label, f"--adapter {label}", served_base=source.base_dir)
             for label, value in adapters.items()}
    if source.name in extra:
        raise SftlabError(f"--adapter {source.name}: the name is already used by the served model")
    for label, adapter in extra.items():
        if adapter.adapter_dir is None:
            raise SftlabError(f"--adapter {label}={adapters[label]}: not a PEFT adapter directory "
                              "(no adapter_config.json)")
        if adapter.base_dir.resolve() != source.base_dir.resolve():
            raise SftlabError(f"--adapter {label}: its base {adapter.base_dir} differs from the served base "
                              f"{source.base_dir}")
    return extra


def _vocabulary_tokenizer(model, tokenizer, template: str, extra: dict[str, ModelSource], trust: bool,
                          trust_key: str, base_dir: Path):
    """(tokenizer, template) for a base with `--adapter`s: where an extra adapter's added tokens resized the base
    (`sftlab.models.adapter_vocab.fit_vocabulary`) and its directory holds the tokenizer it trained with, that
    tokenizer and the adapter's template (its own chat template under auto) serve every name, since the added ids
    mean nothing to the base's tokenizer; else `tokenizer` and `template`. Checked against the resized rows."""
    from sftlab.config.schema import ModelConfig
    from sftlab.models.adapter_vocab import check_fitted_tokenizer, vocabulary_adapter
    from sftlab.models.load import has_tokenizer_files, load_tokenizer
    from sftlab.models.weights import guard_vocabulary

    directory = vocabulary_adapter(model)
    for label, adapter in extra.items():
        if directory is not None and adapter.adapter_dir == directory and has_tokenizer_files(directory):
            own = ModelConfig(path=str(base_dir), tokenizer=str(directory), trust_remote_code=trust)
            tokenizer = load_tokenizer(own, f"--adapter {label}", trust_key)  # not path=: its base may be elsewhere
            template = adapter.template
    check_fitted_tokenizer(model, tokenizer)
    guard_vocabulary(model, tokenizer, ModelConfig(path=str(base_dir)))  # as load_model guards it
    return tokenizer, template


@dataclass
class _Loader:
    """Loads a source's tokenizer (the adapter's own, else its base's) and base model, with errors naming `key` (the
    argument that gave the source) or the adapter's base_model_name_or_path, and custom code run only with `trust`."""

    source: ModelSource
    key: str
    trust: bool
    trust_key: str

    def tokenizer(self):
        from sftlab.config.schema import ModelConfig
        from sftlab.models.load import has_tokenizer_files, load_tokenizer

        own = has_tokenizer_files(self.source.model_dir)
        directory, key = (self.source.model_dir, self.key) if own else (self.source.base_dir, self.source.base_key)
        return load_tokenizer(ModelConfig(path=str(directory), trust_remote_code=self.trust), key, self.trust_key)

    def model(self, dtype: str, stage: str, **kwargs):
        from sftlab.config.schema import ModelConfig
        from sftlab.models.load import load_model

        cfg = ModelConfig(path=str(self.source.base_dir), dtype=dtype, trust_remote_code=self.trust)
        return load_model(cfg, stage, key=self.source.base_key, trust_key=self.trust_key, **kwargs)


def _refuse_classifier(source: ModelSource) -> None:
    """A one-line SftlabError for a classifier (a classification adapter, or a full model saved as one: a cls run's
    model/, its export), which has a head over labels and no text to generate (loaded as a causal LM, a decoder
    classifier got a random lm_head and generated noise)."""
    if source.adapter_dir is None:
        _refuse_full_classifier(source.model_dir)
    if source.task_type != "SEQ_CLS":
        return
    from sftlab.models.trained import trained_labels

    labels = trained_labels(source.adapter_dir)
    named = f"labels {', '.join(labels)}" if labels else "labels not recorded"
    raise SftlabError(f"{source.adapter_dir}: a classification LoRA adapter ({named}), not a text generator; "
                      f"`sftlab export RUN --merge OUT` writes it as a classifier with these labels")


def _refuse_full_classifier(model_dir: Path) -> None:
    """SftlabError naming the class and labels when `model_dir`'s config.json is a sequence classifier's."""
    from sftlab.io import read_json

    raw = read_json(model_dir / "config.json")
    raw = raw if isinstance(raw, dict) else {}
    classes = [str(name) for name in raw.get("architectures") or [] if str(name).endswith("ForSequenceClassification")]
    if classes:
        labels = raw.get("id2label") if isinstance(raw.get("id2label"), dict) else {}
        named = ", ".join(str(labels[key]) for key in sorted(labels, key=lambda key: int(key)))
        named = f", labels {named}" if named else ""  # transformers leaves default labels (LABEL_0, ...) out
        raise SftlabError(f"{model_dir}/config.json: a classifier ({classes[0]}{named}), not a text "
                          "generator; `sftlab eval MODEL --task labels` scores it")


def load_classifier_adapter(path: str | Path, dtype: str = "float32", key: str = "MODEL",
                            trust_remote_code: bool = False, trust_key: str = "--trust-remote-code"):
    """(model, tokenizer, labels) for a classification LoRA adapter (a run dir, RUN/model, RUN/best or a checkpoint):
    its base loaded with a head over the labels it trained with, in head-row order, and the adapter attached. A
    one-line SftlabError when the labels are not recorded (an adapter saved without sftlab_labels.json, away from
    its run's data_stats.json). `key`, `trust_remote_code` and `trust_key` as for `load_served`."""
    from peft import PeftModel

    from sftlab.models.trained import trained_labels

    source = describe_source(path, key=key)
    if source.task_type != "SEQ_CLS":
        raise SftlabError(f"{path}: not a classification LoRA adapter (adapter_config.json task_type SEQ_CLS)")
    labels = trained_labels(source.adapter_dir)
    if not labels:
        raise SftlabError(f"{source.adapter_dir}: a classification adapter whose label names are not recorded (no "
                          "sftlab_labels.json, and no data_stats.json of its run beside it); write them, in its head's "
                          'row order, into its sftlab_labels.json as {"labels": [...]}')
    load = _Loader(source, key, trust_remote_code, trust_key)
    tokenizer = load.tokenizer()
    record = _four_bit_record(source, {}, serving_dtype(dtype))
    if record is None:
        base = load.model(serving_dtype(dtype), "cls", label_names=labels, tokenizer=tokenizer,
                          adapters=[source.adapter_dir])
    else:  # a QLoRA classifier: on its 4-bit base as it trained, as `load_served` serves a QLoRA adapter
        from sftlab.models.nf4 import load_as_trained

        base = load_as_trained(source.base_dir, record, "cls", trust_remote_code, label_names=labels,
                               tokenizer=tokenizer, key=source.base_key, trust_key=trust_key,
                               adapters=[source.adapter_dir])
    from sftlab.models.adapter_vocab import quiet_saved_copies

    with quiet_saved_copies():
        model = PeftModel.from_pretrained(base, str(source.adapter_dir), is_trainable=False).eval()
    return model, tokenizer, labels


def serving_dtype(dtype: str) -> str:
    """The weights' dtype for `dtype`: `auto` is bfloat16 where this machine runs bf16 matmuls in hardware (a GPU
    with bf16, a CPU with AMX or AVX-512 BF16: `sftlab.train.precision.machine_precision`), else float32."""
    if dtype != "auto":
        return dtype
    from sftlab.train.precision import machine_precision

    return "bfloat16" if machine_precision() == "bf16" else "float32"


def _four_bit_record(source: ModelSource, extra: dict[str, ModelSource], dtype: str) -> dict | None:
    """The served adapter's `sftlab_qlora.json` (None: not a QLoRA adapter, the base loads in `dtype`); for a QLoRA
    adapter, SftlabError on a `dtype` other than float32 or an extra adapter not trained on the same 4-bit base."""
    from sftlab.models.nf4 import RECORD, read_record

    record = read_record(source.adapter_dir) if source.adapter_dir else None
    if record is None:
        return None
    if dtype != "float32":
        raise SftlabError(f"--dtype {dtype}: {source.name} is a QLoRA adapter, served on its base loaded in 4-bit as "
                          f"it trained (computing in {record['compute_dtype']}); leave --dtype out")
    for key, adapter in extra.items():
        if read_record(adapter.adapter_dir) != record:
            raise SftlabError(f"--adapter {key}: the served model {source.name} runs on a 4-bit (NF4) base, and this "
                              f"adapter was not trained on it ({RECORD} missing or different)")
    return record


def _note_substituted_bases(extra: dict[str, ModelSource], key: str) -> None:
    """A stderr line for each extra adapter whose recorded base is not on this machine and which runs on the served
    base in its place (`describe_source`): nothing checks that the two are the same model."""
    import sys

    for label, adapter in extra.items():
        if adapter.recorded_base is not None:
            print(f"note: --adapter {label}: its base {adapter.recorded_base!r} (adapter_config.json "
                  f"base_model_name_or_path) is not on this machine; it runs on {key}'s base {adapter.base_dir}",
                  file=sys.stderr)


def _note_four_bit_adapters(attach: list[tuple[str, Path]]) -> None:
    """A stderr line for each adapter trained on a 4-bit (QLoRA) base attached to a full-precision base (an extra
    `--adapter` of a served model that is not a QLoRA adapter)."""
    import sys

    from sftlab.models.nf4 import read_record

    for name, directory in attach:
        if read_record(directory) is not None:
            print(f"note: adapter {name} was trained on a 4-bit (NF4) base and runs here on the full-precision base, "
                  f"so its answers can differ slightly from the trained model's; `sftlab export RUN --merge OUT` "
                  f"merges it into the dequantised base it trained against", file=sys.stderr)
