"""Results people can see: runs read back from the tracking store, drawn, tabled.

:mod:`~hybridopt.results.store` reads searches and train runs from any MLflow store,
:mod:`~hybridopt.results.plots` draws them (matplotlib, no display), and
:mod:`~hybridopt.results.report` puts both together: the figures a run logs when it ends, and
``hybridopt report``.  Nothing here trains or writes to the store but :func:`report.log_figures`.
"""
