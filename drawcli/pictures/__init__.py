"""pictures: images, animations and plots of a model and its runs.

Owns the model's outputs as pictures (viz: prior samples, reconstructions, attention records),
turning arrays into pictures with numpy alone (palette: colours and pixels; grids: upscaling and
grids; frames: the frames of the commands with their attention windows; writers: PNG, GIF and MP4
files), and training curves (plot).

Layer: above evaluation. May import drawcli.core, data, settings, model, runs and evaluation.
"""
