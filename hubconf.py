"""torch.hub entry points of drawcli (https://pytorch.org/docs/stable/hub.html).

    import torch
    drawer = torch.hub.load("PATH/TO/THIS/CLONE", "mnist", source="local")   # trained, as drawcli.load("@mnist")
    model = torch.hub.load("PATH/TO/THIS/CLONE", "draw", source="local", glimpses=16, read_n=3)

The trained weights ship inside the package as model folders (drawcli/runs/weights/NAME/: config.json,
model.safetensors, README.md), verified by their sha256s and read with no pickle: nothing is downloaded.
"""

dependencies = ["torch", "numpy", "yaml", "typer", "rich", "imageio"]


def mnist(device: str = "auto", precision: str = "float32"):
    """DRAW with attention trained on MNIST (the paper's Table 3 model; see `draw models`): the
    object drawcli.load("@mnist") returns, with sample(), sample_glimpses(), reconstruct(),
    attention(), elbo() and iwae(); its torch.nn.Module is `.model`."""
    import drawcli

    return drawcli.load("@mnist", device=device, precision=precision)


def draw(height: int = 28, width: int = 28, channels: int = 1, **model):
    """An untrained DRAW (torch.nn.Module) from keyword settings: glimpses, hidden, latent,
    attention, read_n, write_n (the rest: the paper's MNIST model)."""
    import drawcli

    return drawcli.create_model(height=height, width=width, channels=channels, **model)
