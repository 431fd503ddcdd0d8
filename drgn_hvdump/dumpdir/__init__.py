"""The dump directory: its files' names, the trusted directory, the journal, the plan
that other tools follow and the runtime registry, with one reader and writer each.

The collector, ``hvdump convert``, ``hvdump verify``, the drgn plugin and the
Ansible modules (through :mod:`drgn_hvdump.api`) use this package; none of
them spells a file name or parses a journal line itself. Import from the
modules: ``names``, ``identity``, ``outdir``, ``journal``, ``registry``,
``view``.
"""
