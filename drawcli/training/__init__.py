"""training: fitting DRAW to a data set.

Owns the optimisation loop (loop), a whole training run: settings, resuming, threads, engine and
memory checks, the run directory (run), several processes (distributed) and TensorBoard logging
(tensorboard_log).

Layer: above pictures. May import drawcli.core, data, settings, model, runs, evaluation and pictures.
"""
