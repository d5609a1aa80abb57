"""Class balance while training (`data.balance`): which stages can use which method, and the class weights
recorded in data_stats.json.

- `oversample` / `undersample` resample the training split by label (`sftlab.datawork.balance.balance_examples`;
  cls labels, or the last answer of sft examples), so they need labels: stage pt has none.
- `class_weight` weights the cross-entropy of a classification head (`train.stage: cls`); the loss of sft and pt
  is over tokens and would not use the weights, so the setting is refused there rather than ignored.
- `undersample` takes every class down to the smallest one's count; a label of the label set (`data.labels`)
  with no training example would make that count 0, so it is refused, naming the label.
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


def check_undersample_labels(labels: list[str], label_names: list[str], validation: list[str]) -> None:
    """Fail when undersampling to the smallest class would leave every class empty: a label of the label set
    (`data.labels`) that no training example has."""
    absent = [name for name in label_names if name not in set(labels)]
    if not absent:
        return
    held = [name for name in absent if name in set(validation)]
    if held == absent:
        where = f" ({'it is' if len(held) == 1 else 'they are'} in the validation split only)"
    elif held:
        where = f" ({_names(held)} {'is' if len(held) == 1 else 'are'} in the validation split only)"
    else:
        where = ""
    raise SftlabError(f"data.balance=undersample: data.labels has {_names(absent)} with no training example{where}, "
                      "so undersampling every class to the smallest one's count would leave them all empty; drop "
                      f"{'it' if len(absent) == 1 else 'them'} from data.labels, give {'it' if len(absent) == 1 else 'them'} "
                      "training examples (data.split=stratified keeps each label in both splits), or use "
                      "data.balance=oversample or class_weight")


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:5])
    return ("label " if len(names) == 1 else "labels ") + shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def class_weight_report(labels: list[str], label_names: list[str], seed: int) -> dict:
    """The `balance` entry of a class_weight run's data_stats.json (examples unchanged)."""
    counts = distribution(labels)
    return {"method": "class_weight", "seed": seed, "before": counts, "after": counts,
            "class_weights": dict(zip(label_names, class_weights(labels, label_names)))}
