"""Saved voices on disk: a reference turn kept as Mimi codes, usable by id from every endpoint.

Each voice is `<id>.npz` (codes) plus `<id>.json` (metadata), both written atomically (temp file in
the same directory, then rename); the json is written last, so a voice exists once its json does.
Nothing but a listing is held in memory, so replicas sharing the directory see each other's voices
and a restart loses nothing. The listing (what naming a voice searches) is read again whenever the
directory changes: every create and delete renames or removes a file in it, which updates its mtime.
Calls do blocking file I/O: run them in a thread from async code.

Where the server takes API keys, each key's voices are a store of their own (`owned_by`: a
subdirectory named after the key's id): a caller lists, uses and deletes only the voices saved with
its key. Voices saved without keys stay in the directory itself.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from serve_app.api.schemas import VoiceInfo
from serve_app.engine.types import FRAME_MS, Segment

__all__ = ["SavedVoice", "VoiceStore"]

_ID_RE = re.compile(r"^voice_[0-9a-f]{16}$")
_OWNER_RE = re.compile(r"^key_[0-9a-f]{12}$")  # `auth.key_id`: a safe directory name
_MTIME_TRUSTED_AFTER_NS = 2_000_000_000
"""A directory changed more recently than this may change again within its mtime's granularity (a
second or two on some filesystems) without a new mtime: its listing is read again each time."""


class SavedVoice:
    def __init__(self, info: VoiceInfo, codes: np.ndarray) -> None:
        self.info = info
        self.codes = codes

    def segment(self, text: str) -> Segment:
        return Segment(text=text, speaker=self.info.speaker, codes=self.codes, required=True)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class VoiceStore:
    """Voices in `directory`; `id_pattern` says which ids it holds (saved voices by default)."""

    def __init__(self, directory: Path, id_pattern: re.Pattern[str] = _ID_RE) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._id_re = id_pattern
        self._listing: tuple[int, list[VoiceInfo]] | None = None  # (directory mtime, voices)
        self._owners: dict[str, VoiceStore] = {}

    def owned_by(self, owner: str | None) -> VoiceStore:
        """The voices of API key `owner` (its id, `auth.key_id`); None: this store's own."""
        if owner is None:
            return self
        if not _OWNER_RE.match(owner):
            raise ValueError(f"invalid voice owner {owner!r}")
        store = self._owners.get(owner)
        if store is None:
            store = self._owners[owner] = VoiceStore(self.directory / "keys" / owner, self._id_re)
        return store

    def create(self, name: str, transcript: str, speaker: int, codes: np.ndarray) -> VoiceInfo:
        return self.put(f"voice_{uuid.uuid4().hex[:16]}", name, transcript, speaker, codes)

    def put(self, voice_id: str, name: str, transcript: str, speaker: int, codes: np.ndarray) -> VoiceInfo:
        """Store a voice under `voice_id` (replacing one of that id)."""
        if not self._id_re.match(voice_id):
            raise ValueError(f"invalid voice id {voice_id!r}")
        info = VoiceInfo(
            id=voice_id,
            name=name,
            transcript=transcript,
            speaker=speaker,
            frames=len(codes),
            duration_ms=len(codes) * FRAME_MS,
            created_at=time.time(),
        )
        _atomic_write(
            self._codes_path(voice_id), lambda f: np.savez(f, codes=np.asarray(codes, dtype=np.int64))
        )
        _atomic_write(self._info_path(voice_id), lambda f: f.write(info.model_dump_json().encode()))
        return info

    def get(self, voice_id: str) -> SavedVoice | None:
        info = self.info(voice_id)
        if info is None:
            return None
        try:
            with np.load(self._codes_path(voice_id), allow_pickle=False) as archive:
                codes = archive["codes"]
        except FileNotFoundError:
            return None
        return SavedVoice(info, codes)

    def info(self, voice_id: str) -> VoiceInfo | None:
        if not self._id_re.match(voice_id):
            return None
        try:
            return VoiceInfo.model_validate_json(self._info_path(voice_id).read_bytes())
        except FileNotFoundError:
            return None

    def list(self) -> list[VoiceInfo]:
        """Every voice, oldest first; read from disk only when the directory changed since."""
        stamp = self.directory.stat().st_mtime_ns
        listing = self._listing
        if listing is not None and listing[0] == stamp and time.time_ns() - stamp > _MTIME_TRUSTED_AFTER_NS:
            return list(listing[1])
        voices = []
        for path in self.directory.glob("voice_*.json"):
            info = self.info(path.stem)
            if info is not None:
                voices.append(info)
        voices.sort(key=lambda v: v.created_at)
        self._listing = (stamp, voices)
        return list(voices)

    def delete(self, voice_id: str) -> bool:
        if self.info(voice_id) is None:
            return False
        self._info_path(voice_id).unlink(missing_ok=True)  # json first: the voice is gone at once
        self._codes_path(voice_id).unlink(missing_ok=True)
        return True

    def _codes_path(self, voice_id: str) -> Path:
        return self.directory / f"{voice_id}.npz"

    def _info_path(self, voice_id: str) -> Path:
        return self.directory / f"{voice_id}.json"
