"""evaluation: likelihood bounds of a trained model on a data set.

Owns the ELBO and IWAE bounds and the paper's reference numbers (bounds), and the evaluation of a
run on a split: the data it uses, its binarisation, the result record and its file name (evaluate).

Layer: above runs. May import drawcli.core, data, settings, model and runs.
"""
