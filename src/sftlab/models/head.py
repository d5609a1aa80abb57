"""A sequence classifier loaded for the data's labels, and one run-log line on what became of its head.

    model = load_classifier(AutoModelForSequenceClassification, directory, raw, kwargs)   # sftlab.models.load
    model.sftlab_head_line     # set when the head is new, re-initialised or reordered; `sftlab train` logs it

`kwargs` name the data's labels in `id2label` (`data.labels`, else the labels seen in training, sorted); `raw` is
the checkpoint's config.json, whose `id2label` names the rows of the head it was saved with (a head saved without
names has transformers' placeholders LABEL_0, LABEL_1, ..., which stand for the labels 0, 1, ... of data whose
labels are those integers). The head's label layer (its weights with one row per label) is then:

- new, where the checkpoint has no head (a base encoder, a causal LM): initialised by transformers;
  'classification head: classifier.bias, classifier.weight newly initialised (model.path has no classification head)'.
- kept as saved, where the labels are the data's in the data's order; nothing is said.
- kept with its rows permuted, where the labels are the data's in another order: each label keeps the row it was
  trained with, so the model predicts what it predicted before; 'classification head: score.weight kept, its rows
  reordered to the data's labels (...)'.
- re-initialised as transformers initialises a new head, where the labels differ in count
  (`ignore_mismatched_sizes=True`) or names: 'classification head: score.weight re-initialised (model.path's head
  has 3 labels: a, b, c; the data has 5: a, b, c, d, e)'. Where the data's labels are some of the head's, the line
  adds that `data.labels` listing the head's labels keeps it.

transformers' multi-line LOAD REPORT is held back when the head is all it is about. Base-model weights that are
missing or unused let it through as transformers writes it; a base-model weight whose shape differs from the
model's is a one-line SftlabError naming model.path (`load_checked` checks any other model, a causal LM, so).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from sftlab.errors import SftlabError

_SHOWN = 8  # label names shown in a line
HEAD_HAS = "model.path's head has"


def load_classifier(auto, directory: Path, raw: dict, kwargs: dict):
    """`auto.from_pretrained(directory, **kwargs)` with the head settled for `kwargs["id2label"]` (module docstring)."""
    names = [str(kwargs["id2label"][i]) for i in range(len(kwargs["id2label"]))]
    with held_load_report() as held:
        model, info = auto.from_pretrained(directory, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    in_base = _base_test(model)
    missing, unused = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())  # (name, checkpoint shape, model shape)
    wrong = [entry for entry in mismatched if in_base(entry[0])]
    if wrong:
        raise SftlabError(mismatch_message(directory, wrong))
    if info.get("error_msgs") or any(in_base(name) for name in missing + unused):
        release(held)
        return model
    line = _settle_head(model, raw, names, missing, mismatched)
    if line is None:
        release(held)  # at most a report of unused weights outside the base model
    else:
        model.sftlab_head_line = line + _unused_note(unused) + ")"
    return model


def load_checked(auto, directory: Path, kwargs: dict):
    """`auto.from_pretrained(directory, **kwargs)`, a weight whose shape differs from the config's a one-line
    SftlabError (not transformers' LOAD REPORT and traceback); any other load report is logged as transformers
    would."""
    with held_load_report() as held:
        model, info = auto.from_pretrained(directory, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        raise SftlabError(mismatch_message(directory, mismatched))
    release(held)
    return model


def saved_labels(raw: dict) -> list[str]:
    """The label names of the head a config.json describes, in row order (transformers' placeholders when unnamed)."""
    id2label = raw.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return [str(id2label[key]) for key in sorted(id2label, key=int)]
    return [f"LABEL_{i}" for i in range(int(raw.get("num_labels") or 2))]


def _settle_head(model, raw: dict, names: list[str], missing: list[str], mismatched: list) -> str | None:
    """Reorder or re-initialise the head's label layer as the module docstring says; the line (without its closing
    parenthesis), or None when the head is kept as saved."""
    if missing and not mismatched:
        return f"classification head: {', '.join(missing)} newly initialised (model.path has no classification head"
    saved = saved_labels(raw)
    if mismatched:  # transformers re-initialised the weights whose row count is the number of labels
        count = mismatched[0][1][0]
        saved = saved if len(saved) == count else [f"LABEL_{i}" for i in range(count)]
        return _reinitialised_line(sorted({entry[0] for entry in mismatched} | set(missing)), saved, names)
    matched = _as_data_labels(saved, names)
    if matched == names:
        return None
    found = _label_layer(model, len(names))
    if found is None:  # no weight has a row per label: nothing to reorder or re-initialise
        return (f"classification head: kept as saved ({_labels(saved, HEAD_HAS)}; {_labels(names, 'the data has')}; "
                "no weight with one row per label found")
    prefix, layer = found
    keys = sorted(f"{prefix}.{name}" for name, _ in layer.named_parameters(recurse=False))
    if sorted(matched) == sorted(names):
        _reorder(layer, [matched.index(name) for name in names])
        return (f"classification head: {', '.join(keys)} kept, its rows reordered to the data's labels "
                f"(model.path's head has {', '.join(_shown(saved))}; the data has {', '.join(_shown(names))}")
    _reinitialise(model, layer)
    return _reinitialised_line(keys, saved, names)


def _reinitialised_line(keys: list[str], saved: list[str], names: list[str]) -> str:
    matched = _as_data_labels(saved, names)
    keep = ("; data.labels listing the head's labels keeps it" if set(names) < set(matched) else "")
    return (f"classification head: {', '.join(keys)} re-initialised ({_labels(saved, HEAD_HAS)}; "
            f"{_labels(names, 'the data has')}{keep}")


def _labels(names: list[str], lead: str) -> str:
    """'model.path's head has 3 labels: a, b, c'."""
    return f"{lead} {len(names)} labels: {', '.join(_shown(names))}"


def _shown(names: list[str]) -> list[str]:
    return names[:_SHOWN] + ([f"... ({len(names)} in all)"] if len(names) > _SHOWN else [])


def _as_data_labels(saved: list[str], names: list[str]) -> list[str]:
    """`saved`, with transformers' placeholders LABEL_0.. read as 0.. where the data's labels are such integers."""
    numbers = [str(i) for i in range(len(saved))]
    if saved == [f"LABEL_{i}" for i in range(len(saved))] and set(names) <= set(numbers):
        return numbers
    return saved


def _label_layer(model, count: int):
    """(name, module) of the head's label layer: the last module outside the base model with a weight of `count` rows
    (roberta's out_proj, not the dense layer before it); None when there is none."""
    in_base, found = _base_test(model), None
    for name, module in model.named_modules():
        if name and not in_base(name) and any(param.dim() and param.shape[0] == count
                                               for param in module.parameters(recurse=False)):
            found = (name, module)
    return found


def _reorder(layer, order: list[int]) -> None:
    """Permute the rows of `layer`'s weights: new row i is saved row order[i]."""
    import torch

    with torch.no_grad():
        for param in layer.parameters(recurse=False):
            param.copy_(param[order])


def _reinitialise(model, layer) -> None:
    """Initialise `layer` again, as transformers initialises a head that a checkpoint lacks (`_init_weights`)."""
    import torch

    for param in layer.parameters(recurse=False):
        param._is_hf_initialized = False  # transformers' initialisers skip weights it loaded
    layer._is_hf_initialized = False
    with torch.no_grad():
        model._init_weights(layer)


def _base_test(model):
    """A test of whether a weight name belongs to the base model: its first part is the base's prefix (`bert.`,
    `model.`) or one of its modules (a checkpoint saved without the prefix). Every name does when the model has no
    separate base, where a head cannot be told apart."""
    base = model.base_model
    if base is model:
        return lambda name: True
    inside = {model.base_model_prefix, *(name for name, _ in base.named_children())}
    return lambda name: name.split(".")[0] in inside


def _unused_note(unused: list[str]) -> str:
    """'; its lm_head.weight not used': the checkpoint's weights outside the base model that nothing loaded."""
    if not unused:
        return ""
    return "; its " + ", ".join(unused[:4]) + (f" and {len(unused) - 4} more" if len(unused) > 4 else "") + " not used"


def mismatch_message(directory: Path, wrong: list) -> str:
    name, saved, wanted = wrong[0]
    more = f" (and {len(wrong) - 1} more weights)" if len(wrong) > 1 else ""
    return (f"model.path {str(directory)!r}: weight {name} has shape {list(saved)} in the checkpoint but "
            f"{list(wanted)} in the model its config.json describes{more}; the weights do not fit the config")


@contextmanager
def held_load_report():
    """Hold the LOAD REPORT records transformers logs while loading (a list; released at once on an error)."""
    from transformers import modeling_utils

    held: list = []

    def hold(record) -> bool:
        if "LOAD REPORT" in str(record.msg):
            held.append(record)
            return False
        return True

    modeling_utils.logger.addFilter(hold)
    try:
        yield held
    except BaseException:
        modeling_utils.logger.removeFilter(hold)
        release(held)
        raise
    finally:
        modeling_utils.logger.removeFilter(hold)


def release(held: list) -> None:
    """Log held LOAD REPORT records as transformers would have."""
    from transformers import modeling_utils

    for record in held:
        modeling_utils.logger.handle(record)
