from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hidream_service.signing_keys import SecretPinned, SigningKeys


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_created_once_and_kept_private(tmp_path: Path) -> None:
    first = SigningKeys(tmp_path / "keys.json")
    again = SigningKeys(tmp_path / "keys.json")

    assert first.current_secret == again.current_secret
    assert first.current_secret.startswith("whsec_")
    assert first.fal_public_keys()[0] == again.fal_public_keys()[0]
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600


def test_rotation_signs_with_both_secrets_until_the_grace_period_ends(tmp_path: Path) -> None:
    clock = Clock()
    keys = SigningKeys(tmp_path / "keys.json", grace_seconds=60, clock=clock)
    old = keys.current_secret

    new, old_valid_until = keys.rotate()

    assert new != old and keys.current_secret == new
    assert keys.signing_secrets() == [new, old]
    assert old_valid_until == clock.now + 60
    clock.now += 61
    assert keys.signing_secrets() == [new]
    assert SigningKeys(tmp_path / "keys.json", grace_seconds=60, clock=clock).current_secret == new


def test_a_pinned_secret_is_used_and_cannot_be_rotated_here(tmp_path: Path) -> None:
    pinned = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    keys = SigningKeys(tmp_path / "keys.json", pinned_secret=pinned)

    assert keys.signing_secrets() == [pinned]
    with pytest.raises(SecretPinned):
        keys.rotate()
    with pytest.raises(ValueError):
        SigningKeys(tmp_path / "keys.json", pinned_secret="whsec_%%%")
