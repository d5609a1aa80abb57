"""Batched text generation with a local causal LM (model drafts and paraphrases); nothing is downloaded.

    generate = LocalGenerator("runs/tiny-qwen", max_new_tokens=64, batch_size=4)
    texts = generate(["Explain X", "Summarise Y"])

Prompts go through the tokenizer's chat template as one user turn when it has one, else as plain text.
Decoding is greedy unless `temperature > 0` (then sampling seeded by `seed`), so re-runs are reproducible.
A text cut off by `max_new_tokens` in the middle of a multi-byte character (byte-level tokens) would end in
U+FFFD replacement characters; those are stripped (`cut_text`).
"""

from __future__ import annotations

from sftlab.errors import SftlabError


def check_generation_options(max_new_tokens: int, batch_size: int, temperature: float) -> None:
    """Refuse `--max-new-tokens` or `--batch-size` below 1 and a negative `--temperature`, before a model loads."""
    for name, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        if value < 1:
            raise SftlabError(f"{name} {value}: must be at least 1")
    if temperature < 0:
        raise SftlabError(f"--temperature {temperature}: must be 0 (greedy) or more (sampling)")


def load_local_model(model_dir: str, option: str, model_class):
    """(tokenizer, model in eval mode) of a local model directory given as `option` (`--model`, `--encoder`); a
    path that is missing, a file, or a directory without a loadable tokenizer and model is a one-line error naming
    `option` (`sftlab.models.load.resolve_model_path` resolves the embedded names and .gguf files)."""
    from transformers import AutoTokenizer

    from sftlab.models.load import resolve_model_path

    path = resolve_model_path(model_dir, key=option)
    if not (path / "config.json").is_file():
        raise SftlabError(f"{option} {model_dir}: no config.json in this directory; expected a model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = model_class.from_pretrained(path, local_files_only=True).eval()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        lines = str(exc).strip().splitlines()
        raise SftlabError(f"{option} {model_dir}: not a model directory that loads "
                          f"({lines[0].rstrip(': ') if lines else type(exc).__name__})") from None
    return tokenizer, model


class LocalGenerator:
    """Loads a model directory once and turns lists of prompts into lists of completions."""

    def __init__(self, model_dir: str, max_new_tokens: int = 256, batch_size: int = 8, temperature: float = 0.0, seed: int = 0):
        from transformers import AutoModelForCausalLM

        check_generation_options(max_new_tokens, batch_size, temperature)
        self.tokenizer, self.model = load_local_model(model_dir, "--model", AutoModelForCausalLM)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.temperature, self.seed = temperature, seed

    def _render(self, prompt: str) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def __call__(self, prompts: list[str]) -> list[str]:
        import torch

        torch.manual_seed(self.seed)
        outputs: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [self._render(p) for p in prompts[start : start + self.batch_size]]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not self.tokenizer.chat_template)
            sampling = dict(do_sample=True, temperature=self.temperature) if self.temperature > 0 else dict(do_sample=False)
            with torch.no_grad():
                generated = self.model.generate(**batch, max_new_tokens=self.max_new_tokens,
                                                pad_token_id=self.tokenizer.pad_token_id, **sampling)
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
            outputs += [cut_text(text, row[-1].item() not in ends) for text, row in zip(texts, new_tokens)]
        return outputs


def cut_text(text: str, truncated: bool) -> str:
    """A decoded completion, stripped; one that `max_new_tokens` cut off (`truncated`: its last token is not the
    end or padding) also loses the U+FFFD characters at its end, the decoding of a character's first bytes."""
    text = text.strip()
    return text.rstrip("\ufffd").rstrip() if truncated else text
