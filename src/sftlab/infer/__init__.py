"""Inference: load a trained model or run dir, render prompts with the training template, and generate.

`batch.DecodeBatch` is the continuous-batching decode loop shared by `sftlab generate`, `sftlab chat`
and `sftlab serve`; `engine.Engine` runs it in a background thread for concurrent requests.
"""
