"""A generated API key never starts with "-" (it would read as an option: --key -abc)."""

from __future__ import annotations

from app import auth


def test_a_generated_key_never_starts_with_a_dash(monkeypatch):
    drawn = iter(["-starts-with-a-dash", "-again", "fine-key"])
    monkeypatch.setattr(auth.secrets, "token_urlsafe", lambda _n: next(drawn))
    assert auth.generate_key() == "fine-key"


def test_generated_keys_are_long_and_distinct():
    keys = {auth.generate_key() for _ in range(200)}
    assert len(keys) == 200
    assert all(len(k) >= 43 and not k.startswith("-") for k in keys)
