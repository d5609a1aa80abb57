"""The data pipeline: files -> canonical examples (formats, sources) -> token rows (tokenize) -> batches (collate).

`sftlab.data.pipeline.prepare_data` runs the whole chain for a run config.
"""
