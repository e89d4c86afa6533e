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


# The reader caches what it read while the file stays the same one (bench/README.md, benchmark
# 7). A clock far in the future makes every file settled (cacheable); one just after a file's
# last change makes it too fresh to cache.
SETTLED = 2**62


def _just_after(path: Path) -> int:
    return os.stat(path).st_ctime_ns + 1


def test_dir_reader_serves_a_settled_file_from_its_cache(tmp_path: Path) -> None:
    write_secret(tmp_path, "mail", "smtp-credentials", "password", "hunter22")
    reader = DirSecretReader(tmp_path, clock=lambda: SETTLED)
    first = reader.read("mail", REF)
    assert reader.read("mail", REF) is first  # not read again
    assert reader.version("mail", REF) is reader.version("mail", REF)
    assert reader.version("mail", REF) == DirSecretReader(tmp_path).version("mail", REF)


def test_dir_reader_reads_a_freshly_changed_file_every_time(tmp_path: Path) -> None:
    # A rewrite in place within the file system's clock tick keeps size, inode and times, so
    # a file changed lately is never served from the cache.
    path = write_secret(tmp_path, "mail", "smtp-credentials", "password", "one")
    reader = DirSecretReader(tmp_path, clock=lambda: _just_after(path))
    first = reader.read("mail", REF)
    assert reader.read("mail", REF) is not first
    path.write_text("two")
    assert reader.read("mail", REF) == b"two"


def test_dir_reader_cache_notices_a_rewritten_file(tmp_path: Path) -> None:
    path = write_secret(tmp_path, "mail", "smtp-credentials", "password", "one")
    reader = DirSecretReader(tmp_path, clock=lambda: SETTLED)
    before = reader.version("mail", REF)
    assert reader.read("mail", REF) == b"one"
    path.write_text("three")
    assert reader.read("mail", REF) == b"three"
    assert reader.version("mail", REF) != before
    path.unlink()
    with pytest.raises(SecretNotFound):
        reader.read("mail", REF)


def test_dir_reader_cache_notices_kubelet_swapping_the_data(tmp_path: Path) -> None:
    folder = tmp_path / "mail" / "mail-ca"
    for stamp, pem in (("..2026_11_25_08_00_00.1", "CA ONE"), ("..2026_11_25_09_00_00.2", "CA 2")):
        (folder / stamp).mkdir(parents=True)
        (folder / stamp / "ca.crt").write_text(pem)
    os.symlink("..2026_11_25_08_00_00.1", folder / "..data")
    os.symlink("..data/ca.crt", folder / "ca.crt")
    ref = KeyRef("mail-ca", "ca.crt", kind="ConfigMap")
    reader = DirSecretReader(tmp_path, clock=lambda: SETTLED)
    assert reader.read("mail", ref) == b"CA ONE"
    os.symlink("..2026_11_25_09_00_00.2", folder / "..data-new")
    os.replace(folder / "..data-new", folder / "..data")  # as kubelet's atomic writer does
    assert reader.read("mail", ref) == b"CA 2"


def test_dir_reader_cache_keeps_the_jail(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (tmp_path / "outside").write_text("do not read")
    folder = root / "mail" / "smtp-credentials"
    folder.mkdir(parents=True)
    (folder / "v1").write_text("inside")
    os.symlink("v1", folder / "password")
    reader = DirSecretReader(root, clock=lambda: SETTLED)
    assert reader.read("mail", REF) == b"inside"
    (folder / "password").unlink()
    os.symlink(tmp_path / "outside", folder / "password")
    with pytest.raises(SecretNotFound, match="leads outside"):
        reader.read("mail", REF)


def test_dir_reader_follows_a_root_link_that_moves(tmp_path: Path) -> None:
    # The resolved root is kept while the root is the same directory; repointing a root that
    # is a link is noticed (the key's path without links is then under the new root).
    for version in ("one", "two"):
        write_secret(tmp_path / version, "mail", "smtp-credentials", "password", version)
    root = tmp_path / "secrets"
    os.symlink(tmp_path / "one", root)
    reader = DirSecretReader(root, clock=lambda: SETTLED)
    assert reader.read("mail", REF) == b"one"
    os.symlink(tmp_path / "two", tmp_path / "secrets-new")
    os.replace(tmp_path / "secrets-new", root)
    assert reader.read("mail", REF) == b"two"
    assert reader.version("mail", REF) == DirSecretReader(tmp_path / "two").version("mail", REF)
