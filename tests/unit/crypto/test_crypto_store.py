"""Key store, queue-time split, Maildir encryption (crash-safe), WKD, and `hato key`."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import os
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from hato.cli import main
from hato.crypto import (
    FailurePolicy,
    KeyStore,
    encrypt_maildir,
    protect_message,
    split_for_encryption,
    wkd_hash,
)
from hato.crypto.wkd import export_wkd, wkd_app
from hato.crypto.wkdhash import advanced_url, direct_url
from hato.model import Address
from kit.commands import ADMIN_LOG, run
from kit.config import command_workdir
from kit.cryptokeys import MESSAGE, NOW, Gpg, Smime, need

CAROL = Address.parse("carol@example.org")
BOB = Address.parse("bob@example.org")


def decrypt(smime: Smime, data: bytes) -> bytes:
    cert = x509.load_pem_x509_certificate(smime.cert_pem)
    key = serialization.load_pem_private_key(smime.key_pem, None)
    return pkcs7.pkcs7_decrypt_smime(data, cert, key, [])  # type: ignore[arg-type]


def test_store_keeps_keys_and_policies_0600(tmp_path: Path, smime_rsa: Smime) -> None:
    store = KeyStore.in_data_dir(tmp_path)
    key = store.import_key(smime_rsa.cert_pem, Address.parse("Carol@Example.org"), NOW)
    assert (tmp_path / "keys.db").stat().st_mode & 0o777 == 0o600
    store.set_policy(CAROL, FailurePolicy.PLAINTEXT)
    store.close()
    again = KeyStore.in_data_dir(tmp_path)
    assert again.get(CAROL) == key
    assert again.policy(CAROL) is FailurePolicy.PLAINTEXT
    assert again.policy(BOB) is FailurePolicy.DEFER
    assert again.remove(CAROL) and again.get(CAROL) is None


def test_protect_message_encrypts_keyed_copies_only(tmp_path: Path, smime_rsa: Smime) -> None:
    store = KeyStore.in_data_dir(tmp_path)
    store.import_key(smime_rsa.cert_pem, CAROL, NOW)
    plan = split_for_encryption([CAROL, BOB, CAROL], store, NOW)
    assert plan.plain == (BOB,) and [c.recipients for c in plan.encrypted] == [(CAROL,)]
    protected = protect_message(MESSAGE, [CAROL, BOB], store, NOW)
    plain, secret = protected.copies
    assert (plain.data, plain.recipients, plain.encrypted) == (MESSAGE, (BOB,), False)
    assert secret.recipients == (CAROL,) and b"Zq7xK3" not in secret.data
    assert b"Zq7xK3" in decrypt(smime_rsa, secret.data)


@pytest.mark.parametrize("policy", list(FailurePolicy))
def test_an_expired_key_follows_the_policy(
    tmp_path: Path, smime_rsa: Smime, policy: FailurePolicy
) -> None:
    store = KeyStore.in_data_dir(tmp_path)
    store.import_key(smime_rsa.cert_pem, CAROL, NOW)
    store.set_policy(CAROL, policy)
    later = NOW + dt.timedelta(days=90)
    protected = protect_message(MESSAGE, [CAROL], store, later)
    if policy is FailurePolicy.DEFER:
        assert protected.copies == () and protected.deferred[0].recipient == CAROL
    else:
        (copy,) = protected.copies
        assert copy.data.startswith(b"X-Hato-Encryption: not encrypted") and not copy.encrypted
        assert copy.data.endswith(MESSAGE) and protected.in_clear[0].recipient == CAROL


def make_maildir(root: Path, count: int) -> dict[str, bytes]:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    originals: dict[str, bytes] = {}
    for i in range(count):
        data = MESSAGE.replace(b"<1@", f"<{i}@".encode())
        name = f"170000000{i}.M{i}Q1.host,S={len(data)}" + (":2,RS" if i % 2 else "")
        (root / ("cur" if i % 2 else "new") / name).write_bytes(data)
        os.utime(root / ("cur" if i % 2 else "new") / name, (1_000_000 + i, 1_000_000 + i))
        originals[name] = data
    return originals


def message_id(data: bytes) -> bytes:
    return next(line for line in data.split(b"\r\n") if line.startswith(b"Message-ID:"))


def files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for sub in ("cur", "new") for p in (root / sub).iterdir()}


def test_encrypt_existing_keeps_names_flags_and_times(tmp_path: Path, smime_ec: Smime) -> None:
    store = KeyStore.in_data_dir(tmp_path)
    key = store.import_key(smime_ec.cert_pem, CAROL, NOW)
    originals = make_maildir(tmp_path / "box", 4)
    result = encrypt_maildir(tmp_path / "box", key, now=NOW)
    assert len(result.encrypted) == 4 and not result.failed
    after = files(tmp_path / "box")
    for name, data in after.items():
        base, size = name.split(",S=")
        number, _, flags = size.partition(":")
        assert int(number) == len(data) and b"Zq7xK3" not in data
        old = next(n for n in originals if n.startswith(base + ","))
        assert old.partition(":")[2] == flags
    assert sorted(p.stat().st_mtime for p in (tmp_path / "box").glob("*/*")) == [
        1_000_000 + i for i in range(4)
    ]
    again = encrypt_maildir(tmp_path / "box", key, now=NOW)
    assert len(again.already) == 4 and files(tmp_path / "box") == after


@pytest.mark.parametrize("crash_at", range(1, 9))
def test_a_crash_mid_way_loses_nothing(
    tmp_path: Path, smime_rsa: Smime, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    store = KeyStore.in_data_dir(tmp_path)
    key = store.import_key(smime_rsa.cert_pem, CAROL, NOW)
    box = tmp_path / "box"
    originals = make_maildir(box, 4)
    calls = 0
    real_rename = os.rename

    def crashing_rename(src: str | Path, dst: str | Path) -> None:
        nonlocal calls
        calls += 1
        if calls == crash_at:
            raise KeyboardInterrupt("power cut")
        real_rename(src, dst)

    monkeypatch.setattr("hato.crypto.maildir.os.rename", crashing_rename)
    with pytest.raises(KeyboardInterrupt):
        encrypt_maildir(box, key, now=NOW)
    monkeypatch.setattr("hato.crypto.maildir.os.rename", real_rename)
    # Every message is there once: as the original, or encrypted (its Message-ID inside).
    seen = sorted(
        message_id(data if data in originals.values() else decrypt(smime_rsa, data))
        for data in files(box).values()
    )
    assert seen == sorted(message_id(d) for d in originals.values())
    assert all(b"Zq7xK3" not in p.read_bytes() for p in (box / "tmp").iterdir())
    encrypt_maildir(box, key, now=NOW)  # the next run finishes the job
    assert len(files(box)) == 4 and all(b"Zq7xK3" not in d for d in files(box).values())
    assert list((box / "tmp").iterdir()) == []


def test_wkd_hash_of_the_draft_example() -> None:
    joe = Address.parse("Joe.Doe@Example.ORG")
    assert wkd_hash("Joe.Doe") == "iy9q119eutrkn8s1mk4r39qejnbu3n5q"
    assert advanced_url(joe) == (
        "https://openpgpkey.example.org/.well-known/openpgpkey/example.org/hu/"
        "iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
    )
    assert direct_url(joe).startswith("https://example.org/.well-known/openpgpkey/hu/iy9q")


@pytest.mark.parametrize("address", ["Joe.Doe@Example.ORG", "alice@example.org", "x+y@b.example"])
def test_wkd_url_is_the_one_gnupg_computes(address: str) -> None:
    tool = need("gpg-wks-client")
    printed = subprocess.run(
        [tool, "--print-wkd-url", address], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    ours = advanced_url(Address.parse(address))
    # GnuPG 2.2 lower-cases the l= parameter (the draft keeps the local part as given) and
    # leaves "+" unescaped (we escape it: in a query "+" may be read as a space).
    assert ours.split("?")[0] == printed.split("?")[0]
    assert unquote(ours).lower() == printed.lower()


def test_wkd_served_and_exported_keys_import_into_gpg(
    tmp_path: Path, gpg: Gpg, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KeyStore.in_data_dir(tmp_path)
    ecc = Address.parse("ecc@example.org")
    key = store.import_key(gpg.export("ecc@example.org"), ecc, NOW)
    hashed = wkd_hash("ecc")

    async def fetch() -> list[tuple[int, bytes]]:
        async with TestClient(TestServer(wkd_app(store))) as client:
            out = []
            for path, host in (
                (f"/.well-known/openpgpkey/example.org/hu/{hashed}?l=ecc", "openpgpkey.x"),
                (f"/.well-known/openpgpkey/hu/{hashed}", "example.org"),
                (f"/.well-known/openpgpkey/hu/{hashed}", "example.net"),
                ("/.well-known/openpgpkey/example.org/policy", "x"),
            ):
                response = await client.get(path, headers={"Host": host})
                out.append((response.status, await response.read()))
            return out

    results = asyncio.run(fetch())
    assert results == [(200, key.data), (200, key.data), (404, results[2][1]), (200, b"")]
    fresh = Gpg(tmp_path / "gnupg2")
    fresh.home.mkdir(mode=0o700)
    fresh.run("--import", input=results[0][1])
    assert fresh.fingerprint("ecc@example.org").lower() == key.fingerprint
    written = export_wkd(store.list(), tmp_path / "wkd")
    advanced = tmp_path / "wkd/advanced/.well-known/openpgpkey/example.org/hu" / hashed
    direct = tmp_path / "wkd/direct/example.org/.well-known/openpgpkey/hu" / hashed
    assert advanced in written and direct.read_bytes() == key.data
    assert (tmp_path / "wkd/direct/example.org/.well-known/openpgpkey/policy").exists()


def test_hato_key_commands(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    smime_rsa: Smime,
) -> None:
    command_workdir(tmp_path, monkeypatch)
    (tmp_path / "carol.pem").write_bytes(smime_rsa.cert_pem)
    assert main(["key", "import", "carol@example.org", "carol.pem", "--init"]) == 0
    assert main(["key", "import", "dave@example.org", "carol.pem"]) == 1
    assert "key not imported for dave@example.org" in capsys.readouterr().err
    assert main(["key", "policy", "carol@example.org", "plaintext"]) == 0
    capsys.readouterr()
    assert main(["key", "show", "carol@example.org"]) == 0
    shown = capsys.readouterr().out
    assert "type:        smime (RSA-2048)" in shown and "on failure:  plaintext" in shown
    originals = make_maildir(tmp_path / "data/mailboxes/example.org/carol", 2)
    assert main(["key", "encrypt-existing", "carol@example.org"]) == 0
    assert "2 encrypted, 0 already encrypted, 0 failed" in capsys.readouterr().out
    stored = files(tmp_path / "data/mailboxes/example.org/carol")
    assert len(stored) == 2 and not set(stored.values()) & set(originals.values())
    code, out, _ = run(capsys, "key", "wkd-export", str(tmp_path / "wkd"))
    assert code == 0 and out == f"wrote 0 files under {tmp_path / 'wkd'}\n"  # S/MIME: none
    assert ADMIN_LOG[-1].endswith(
        f" event=admin-key-wkd-export directory={tmp_path / 'wkd'} files=0 uid={os.getuid()}\n"
    )
    assert main(["key", "remove", "carol@example.org"]) == 0
    assert main(["key", "show", "carol@example.org"]) == 1


def test_encrypt_existing_keeps_dovecot_uids(tmp_path: Path, smime_ec: Smime) -> None:
    """A renamed ,S= is renamed in dovecot-uidlist too (same UID); the stale cache goes."""
    store = KeyStore.in_data_dir(tmp_path)
    key = store.import_key(smime_ec.cert_pem, CAROL, NOW)
    box = tmp_path / "box"
    originals = make_maildir(box, 2)
    bases = sorted(name.partition(":")[0] for name in originals)
    (box / "dovecot-uidlist").write_text(
        "3 V1 N3 Gx\n" + "".join(f"{uid} :{base}\n" for uid, base in enumerate(bases, 1))
    )
    (box / "dovecot.index.cache").write_bytes(b"plaintext headers")
    result = encrypt_maildir(box, key, now=NOW)
    assert len(result.encrypted) == 2 and not result.failed
    after = sorted(name.partition(":")[0] for name in files(box))
    assert after != bases  # the sizes changed...
    assert (box / "dovecot-uidlist").read_text() == (  # ...and Dovecot's names with them
        "3 V1 N3 Gx\n" + "".join(f"{uid} :{base}\n" for uid, base in enumerate(after, 1))
    )
    assert not (box / "dovecot.index.cache").exists()
    assert not (box / "dovecot-uidlist.lock").exists()
    (box / "dovecot-uidlist.lock").write_text("1:dovecot")  # Dovecot is in the mailbox
    (box / "new" / "1800000000.M9Q1.host,S=1").write_bytes(MESSAGE)
    busy = encrypt_maildir(box, key, now=NOW)
    assert busy.failed and "Dovecot is using the mailbox" in busy.failed[0][1]


def test_a_broken_key_file_raises_store_error(tmp_path: Path) -> None:
    """The rooms above see model.storeerror's errors, not sqlite3's (issue 11)."""
    from hato.model.storeerror import StoreError

    path = tmp_path / "keys.db"
    path.write_bytes(b"not a database, " * 512)
    with pytest.raises(StoreError, match="file is not a database"):
        KeyStore(path)


def test_both_forms_of_an_idn_domain_name_one_key(tmp_path: Path) -> None:
    import sqlite3

    from hato.crypto import KeyKind, PublicKey

    u_label = Address.parse("bob@bücher.example")
    a_label = Address.parse("bob@xn--bcher-kva.example")
    store = KeyStore.in_data_dir(tmp_path)
    old = PublicKey(KeyKind.OPENPGP, u_label, b"old", "aa" * 20, None, "test")
    store.put(old, NOW)
    store.set_policy(u_label, FailurePolicy.PLAINTEXT)
    # A row as an import kept it before keys were stored under the A-label form.
    with sqlite3.connect(tmp_path / "keys.db") as conn:
        conn.execute("UPDATE keys SET address = 'bob@bücher.example'")
        conn.execute("UPDATE policies SET address = 'bob@bücher.example'")
    for asked in (u_label, a_label):
        assert store.get(asked) == old
        assert store.policy(asked) is FailurePolicy.PLAINTEXT
    assert store.with_keys([a_label, CAROL]) == {a_label}
    new = PublicKey(KeyKind.OPENPGP, a_label, b"new", "bb" * 20, None, "test")
    store.put(new, NOW + dt.timedelta(seconds=1))  # imported again, under the other form
    assert store.get(u_label) == new and store.get(a_label) == new
    assert len(store.list()) == 1
    assert store.remove(u_label) and store.get(a_label) is None


def test_a_key_for_an_alias_is_refused_it_would_never_be_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Mail to robert@ is stored in bob's mailbox, encrypted to bob's key: a key imported for
    # robert@ would never be used, and the command said his mail was now stored encrypted.
    from cryptography.hazmat.primitives.asymmetric import ec

    from kit.config import CLI
    from kit.cryptokeys import make_cert

    command_workdir(tmp_path, monkeypatch, CLI + 'aliases = { robert = ["bob"] }\n')
    cert = make_cert(ec.generate_private_key(ec.SECP256R1()), "robert@example.org")
    (tmp_path / "robert.pem").write_bytes(cert.cert_pem)
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery staple\n"))
    assert main(["user", "add", "bob@example.org", "--init"]) == 0
    assert main(["key", "import", "robert@example.org", "robert.pem", "--init"]) == 1
    err = capsys.readouterr().err
    assert "robert@example.org is not a mailbox: its mail is stored in bob@example.org" in err
    assert main(["key", "policy", "robert@example.org", "plaintext"]) == 1
