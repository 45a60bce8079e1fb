"""commands: what each `draw` command does once cli.py has parsed its options.

One module per command or group of commands, each with the ``*_command`` function cli.py calls:
option checks, console output and the files a command writes, around the same library functions
the Python API uses (drawcli.api). The commands that load a model take one frozen options object
(options.py), whose fields are cli.py's defaults. Nothing outside cli.py and this package imports it.

Layer: the top. May import anything in drawcli. Importing it does not import torch.
"""
