"""Class balance while training (`data.balance`): which stages can use which method, and the class weights
recorded in data_stats.json.

- `oversample` / `undersample` resample the training split's token rows by label
  (`sftlab.datawork.balance.resample_indices`; cls labels, or the last answer of each sft sample), after
  tokenisation dropped what does not fit, so they need labels: stage pt has none.
- `class_weight` weights the cross-entropy of a classification head (`train.stage: cls`); the loss of sft and pt
  is over tokens and would not use the weights, so the setting is refused there rather than ignored.
- `undersample` takes every class down to the smallest one's count and `oversample` copies samples of every class
  up to the largest one's; a label of the label set (`data.labels`) with no training sample (none in the data, or
  every one dropped by tokenisation as too long) would make the smallest count 0, or leave nothing to copy, so
  both refuse it, naming the label (`check_resample_labels`).
- `class_weight_report` is what a cls run records under `balance` in data_stats.json: scikit-learn's "balanced"
  weights (n_samples / (n_classes_present * count)) in the label set's order, 1.0 for a label with no training
  example: the weights the loss uses (`sftlab.train.setup`), rounded to 6 decimals.
"""

from __future__ import annotations

from sftlab.config import checks
from sftlab.datawork.balance import class_weights, distribution
from sftlab.errors import SftlabError


def check_balance_stage(balance: str, stage: str) -> None:
    """Fail in one line when `data.balance` cannot act on `stage`'s data or loss (the config's own check, for
    callers that built a config without validating it)."""
    try:
        checks.check_balance_stage(balance, stage)
    except ValueError as exc:
        raise SftlabError(str(exc)) from None


def check_resample_labels(method: str, labels: list[str], label_names: list[str], validation: list[str],
                          loaded: list[str] | None = None) -> None:
    """Fail when a label of the label set (`data.labels`) has no training sample to resample: undersampling to the
    smallest class would leave every class empty, and oversampling has nothing to copy, so the class would stay
    at 0 while the others grow. `labels` are the training samples' labels (the rows left after tokenisation
    when `loaded`, the labels of the examples before it, is given: a label they hold was dropped there)."""
    present = set(labels)
    absent = [name for name in label_names if name not in present]
    if not absent:
        return
    dropped = [name for name in absent if name in set(loaded or ())]
    held = [name for name in absent if name in set(validation) and name not in dropped]
    where = ""
    if held == absent:
        where = f" ({'it is' if len(held) == 1 else 'they are'} in the validation split only)"
    elif held or dropped:
        notes = [f"{_names(held, bare=True)} {'is' if len(held) == 1 else 'are'} in the validation split only"] if held else []
        if dropped:
            notes.append(f"tokenisation dropped every training sample of {_names(dropped, bare=True)} as longer than "
                         "train.max_length (see data.truncation)")
        where = f" ({'; '.join(notes)})"
    them = "it" if len(absent) == 1 else "them"
    effect = ("undersampling every class to the smallest one's count would leave them all empty" if method == "undersample"
              else f"oversampling has nothing to copy and {them} would train with 0 samples while the other classes grow")
    raise SftlabError(f"data.balance={method}: data.labels has {_names(absent)} with no training example{where}, so "
                      f"{effect}; drop {them} from data.labels, give {them} training examples (data.split=stratified "
                      f"keeps each label in both splits), or use data.balance=class_weight (stage cls) or none")


def _names(names: list[str], bare: bool = False) -> str:
    shown = ", ".join(repr(name) for name in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return shown if bare else ("label " if len(names) == 1 else "labels ") + shown


def class_weight_report(labels: list[str], label_names: list[str], seed: int) -> dict:
    """The `balance` entry of a class_weight run's data_stats.json (examples unchanged)."""
    counts = distribution(labels)
    return {"method": "class_weight", "seed": seed, "before": counts, "after": counts,
            "class_weights": dict(zip(label_names, class_weights(labels, label_names)))}
