from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hidream_service.db.engine import Database
from hidream_service.db.schema import migrate
from hidream_service.dialects.base import Dialect
from hidream_service.dialects.fal import FAL
from hidream_service.dialects.replicate import REPLICATE
from hidream_service.dialects.wavespeed import WAVESPEED
from hidream_service.owners import OPEN
from hidream_service.signing_keys import SecretPinned, SigningKeys, SqlKeyState
from webhooks.outbox import Delivery, DeliveryState
from webhooks.signing import WebhookVerificationError, derive_secret, jwks, verify, wavespeed_verify

PINNED = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_created_once_and_kept_private(tmp_path: Path) -> None:
    first = SigningKeys(tmp_path / "keys.json", owners=["alice"])
    again = SigningKeys(tmp_path / "keys.json", owners=["alice"])

    assert first.signing_secrets("alice") == again.signing_secrets("alice")
    assert first.webhook_secret(OPEN).startswith("whsec_")
    assert first.fal_public_keys()[0] == again.fal_public_keys()[0]
    assert first.token_mac("t") == again.token_mac("t")
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600


def test_each_owner_has_a_secret_of_its_own(tmp_path: Path) -> None:
    keys = SigningKeys(tmp_path / "keys.json", owners=["alice", "bob"])

    secrets = {keys.webhook_secret(owner) for owner in (OPEN, "alice", "bob", "carol")}  # carol: on first use

    assert len(secrets) == 4
    assert keys.signing_secrets("carol") == [keys.webhook_secret("carol")]
    assert SigningKeys(tmp_path / "keys.json").webhook_secret("carol") == keys.webhook_secret("carol")


def test_rotation_signs_with_both_secrets_of_that_owner_until_the_grace_period_ends(tmp_path: Path) -> None:
    clock = Clock()
    keys = SigningKeys(tmp_path / "keys.json", owners=["alice", "bob"], grace_seconds=60, clock=clock)
    old, alices = keys.webhook_secret("bob"), keys.signing_secrets("alice")

    new, old_valid_until = keys.rotate("bob")

    assert new != old and keys.webhook_secret("bob") == new
    assert keys.signing_secrets("bob") == [new, old]
    assert keys.signing_secrets("alice") == alices  # another key's rotation leaves alice alone
    assert old_valid_until == clock.now + 60
    clock.now += 61
    assert keys.signing_secrets("bob") == [new]
    assert SigningKeys(tmp_path / "keys.json", grace_seconds=60, clock=clock).webhook_secret("bob") == new


def test_a_pinned_secret_signs_for_the_open_server_and_each_key_gets_one_derived_from_it(tmp_path: Path) -> None:
    keys = SigningKeys(tmp_path / "keys.json", owners=["alice"], pinned_secret=PINNED)

    assert keys.signing_secrets(OPEN) == [PINNED]
    assert keys.signing_secrets("alice") == [keys.webhook_secret("alice")] == [derive_secret(PINNED, "api key alice")]
    assert keys.webhook_secret("alice") not in (PINNED, keys.webhook_secret("bob"))
    with pytest.raises(SecretPinned):
        keys.rotate("alice")
    with pytest.raises(ValueError):
        SigningKeys(tmp_path / "keys.json", pinned_secret="whsec_%%%")


def test_an_owner_without_a_secret_here_is_signed_for_with_the_open_servers(tmp_path: Path) -> None:
    """A delivery stored by an earlier release names no owner; one for a key another node has just
    been given is signed again once this node rereads the state."""
    keys = SigningKeys(tmp_path / "keys.json")

    assert keys.signing_secrets("unknown") == keys.signing_secrets(OPEN)


def test_a_state_from_the_shared_secret_release_keeps_it_signing_beside_each_keys_new_one(tmp_path: Path) -> None:
    clock = Clock()
    SigningKeys(tmp_path / "keys.json", clock=clock)
    legacy = json.loads((tmp_path / "keys.json").read_text())
    shared = legacy["standard"][0]["secret"]
    for newer in ("keyed", "server_key"):
        del legacy[newer]
    legacy["ed25519"][0].pop("signs_from")
    (tmp_path / "keys.json").write_text(json.dumps(legacy))

    keys = SigningKeys(tmp_path / "keys.json", owners=["alice"], grace_seconds=60, clock=clock)

    own = keys.webhook_secret("alice")
    assert own != shared and keys.signing_secrets("alice") == [own, shared]
    assert keys.signing_secrets(OPEN) == [shared]  # the open server's is the one it always had
    clock.now += 61
    assert keys.signing_secrets("alice") == [own]


def test_storage_tokens_outlive_every_webhook_secret_rotation(tmp_path: Path) -> None:
    keys = SigningKeys(tmp_path / "keys.json", owners=["alice"])
    before = keys.token_mac("token.alice.123")

    keys.rotate("alice")
    keys.rotate(OPEN)

    assert keys.token_mac("token.alice.123") == before


def test_public_owner_ids_are_stable_opaque_and_distinct(tmp_path: Path) -> None:
    keys = SigningKeys(tmp_path / "keys.json")
    other_server = SigningKeys(tmp_path / "other.json")

    assert keys.public_owner_id("alice") == SigningKeys(tmp_path / "keys.json").public_owner_id("alice")
    assert keys.public_owner_id("alice") not in ("alice", keys.public_owner_id("bob"))
    assert keys.public_owner_id("alice") != other_server.public_owner_id("alice")


def test_a_new_fal_key_is_published_at_once_and_signs_after_the_grace_period(tmp_path: Path) -> None:
    clock = Clock()
    keys = SigningKeys(tmp_path / "keys.json", grace_seconds=60, clock=clock)
    old = keys.fal_key

    new, signs_from = keys.rotate_fal_key()

    assert signs_from == clock.now + 60
    assert jwks(keys.fal_public_keys()) == jwks([new, old.public_key()])
    assert jwks([keys.fal_key.public_key()]) == jwks([old.public_key()])  # the old one signs on
    clock.now += 61
    assert jwks([keys.fal_key.public_key()]) == jwks([new])
    clock.now += 61
    keys.rotate_fal_key()  # the first key stopped signing over a grace period ago: no longer published
    assert len(keys.fal_public_keys()) == 2 and jwks([new])["keys"][0] in jwks(keys.fal_public_keys())["keys"]
    keys.rotate_fal_key()  # replaces the key still to come, which never signed
    assert len(keys.fal_public_keys()) == 2


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url)
    migrate(db)
    yield db
    db.close()


def test_nodes_making_secrets_at_once_keep_every_one(database: Database) -> None:
    """Each node adds its owners to the one shared row: a lost update would hand a key a secret
    that signs nothing."""
    owners = [f"owner{n}" for n in range(8)]
    first = SigningKeys(SqlKeyState(database))
    with ThreadPoolExecutor(8) as pool:
        made = dict(zip(owners, pool.map(first.webhook_secret, owners), strict=True))

    rereading = SigningKeys(SqlKeyState(database))
    assert {owner: rereading.webhook_secret(owner) for owner in owners} == made


def delivery(context: str) -> Delivery:
    return Delivery(
        id="msg_1",
        url="https://example.com/hook",
        body=b'{"ok":true}',
        signer="",
        context=context,
        subject="r",
        single_attempt=False,
        state=DeliveryState.PENDING,
        attempts=0,
        next_attempt_at=None,
        created_at=0.0,
        finished_at=None,
        last_error=None,
    )


@pytest.mark.parametrize("dialect", [FAL, REPLICATE, WAVESPEED], ids=lambda dialect: dialect.id)
def test_each_dialect_signs_a_delivery_with_its_owners_secret_only(tmp_path: Path, dialect: Dialect) -> None:
    keys = SigningKeys(tmp_path / "keys.json", owners=["alice", "bob"])
    check = wavespeed_verify if dialect is WAVESPEED else verify
    mine = delivery(json.dumps({"request_id": "r", "owner": "alice"}))
    now = int(time.time())

    headers = dict(dialect.sign(keys, mine, now))

    check(keys.webhook_secret("alice"), headers, mine.body)
    with pytest.raises(WebhookVerificationError):
        check(keys.webhook_secret("bob"), headers, mine.body)


def test_deliveries_stored_by_the_shared_secret_release_are_signed_with_the_open_servers(tmp_path: Path) -> None:
    keys = SigningKeys(tmp_path / "keys.json", owners=["alice"])
    fal_era = delivery(json.dumps({"request_id": "r", "user_id": "anonymous"}))
    replicate_era = delivery("")

    verify(keys.webhook_secret(OPEN), dict(FAL.sign(keys, fal_era, int(time.time()))), fal_era.body)
    verify(keys.webhook_secret(OPEN), dict(REPLICATE.sign(keys, replicate_era, int(time.time()))), replicate_era.body)
