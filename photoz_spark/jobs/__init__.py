"""The jobs' entry points: ``main(argv) -> summary`` of each ``jobs/NAME.py``, importable.

Each is ``cli.run_job`` (settings -> validate -> run -> summary) around one stage's library
function; ``jobs/NAME.py`` (what spark-submit runs) only calls it. Tests, the notebook and the
ablation call these, never the scripts. This is the top floor: no library module imports it
(the ablation gets the features and training mains passed in).
"""
