"""training: fitting DRAW to a data set.

Owns the optimisation loop (loop) and the state it carries (state), a whole training run: threads,
engine, data and memory checks, the run directory (run), what a resume continues and refuses
(resume), several processes (distributed) and TensorBoard logging (tensorboard_log).

Layer: above pictures. May import drawcli.core, data, settings, model, runs, evaluation and pictures.
"""
