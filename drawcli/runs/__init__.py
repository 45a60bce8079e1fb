"""runs: what training leaves on disk, and loading it back.

Owns checkpoint files (checkpoint: format, reading, epoch-file names), run directories (store:
names, the file names inside a run, locating and loading a run or a checkpoint, the run lock,
the recorder of metrics and checkpoints), model folders (folder: config.json and the card;
safetensors: the weights format; pretrained: drawcli.DRAW with from_pretrained and save_pretrained;
hub: the optional Hugging Face Hub), the models bundled in the package (builtin, with weights/), the
metrics log (metrics) and the description of runs for `draw runs` (listing).

Layer: above model. May import drawcli.core, drawcli.data, drawcli.settings and drawcli.model.
"""
