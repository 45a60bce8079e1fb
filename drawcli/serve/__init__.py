"""serve: `draw serve`, a local web page to explore trained models, and the JSON API it uses.

app.py is the Starlette app (routes, limits, errors, worker threads); catalogue.py says which
models a client may pick (built-in models and the runs directory, by id: never a path);
work.py is what each API call computes with drawcli.api's Drawer; images.py makes uploaded
pictures into model inputs; static/ holds the page (HTML, CSS and JavaScript, no build step).

Layer: above api, below commands. Needs the serve extra (starlette, uvicorn) only in app.py:
importing this package does not import them, nor torch.
"""
