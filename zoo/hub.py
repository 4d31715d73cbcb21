"""Model folders in the layout the Hugging Face Hub serves, and fetching them.

A folder holds three files:

    config.json        what zoo needs to rebuild the model: its registered
                       name, resolved config and digests, and the weights card
    model.safetensors  the weights (zoo.weights)
    README.md          the card for people: metadata front matter as Hub model
                       cards have, then the card in words

The shipped weights are such folders inside the package (zoo/pretrained/);
`zoo export NAME --format hub --out DIR` writes one; a Hub repo holding one
loads by its id through huggingface_hub (its cache, HF_HUB_OFFLINE and
HF_ENDPOINT apply). Every file is verified before use: model.safetensors
against the sha256 config.json records, and its arrays against the digests
its header records.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from zoo import weights
from zoo.errors import CheckpointError, WeightsNotFoundError, ZooError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
README = "README.md"
FILES = (CONFIG, WEIGHTS, README)
FOLDER_FORMAT = 1
# config.json is small; a larger one is not ours (and is not read whole).
_MAX_CONFIG_BYTES = 4 << 20
# owner/name[@revision], as the Hub names repos (optionally "hf://" first).
_REPO_ID = re.compile(r"^(?:hf://)?([\w.-]+/[\w.-]+)(?:@([\w./-]+))?$")


def sha256(file: str | os.PathLike) -> str:
  """A file's digest, read in blocks (never the whole file at once)."""
  import hashlib
  with Path(file).open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def config_record(entry, weights_file: Path, card: Mapping[str, Any] | None
                  ) -> dict[str, Any]:
  """config.json's content for `entry`'s weights in `weights_file`."""
  import zoo
  meta = weights.read(weights_file, check_digests=False)[1]
  return {
      "library_name": "zoo",
      "zoo_folder_format": FOLDER_FORMAT,
      "zoo_version": zoo.__version__,
      "model": entry.name,
      "config": entry.config,
      "config_sha256": weights.config_sha256(entry.config),
      "files": {WEIGHTS: {"sha256": sha256(weights_file),
                          "bytes": weights_file.stat().st_size}},
      "params_sha256": meta[weights.META_PARAMS],
      "card": card,
  }


def write_meta(folder: str | os.PathLike, entry,
               baseline: Mapping[str, Any] | None = None) -> Path:
  """Writes config.json and README.md beside `folder`'s model.safetensors
  (each atomically), the card built from `baseline` (zoo/baselines.json's
  record of shipped weights) or, without one, describing unmeasured
  weights."""
  from zoo import cards
  folder = Path(folder)
  file = folder / WEIGHTS
  meta = weights.read(file, check_digests=False)[1]
  card = cards.build(entry, baseline, file_sha256=sha256(file),
                     params_sha256=meta[weights.META_PARAMS])
  _write_text(folder / CONFIG, cards.dumps(config_record(entry, file, card)))
  _write_text(folder / README, cards.readme(card))
  return folder


def write_folder(folder: str | os.PathLike, entry, params, model_state=None,
                 baseline: Mapping[str, Any] | None = None, *,
                 overwrite: bool = False) -> Path:
  """Writes a whole model folder for `entry`'s weights, built aside and
  moved into place, so `folder` is never left half-written. An existing
  `folder` is replaced only with `overwrite`, and only if it is a model
  folder itself (never a user's other directory)."""
  folder = Path(folder)
  if folder.exists() or folder.is_symlink():
    if not overwrite:
      raise ZooError(f"{folder} already exists: choose another --out, or "
                     "pass --force (overwrite=True) to replace it.")
    if folder.is_symlink() or not is_folder(folder):
      raise ZooError(f"{folder} exists and is not a zoo model folder; "
                     "refusing to replace it: choose another --out.")
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{folder.name}_", dir=folder.parent))
  try:
    weights.save(tmp / WEIGHTS, params, model_state, entry=entry)
    write_meta(tmp, entry, baseline)
    os.chmod(tmp, 0o755)
    if folder.exists():
      old = folder.with_name(f".old_{folder.name}_{os.getpid()}")
      os.replace(folder, old)
      os.replace(tmp, folder)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, folder)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return folder


def _write_text(path: Path, text: str) -> None:
  fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=path.parent)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def is_folder(path: str | os.PathLike) -> bool:
  """Whether `path` is a directory holding a model folder's config.json and
  model.safetensors."""
  path = Path(path)
  return (path.is_dir() and (path / CONFIG).is_file()
          and (path / WEIGHTS).is_file())


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
  """A model folder's config.json, checked to be zoo's."""
  folder = Path(folder)
  file = folder / CONFIG
  if not folder.is_dir():
    raise WeightsNotFoundError(
        f"{folder} is not a directory: pass a model folder (config.json, "
        "model.safetensors, README.md; zoo export NAME --format hub writes "
        "one) or a Hub repo id such as owner/name.")
  for name in (CONFIG, WEIGHTS):
    if not (folder / name).is_file():
      raise WeightsNotFoundError(
          f"{folder} has no {name}: it is not a zoo model folder (zoo export "
          "NAME --format hub writes one).")
  if file.stat().st_size > _MAX_CONFIG_BYTES:
    raise CheckpointError(f"refused: {file} is {file.stat().st_size:,} "
                          "bytes, too large to be a zoo config.json.")
  try:
    record = json.loads(file.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{file} is not valid JSON ({e}): the folder is "
                          "damaged; download or export it again.") from None
  if not isinstance(record, dict) or record.get("library_name") != "zoo" \
      or not isinstance(record.get("config"), dict):
    raise CheckpointError(f"{file} is not a zoo model config (no "
                          "library_name 'zoo' with a config): this folder "
                          "was not written by zoo.")
  if record.get("zoo_folder_format") != FOLDER_FORMAT:
    raise CheckpointError(
        f"{file}: folder format {record.get('zoo_folder_format')!r} is not "
        f"the one this zoo reads ({FOLDER_FORMAT}); upgrade zoo.")
  return record


def verify(folder: str | os.PathLike, record: Mapping[str, Any]) -> Path:
  """model.safetensors of `folder`, checked against the sha256 and size
  config.json records; returns its path."""
  file = Path(folder) / WEIGHTS
  want = (record.get("files") or {}).get(WEIGHTS) or {}
  got = sha256(file)
  if got != want.get("sha256"):
    raise CheckpointError(
        f"{file} does not match the sha256 its config.json records ({got} != "
        f"{want.get('sha256')}): the file is damaged or was changed; "
        "download or export the folder again.")
  return file


def download(repo_id: str, revision: str | None = None) -> Path:
  """The local folder of Hub repo `repo_id` at `revision`, fetched through
  huggingface_hub.hf_hub_download (its cache first; HF_HUB_OFFLINE=1 uses
  the cache alone). The weights' blob is checked against the sha256 the Hub
  gave for it."""
  from zoo.errors import require
  require("huggingface_hub", "loading a model from the Hugging Face Hub",
          "hub", "huggingface_hub")
  import huggingface_hub as hf
  from huggingface_hub import errors as hf_errors
  where = repo_id + (f"@{revision}" if revision else "")
  paths = {}
  try:
    for name in FILES:
      paths[name] = Path(hf.hf_hub_download(repo_id, name, revision=revision))
  except hf_errors.RepositoryNotFoundError:
    raise WeightsNotFoundError(
        f"Hub repo {repo_id} was not found, nor is there a local folder "
        f"{repo_id} (a private repo needs `hf auth login`): check the id "
        "(owner/name) or the path.") from None
  except hf_errors.RevisionNotFoundError:
    raise WeightsNotFoundError(f"Hub repo {repo_id} has no revision "
                               f"{revision!r}: check the branch, tag or "
                               "commit.") from None
  except hf_errors.LocalEntryNotFoundError:  # before its base class
    raise WeightsNotFoundError(
        f"{name} of Hub repo {where} is not in the local cache and the Hub "
        "cannot be reached (HF_HUB_OFFLINE is set, or no network): download "
        "it once with network access.") from None
  except hf_errors.EntryNotFoundError:
    raise WeightsNotFoundError(
        f"Hub repo {where} has no {name}: it is not a zoo model folder "
        "(zoo export NAME --format hub writes one).") from None
  except (hf_errors.HfHubHTTPError, OSError) as e:
    raise WeightsNotFoundError(f"{name} of Hub repo {where} could not be "
                               f"downloaded: {_first_line(e)}") from None
  _check_blob(paths[WEIGHTS], where)
  folder = paths[CONFIG].parent
  if any(p.parent != folder for p in paths.values()):
    raise CheckpointError(f"Hub repo {where}: its files came from different "
                          "commits; download again.")
  return folder


def _check_blob(file: Path, where: str) -> None:
  """huggingface_hub names each cached blob by the Hub's etag, which for a
  large (LFS) file is its sha256; refuse a blob whose bytes differ."""
  blob = Path(os.path.realpath(file))
  if re.fullmatch(r"[0-9a-f]{64}", blob.name) and sha256(blob) != blob.name:
    raise CheckpointError(
        f"{WEIGHTS} of Hub repo {where} does not match the sha256 the Hub "
        f"gives for it ({blob.name[:12]}...): the download or the cached copy "
        f"({blob}) is damaged; delete it and load again (huggingface_hub "
        "downloads it anew).")


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__


def parse_repo_id(source: str) -> tuple[str, str | None] | None:
  """(repo_id, revision) of "owner/name", "owner/name@rev" or "hf://...",
  else None."""
  match = _REPO_ID.match(source)
  return (match.group(1), match.group(2)) if match else None
