"""Product features over a built dataset: its layout, Parquet encoding, statistics, card,
trainer exports and HTML report.

Called by the write stage and the CLI; imports the framework (``pipeline``)
and ``schemas``, never a stage.
"""
