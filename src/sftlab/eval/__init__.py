"""Evaluation: metrics (labels, ranking, generation, language modelling), model scoring, baselines, reports.

    from sftlab.eval.metrics import label_metrics, ranking_metrics, generation_metrics, lm_metrics
    from sftlab.eval.scoring import score_continuations, generate_texts
    from sftlab.eval.hooks import task_metrics          # called by the training loop during validation
    from sftlab.eval.report import write_report         # report.html + PNGs of one or more runs

`sftlab eval` and `sftlab report` (in `sftlab.commands`) are thin wrappers around these modules.
"""
