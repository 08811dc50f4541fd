"""Official download sources, streamed resumable downloads, hashes and safe extraction (spec §2.1, §2.4).

Unlike anomalib (spec §2.4 step 2), an archive already on disk is hashed again every time, and both
sha256 and md5 are computed and printed (spec §2.5 item 1), since the sources publish one or the
other. DAGM 2007 and DTD-Synthetic have no direct URL: :func:`manual_instructions` says what to
fetch and where to put it.
"""
from __future__ import annotations

import hashlib
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from tqdm import tqdm

from sowa_lib.errors import ChecksumError, DownloadError, UnsafeArchiveError

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class DatasetSource:
    """Where a benchmark comes from. ``url=None``: no direct download, see ``manual``."""

    name: str
    title: str
    homepage: str
    licence: str
    url: str | None = None
    filename: str | None = None
    sha256: str | None = None
    md5: str | None = None
    manual: str = ""


SOURCES: dict[str, DatasetSource] = {
    "mvtec": DatasetSource(
        "mvtec", "MVTec AD", "https://www.mvtec.com/company/research/datasets/mvtec-ad", "CC BY-NC-SA 4.0",
        url="https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/"
            "mvtec_anomaly_detection.tar.xz",
        filename="mvtec_anomaly_detection.tar.xz",
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        md5="eefca59f2cede9c3fc5b6befbfec275e"),
    "visa": DatasetSource(
        "visa", "VisA", "https://github.com/amazon-science/spot-diff", "CC BY 4.0",
        url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        filename="VisA_20220922.tar",
        sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        md5="ef908989b6dc701fc218f643c127a4de"),
    "mvtec3d": DatasetSource(
        "mvtec3d", "MVTec 3D-AD", "https://www.mvtec.com/company/research/datasets/mvtec-3d-ad", "CC BY-NC-SA 4.0",
        url="https://www.mydrive.ch/shares/150646/25de33f1276dd418cd856f2f48a84cdb/download/428824485-1643299897/"
            "mvtec_3d_anomaly_detection.tar.xz",
        filename="mvtec_3d_anomaly_detection.tar.xz",
        md5="d8bb2800fbf3ac88e798da6ae10dc819"),  # only an md5 is published (spec §2.1 caution)
    "btad": DatasetSource(
        "btad", "BTAD (BeanTech)", "https://avires.dimi.uniud.it/papers/btad/", "CC BY-SA (dataset README)",
        url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
        filename="btad.zip",
        sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
        md5="c1fa4d56ac50dd50908ce04e81037a8e"),
    "dagm": DatasetSource(
        "dagm", "DAGM 2007", "https://hci.iwr.uni-heidelberg.de/content/dagm-2007-dataset", "unknown (check the source)",
        manual=("Download the Kaggle release used by AnomalyCLIP, "
                "https://www.kaggle.com/datasets/mhskjelvareid/dagm-2007-competition-dataset-optical-inspection "
                "(mirrors: https://zenodo.org/records/12750201, https://hci.iwr.uni-heidelberg.de/content/dagm-2007-dataset), "
                "and unpack it so that {target}/Class1/Train/0001.PNG and {target}/Class1/Train/Label/<NNNN>_label.PNG exist "
                "(Class1 ... Class10). No hash is published for this archive.")),
    "dtd_synthetic": DatasetSource(
        "dtd_synthetic", "DTD-Synthetic", "https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1",
        "research only (derived from DTD)",
        manual=("Download the DTD-Synthetic folder linked from AnomalyCLIP's README, "
                "https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1 , "
                "and unpack it so that {target}/Woven_001/train/good/*.png, {target}/Woven_001/test/<defect>/*.png and "
                "{target}/Woven_001/ground_truth/<defect>/* exist for the 12 classes. No hash is published.")),
}


def manual_instructions(name: str, target: Path) -> str:
    """What to download by hand for a benchmark without a direct URL, and where to put it."""
    source = SOURCES[name]
    return f"{source.title} has no direct download URL. " + source.manual.format(target=target)


def file_hashes(path: Path) -> dict[str, str]:
    """sha256 and md5 of a file in one streamed pass."""
    digests = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    with Path(path).open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            for digest in digests.values():
                digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def check_hashes(hashes: dict[str, str], source: DatasetSource, path: Path) -> None:
    """Compare ``hashes`` of ``path`` with every hash ``source`` publishes; a mismatch raises :class:`ChecksumError`."""
    for algorithm in ("sha256", "md5"):
        published = getattr(source, algorithm)
        if published is not None and hashes[algorithm] != published:
            raise ChecksumError(f"{source.name}: {algorithm} of {path} is {hashes[algorithm]}, the published one is "
                                f"{published}; delete the file and run `make data DATASETS={source.name}` again")


Opener = Callable[[urllib.request.Request], object]


def download(url: str, destination: Path, *, progress: bool = True,
             opener: Opener = urllib.request.urlopen) -> Path:
    """Stream ``url`` to ``destination`` through ``<destination>.part``, renamed only when complete.

    A ``.part`` left by an interrupted run is resumed with an HTTP ``Range`` request; a server that
    answers with the whole file (status 200) restarts it, and one that answers 416 (range not
    satisfiable) means the part is already whole; the hash check that follows decides.
    ``opener`` is injectable for tests. Network failures raise :class:`DownloadError`.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        _stream(opener(request), partial, offset, destination.name, progress)
    except urllib.error.HTTPError as err:
        if not (err.code == 416 and offset):
            raise _download_error(url, destination, err) from err
    except OSError as err:  # URLError, timeouts, resets
        raise _download_error(url, destination, err) from err
    partial.replace(destination)
    return destination


def _stream(response, partial: Path, offset: int, label: str, progress: bool) -> None:
    with response:
        resumed = offset > 0 and getattr(response, "status", 200) == 206
        length = response.headers.get("Content-Length")
        total = int(length) + (offset if resumed else 0) if length else None
        with partial.open("ab" if resumed else "wb") as out, tqdm(
                total=total, initial=offset if resumed else 0, unit="B", unit_scale=True,
                desc=label, disable=not progress) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))


def _download_error(url: str, destination: Path, err: Exception) -> DownloadError:
    return DownloadError(f"download of {url} failed: {err}\n  run the same command again to resume, or download "
                         f"the file by hand and put it at {destination}")


def _check_member(name: str, destination: Path, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    target = (destination / path).resolve()
    if path.is_absolute() or ".." in path.parts or not target.is_relative_to(destination.resolve()):
        raise UnsafeArchiveError(f"refusing to extract {archive}: member {name!r} would land outside {destination}")


def _tar_members(archive: Path, tar: tarfile.TarFile, destination: Path) -> Iterable[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        _check_member(member.name, destination, archive)
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"refusing to extract {archive}: member {member.name!r} is a link or special file")
    return members


def safe_extract(archive: Path, destination: Path) -> None:
    """Extract a tar (any compression) or zip archive into ``destination``, refusing path traversal.

    Every member is checked before anything is written: absolute paths, ``..`` components, links
    and device files raise :class:`UnsafeArchiveError`. Tar extraction also uses Python's ``data``
    filter as a second guard.
    """
    archive, destination = Path(archive), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            for name in bundle.namelist():
                _check_member(name, destination, archive)
            bundle.extractall(destination)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            tar.extractall(destination, members=_tar_members(archive, tar, destination), filter="data")
    else:
        raise UnsafeArchiveError(f"{archive} is neither a tar nor a zip archive")


def single_subfolder(folder: Path) -> Path | None:
    """The only entry of ``folder`` when it is a folder (e.g. BTAD's ``BTech_Dataset_transformed/``)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else None

