"""Image+text fine-tuning of vision-language models: loading, multimodal data, encoding, batches, model parts.

See docs/vision.md. Modules: `load` (processor and model), `data` (records -> canonical multimodal examples),
`encode` (processor-based token rows with assistant-only labels), `collate` (batches with pixel values),
`parts` (vision tower / projector / language model parameter groups), `pipeline` (the data chain for a run).
"""
