"""The settings a saved model was trained with, read from its directory: the one reader behind `sftlab generate`,
`chat`, `serve`, `eval` and `export`.

    settings = trained_settings("runs/exp1/best")
    settings.template, settings.mask, settings.max_length    # "chatml", "assistant", 1024 (None: not known)

MODEL is a run's `model/`, `best/` or `checkpoints/step-N/`, a merged export, any model or adapter directory, or a
run directory, which stands for its `model/` (a directory with `model/` inside and no config.json of its own).

- template: MODEL's `sftlab_template.json` when it has one. It is written at save time from the resolved template
  (`auto` on a tokenizer without a chat template is recorded as `chatml`), so it is the most specific. Else the run
  config's `data.template` under `chat_files.trained_template`'s stage rule (sft: the template, default auto; pt:
  a named built-in only; cls: none). Else None.
- mask, max_length: the run config's `data.mask` and `train.max_length`; else None.
- columns: the run config's `data.columns` (canonical field -> file column) when it maps any; else None.

The run config is the first `config.yaml` that exists of: MODEL/config.yaml, MODEL/../config.yaml (RUN/model,
RUN/best; a run directory's own), and MODEL/../../config.yaml only when MODEL's parent is named `checkpoints`
(RUN/checkpoints/step-N). Nothing further up is read: a config.yaml two levels above any other directory belongs
to something else. A path that is not a directory (a hub name such as `gemma-3-270m`) has no settings.

Label names of a classification model (`trained_labels`): a full model's config.json has them (`id2label`), but a
LoRA adapter has only adapter_config.json, so sftlab writes them beside it as `sftlab_labels.json` (`{"labels":
[...]}`, in head-row order; `write_labels_record`, called for `model/`, `best/` and every checkpoint). An adapter
saved before that record existed takes them from its run's `data_stats.json` (`label_names`), found as the run config
is; else they are unknown (None).

A malformed `sftlab_template.json`, `sftlab_labels.json` or `config.yaml` (not JSON / YAML, not a mapping, a setting
of the wrong type) is a one-line SftlabError naming the file; nothing is skipped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.io import read_yaml_mapping
from sftlab.models.chat_files import read_template_record, trained_template

RUN_CONFIG = "config.yaml"
LABELS_RECORD = "sftlab_labels.json"
RUN_DATA_STATS = "data_stats.json"


@dataclass(frozen=True)
class TrainedSettings:
    """What a model directory says about its training; None where it says nothing."""

    template: str | None = None
    mask: str | None = None
    max_length: int | None = None
    config_file: Path | None = None  # the run config.yaml read, if any
    columns: dict | None = None  # data.columns of the run config, when it maps any column


def run_model_dir(directory: str | Path) -> Path | None:
    """`directory/model` when `directory` is a run directory (model/ inside, no config.json of its own), else None."""
    directory = Path(directory).expanduser()
    if (directory / "model").is_dir() and not (directory / "config.json").is_file():
        return directory / "model"
    return None


def run_config_file(model_dir: Path, name: str = RUN_CONFIG) -> Path | None:
    """The nearest run config.yaml (or other run file `name`) of `model_dir` (see the module docstring), or None."""
    candidates = [model_dir / name, model_dir.parent / name]
    if model_dir.parent.name == "checkpoints":
        candidates.append(model_dir.parent.parent / name)
    return next((path for path in candidates if path.is_file()), None)


def write_labels_record(directory: str | Path, model) -> list[str] | None:
    """Write `directory/sftlab_labels.json` for a PEFT sequence-classification adapter (its base config's `id2label`,
    in head-row order) and return the labels; nothing for any other model (a full model's config.json has them)."""
    from sftlab.io import atomic_write_json

    peft = getattr(model, "peft_config", None)
    task = getattr(next(iter(peft.values())), "task_type", None) if peft else None
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if str(getattr(task, "value", task)) != "SEQ_CLS" or not id2label:
        return None
    labels = [str(id2label[key]) for key in sorted(id2label, key=int)]
    atomic_write_json(Path(directory) / LABELS_RECORD, {"labels": labels})
    return labels


def trained_labels(directory: str | Path) -> list[str] | None:
    """The label names, in head-row order, of the classification adapter in `directory` (a run directory stands for
    its model/): its `sftlab_labels.json`, else its run's `data_stats.json`; None when neither names them."""
    from sftlab.io import read_json

    directory = Path(directory).expanduser()
    model_dir = run_model_dir(directory) or directory
    record = model_dir / LABELS_RECORD
    if record.is_file():
        raw = read_json(record)
        labels = raw.get("labels") if isinstance(raw, dict) else None
        if not isinstance(labels, list) or not labels or not all(isinstance(name, str) for name in labels):
            raise SftlabError(f"{record}: labels: expected a list of label names, got {labels!r}")
        return labels
    stats = run_config_file(model_dir, RUN_DATA_STATS) if model_dir.is_dir() else None
    raw = read_json(stats) if stats else None
    names = raw.get("label_names") if isinstance(raw, dict) else None
    if names is not None and not (isinstance(names, list) and names):
        raise SftlabError(f"{stats}: label_names: expected a list of label names, got {names!r}")
    return [str(name) for name in names] if names else None


def trained_settings(directory: str | Path) -> TrainedSettings:
    """The template, mask and max_length the model in `directory` was trained with (see the module docstring)."""
    directory = Path(directory).expanduser()
    model_dir = run_model_dir(directory) or directory
    if not model_dir.is_dir():
        return TrainedSettings()
    recorded = read_template_record(model_dir)
    config_file = run_config_file(model_dir)
    if config_file is None:
        return TrainedSettings(template=recorded)
    raw = _read_run_config(config_file)
    data, train = _group(raw, "data", config_file), _group(raw, "train", config_file)
    return TrainedSettings(template=recorded or trained_template(raw),
                           mask=_typed(data, "data", "mask", str, config_file),
                           max_length=_typed(train, "train", "max_length", int, config_file),
                           config_file=config_file, columns=_columns(data, config_file))


def _columns(data: dict, path: Path) -> dict | None:
    """`data.columns` as {canonical: column} of strings, None when it maps nothing."""
    value = data.get("columns")
    if not value:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SftlabError(f"{path}: data.columns: expected a mapping of field names to column names, got {value!r}")
    return dict(value)


def _read_run_config(path: Path) -> dict:
    raw = read_yaml_mapping(path, "a run config (a mapping of groups: model, data, ...)")
    _typed(_group(raw, "data", path), "data", "template", str, path)
    _typed(_group(raw, "train", path), "train", "stage", str, path)
    return raw


def _group(raw: dict, name: str, path: Path) -> dict:
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SftlabError(f"{path}: {name}: expected a mapping, got {type(value).__name__}")
    return value


def _typed(group: dict, name: str, key: str, kind: type, path: Path):
    value = group.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = "a whole number" if kind is int else "a string"
        raise SftlabError(f"{path}: {name}.{key}: expected {expected}, got {value!r}")
    return value
