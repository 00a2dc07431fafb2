"""Hub downloads: the plan (sizes, cached files, free space), byte progress, cancel, offline use of the cache.

No network: the two ``huggingface_hub`` calls that reach the Hub (``HfApi.model_info`` for the file list and
``hf_hub_download`` for one file) are replaced by a local stand-in that serves files from folders on disk and
writes them into the Hugging Face cache layout as the real function does (``blobs/``, ``snapshots/<commit>/``,
``refs/main``), in chunks reported through the ``tqdm_class`` it is given. That is the network boundary;
everything else (pattern filtering, ``try_to_load_from_cache``, ``snapshot_download(local_files_only=True)``,
the disk check, progress and cancellation) is the real code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import huggingface_hub.constants
import pytest

from sd_fsmis.core.errors import JobCancelled, ModelError
from sd_fsmis.core.jobs import CancelToken
from sd_fsmis.core.model import download
from sd_fsmis.core.model.download import (
    DINOV2_ALLOW_PATTERNS,
    SD_ALLOW_PATTERNS,
    download_base_sources,
    download_repo,
    plan_download,
)

CHUNK = 1000


class FakeHub:
    """Repos served from local folders: ``repos[repo_id] = folder``; counts the files it sends."""

    def __init__(self) -> None:
        self.repos: dict[str, Path] = {}
        self.sent: list[str] = []

    def add(self, repo_id: str, files: dict[str, bytes] | Path, tmp: Path) -> None:
        if isinstance(files, Path):
            self.repos[repo_id] = files
            return
        folder = tmp / "hub" / repo_id.replace("/", "--")
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        self.repos[repo_id] = folder

    def _folder(self, repo_id: str) -> Path:
        if repo_id not in self.repos:
            raise huggingface_hub.errors.RepositoryNotFoundError(f"404 Client Error. Repository {repo_id}")
        return self.repos[repo_id]

    @staticmethod
    def commit(repo_id: str) -> str:
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def model_info(self, repo_id, revision=None, files_metadata=False, **_):
        folder = self._folder(repo_id)
        siblings = [
            SimpleNamespace(rfilename=p.relative_to(folder).as_posix(), size=p.stat().st_size)
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        ]
        return SimpleNamespace(id=repo_id, sha=self.commit(repo_id), siblings=siblings)

    def hf_hub_download(self, repo_id, filename, *, revision=None, cache_dir=None, tqdm_class=None, **_):
        data = (self._folder(repo_id) / filename).read_bytes()
        repo_cache = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
        blob = repo_cache / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        partial = blob.with_name(blob.name + ".incomplete")
        bar = tqdm_class(total=len(data), initial=0, desc=filename, unit="B", unit_scale=True)
        try:
            with open(partial, "wb") as f:
                for start in range(0, len(data), CHUNK):
                    chunk = data[start : start + CHUNK]
                    bar.update(len(chunk))
                    bar.update_transfer(len(chunk))
                    f.write(chunk)
            os.replace(partial, blob)
        finally:
            partial.unlink(missing_ok=True)  # as huggingface_hub 2.x: a failed download leaves no part
            bar.close()
        commit = self.commit(repo_id)
        (repo_cache / "refs").mkdir(exist_ok=True)
        (repo_cache / "refs" / (revision or "main")).write_text(commit)
        target = repo_cache / "snapshots" / commit / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(blob, target)
        self.sent.append(f"{repo_id}:{filename}")
        return str(target)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The stand-in Hub, and an empty Hugging Face cache in tmp_path for the default cache folder."""
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, *a, **k: fake.model_info(*a, **k))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return fake


SD_FILES = {
    "model_index.json": b"{}",
    "unet/config.json": b'{"in_channels": 4}',
    "unet/diffusion_pytorch_model.safetensors": b"u" * 5500,
    "unet/diffusion_pytorch_model.fp16.safetensors": b"h" * 2700,  # a variant: not fetched
    "vae/config.json": b'{"latent_channels": 4}',
    "vae/diffusion_pytorch_model.safetensors": b"v" * 3200,
    "text_encoder/model.safetensors": b"t" * 4000,  # not needed by SD-FSMIS
}


def test_plan_lists_the_needed_files_and_what_is_cached(hub, tmp_path):
    hub.add("owner/sd", SD_FILES, tmp_path)
    plan = plan_download("owner/sd", SD_ALLOW_PATTERNS)
    assert [name for name, _ in plan.files] == [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert plan.total_bytes == 18 + 5500 + 22 + 3200 and plan.cached_bytes == 0
    assert plan.needed_bytes == plan.total_bytes and plan.revision == FakeHub.commit("owner/sd")
    assert plan.free_bytes > 0 and plan.fits and "owner/sd: 4 files" in plan.summary()

    folder = download_repo("owner/sd", SD_ALLOW_PATTERNS)
    again = plan_download("owner/sd", SD_ALLOW_PATTERNS)
    assert again.cached_bytes == again.total_bytes and again.needed_bytes == 0
    assert sorted(again.cached_files) == [name for name, _ in plan.files]
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == b"u" * 5500
    assert not (folder / "text_encoder").exists()
    assert not (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()

    with pytest.raises(ModelError, match="could not download 'owner/missing' from the Hugging Face Hub"):
        plan_download("owner/missing", SD_ALLOW_PATTERNS)
    with pytest.raises(ModelError, match="has none of the needed files"):
        plan_download("owner/sd", ["nothing-like-this/*"])


def test_download_reports_bytes_and_skips_cached_files(hub, tmp_path, monkeypatch):
    hub.add("owner/sd", SD_FILES, tmp_path)
    reports = []
    monkeypatch.setattr(download, "REPORTS_PER_SECOND", 10**9)  # every chunk (normally 10 a second)
    folder = download_repo("owner/sd", SD_ALLOW_PATTERNS, progress=reports.append)
    total = 18 + 5500 + 22 + 3200
    done = [r.done for r in reports]
    assert done == sorted(done) and done[-1] == total and {r.total for r in reports} == {total}
    assert any(r.message == "unet/diffusion_pytorch_model.safetensors 2.0/5.4 KB" for r in reports)
    assert folder.name == FakeHub.commit("owner/sd") and (folder / "vae" / "config.json").is_file()
    assert len(hub.sent) == 4

    # everything cached: nothing is sent again, the same folder comes back
    assert download_repo("owner/sd", SD_ALLOW_PATTERNS) == folder
    assert len(hub.sent) == 4


def test_not_enough_disk_space_is_refused_before_any_byte(hub, tmp_path, monkeypatch):
    hub.add("owner/sd", SD_FILES, tmp_path)
    hub.add("owner/dino", {"config.json": b"{}", "model.safetensors": b"d" * 4000}, tmp_path)
    monkeypatch.setattr(download, "MIN_SPACE_MARGIN", 1000)
    sd_bytes = 18 + 5500 + 22 + 3200
    # room for Stable Diffusion alone, not for both: the pair is refused before the first file
    monkeypatch.setattr(download, "free_bytes", lambda _path: sd_bytes + 1000)
    assert plan_download("owner/sd", SD_ALLOW_PATTERNS).fits
    with pytest.raises(ModelError, match=r"owner/sd and owner/dino needs 12\.4 KB .* free on .*hf-cache"):
        download_base_sources("owner/sd", "owner/dino")
    assert hub.sent == []
    monkeypatch.setattr(download, "free_bytes", lambda _path: 5000)
    with pytest.raises(ModelError, match=r"needs 8\.5 KB"):
        download_repo("owner/sd", SD_ALLOW_PATTERNS)
    assert hub.sent == []

    monkeypatch.setattr(download, "free_bytes", lambda _path: 10**9)
    sd_dir, dino_dir = download_base_sources("owner/sd", "owner/dino")
    assert (sd_dir / "unet" / "config.json").is_file() and (dino_dir / "model.safetensors").is_file()
    assert len(hub.sent) == 6


def test_cancel_stops_within_a_file_and_a_later_call_continues(hub, tmp_path, monkeypatch):
    hub.add("owner/sd", SD_FILES, tmp_path)
    monkeypatch.setattr(download, "REPORTS_PER_SECOND", 10**9)
    token = CancelToken()

    def cancel_in_the_unet_weights(report):
        if report.extra.get("file") == "unet/diffusion_pytorch_model.safetensors" and report.done > 100:
            token.cancel()

    with pytest.raises(JobCancelled):
        download_repo("owner/sd", SD_ALLOW_PATTERNS, progress=cancel_in_the_unet_weights, cancel=token)
    assert hub.sent == ["owner/sd:unet/config.json"]  # the file being fetched was not finished
    cache = Path(huggingface_hub.constants.HF_HUB_CACHE)
    assert not list(cache.rglob("*.incomplete"))
    plan = plan_download("owner/sd", SD_ALLOW_PATTERNS)
    assert plan.cached_files == ["unet/config.json"] and plan.needed_bytes == 5500 + 22 + 3200

    folder = download_repo("owner/sd", SD_ALLOW_PATTERNS)
    assert hub.sent[1:] == [
        "owner/sd:unet/diffusion_pytorch_model.safetensors",
        "owner/sd:vae/config.json",
        "owner/sd:vae/diffusion_pytorch_model.safetensors",
    ]
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size == 5500

    token = CancelToken()
    token.cancel()
    with pytest.raises(
        JobCancelled
    ):  # cancelled before anything: nothing fetched, even if nothing is missing
        download_repo("owner/sd", SD_ALLOW_PATTERNS, cancel=token)


def test_offline_uses_the_cache_or_says_so_in_one_line(hub, tmp_path, monkeypatch):
    hub.add("owner/dino", {"config.json": b"{}", "model.safetensors": b"d" * 4000}, tmp_path)
    folder = download_repo("owner/dino", DINOV2_ALLOW_PATTERNS)
    # now offline: the real HfApi refuses to reach the Hub
    monkeypatch.undo()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert download_repo("owner/dino", DINOV2_ALLOW_PATTERNS) == folder
    with pytest.raises(ModelError) as caught:
        download_repo("owner/not-cached", DINOV2_ALLOW_PATTERNS, what="DINOv2")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("could not download DINOv2 'owner/not-cached' from the Hugging Face Hub: ")
    assert message.endswith("it is not in the cache " + str(tmp_path / "hf-cache") + " either")


def test_create_base_model_from_hub_ids(hub, hub_like_sources, tmp_path):
    """The whole path of ``sd-fsmis models create --sd OWNER/SD --dinov2 OWNER/DINO`` without a network."""
    from sd_fsmis.core.model.create import create_base_model
    from sd_fsmis.core.model.store import model_info

    sd_dir, dinov2_dir, _ = hub_like_sources
    hub.add("someone/sd-tiny", sd_dir, tmp_path)
    hub.add("someone/dino-tiny", dinov2_dir, tmp_path)
    reports = []
    path = create_base_model("someone/sd-tiny", "someone/dino-tiny", name="from-hub", progress=reports.append)
    info = model_info("from-hub")
    assert info.valid and path.name == "from-hub"
    assert info.base == "someone/sd-tiny + someone/dino-tiny"
    assert info.base_models == {"stable_diffusion": "someone/sd-tiny", "dinov2": "someone/dino-tiny"}
    assert reports and reports[-1].done == reports[-1].total > 0
    assert "owner/sd:model_index.json" not in hub.sent and len(hub.sent) == 4 + 3  # SD: 4, DINOv2: 3

    token = CancelToken()
    token.cancel()
    with pytest.raises(JobCancelled):
        create_base_model("someone/sd-tiny", "someone/dino-tiny", name="never", cancel=token)
    assert model_info("from-hub").valid
    with pytest.raises(ModelError, match="no model named 'never'"):
        model_info("never")
