"""Evaluation of vision-language models on image+text examples: generation metrics and label metrics.

    texts = generate_with_images(model, processor, examples, max_new_tokens=32)
    result, rows = run_vision_task("generation", model, processor, examples, opts)   # exact_match, bleu, rouge*
    result, rows = run_vision_task("labels", model, processor, examples, opts)       # accuracy, macro_f1, ...

Each example's prompt is its conversation without the last assistant turn (the reference), rendered by the
processor's chat template with its images; answers are generated greedily (or sampled with `opts.do_sample`,
seeded) one example at a time and stop at the template's end-of-turn token. Captions and VQA answers are
scored with `sftlab.eval.metrics.generation_metrics`; for the labels task the generated answer is mapped to a
label with `sftlab.eval.tasks.parse_label` (likelihood scoring is not used for image prompts) and scored with
`label_metrics`. `sftlab.eval.hooks.task_metrics` calls this for validation examples that carry images.
"""

from __future__ import annotations

from sftlab.errors import SftlabError
from sftlab.vision.data import open_image
from sftlab.vision.encode import render, to_content_parts

_PROBE = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
          {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]


def stop_ids(processor) -> list[int]:
    """End-of-turn token ids of the processor's template (the special tokens closing an assistant turn) and EOS."""
    tokenizer = processor.tokenizer
    prompt = render(processor, _PROBE[:1], add_generation_prompt=True)
    answer = render(processor, _PROBE)[len(prompt):]
    ids = [tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens if token and token in answer]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(i for i in ids if isinstance(i, int) and i >= 0))


def _model_device(model):
    return next(model.parameters()).device


def generate_answer(model, processor, messages: list[dict], images: list, max_new_tokens: int = 64,
                    do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                    streamer=None) -> tuple[str, int, int]:
    """(answer text, prompt tokens, generated tokens) for a prompt (messages with `<image>`) and its PIL images.

    `streamer` (e.g. transformers' TextIteratorStreamer) receives the tokens as they are generated."""
    import torch

    text = render(processor, to_content_parts(messages), add_generation_prompt=True)
    inputs = processor(text=[text], images=images or None, add_special_tokens=False, return_tensors="pt")
    device = _model_device(model)
    inputs = {key: value.to(device) for key, value in inputs.items() if hasattr(value, "to")}
    sampling = dict(temperature=temperature, top_p=top_p) if do_sample else {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 eos_token_id=stop_ids(processor), pad_token_id=processor.tokenizer.pad_token_id,
                                 streamer=streamer, **sampling)
    finally:
        model.train(was_training)
    width = inputs["input_ids"].shape[1]
    new_tokens = out[0, width:]
    return processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip(), width, int(new_tokens.numel())


def generate_with_images(model, processor, examples: list[dict], max_new_tokens: int = 64, do_sample: bool = False,
                         temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> list[str]:
    """One generated answer per example (prompt = messages without the last assistant turn, with images)."""
    import torch

    from sftlab.eval.tasks import split_prompt

    torch.manual_seed(seed)
    texts = []
    for example in examples:
        prompt, _ = split_prompt(example)
        images = [open_image(reference, example.get("_src", "example")) for reference in example.get("images") or []]
        texts.append(generate_answer(model, processor, prompt, images, max_new_tokens, do_sample, temperature, top_p)[0])
    return texts


def run_vision_task(task: str, model, processor, examples: list[dict], opts) -> tuple[dict, list[dict]]:
    """(metrics, prediction rows) of the generation or labels task on image+text examples."""
    from sftlab.eval import metrics as M
    from sftlab.eval.tasks import parse_label, resolve_labels, split_prompt

    if task not in ("generation", "labels"):
        raise SftlabError(f"eval.task {task}: image+text examples support the generation and labels tasks")
    references = [split_prompt(example)[1] for example in examples]
    labels = resolve_labels(examples, opts) if task == "labels" else None
    texts = generate_with_images(model, processor, examples, opts.max_new_tokens, opts.do_sample, opts.temperature,
                                 opts.top_p, opts.seed)
    rows = [{"_src": example.get("_src"), "reference": reference, "prediction": text}
            for example, reference, text in zip(examples, references, texts)]
    if task == "generation":
        return M.generation_metrics(texts, references, opts.segmenter), rows
    predicted = [parse_label(text, labels) for text in texts]
    for row, label, text in zip(rows, predicted, texts):
        row.update(prediction=label, generated=text)
    result = M.label_metrics(references, predicted, labels)
    result.update(labels=labels, method="generate")
    return result, rows


def vision_eval_inputs(model_dir: str, data: str, max_samples: int | None = None,
                       key: str = "MODEL_DIR") -> tuple[list[dict], object] | None:
    """For `sftlab eval` on a vision-language model: (image+text examples of `data`, processor), else None.

    MODEL_DIR may be a model, adapter or run directory (errors about it name `key`); the processor comes from the
    model (or adapter base) directory, which a training run fills with the processor's files."""
    from pathlib import Path

    from sftlab.config.schema import ModelConfig
    from sftlab.infer.loading import describe_source
    from sftlab.vision.data import read_vision_file
    from sftlab.vision.load import is_vision_model_dir, load_processor

    source = describe_source(model_dir, key=key)
    if not is_vision_model_dir(source.base_dir):
        return None
    directory = source.model_dir if (source.model_dir / "processor_config.json").is_file() else source.base_dir
    examples = read_vision_file(Path(data))
    return examples[:max_samples] if max_samples else examples, load_processor(ModelConfig(path=str(directory)))
