"""Data work: build, validate, convert, clean, deduplicate, augment, balance and describe datasets.

Every operation takes canonical examples (see `sftlab.data.formats`) and returns new ones plus a report;
nothing here changes an input file. The `sftlab data build|clean|augment|balance|stats|features`
commands (`sftlab.commands.data_work`) are thin wrappers around these modules.
"""
