"""Secret readers: the --secrets-dir layout and the in-memory map."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.errors import SecretNotFound
from reconciler.model import KeyRef
from reconciler.probe.credentials import DirSecretReader, MappingSecretReader
from tests.smtpservers import write_secret

REF = KeyRef("smtp-credentials", "password")


def test_dir_reader_reads_secret_and_configmap_keys(tmp_path: Path) -> None:
    write_secret(tmp_path, "mail", "smtp-credentials", "password", b"hunter22\n")
    write_secret(tmp_path, "mail", "mail-ca", "ca.crt", "PEM")
    reader = DirSecretReader(str(tmp_path))
    assert reader.read("mail", REF) == b"hunter22\n"
    assert reader.read("mail", KeyRef("mail-ca", "ca.crt", kind="ConfigMap")) == b"PEM"


def test_dir_reader_missing_object_and_missing_key(tmp_path: Path) -> None:
    write_secret(tmp_path, "mail", "smtp-credentials", "username", "app")
    reader = DirSecretReader(tmp_path)
    with pytest.raises(SecretNotFound) as missing_key:
        reader.read("mail", REF)
    assert str(missing_key.value) == (
        "Secret mail/smtp-credentials has no key 'password': no file "
        f"{tmp_path / 'mail' / 'smtp-credentials' / 'password'} under --secrets-dir")
    assert (missing_key.value.namespace, missing_key.value.name, missing_key.value.key) == (
        "mail", "smtp-credentials", "password")
    with pytest.raises(SecretNotFound) as missing_object:
        reader.read("other", KeyRef("ca", "ca.crt", kind="ConfigMap"))
    assert str(missing_object.value) == (
        f"ConfigMap other/ca not found (key 'ca.crt'): no folder {tmp_path / 'other' / 'ca'} "
        "under --secrets-dir")


@pytest.mark.parametrize(("namespace", "name", "key"), [
    ("mail", "..", "password"),
    ("mail", "smtp-credentials", "../../etc/passwd"),
    ("..", "mail", "password"),
    ("mail", "a/b", "password"),
    ("mail", "smtp-credentials", ".."),
    ("/etc", "x", "passwd"),
    ("mail", "smtp-credentials", ""),
])
def test_dir_reader_refuses_path_traversal(tmp_path: Path, namespace: str, name: str,
                                           key: str) -> None:
    root = tmp_path / "root"
    write_secret(root, "mail", "smtp-credentials", "password", "x")
    (tmp_path / "outside").write_text("do not read")
    reader = DirSecretReader(root)
    with pytest.raises(SecretNotFound):
        reader.read(namespace, KeyRef(name, key))


def test_dir_reader_refuses_symlink_out_of_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (tmp_path / "outside").write_text("do not read")
    folder = root / "mail" / "smtp-credentials"
    folder.mkdir(parents=True)
    os.symlink(tmp_path / "outside", folder / "password")
    with pytest.raises(SecretNotFound):
        DirSecretReader(root).read("mail", REF)


def test_dir_reader_follows_kubelet_data_symlinks(tmp_path: Path) -> None:
    # kubelet: key -> ..data/key, ..data -> ..2026_11_25_08_00_00.123/
    folder = tmp_path / "mail" / "smtp-credentials"
    stamp = folder / "..2026_11_25_08_00_00.123"
    stamp.mkdir(parents=True)
    (stamp / "password").write_text("mounted")
    os.symlink(stamp.name, folder / "..data")
    os.symlink("..data/password", folder / "password")
    assert DirSecretReader(tmp_path).read("mail", REF) == b"mounted"


def test_version_changes_with_content_and_is_not_a_bare_hash(tmp_path: Path) -> None:
    import hashlib

    write_secret(tmp_path, "mail", "smtp-credentials", "password", "one")
    reader = DirSecretReader(tmp_path)
    v1 = reader.version("mail", REF)
    assert v1 == reader.version("mail", REF)
    write_secret(tmp_path, "mail", "smtp-credentials", "password", "two")
    v2 = reader.version("mail", REF)
    assert v1 != v2 and v1.startswith("hmac-sha256:")
    assert hashlib.sha256(b"two").hexdigest()[:32] not in v2
    with pytest.raises(SecretNotFound):
        reader.version("mail", KeyRef("absent", "password"))


def test_mapping_reader() -> None:
    reader = MappingSecretReader({("mail", "smtp-credentials", "password"): "pw-value",
                                  ("mail", "ca", "ca.crt"): b"PEM"})
    assert reader.read("mail", REF) == b"pw-value"
    assert reader.version("mail", REF) == DirSecretReaderVersion.of("pw-value")
    with pytest.raises(SecretNotFound, match="has no key 'username'"):
        reader.read("mail", KeyRef("smtp-credentials", "username"))
    with pytest.raises(SecretNotFound, match="not found"):
        reader.read("other", REF)


class DirSecretReaderVersion:
    """Both readers agree on versions, so switching readers does not look like a change."""

    @staticmethod
    def of(value: str) -> str:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            write_secret(Path(tmp), "mail", REF.name, REF.key, value)
            return DirSecretReader(tmp).version("mail", REF)
