"""The paper tables' machinery, one module per stage; ``benchmarks/paper_tables.py`` is its command line.

Split along how a table is made, each module importing only those listed before it (the report none
of the running ones), so each can be read, tested and changed alone:

* :mod:`.rows` — what the tables are: data set per table, the rows (:class:`~.rows.Row`), the paper's numbers.
* :mod:`.planner` — what to run: the shared :class:`~.planner.Budget`, cells and where their JSONs go,
  the run order, which cells are pending, the wall-clock estimates of ``--dry-run``.
* :mod:`.machine` — what a cell records about where it ran (machine, versions, commit).
* :mod:`.runner` — running one cell: FS rows through ``fsllm.training``, the others through
  ``baselines.py``, and the cell JSON that records it.
* :mod:`.grid` — a row's learning-rate grid, chosen on dev with ``fsllm.selection.choose_rate``.
* :mod:`.report` — ``REPORT.md`` and its figures, from the cell JSONs alone.

The modules import ``baselines`` and ``common`` as top-level modules: ``benchmarks/`` must be on
``sys.path``, as it is for the scripts there (``paper_tables.py`` puts it first) and their tests.
"""
