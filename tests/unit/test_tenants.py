"""frontend/tenancy/tenants.py: key files with ids, their reload (rotation without a restart), share groups,
the cache salt; and log redaction that follows a reload."""
from __future__ import annotations

import logging

import pytest

from frontend.tenancy import tenants
from frontend.telemetry.logging_setup import RedactSecrets
from frontend.tenancy.tenants import OPEN, KeyRing, KeysInvalid, Tenant, cache_salt, derived_id, parse_keys, \
    parse_share_groups


def test_key_lines_with_and_without_ids():
    keys = parse_keys("ops:k-env, k-bare-env", "# comment\nalice:k-alice\n\n  bob : k-bob  \nk-bare\n")
    assert keys == {"k-env": "ops", "k-bare-env": derived_id("k-bare-env"), "k-alice": "alice", "k-bob": "bob",
                    "k-bare": derived_id("k-bare")}
    assert derived_id("k-bare").startswith("key-") and "k-bare" not in derived_id("k-bare")


@pytest.mark.parametrize("text", ["bad id!:k-secret-1", "alice:k-secret-1\nalice:k-secret-2",
                                  "alice:k-secret-1\nbob:k-secret-1", "alice:", "alice:k-sec ret-1"])
def test_bad_key_files_are_refused_without_echoing_a_key(text):
    with pytest.raises(KeysInvalid) as e:
        parse_keys(None, text)
    assert "k-secret" not in str(e.value) and "k-sec" not in str(e.value) and "line" in str(e.value)


def test_authenticate_names_the_tenant():
    ring = KeyRing("alice:k-a,bob:k-b", None, {"alice": "team"})
    assert ring.authenticate(b"k-a") == Tenant("alice", "group:team")
    assert ring.authenticate(b"k-b") == Tenant("bob", "key:bob")
    assert ring.authenticate(b"k-c") is None and ring.authenticate(b"\xff") is None
    assert not KeyRing() and len(ring) == 2 and ring.ids() == ["alice", "bob"]


def test_share_groups():
    assert parse_share_groups(["team=alice, bob", "solo=carol"]) == {"alice": "team", "bob": "team", "carol": "solo"}
    for bad in (["team"], ["bad name=alice"], ["a=alice", "b=alice"]):
        with pytest.raises(KeysInvalid):
            parse_share_groups(bad)


def test_the_keys_file_reloads_when_it_changes(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tenants, "RELOAD_CHECK_S", 0.0)
    path = tmp_path / "keys"
    path.write_text("alice:k-a\n")
    ring = KeyRing(None, str(path))
    redact = RedactSecrets(ring.secrets)
    assert ring.authenticate(b"k-a") == Tenant("alice", "key:alice")
    path.write_text("bob:k-b\n")
    assert ring.authenticate(b"k-b") == Tenant("bob", "key:bob") and ring.authenticate(b"k-a") is None
    assert ring.reloads == 1
    # A key rotated out stays a secret for the logs; the new one is one too.
    assert redact._scrub("k-a and k-b") == "*** and ***"
    # A file that breaks, or that empties, keeps the keys in force (and says so).
    caplog.set_level(logging.ERROR)
    path.write_text("bob k-broken\n" + "x:" * 3)
    assert ring.authenticate(b"k-b") is not None
    path.write_text("# nothing yet\n")
    assert ring.authenticate(b"k-b") is not None
    assert len([r for r in caplog.records if "not reloaded" in r.getMessage() or "holds no key" in r.getMessage()]) == 2
    assert all("k-b" not in r.getMessage() for r in caplog.records)
    path.unlink()
    assert ring.authenticate(b"k-b") is not None


def test_cache_salt_scopes():
    secret = b"s" * 32
    alice, bob = Tenant("alice", "key:alice"), Tenant("bob", "key:bob")
    team_a, team_b = Tenant("alice", "group:t"), Tenant("bob", "group:t")
    salt = cache_salt(secret, alice, None, None)
    assert 0 <= salt < 1 << 64 and salt == cache_salt(secret, alice, None, None)
    assert salt != cache_salt(secret, bob, None, None)
    assert cache_salt(secret, team_a, None, None) == cache_salt(secret, team_b, None, None)
    assert salt != cache_salt(b"t" * 32, alice, None, None)        # another replica secret
    assert cache_salt(secret, alice, "k", None) != cache_salt(secret, alice, None, "k") != salt
    assert cache_salt(secret, alice, "", None) != salt             # an empty key is still a key
    assert cache_salt(secret, OPEN, None, None) != salt
