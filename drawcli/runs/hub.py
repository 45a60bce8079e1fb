"""The Hugging Face Hub, optional (the ``hub`` extra: ``pip install "drawcli[hub]"``, huggingface_hub):
model folders (drawcli/runs/folder.py) downloaded from and uploaded to a Hub repository.

A Hub model is written ``hf:OWNER/NAME`` (``hf:OWNER/NAME@REVISION`` for a branch, tag or commit)
wherever a model is taken. huggingface_hub is imported only when a repository is used; without it,
one line says what to install. No torch here.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from drawcli.core.errors import DrawError
from drawcli.runs import folder as folders

HUB_PREFIX = "hf:"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
INSTALL_HUB = "pip install 'drawcli[hub]' (huggingface_hub)"


def hub_repo(ref: str) -> tuple[str, str | None]:
    """``hf:owner/name`` or ``hf:owner/name@revision`` -> (repo id, revision); one line if malformed."""
    body = ref[len(HUB_PREFIX):] if ref.startswith(HUB_PREFIX) else ref
    repo, at, revision = body.partition("@")
    if not REPO_ID.match(repo) or ".." in repo or (at and not revision):
        raise DrawError(f"{ref}: a Hub model is written hf:OWNER/NAME (or hf:OWNER/NAME@REVISION)")
    return repo, revision or None


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise DrawError(f"the Hugging Face Hub needs the hub extra: {INSTALL_HUB}") from None
    return huggingface_hub


def hub_available() -> bool:
    """Whether huggingface_hub can be imported (found without importing it)."""
    import importlib.util
    import sys

    if "huggingface_hub" in sys.modules:
        return sys.modules["huggingface_hub"] is not None
    try:
        return importlib.util.find_spec("huggingface_hub") is not None
    except (ImportError, ValueError):
        return False


def download(repo_id: str, revision: str | None = None) -> Path:
    """A Hub repository's model folder, downloaded (or found in huggingface_hub's cache)."""
    hub = _hub()
    try:
        path = hub.snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=list(folders.FILES))
    except Exception as e:  # noqa: BLE001 - network, authentication, a missing repository: one line
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DrawError(f"{HUB_PREFIX}{repo_id}: cannot download it from the Hugging Face Hub: {text}") from None
    return Path(path)


def push_folder(repo_id: str, save, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload DRAW model"):
    """``save(folder)`` writes a model folder; it is uploaded to the Hub repository ``repo_id``."""
    repo, revision = hub_repo(repo_id)
    hub = _hub()
    with tempfile.TemporaryDirectory(prefix="drawcli-push-") as tmp:
        folder = Path(tmp) / repo.split("/")[1]
        save(folder)
        try:
            api = hub.HfApi(token=token)
            api.create_repo(repo_id=repo, private=private, exist_ok=True)
            return api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=commit_message, revision=revision)
        except Exception as e:  # noqa: BLE001 - network, authentication: one line
            text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise DrawError(f"{HUB_PREFIX}{repo}: cannot upload to the Hugging Face Hub: {text}") from None
