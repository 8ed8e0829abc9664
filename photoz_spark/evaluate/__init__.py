"""Evaluation of registered models (jobs/evaluate.py) and the band-set ablation (jobs/ablation.py).

``predict`` streams a labelled features catalog through a model split by split; ``report``
turns the per-object results into Table 1/2 and the Markdown reports; ``figures`` draws the
paper's figures, one function each; ``run`` and ``ablation`` are the two jobs' stages.
"""
