"""The policy-push application: push each enterprise the new policy notices it is likely to act on.

Modules: `db` (tables), `catalog` (vocabulary), `simulate` (seeded world with true interest),
`importer` (CSV import with rejects), `features` (time split, behaviour summaries, features),
`examples` (Chinese 是/否 and next-category training examples), `baselines`, `scoring` (fine-tuned
model scorer), `evaluate`, `reasons`, `push`, `api` (FastAPI) and `demo` (end to end).
"""
