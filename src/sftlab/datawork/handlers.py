"""Handlers of `sftlab data build|clean|augment|balance|stats|features` (parsers in sftlab.commands.data_work).

Each handler reads its inputs through `sftlab.data.formats`, refuses to write over an input file, writes its
outputs atomically and, beside every data output, a report `<name>.report.json` / `.report.md`.
"""

from __future__ import annotations

import json
from pathlib import Path

from sftlab.data.option_names import parse_columns
from sftlab.datawork.images import refuse_images
from sftlab.datawork.handler_io import (check_distinct, check_eval_files, finish, load_tokenizer_dir, read_eval_sets,
                                        read_input, run_config)
from sftlab.datawork.records import check_output_format, check_output_parent, load_valid_examples, save_examples
from sftlab.datawork.report import Report, report_paths, report_stem
from sftlab.errors import SftlabError


# ------------------------------------------------------------------------------------------------ build


def build_validate(args) -> int:
    from sftlab.datawork.validate import validate_file

    if args.report:
        for path in report_paths(args.report):
            check_distinct(path, args.input, what="--report", report=False)
    problems, rows = validate_file(args.input, args.format, args.stage, parse_columns(args.columns), args.id_field or None)
    for problem in problems:
        print(f"{problem.src}: {problem.kind}: {problem.message}")
    print(f"{args.input}: {rows} rows, {len(problems)} problem(s)")
    if args.report:
        report = Report("build validate", [args.input], before=rows)
        report.section("problems", [p.as_dict() for p in problems])
        report.finish(rows, []).write(args.report)
    return 1 if problems else 0


def build_convert(args) -> int:
    from sftlab.datawork.convert import convert_file

    check_distinct(args.output, args.input)
    check_output_format(args.output, args.to)
    notes: list[str] = []
    invalid: list[tuple[str, str]] | None = [] if args.drop_invalid else None
    count = convert_file(args.input, args.output, args.to, args.format, args.stage, parse_columns(args.columns), notes,
                         invalid)
    report = Report("build convert", [args.input], before=count + len(invalid or []))
    report.invalid_rows(invalid or [])
    report.section("conversion", {"from": args.format, "to": args.to})
    report.finish(count, [args.output]).write(report_stem(args.output))
    print(f"wrote {count} examples to {args.output} ({args.to})", *notes, sep="\n")
    return 0


def build_drafts(args) -> int:
    from sftlab.datawork.drafts import read_instructions, read_review, update_review, write_review
    from sftlab.datawork.generate import LocalGenerator, check_generation_options

    check_distinct(args.review, args.input, what="--review")
    check_output_parent(args.review)
    if Path(args.review).suffix.lower() not in (".jsonl", ".json"):
        raise SftlabError(f"--review {args.review}: the review file is JSON lines; name it REVIEW.jsonl")
    check_generation_options(args.max_new_tokens, args.batch_size, args.temperature)
    instructions = read_instructions(args.input, parse_columns(args.columns), args.id_field)
    existing = read_review(args.review)
    known = {record["id"] for record in existing}
    generator = None
    if any(item["id"] not in known for item in instructions):
        generator = LocalGenerator(args.model, args.max_new_tokens, args.batch_size, args.temperature, args.seed)
    records, summary = update_review(instructions, existing, generator, args.batch_size)
    write_review(args.review, records)
    report = Report("build drafts", [args.input, args.review], before=len(existing))
    report.section("review", summary)
    report.finish(len(records), [args.review]).write(report_stem(args.review))
    print(f"{args.review}: {summary['new_drafts']} new drafts, {summary['kept_from_review_file']} records kept; status {summary['status']}")
    return 0


def build_export(args) -> int:
    from sftlab.datawork.drafts import STATUSES, export_reviewed, read_review

    check_distinct(args.output, args.review)
    check_output_format(args.output, args.to)
    if not Path(args.review).is_file():
        raise SftlabError(f"review file not found: {args.review}")
    records = read_review(args.review)
    examples = export_reviewed(records)
    report = Report("build export", [args.review], before=len(records))
    for record in records:
        if record["status"] not in ("approved", "edited"):
            report.removed(f"status {record['status']}", {"text": record["instruction"], "_src": record["_src"]}, record["status"])
    report.section("status", {s: sum(1 for r in records if r["status"] == s) for s in STATUSES})
    return finish(report, args.output, examples, args.to)


def build_kb(args) -> int:
    from sftlab.data.formats import read_rows
    from sftlab.datawork.kb import build_pairs, load_templates

    check_distinct(args.output, args.input, args.templates)
    check_output_format(args.output, args.to)
    records = read_rows(args.input)
    pairs, details = build_pairs(records, load_templates(args.templates, args.lang), args.per_record, args.seed, args.id_field)
    report = Report("build kb", [args.input], before=len(records))
    report.section("knowledge_base", details)
    return finish(report, args.output, pairs, args.to)


# ------------------------------------------------------------------------------------------------ clean / augment


def clean(args) -> int:
    from sftlab.datawork.clean import CleanOptions, clean_examples
    from sftlab.datawork.dedup import DedupOptions
    from sftlab.datawork.filters import FilterOptions, load_refusal_patterns
    from sftlab.datawork.normalize import NormalizeOptions
    from sftlab.datawork.pii import parse_kinds

    check_eval_files(args)
    check_distinct(args.output, args.input, *(args.eval or []))
    check_output_format(args.output, args.to)
    redact_pii = None if args.redact_pii is None else parse_kinds(args.redact_pii, "--redact-pii")
    normalize = None if args.no_normalize else NormalizeOptions(
        nfkc=not args.no_nfkc, strip_html=not args.keep_html, t2s=args.t2s, cjk_spaces=args.cjk_spaces)
    refusals = [] if args.no_refusals else load_refusal_patterns(args.refusals)
    filters = FilterOptions(min_tokens=args.min_tokens, max_tokens=args.max_tokens,
                            languages=args.lang.split(",") if args.lang else None,
                            drop_prompt_repeats=not args.keep_prompt_repeats, refusal_patterns=refusals)
    dedup = DedupOptions(exact=not args.no_exact, near_threshold=None if args.no_near else args.near, ngram=args.ngram)
    options = CleanOptions(normalize=normalize, redact_pii=redact_pii, filters=filters, dedup=dedup,
                           drop_leaks=not args.keep_leaks)
    invalid: list[tuple[str, str]] | None = [] if args.drop_invalid else None
    examples = load_valid_examples(args.input, args.format, args.stage, parse_columns(args.columns), invalid)
    eval_sets = read_eval_sets(args)
    report = Report("clean", [args.input, *(args.eval or [])], before=len(examples) + len(invalid or []))
    report.invalid_rows(invalid or [])
    kept, report = clean_examples(examples, options, load_tokenizer_dir(args.tokenizer, args.config), eval_sets, report)
    return finish(report, args.output, kept, args.to)


def augment(args) -> int:
    from sftlab.datawork.augment import (RuleAugmenter, augment_examples, load_synonyms, paraphrase_examples,
                                         rejection_kind)
    from sftlab.datawork.dedup import DedupOptions, find_leaks
    from sftlab.datawork.generate import check_generation_options

    check_eval_files(args)
    check_distinct(args.output, args.input, *(args.eval or []))
    check_output_format(args.output, "jsonl")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise SftlabError(f"--methods {args.methods!r}: name at least one of synonym, swap, delete, insert, paraphrase")
    if "paraphrase" in methods:
        if not args.model:
            raise SftlabError("--methods paraphrase needs a local model: pass --model DIR")
        check_generation_options(args.max_new_tokens, args.batch_size, args.temperature)
    examples = read_input(args)
    synonyms = {}
    for lang in (["zh", "en"] if args.lang == "auto" and not args.synonyms else [args.lang]):
        synonyms.update(load_synonyms(args.synonyms, lang))
    rule_methods = [m for m in methods if m != "paraphrase"]
    new = augment_examples(examples, RuleAugmenter(synonyms, args.rate, args.seed), rule_methods, args.copies)
    report = Report("augment", [args.input, *(args.eval or [])], before=len(examples))
    if "paraphrase" in methods:
        from sftlab.datawork.generate import LocalGenerator

        generator = LocalGenerator(args.model, args.max_new_tokens, args.batch_size, args.temperature, args.seed)
        rejected: list = []
        new += paraphrase_examples(examples, generator, rejected)
        report.removed_all(rejected, rejection_kind)
    if args.eval:
        eval_sets = read_eval_sets(args)
        leaks = {leak["train_index"]: leak for leak in find_leaks(new, eval_sets, DedupOptions(near_threshold=args.near))}
        for index, leak in sorted(leaks.items()):
            report.removed("augmented copy matches an evaluation example", new[index], f"{leak['kind']} match of {leak['eval_src']}")
        new = [example for index, example in enumerate(new) if index not in leaks]
    report.section("augmentation", {"methods": methods, "rate": args.rate, "copies": args.copies, "seed": args.seed,
                                    "originals": len(examples), "augmented": len(new),
                                    "by_method": {m: sum(1 for e in new if e["augmented"]["method"] == m) for m in methods}})
    return finish(report, args.output, examples + new, "jsonl")


# ------------------------------------------------------------------------------------------------ balance / stats / features


def balance(args) -> int:
    from sftlab.datawork.balance import balance_examples, check_labelled, stratified_split

    check_distinct(args.output, args.input)
    if args.val_ratio and not args.val_out:
        raise SftlabError("--val-ratio needs --val-out FILE for the validation split")
    if args.val_out and not args.val_ratio:
        raise SftlabError(f"--val-out {args.val_out}: needs --val-ratio R (the share of each label to hold out)")
    if args.val_out:
        check_distinct(args.val_out, args.input, what="--val-out", report=False)
        for target in (args.output, *report_paths(report_stem(args.output))):
            if Path(args.val_out).resolve() == Path(target).resolve():
                raise SftlabError(f"--val-out {args.val_out}: is also written as {target} (OUT or its report); "
                                  "choose another path")
    if args.method == "smote":
        _check_smote_args(args)
    else:
        check_output_format(args.output, args.to)
    if args.val_out:
        check_output_format(args.val_out, args.to)
    examples = read_input(args)
    if args.method == "smote":
        refuse_images(examples, "--method smote embeds the texts only and would leave the images out of the "
                                "vectors; use oversample, undersample or class_weight")
    check_labelled(examples)
    report = Report("balance", [args.input], before=len(examples))
    validation = []
    if args.val_ratio:
        try:
            examples, validation = stratified_split(examples, args.val_ratio, args.seed)
        except SftlabError as exc:
            raise SftlabError(f"--val-ratio {args.val_ratio}: {exc}") from None
    if args.method == "smote":
        return _smote(args, examples, report, validation)
    balanced, details = balance_examples(examples, args.method, args.seed)
    report.section("balance", details | {"validation_examples": len(validation)})
    if args.val_ratio:  # written once balancing has succeeded, so a failure leaves no lone validation file
        save_examples(args.val_out, validation, args.to)
    return finish(report, args.output, balanced, args.to, [args.val_out] if validation else [])


def _smote(args, examples: list[dict], report: Report, validation: list[dict]) -> int:
    from sftlab.datawork.balance import distribution, embed_texts, save_npz, smote_vectors
    from sftlab.datawork.records import label_of, prompt_text

    labels = [label_of(e) for e in examples]
    arrays = smote_vectors(embed_texts([prompt_text(e) for e in examples], args.encoder), labels, args.seed)
    save_npz(args.output, arrays)
    if args.val_ratio:  # written once the vectors are, so a failure leaves no lone validation file
        save_examples(args.val_out, validation, args.to)
    names = arrays["label_names"].tolist()
    after = distribution([names[i] for i in arrays["y"].tolist()])
    report.section("balance", {"method": "smote", "seed": args.seed, "before": distribution(labels), "after": after,
                               "synthetic_vectors": int(arrays["synthetic"].sum()), "dim": int(arrays["X"].shape[1])})
    report.finish(len(arrays["y"]), [args.output] + ([args.val_out] if args.val_ratio else []))
    paths = report.write(report_stem(args.output))
    print(report.summary())
    print(f"  report {paths[1]}")
    return 0


def _check_smote_args(args) -> None:
    if not args.encoder:
        raise SftlabError("--method smote embeds texts with a local encoder: pass --encoder DIR")
    if not str(args.output).endswith(".npz"):
        raise SftlabError(f"--method smote writes vectors and labels; the output must end in .npz, got {args.output}")


def stats(args) -> int:
    from sftlab.datawork.stats import compute_stats, stats_notes, write_stats
    from sftlab.io import check_output_dir

    if args.max_length is not None and args.max_length < 1:
        raise SftlabError(f"--max-length {args.max_length}: must be at least 1")
    if args.out:
        check_output_dir(args.out, args.overwrite, inputs=(args.input, args.tokenizer, args.config))
        check_output_parent(args.out)
    examples = read_input(args)
    if args.tokenizer or args.config:
        refuse_images(examples, "--tokenizer/--config count tokens with a text chat template, while a "
                                "vision-language model's processor adds image tokens; run data stats without them "
                                "(lengths in characters), and see `sftlab data preview RUN.yaml` for tokens")
    if args.template and args.template != "auto":  # named as this command's option, before any work
        from sftlab.data.template_spec import load_builtin

        try:
            load_builtin(args.template)
        except SftlabError as exc:
            raise SftlabError(str(exc).replace("data.template:", "--template:", 1)) from None
    tokenizer = load_tokenizer_dir(args.tokenizer, args.config)
    max_length, template, mask = args.max_length, args.template, args.mask
    if args.config:
        cfg = run_config(args.config)
        max_length = max_length or cfg.train.max_length
        template, mask = template or cfg.data.template, mask or cfg.data.mask
    result, lengths = compute_stats(examples, tokenizer, max_length, template or "auto", mask or "assistant",
                                    args.label_task, None if args.no_near else args.near)
    if args.out:
        files = write_stats(result, lengths, args.out, args.overwrite)
        print(f"wrote {', '.join(files)} to {args.out}")
        print("".join(f"  {note}\n" for note in stats_notes(result, files)), end="")
    if args.json or not args.out:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def features(args) -> int:
    from sftlab.data.formats import read_rows
    from sftlab.datawork.features import apply_features, feature_table_csv, fit_features, load_mapping, load_spec
    from sftlab.io import atomic_write_json, atomic_write_text

    check_distinct(args.output, args.input, args.mapping, args.spec)
    if Path(args.output).suffix.lower() != ".csv":
        raise SftlabError(f"{args.output}: the feature table is CSV; name the output OUT.csv")
    if args.spec and args.mapping:
        raise SftlabError("pass either --spec FILE (learn imputation and encodings) or --mapping FILE (reuse saved "
                          "ones), not both")
    if not args.spec and not args.mapping:
        raise SftlabError("pass --spec FILE (learn imputation and encodings) or --mapping FILE (reuse saved ones)")
    rows = read_rows(args.input)
    refuse_images(rows, "data features builds a feature table from tabular behaviour data, and has no use for "
                        "conversations or images")
    if args.mapping:
        mapping = load_mapping(args.mapping)
        table = apply_features(rows, mapping)
    else:
        mapping_out = args.mapping_out or str(Path(args.output).with_suffix("")) + ".mapping.json"
        check_distinct(mapping_out, args.input, args.spec, args.output, *report_paths(report_stem(args.output)),
                       what="--mapping-out", report=False)
        table, mapping = fit_features(rows, load_spec(args.spec))
        atomic_write_json(mapping_out, mapping)
        print(f"wrote mapping {mapping_out} (reuse it with --mapping)")
    atomic_write_text(args.output, feature_table_csv(table))
    report = Report("features", [args.input], before=len(rows))
    report.section("features", {key: mapping.get(key) for key in ("spec", "impute", "categories", "missing_counts", "zero_denominators")})
    report.finish(len(table), [args.output]).write(report_stem(args.output))
    print(f"wrote {len(table)} rows to {args.output}; missing values {mapping['missing_counts']}; "
          f"zero denominators {mapping.get('zero_denominators', 0)}")
    return 0
