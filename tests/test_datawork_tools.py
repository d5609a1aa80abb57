"""sftlab data commands on tool-calling data: deduplication, leakage and `build validate` see tool calls, tool
results and the tools list (canonical JSON: key order and spacing do not matter); normalisation keeps JSON tool
results valid and leaves tool-call arguments and the tools list alone; filters and stats handle turns that hold
only tool calls (content "" or null), and such a turn's label names its calls (`tool:NAME`); augmentation leaves
the words of tool-call arguments alone in user turns; and every data command passes such data through
(docs/data.md)."""

from __future__ import annotations

import copy
import json

import pytest

from sftlab.cli import main
from sftlab.datawork.augment import RULE_METHODS, RuleAugmenter, augment_examples, protected_words
from sftlab.datawork.balance import balance_examples, check_labelled
from sftlab.datawork.clean import CleanOptions, clean_examples
from sftlab.datawork.dedup import DedupOptions, dedup_examples, example_hash, find_leaks
from sftlab.datawork.filters import FilterOptions, filter_examples, load_refusal_patterns
from sftlab.datawork.normalize import Normalizer
from sftlab.datawork.records import label_of, map_texts
from sftlab.datawork.report import preview
from sftlab.datawork.stats import compute_stats
from sftlab.datawork.validate import validate_file
from sftlab.errors import SftlabError

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
ARGS = {"city": "Paris", "days": 1}
RESULT = '{"temp": 21, "unit": "C"}'


def weather(arguments=None, result=RESULT, tools=TOOLS, content=None, answer="It is 21 degrees in Paris.",
            user="What is the weather in Paris today? I am going out for a long walk this afternoon.", src="t:1"):
    """user -> assistant tool call (content null by default) -> tool result -> answer (None: left out)."""
    call = {"type": "function", "function": {"name": "get_weather", "arguments": ARGS if arguments is None else arguments}}
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": content, "tool_calls": [call]}]
    if result is not None:
        messages.append({"role": "tool", "content": result})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages, **({"tools": tools} if tools else {}), "_src": src}


def _renamed(example: dict, name: str) -> dict:
    example["messages"][1]["tool_calls"][0]["function"]["name"] = name
    return example


def _two_calls(example: dict, swap: bool) -> dict:
    calls = example["messages"][1]["tool_calls"]
    calls.append({"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}})
    if swap:
        calls.reverse()
    return example


SEARCH = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}


OTHER_TOOLS = [{"type": "function", "function": {**TOOLS[0]["function"], "description": "Weather forecast for a city"}}]
DIFFERENT = {  # each differs from weather() in its tool data only
    "arguments": lambda: weather({"city": "Paris", "days": 2}, src="t:2"),
    "function name": lambda: _renamed(weather(src="t:2"), "get_forecast"),
    "tools schema": lambda: weather(tools=OTHER_TOOLS, src="t:2"),
    "no tools": lambda: weather(tools=None, src="t:2"),
    "order of the tools": lambda: (weather(tools=TOOLS + [SEARCH]), weather(tools=[SEARCH] + TOOLS, src="t:2")),
    "order of the calls": lambda: (_two_calls(weather(), False), _two_calls(weather(src="t:2"), True)),
    "tool result": lambda: weather(result='{"temp": -3, "unit": "C", "snow": "heavy, most roads closed tonight"}', src="t:2"),
}


@pytest.mark.parametrize("near", [0.8, None], ids=["exact+near", "exact"])
@pytest.mark.parametrize("variant", list(DIFFERENT))
def test_examples_differing_only_in_tool_data_are_not_duplicates(variant, near):
    second = DIFFERENT[variant]()
    first, second = second if isinstance(second, tuple) else (weather(), second)
    assert example_hash(first) != example_hash(second)
    kept, removed = dedup_examples([first, second], DedupOptions(near_threshold=near))
    assert kept == [first, second] and removed == []
    kept, removed = dedup_examples([first, second], DedupOptions(exact=False, near_threshold=0.8))  # near only
    assert kept == [first, second] and removed == []


def test_same_json_up_to_key_order_spacing_and_call_ids_is_an_exact_duplicate():
    first = weather()
    first["messages"][1]["tool_calls"][0]["id"] = "call_1"
    tools = [{"function": dict(reversed(list(TOOLS[0]["function"].items()))), "type": "function"}]
    second = weather('{ "days" : 1,\n  "city":"Paris" }', '{"unit":"C",\n   "temp":21}', tools=tools, content="",
                     src="t:2")
    second["messages"][1]["tool_calls"][0]["id"] = "call_987"
    second["messages"][2].update(name="get_weather", tool_call_id="call_987")
    kept, removed = dedup_examples([first, second], DedupOptions())
    assert kept == [first] and removed == [(second, "exact duplicate of t:1")]
    assert example_hash(first) == example_hash(second)


def test_near_duplicates_need_equal_tool_calls():
    first = weather()
    near = weather(user="What is the weather in Paris today? I am going out for a nice long walk this afternoon.", src="t:2")
    other_call = weather({"city": "Paris", "days": 2}, user=near["messages"][0]["content"], src="t:3")
    kept, removed = dedup_examples([first, near, other_call], DedupOptions(near_threshold=0.8))
    assert kept == [first, other_call]
    assert len(removed) == 1 and removed[0][1].startswith("near duplicate of t:1 (jaccard 0.")


def test_leakage_sees_tool_data():
    test_set = [weather(src="test:1")]
    train = [weather({"city": "Paris", "days": 2}, src="train:1"),                     # other arguments: no leak
             weather(tools=OTHER_TOOLS, src="train:2"),                                # other tools: no leak
             weather('{"days": 1, "city": "Paris"}', '{"unit": "C", "temp": 21}', src="train:3"),  # exact
             weather(user="What is the weather in Paris today? I am going out for a nice long walk this afternoon.",
                     src="train:4")]                                                    # near
    leaks = find_leaks(train, {"test": test_set}, DedupOptions(near_threshold=0.8))
    assert [(leak["train_src"], leak["kind"]) for leak in leaks] == [("train:3", "exact"), ("train:4", "near")]
    assert all(leak["eval_src"] == "test:1" for leak in leaks)
    kept, report = clean_examples(train, CleanOptions(), eval_sets={"test": copy.deepcopy(test_set)})
    assert [example["_src"] for example in kept] == ["train:1", "train:2"]
    removed = {kind: [item["src"] for item in group["examples"]] for kind, group in report.data["removed"].items()}
    assert removed == {"near duplicate": ["train:4"], "leaks into test": ["train:3"]}  # in-set dedup runs first


# a JSON tool result whose plain-text normalisation would break it: &quot; and a full-width quote become ",
# <br> a line break; keys, numbers and the spacing between tokens must stay as they are
RAW_RESULT = ('{"note": "say &quot;hi&quot;<br>to ＡＢＣ", "q": "ｗｉｄｅ＂quote", "ｋｅｙ" : [1,  2.50],\n'
              ' "html": "<b>bold</b>   text", "n": null}')
NORMALISED_RESULT = ('{"note": "say \\"hi\\"\\nto ABC", "q": "wide\\"quote", "ｋｅｙ" : [1,  2.50],\n'
                     ' "html": "bold text", "n": null}')
RAW_ARGS = {"query": "ＡＢＣ &amp; <b>x</b>   y", "ｋ": "  spaced  "}


def test_normalisation_keeps_json_tool_results_valid_and_leaves_arguments_and_tools_alone():
    normalizer = Normalizer()
    with pytest.raises(ValueError):
        json.loads(normalizer(RAW_RESULT))  # what normalising the result as plain text would do
    tools = [{"type": "function", "function": {"name": "search", "description": "Ｓｅａｒｃｈ &amp; <b>find</b>"}}]
    example = weather(RAW_ARGS, RAW_RESULT, tools=tools, answer="Ｄｏｎｅ &amp; <i>ok</i>")
    example["messages"].insert(3, {"role": "tool", "content": "plain ＡＢＣ &amp; <i>text</i>  result"})
    original = copy.deepcopy(example)
    out = map_texts(example, normalizer)
    assert example == original  # the input is untouched
    assert out["messages"][2]["content"] == NORMALISED_RESULT
    assert json.loads(out["messages"][2]["content"]) == {"note": 'say "hi"\nto ABC', "q": 'wide"quote', "ｋｅｙ": [1, 2.5],
                                                         "html": "bold text", "n": None}
    assert out["messages"][3]["content"] == "plain ABC & text result"  # a plain-text result: normalised whole
    assert out["messages"][4]["content"] == "Done & ok"
    assert out["messages"][1] == original["messages"][1]  # content null and the arguments unchanged
    assert out["tools"] == tools
    unchanged = '{"temp" : 21.0, "unit": "\\u00b0C"}\n'  # nothing to normalise in the strings: same bytes
    assert map_texts(weather(result=unchanged), normalizer)["messages"][2]["content"] == unchanged


class WordTokenizer:
    """Counts whitespace-separated words (enough for the token filters)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_filters_keep_a_turn_with_only_tool_calls_and_count_its_calls():
    call_only = weather(result=None, answer=None)  # it teaches the call: its last assistant turn has content null
    options = FilterOptions(languages=["zh"], refusal_patterns=load_refusal_patterns())
    kept, removed = filter_examples([call_only], options)
    assert kept == [call_only] and removed == []
    # '{"arguments": {"city": "Paris", "days": 1}, "name": "get_weather"}' is 7 words
    assert filter_examples([call_only], FilterOptions(min_tokens=7), WordTokenizer())[0] == [call_only]
    assert filter_examples([call_only], FilterOptions(max_tokens=6), WordTokenizer())[1] == [
        (call_only, "too long (7 > 6 tokens)")]
    text_and_call = weather(content="Let me check.", result=None, answer=None)
    assert filter_examples([text_and_call], FilterOptions(max_tokens=9), WordTokenizer())[1] == [
        (text_and_call, "too long (10 > 9 tokens)")]
    relayed = weather(result="The weather in Paris is sunny with 21 degrees.",
                      answer="The weather in Paris is sunny with 21 degrees.")  # passes the tool result on: kept
    echo = weather(answer="What is the weather in Paris today?", src="t:2")  # repeats the user turn: removed
    assert filter_examples([relayed, echo], FilterOptions()) == ([relayed], [(echo, "response repeats the prompt")])
    empty = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}], "_src": "e:1"}
    assert filter_examples([empty], FilterOptions())[1] == [(empty, "empty response")]


LONG_ENGLISH = ("sunny with a light wind from the north west and no rain expected in the city centre during the "
                "afternoon or the evening, visibility good, air quality moderate, pollen count low for most areas")


def test_stats_languages_use_natural_text_and_lengths_include_tool_calls_and_tools():
    chinese = weather({"city": "Beijing"}, json.dumps({"temperature": 21, "condition": LONG_ENGLISH}),
                      user="北京今天天气怎么样？", answer="北京今天晴，二十一度。")
    call_only = weather(result=None, answer=None, src="t:2")
    stats, lengths = compute_stats([chinese, call_only])
    assert stats["languages"] == {"zh": 1, "en": 1}
    tools = json.dumps(TOOLS, ensure_ascii=False, sort_keys=True)
    call = json.dumps({"name": "get_weather", "arguments": ARGS}, ensure_ascii=False, sort_keys=True)
    result = json.dumps({"temperature": 21, "condition": LONG_ENGLISH})
    assert lengths["prompt"] == [len("北京今天天气怎么样？") + 1 + len(result) + 1 + len(tools),
                                 len(call_only["messages"][0]["content"]) + 1 + len(tools)]
    assert lengths["response"] == [len("北京今天晴，二十一度。"), len(call)]
    assert stats["duplicates"]["exact"] == 0 and stats["duplicates"]["near"] == 0


def test_null_content_passes_through_the_python_api():
    examples = [weather(src="t:1"), weather({"city": "Lyon"}, src="t:2"),
                weather({"city": "Oslo"}, result=None, answer=None, src="t:3")]
    kept, report = clean_examples(copy.deepcopy(examples), CleanOptions(redact_pii=["email"]),
                                  eval_sets={"test": [weather({"city": "Rome"}, src="test:1")]})
    assert kept == examples and report.data["after"] == 3
    assert "get_weather" in preview(examples[0]) and "null" not in preview(examples[0])
    new = augment_examples(examples, RuleAugmenter({}, rate=0.5, seed=0), ["swap"])
    assert len(new) == 3 and all(n["messages"][1:] == e["messages"][1:] for n, e in zip(new, examples))
    balanced, _ = balance_examples(examples[:2] + [weather(answer="rain", src="t:4")], "oversample")
    assert len(balanced) == 4 and all(e["messages"][1]["content"] is None for e in balanced)


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _public(example: dict) -> dict:
    return {key: value for key, value in example.items() if key != "_src"}


def test_clean_cli_end_to_end(tmp_path, capsys):
    rows = [_public(weather(result=RAW_RESULT)),
            _public(weather({"city": "Lyon", "days": 1})),                             # other arguments: kept
            _public(weather('{"days":1, "city" : "Paris"}', RAW_RESULT, content="")),  # duplicate of line 1
            _public(weather({"city": "Oslo"}, result=None, answer=None))]              # only a tool call: kept
    _write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["data", "clean", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")]) == 0
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(written) == 3
    assert written[0]["messages"][2]["content"] == NORMALISED_RESULT
    assert written[0]["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": ARGS}}]}
    assert written[1] == {**rows[1], "messages": [*rows[1]["messages"][:1], {**rows[1]["messages"][1], "content": ""},
                                                 *rows[1]["messages"][2:]]}
    assert written[2]["messages"][-1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert all(row["tools"] == TOOLS for row in written)
    report = json.loads((tmp_path / "out.report.json").read_text(encoding="utf-8"))
    assert report["before"] == 4 and report["after"] == 3
    assert report["sections"]["normalisation"]["changed_examples"] == 2  # lines 1 and 3 (the result)
    (removed,) = report["removed"]["exact duplicate"]["examples"]
    assert removed["src"].endswith("in.jsonl:3") and removed["why"].endswith("in.jsonl:1")
    assert '{"arguments": {"city": "Paris", "days": 1}, "name": "get_weather"}' in removed["text"]
    assert "exact duplicate" in capsys.readouterr().out


def test_every_data_command_passes_tool_data_with_null_content(tmp_path, capsys):
    rows = [_public(weather(answer="sunny")), _public(weather({"city": "Lyon"}, answer="sunny")),
            _public(weather({"city": "Oslo"}, answer="rain")), _public(weather({"city": "Rome"}, answer="rain")),
            _public(weather({"city": "Bern"}, result=None, answer=None))]
    source = tmp_path / "in.jsonl"
    _write_jsonl(source, rows)
    assert main(["data", "build", "validate", str(source)]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    twin = tmp_path / "val.jsonl"  # a copy: the input itself is refused as an --eval file
    _write_jsonl(twin, rows)
    assert main(["data", "clean", str(source), str(tmp_path / "clean.jsonl"), "--eval", str(twin),
                 "--keep-leaks"]) == 0
    capsys.readouterr()
    assert len((tmp_path / "clean.jsonl").read_text(encoding="utf-8").splitlines()) == 5
    assert main(["data", "stats", str(source)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["duplicates"]["exact"] == 0 and stats["response_length"]["min"] > 0
    assert main(["data", "augment", str(source), str(tmp_path / "aug.jsonl"), "--methods", "swap", "--rate", "0.5"]) == 0
    augmented = [json.loads(line) for line in (tmp_path / "aug.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(augmented) == 10 and all(row["tools"] == TOOLS and row["messages"][1]["tool_calls"] for row in augmented)
    assert main(["data", "balance", str(source), str(tmp_path / "bal.jsonl"), "--method", "oversample"]) == 0
    balanced = [json.loads(line) for line in (tmp_path / "bal.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(balanced) == 6 and all(row["messages"][1]["tool_calls"] for row in balanced)  # line 5 twice
    report = json.loads((tmp_path / "bal.report.json").read_text(encoding="utf-8"))["sections"]["balance"]
    assert report["before"] == {"rain": 2, "sunny": 2, "tool:get_weather": 1}  # line 5 ends with a call
    assert main(["data", "build", "convert", str(source), str(tmp_path / "share.jsonl"), "--to", "sharegpt"]) == 0
    turns = json.loads((tmp_path / "share.jsonl").read_text(encoding="utf-8").splitlines()[0])["conversations"]
    assert [turn["from"] for turn in turns] == ["human", "function_call", "observation", "gpt"]


def test_augment_eval_check_sees_tool_calls(tmp_path, capsys):
    _write_jsonl(tmp_path / "in.jsonl", [_public(weather())])
    _write_jsonl(tmp_path / "other_call.jsonl", [_public(weather({"city": "Lyon"}))])
    _write_jsonl(tmp_path / "same.jsonl", [_public(weather())])
    counts = {}
    for name in ("other_call", "same"):
        assert main(["data", "augment", str(tmp_path / "in.jsonl"), str(tmp_path / f"{name}.out.jsonl"), "--methods",
                     "swap", "--rate", "0.1", "--copies", "3", "--eval", str(tmp_path / f"{name}.jsonl")]) == 0
        counts[name] = len((tmp_path / f"{name}.out.jsonl").read_text(encoding="utf-8").splitlines())
    assert counts == {"other_call": 4, "same": 1}  # the swapped copies are near matches only of the same tool call


def test_validate_sees_tool_data_in_duplicates(tmp_path, capsys):
    rows = [_public(weather()), _public(weather({"city": "Lyon", "days": 1})),
            _public(weather('{"days": 1, "city": "Paris"}', '{"unit": "C", "temp": 21}', content=""))]
    _write_jsonl(tmp_path / "v.jsonl", rows)
    problems, count = validate_file(tmp_path / "v.jsonl")
    assert count == 3 and [(p.src.rsplit("/", 1)[-1], p.kind, p.message.rsplit("/", 1)[-1]) for p in problems] == [
        ("v.jsonl:3", "duplicate", "v.jsonl:1")]


def _with_search(example: dict) -> dict:
    """`example` whose first assistant turn also calls `search` after `get_weather`."""
    example["messages"][1]["tool_calls"].append({"type": "function", "function": {"name": "search",
                                                                                  "arguments": {"query": "Paris"}}})
    return example


def test_label_of_a_turn_with_only_tool_calls_names_its_calls():
    assert label_of(weather(result=None, answer=None)) == "tool:get_weather"
    two = _with_search(weather(result=None, answer=None))
    assert label_of(two) == "tool:get_weather+tool:search"
    two["messages"][1]["tool_calls"].reverse()
    assert label_of(two) == "tool:search+tool:get_weather"  # in the order of the calls
    assert label_of(weather(content=" \n", result=None, answer=None)) == "tool:get_weather"  # spaces are no text
    assert label_of(weather(content=" Let me check. ", result=None, answer=None)) == "Let me check."  # text wins
    assert label_of(weather(answer=" sunny ")) == "sunny"  # the last assistant turn: the answer after the result
    silent = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}], "_src": "e:1"}
    assert label_of(silent) == "" and label_of({"messages": [{"role": "user", "content": "hi"}]}) == ""
    check_labelled([weather(answer="sunny"), weather(result=None, answer=None)])
    with pytest.raises(SftlabError, match=r"^e:1: empty label \(for sft, the label is the last assistant turn's text, "
                                          r"or the names of its tool calls\)$"):
        check_labelled([weather(answer="sunny"), silent])


def test_balance_and_stats_count_conversations_ending_with_a_call_under_its_name():
    examples = [weather(answer="sunny", src=f"t:{i}") for i in range(3)] + [
        weather({"city": "Oslo"}, result=None, answer=None, src="t:8"),
        _with_search(weather({"city": "Rome"}, result=None, answer=None, src="t:9"))]
    balanced, report = balance_examples(examples, "oversample", seed=0)
    assert report["before"] == {"sunny": 3, "tool:get_weather": 1, "tool:get_weather+tool:search": 1}
    assert report["after"] == {"sunny": 3, "tool:get_weather": 3, "tool:get_weather+tool:search": 3}
    assert [e["_src"] for e in balanced].count("t:8") == 3 and [e["_src"] for e in balanced].count("t:9") == 3
    _, report = balance_examples(examples, "class_weight")
    assert report["class_weights"] == {"sunny": round(5 / 9, 6), "tool:get_weather": round(5 / 3, 6),
                                       "tool:get_weather+tool:search": round(5 / 3, 6)}
    stats, _ = compute_stats(examples, label_task=True)
    assert stats["labels"] == report["before"]


def test_stats_cli_label_task_names_the_calls(tmp_path, capsys):
    rows = [_public(weather(answer="sunny")), _public(weather({"city": "Oslo"}, result=None, answer=None)),
            _public(weather({"city": "Rome"}, result=None, answer=None))]
    _write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["data", "stats", str(tmp_path / "in.jsonl"), "--label-task"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == {"tool:get_weather": 2, "sunny": 1}


# a synonym list that replaces every protected word of ASK when nothing protects it
SYNONYMS = {"paris": ["London"], "3": ["three"], "rain": ["drizzle"], "wind": ["breeze"], "weather": ["forecast"],
            "tell": ["show"], "next": ["coming"], "please": ["kindly"], "me": ["us"]}
ASK = "Weather in Paris? Tell me for the next 3 days, rain or wind, please."
ASK_ARGS = {"city": "paris", "days": 3, "filters": {"tags": ["Rain", "WIND"]}, "metric": True, "note": None}
KEPT = ["Paris?", "3", "rain", "wind,"]  # the words of ASK whose words occur in ASK_ARGS (case-insensitive)


def _kept(text: str) -> list[str]:
    return [word for word in text.split() if word.strip("?,.").lower() in ("paris", "3", "rain", "wind")]


def test_protected_words_are_the_words_and_numbers_of_tool_call_arguments():
    assert protected_words(weather(ASK_ARGS)) == {"paris", "3", "rain", "wind"}  # keys, booleans, nulls left out
    assert protected_words(weather({"city": "New York!", "ratio": 2.0, "n": [1.5]})) == {"new", "york", "2", "2.0", "1.5"}
    assert protected_words(weather('{"city": "Paris", "days": 1}')) == {"paris", "1"}  # arguments as JSON text
    assert protected_words(weather({"city": "北京市 朝阳区"})) >= {"北京市", "朝阳区"}
    assert protected_words({"messages": [{"role": "user", "content": "Paris"}]}) == frozenset()
    assert protected_words({"text": "Paris", "label": "city"}) == frozenset()


@pytest.mark.parametrize("method", RULE_METHODS)
def test_rule_methods_leave_the_words_of_tool_call_arguments_alone(method):
    protected = protected_words(weather(ASK_ARGS))
    for seed in range(5):
        augmenter = RuleAugmenter(SYNONYMS, rate=1.0, seed=seed)
        out = augmenter.apply(method, ASK, augmenter.rng(seed), protected)
        assert out != ASK and _kept(out) == KEPT  # changed, with every protected word still there, in order
        assert not {"London", "three", "drizzle", "breeze"} & set(out.replace(",", " ").split())
        if method in ("synonym", "swap"):  # one word for one word: each protected word stays in its place
            assert [out.split()[ASK.split().index(word)] for word in KEPT] == KEPT
        if method == "synonym":  # without protection the same augmenter replaces them
            assert _kept(augmenter.apply(method, ASK, augmenter.rng(seed))) == []


def test_augment_keeps_argument_words_and_never_edits_tool_data_or_other_turns():
    example = weather(ASK_ARGS, result='{"forecast": "weather in Paris for the next 3 days: rain, please take care"}',
                      user=ASK, answer="Rain in Paris for the next 3 days, please take an umbrella.")
    example["messages"].insert(0, {"role": "system", "content": "Tell me the weather, please."})
    original = copy.deepcopy(example)
    new = augment_examples([example], RuleAugmenter(SYNONYMS, rate=1.0, seed=0), list(RULE_METHODS), copies=3)
    assert example == original and {e["augmented"]["method"] for e in new} == set(RULE_METHODS)
    bodies = [json.dumps(e["messages"], sort_keys=True) for e in new]
    assert 4 <= len(new) <= 12 and len(set(bodies)) == len(bodies)  # up to 3 copies per method, never one twice
    for augmented in new:
        assert _kept(augmented["messages"][1]["content"]) == KEPT
        assert augmented["messages"][0] == original["messages"][0]  # the system turn
        assert augmented["messages"][2:] == original["messages"][2:]  # the call, its arguments, the result, the answer
        assert augmented["tools"] == original["tools"]
    zh = weather({"city": "北京"}, user="北京明天的天气怎么样？", answer="北京明天晴。")
    synonyms = {"北京": ["首都"], "天气": ["气候"], "明天": ["次日"]}
    (new_zh,) = augment_examples([zh], RuleAugmenter(synonyms, rate=1.0), ["synonym"])
    assert new_zh["messages"][0]["content"] == "北京次日的气候怎么样？"
