"""Reports built from what runs left on disk: figures, tables, the Markdown/HTML document,
the study report (`cnnlab.report.study`) and a search sweep's (`cnnlab.report.search`).

Nothing is imported here, so that `cnnlab.report.figures` (which `cnnlab train` uses for a
run's own plots) comes without the study report's inference code.
"""
