"""pictures: images, animations and plots of a model and its runs.

Owns the model's outputs as pictures (viz: prior samples, reconstructions, attention records),
turning arrays into image grids, GIF/MP4 frames and files (render), and training curves (plot).

Layer: above evaluation. May import drawcli.core, data, settings, model, runs and evaluation.
"""
