"""A model.path that misses an embedded default's name by a typo says which name was meant (found running the walk
with `model.path=gemma-3-270M`, which said only `no such directory`); other missing paths keep the plain message."""

from __future__ import annotations

import pytest

from sftlab.errors import SftlabError
from sftlab.models.load import resolve_model_path


@pytest.mark.parametrize("typed, meant", [("gemma-3-270M", "gemma-3-270m"), ("gemma3-270m", "gemma-3-270m"),
                                          ("MiniLM", "minilm"), ("minilm2", "minilm")])
def test_a_near_miss_of_an_embedded_name_suggests_it(typed, meant, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no directory of that name here
    with pytest.raises(SftlabError) as caught:
        resolve_model_path(typed)
    assert str(caught.value) == (f"model.path {typed!r}: no such directory; did you mean {meant!r}? "
                                 f"(an embedded default: sftlab model pull {meant})")


def test_other_missing_paths_keep_the_plain_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in (str(tmp_path / "nope"), "nowhere"):
        with pytest.raises(SftlabError) as caught:
            resolve_model_path(path, key="model.tokenizer")
        assert str(caught.value) == f"model.tokenizer {path!r}: no such directory"
