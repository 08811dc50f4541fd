"""Hashes, resumable download, safe extraction and `make data` on archives built here (no network)."""
import hashlib
import io
import tarfile
import urllib.error
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from sowa_lib.data.fabricate import btad_tree, dagm_tree, mvtec3d_tree, mvtec_tree
from sowa_lib.data import btad, mvtec
from sowa_lib.data import download as dl
from sowa_lib.data.prepare import count_problems, main, prepare_dataset
from sowa_lib.errors import ChecksumError, DatasetLayoutError, DownloadError, ManualDownloadRequired, UnsafeArchiveError


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes, status: int):
        super().__init__(payload)
        self.status, self.headers = status, {"Content-Length": str(len(payload))}


def fake_server(payload: bytes, honour_range: bool = True):
    """An ``urlopen`` stand-in serving ``payload``; records the Range headers it was sent."""
    ranges = []

    def opener(request):
        header = request.get_header("Range")
        ranges.append(header)
        if header and honour_range:
            start = int(header.removeprefix("bytes=").removesuffix("-"))
            return FakeResponse(payload[start:], 206)
        return FakeResponse(payload, 200)
    opener.ranges = ranges
    return opener


def test_file_hashes_and_published_hash_check(tmp_path):
    archive = tmp_path / "a.bin"
    archive.write_bytes(b"anomaly" * 1000)
    hashes = dl.file_hashes(archive)
    assert hashes == {"sha256": hashlib.sha256(b"anomaly" * 1000).hexdigest(), "md5": hashlib.md5(b"anomaly" * 1000).hexdigest()}
    good = dl.DatasetSource("x", "X", "", "", sha256=hashes["sha256"], md5=hashes["md5"])
    dl.check_hashes(hashes, good, archive)
    dl.check_hashes(hashes, replace(good, sha256=None), archive)  # md5-only source (MVTec 3D-AD)
    with pytest.raises(ChecksumError, match="md5 of .*a.bin is"):
        dl.check_hashes(hashes, replace(good, sha256=None, md5="0" * 32), archive)
    with pytest.raises(ChecksumError, match="sha256"):
        dl.check_hashes(hashes, replace(good, sha256="0" * 64), archive)


def test_download_is_atomic_and_resumes(tmp_path):
    payload = bytes(range(256)) * 50
    target = tmp_path / "d" / "archive.tar"
    server = fake_server(payload)
    dl.download("https://example.invalid/archive.tar", target, progress=False, opener=server)
    assert target.read_bytes() == payload and not (tmp_path / "d/archive.tar.part").exists()
    assert server.ranges == [None]
    # An interrupted earlier run left the first 1000 bytes: only the rest is requested and appended.
    target.unlink()
    (tmp_path / "d/archive.tar.part").write_bytes(payload[:1000])
    dl.download("https://example.invalid/archive.tar", target, progress=False, opener=server)
    assert target.read_bytes() == payload and server.ranges[-1] == "bytes=1000-"
    # A server that ignores Range sends the whole file again: the part file restarts, not appends.
    target.unlink()
    (tmp_path / "d/archive.tar.part").write_bytes(b"junk")
    dl.download("https://example.invalid/archive.tar", target, progress=False, opener=fake_server(payload, honour_range=False))
    assert target.read_bytes() == payload


def _tar_with(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:xz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


@pytest.mark.parametrize("member", ["../escape.txt", "/tmp/absolute.txt", "a/../../escape.txt"])
def test_tar_path_traversal_is_refused_before_writing(tmp_path, member):
    archive = _tar_with(tmp_path / "bad.tar.xz", {"ok/file.txt": b"x", member: b"evil"})
    with pytest.raises(UnsafeArchiveError, match="outside"):
        dl.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out/ok").exists() and not (tmp_path / "escape.txt").exists()


def test_links_and_zip_traversal_are_refused_and_normal_archives_extract(tmp_path):
    with pytest.raises(UnsafeArchiveError, match="link"):
        dl.safe_extract(_tar_with(tmp_path / "l.tar.xz", {}, {"link": "/etc/passwd"}), tmp_path / "out1")
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as bundle:
        bundle.writestr("../escape.txt", b"evil")
    with pytest.raises(UnsafeArchiveError, match="outside"):
        dl.safe_extract(tmp_path / "z.zip", tmp_path / "out2")
    dl.safe_extract(_tar_with(tmp_path / "g.tar.xz", {"a/b.txt": b"hello"}), tmp_path / "out3")
    assert (tmp_path / "out3/a/b.txt").read_bytes() == b"hello"


def _archive_of(tree: Path, archive: Path, top: str | None = None) -> Path:
    """Pack ``tree``'s contents (under ``top/`` when given) as .tar.xz or .zip."""
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    names = [(p, f"{top}/{p.relative_to(tree).as_posix()}" if top else p.relative_to(tree).as_posix()) for p in files]
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as bundle:
            for path, name in names:
                bundle.write(path, name)
    else:
        with tarfile.open(archive, "w:xz") as tar:
            for path, name in names:
                tar.add(path, name)
    return archive


def _serve(monkeypatch, name: str, archive: Path, **hash_overrides):
    hashes = {**dl.file_hashes(archive), **hash_overrides}
    source = replace(dl.SOURCES[name], url=f"https://example.invalid/{archive.name}", filename=archive.name, **hashes)
    monkeypatch.setitem(dl.SOURCES, name, source)
    return fake_server(archive.read_bytes())


def test_prepare_mvtec_downloads_verifies_extracts_and_asserts_counts(tmp_path, monkeypatch, capsys):
    archive = _archive_of(mvtec_tree(tmp_path / "src"), tmp_path / "mvtec_anomaly_detection.tar.xz")
    server = _serve(monkeypatch, "mvtec", archive)
    monkeypatch.setattr(mvtec, "EXPECTED_COUNTS", {"bottle": (3, 2, 3)})
    data_root = tmp_path / "data"
    assert prepare_dataset("mvtec", data_root, progress=False, opener=server) == data_root / "mvtec"
    out = capsys.readouterr().out
    assert f"sha256 {dl.file_hashes(archive)['sha256']}" in out and f"md5    {dl.file_hashes(archive)['md5']}" in out
    assert len(mvtec.load(data_root / "mvtec", "bottle", "test")) == 5
    assert (data_root / "downloads" / archive.name).exists() and not (data_root / ".mvtec.extracting").exists()
    # Verified counts that differ fail loudly; a second run re-checks without downloading again.
    monkeypatch.setattr(mvtec, "EXPECTED_COUNTS", {"bottle": (3, 2, 3), "cable": (224, 58, 92)})
    with pytest.raises(DatasetLayoutError, match="differ from the published counts:\n    category 'cable' is missing"):
        prepare_dataset("mvtec", data_root, progress=False, opener=server)
    assert server.ranges == [None]


def test_prepare_rejects_a_bad_hash_and_extracts_nothing(tmp_path, monkeypatch):
    archive = _archive_of(mvtec_tree(tmp_path / "src"), tmp_path / "mvtec_anomaly_detection.tar.xz")
    server = _serve(monkeypatch, "mvtec", archive, sha256="f" * 64)
    with pytest.raises(ChecksumError):
        prepare_dataset("mvtec", tmp_path / "data", progress=False, opener=server)
    assert not (tmp_path / "data/mvtec").exists()


def test_prepare_btad_flattens_the_top_folder_and_only_warns_on_unverified_counts(tmp_path, monkeypatch, capsys):
    archive = _archive_of(btad_tree(tmp_path / "src"), tmp_path / "btad.zip", top="BTech_Dataset_transformed")
    server = _serve(monkeypatch, "btad", archive)
    target = prepare_dataset("btad", tmp_path / "data", progress=False, opener=server)
    assert btad.categories(target) == ["01", "02"] and target.joinpath("01/train/ok/0000.bmp").exists()
    out = capsys.readouterr().out
    assert "warning: btad: category '03' is missing" in out and "warning: btad: 01:" in out


def test_no_url_datasets_print_what_to_download_and_where(tmp_path, capsys):
    with pytest.raises(ManualDownloadRequired) as info:
        prepare_dataset("dagm", tmp_path)
    assert "kaggle.com/datasets/mhskjelvareid/dagm-2007-competition-dataset-optical-inspection" in str(info.value)
    assert f"{tmp_path / 'dagm'}/Class1/Train/0001.PNG" in str(info.value)
    assert main(["--datasets", "dtd_synthetic,dagm", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1" in out and "not ready: dtd_synthetic, dagm" in out
    dagm_tree(tmp_path / "dagm")  # once it is in place, the same command checks it and succeeds
    assert main(["--datasets", "dagm", "--root", str(tmp_path)]) == 0


def test_existing_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "mvtec" / "something").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="exists but is not a valid mvtec folder"):
        prepare_dataset("mvtec", tmp_path, progress=False, opener=fake_server(b""))
    assert (tmp_path / "mvtec" / "something").is_dir()


def test_network_failure_is_one_clear_error_and_416_means_complete(tmp_path):
    def offline(request):
        raise urllib.error.URLError("Name or service not known")
    target = tmp_path / "archive.tar"
    with pytest.raises(DownloadError, match=f"download the file by hand and put it at {target}"):
        dl.download("https://example.invalid/archive.tar", target, progress=False, opener=offline)

    def satisfied(request):
        raise urllib.error.HTTPError(request.full_url, 416, "Range Not Satisfiable", {}, None)
    (tmp_path / "archive.tar.part").write_bytes(b"whole")
    dl.download("https://example.invalid/archive.tar", target, progress=False, opener=satisfied)
    assert target.read_bytes() == b"whole"


def test_count_problems_cover_categories_splits_and_mvtec3d_validation(tmp_path):
    root = mvtec3d_tree(tmp_path / "mvtec3d")  # bagel: train 2, validation 1, test 1 good + 2 crack
    problems = count_problems("mvtec3d", root)
    assert "bagel: (train, test normal, test anomalous) = (2, 1, 2), expected (244, 22, 88)" in problems
    assert "bagel: 1 validation images, expected 22" in problems
    assert sum("is missing" in p for p in problems) == 9 and len(problems) == 11
